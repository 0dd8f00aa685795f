"""How long a short answer from the embedded model takes, by OpenMP wait policy and after an
abandoned request, with and without stopping generation on hang-up (issue 15, item 5).

    python bench/embedded_latency.py                 # 3 repeats of each row
    python bench/embedded_latency.py --repeats 5

Every row starts its own model server (`proxy.embedded.EmbeddedModel`, the proxy's settings:
n_ctx 2048, threads = usable cores, no per-token logits) on the cached model file, then per
repeat:

- `short`: POST /v1/completions, "The sky is", max_tokens 8, temperature 0; the time to the
  complete reply.
- `after abandoned`: first a request the model would continue for 300 tokens (end-of-text
  banned), hung up once the server has used 1 s of CPU on it; then the `short` request, timed
  from the hang-up to its complete reply.

Rows: `OMP_WAIT_POLICY` ACTIVE (llama.cpp's threads spin; what the proxy ran before) and
PASSIVE (the proxy's default now), and PASSIVE without the hang-up patch
(`stop_on_disconnect=False`, the server as llama-cpp-python ships it). Medians and ranges in
seconds; the load average is printed because the machine's other work moves every number.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import statistics
import sys
import time
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from proxy.embedded import EmbeddedModel  # noqa: E402
from tests.embedded_watch import ENDLESS, cpu_seconds, generating  # noqa: E402

SHORT = {"model": "gemma", "prompt": "The sky is", "max_tokens": 8, "temperature": 0}


async def short(client: httpx.AsyncClient, api_base: str) -> None:
    r = await client.post(f"{api_base}/completions", json=SHORT)
    r.raise_for_status()


async def measure(policy: str, stop_on_disconnect: bool, repeats: int, abandoned: bool) -> list[float]:
    os.environ["OMP_WAIT_POLICY"] = policy  # the child inherits it; the proxy only sets a default
    model = EmbeddedModel(logits_all=False, stop_on_disconnect=stop_on_disconnect)
    await model.start()
    times = []
    try:
        async with httpx.AsyncClient(timeout=900) as client:
            await short(client, model.api_base)  # warm-up
            for _ in range(repeats):
                if abandoned:
                    assert model.pid is not None
                    since = cpu_seconds(model.pid)
                    long = asyncio.ensure_future(
                        client.post(f"{model.api_base}/completions", json={"model": "gemma", **ENDLESS, "max_tokens": 300})
                    )
                    await generating(model.pid, since)
                    long.cancel()
                    with contextlib.suppress(asyncio.CancelledError):
                        await long
                start = time.monotonic()
                await short(client, model.api_base)
                times.append(time.monotonic() - start)
    finally:
        await model.stop()
    return times


def row(name: str, times: list[float]) -> str:
    return f"| {name} | {len(times)} | {statistics.median(times):.1f} | {min(times):.1f}–{max(times):.1f} |"


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    rows = [
        ("short, OMP_WAIT_POLICY=ACTIVE", "ACTIVE", True, False),
        ("short, PASSIVE", "PASSIVE", True, False),
        ("after abandoned, PASSIVE, stop on hang-up", "PASSIVE", True, True),
        ("after abandoned, PASSIVE, no stop (as shipped)", "PASSIVE", False, True),
    ]
    print(f"load average before: {os.getloadavg()[0]:.1f}; cores usable: {len(os.sched_getaffinity(0))}")
    print("| case | n | median s | range s |\n|---|---:|---:|---|")
    for name, policy, stop, abandoned in rows:
        print(row(name, await measure(policy, stop, args.repeats, abandoned)), flush=True)
    print(f"load average after: {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    asyncio.run(main())
