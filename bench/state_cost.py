"""What shared state costs per call: MemoryState vs RedisState on a local redis-server.

    .venv/bin/python bench/state_cost.py [--calls 500] [--repeats 5]

Starts its own redis-server (Debian's `redis-server`) on a free loopback port. Prints the median
over repeats of the mean time per call, for the calls a request makes: `admit` (a key with
limits, on arrival), `add_totals` (a best-of-N route's estimate sync, before and after its run)
and `get_json` (an upstream whose `n` support is unknown).
"""

from __future__ import annotations

import argparse
import asyncio
import shutil
import statistics
import subprocess
import time
from collections.abc import Awaitable, Callable

from processes import free_port
from proxy.scale_settings import StateSettings
from proxy.shared_state import Counter, MemoryState, RedisState, SharedState


async def measure(state: SharedState, calls: int, repeats: int) -> dict[str, float]:
    counters = [Counter("rl:{bench}:rpm:1", 1, 10**12, 60), Counter("rl:{bench}:tpm:1", 0, 10**12, 60)]
    operations: dict[str, Callable[[], Awaitable[object]]] = {
        "admit": lambda: state.admit(counters),
        "add_totals": lambda: state.add_totals("risk/bench", {"candidate.sum": 0.1, "candidate.count": 1.0}),
        "get_json": lambda: state.get_json("n_support/bench"),
    }
    result = {}
    for name, call in operations.items():
        runs = []
        for _ in range(repeats):
            started = time.perf_counter()
            for _ in range(calls):
                await call()
            runs.append((time.perf_counter() - started) / calls * 1000)
        result[name] = statistics.median(runs)
    return result


async def main(calls: int, repeats: int) -> None:
    binary = shutil.which("redis-server")
    if binary is None:
        raise SystemExit("redis-server is not installed (apt-get install redis-server)")
    port = free_port()
    server = subprocess.Popen(
        [binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"],
        stdout=subprocess.DEVNULL,
    )
    try:
        time.sleep(0.5)
        redis = RedisState(StateSettings(backend="redis", url=f"redis://127.0.0.1:{port}/0"))
        await redis.start()
        assert redis.up, "redis-server did not answer"
        rows = {"memory": await measure(MemoryState(), calls, repeats), "redis": await measure(redis, calls, repeats)}
        await redis.close()
    finally:
        server.terminate()
        server.wait()
    print(f"ms per call, median of {repeats} x {calls} calls")
    print(f"{'backend':8} {'admit':>8} {'add_totals':>11} {'get_json':>9}")
    for backend, row in rows.items():
        print(f"{backend:8} {row['admit']:8.3f} {row['add_totals']:11.3f} {row['get_json']:9.3f}")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--calls", type=int, default=500)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    asyncio.run(main(args.calls, args.repeats))
