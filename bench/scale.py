"""Scale out: passthrough throughput for 1, 2 and 4 workers and for 2 instances behind HAProxy,
each with the shared state in Redis and in memory.

    python bench/scale.py                          # 5 rounds, c=64, 2000 requests per measurement
    python bench/scale.py --rounds 3 --requests 1000 --workers 1,2 --lb-instances 0
    python bench/scale.py --no-limits              # a plain key: passthrough then touches Redis ~never
    python bench/scale.py --smoke                  # a quick check of the whole path (numbers mean nothing)

Starts, once, and keeps running for the whole run:

- the fast loopback upstream (bench/fast_upstream.py, its own process);
- one `redis-server` (Debian's, the one tests/system/test_scale_out.py uses) on a free loopback port,
  no persistence;
- for each backend (`memory`, `redis`): one rvr-proxy instance per `--workers` count, and
  `--lb-instances` instances with `--lb-workers` workers each behind one HAProxy, configured as in
  tests/system/test_scale_out.py (round robin, health checks on `/readyz`, retry on connection failure).

Every proxy has one passthrough route and one client key with `rpm` and `tpm` limits far above
what the run can reach, so each request does what a limited key costs: an atomic check-and-count
on arrival and a token charge when done. With `backend: redis` that is two Redis round trips per
request (an EVALSHA of the admit script, then a MULTI/INCRBY/EXPIRE/EXEC transaction; Redis counts
the commands inside both, about 9 per request); with `backend: memory` the counters live in the
worker, or, with several workers, in the SQLite file the instance's workers share
(proxy/state/local.py: one transaction each). A passthrough route has no running estimates to share, so a key without limits
(`--no-limits`) touches Redis only for the once-a-second liveness check. The setups do not share
Redis keys (each has its own prefix); the instances behind one HAProxy do, as replicas would.
Each round also measures the upstream alone (no proxy), the ceiling of load generator + upstream.

Each round measures every target once at the same concurrency, in an order that reverses every
round (memory and redis of a setup always next to each other), so slow drift of the shared machine
hits all targets alike. Per round and setup the script computes req/s, the Redis cost per request
(1000/req/s with redis minus the same with memory: the extra capacity each request takes, in ms),
and each setup's req/s over the 1-worker setup's with the same backend. The tables show medians
over rounds. CPU columns are CPU seconds during the measurement divided by requests, read from
/proc: the proxies' processes, redis-server, HAProxy. `Redis cmds/req` is redis-server's
`total_commands_processed` over the measurement divided by requests: it shows the redis targets
really used Redis.

Then, once the rounds are done, what one call to the shared state costs in this process, with no
load: `MemoryState` vs `RedisState` on the same redis-server, ms per call (median over
`--state-repeats` of the mean over `--state-calls` calls) of the calls a request makes: `admit`
(a key with limits, on arrival), `add_totals` (a best-of-N route's estimate sync) and `get_json`
(an upstream whose `n` support is unknown).

Everything shares this machine's cores (load generator, upstream, proxies, Redis, HAProxy): with
2 cores, more than 2 busy processes cannot add throughput, they only share the same 2 cores.
Exits 1 if any request failed.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the checkout: bench.*, proxy, strategies

from bench.common import (
    API_KEY_REF,
    Child,
    HelpFormatter,
    LoadClient,
    add_smoke,
    apply_smoke,
    drive,
    free_port,
    install_uvloop,
    key_env,
    load_average,
    markdown_table,
    median,
    per_round,
    percentile,
    stamped,
    start_fast_upstream,
    start_proxy,
    write_json,
)

MODEL = "bench"
BODY = {"model": MODEL, "messages": [{"role": "user", "content": "Say hello."}], "max_tokens": 16}
BACKENDS = ("memory", "redis")
DIRECT = "upstream alone"  # the ceiling: load generator and upstream with no proxy between them
# Far above anything a run reaches: the limits are counted on every request, never hit.
HUGE_LIMITS = {"rpm": 10**9, "tpm": 10**12}
SMOKE = {"rounds": 1, "requests": 100, "warmup": 10, "level_timeout": 30.0, "workers": "1", "lb_instances": 2,
         "lb_workers": 1, "state_calls": 50, "state_repeats": 2}


# ---- processes ------------------------------------------------------------------------------


class RedisServer(Child):
    def __init__(self, workdir: Path) -> None:
        binary = shutil.which("redis-server")
        if binary is None:
            raise RuntimeError("redis-server is not on PATH: `apt-get install -y --no-install-recommends redis-server`")
        self.port = free_port()
        super().__init__("redis", [binary, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
                                   "--appendonly", "no", "--daemonize", "no"], workdir)
        deadline = time.monotonic() + 30
        while self.commands_processed() is None:
            if self.process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"redis-server did not start:\n{self.log_tail()}")
            time.sleep(0.1)

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def commands_processed(self) -> int | None:
        import redis

        try:
            with redis.Redis(host="127.0.0.1", port=self.port, socket_timeout=2) as client:
                return int(client.info("stats")["total_commands_processed"])
        except redis.RedisError:
            return None


class HAProxy(Child):
    """HAProxy as tests/system/test_scale_out.py configures it, but health checks every second rather than
    every 300 ms: in a benchmark they are load on the shared cores, and nothing here fails over."""

    def __init__(self, workdir: Path, backends: list[int]) -> None:
        binary = shutil.which("haproxy")
        if binary is None:
            raise RuntimeError("haproxy is not on PATH: `apt-get install -y --no-install-recommends haproxy`")
        self.port = free_port()
        servers = "\n".join(f"  server p{i} 127.0.0.1:{port} check" for i, port in enumerate(backends))
        config = workdir / "haproxy.cfg"
        config.write_text(f"""
global
  maxconn 1024
defaults
  mode http
  timeout connect 2s
  timeout client 60s
  timeout server 60s
  timeout check 2s
  retries 3
  option redispatch 1
  retry-on conn-failure empty-response response-timeout
frontend front
  bind 127.0.0.1:{self.port}
  default_backend proxies
backend proxies
  balance roundrobin
  option httpchk GET /readyz
  http-check expect status 200
  default-server inter 1s fall 1 rise 1
{servers}
""")
        super().__init__("haproxy", [binary, "-f", str(config), "-db"], workdir)
        self.wait_ready(f"http://127.0.0.1:{self.port}/healthz", 30)


def proxy_config(api_base: str, backend: str, prefix: str, redis_url: str, limits: bool) -> dict[str, Any]:
    key: dict[str, Any] = {"key": API_KEY_REF, "name": "bench", **(HUGE_LIMITS if limits else {})}
    server: dict[str, Any] = {"keys": [key]}
    if backend == "redis":
        server["state"] = {"backend": "redis", "url": redis_url, "prefix": prefix}
    return {
        "upstreams": [{"name": "fast", "litellm_params": {"model": "openai/fast", "api_base": api_base, "api_key": "none"}}],
        "routes": [{"model": MODEL, "upstream": "fast", "strategy": {"name": "passthrough"}}],
        "server": server,
    }


@dataclass
class Target:
    """One setup with one backend: the URL the load goes to and the processes it charges CPU to."""

    setup: str
    backend: str
    workers_total: int
    base: str = ""
    proxies: list[Child] = field(default_factory=list)
    balancer: HAProxy | None = None

    @property
    def name(self) -> str:
        return f"{self.setup}/{self.backend}"


def start_targets(args: argparse.Namespace, api_base: str, redis: RedisServer, workdir: Path,
                  services: list[Child]) -> list[Target]:
    """Instances start two at a time: each worker imports litellm, seconds of CPU, and a dozen
    instances started at once on 2 busy cores miss any sensible ready timeout. Each process started
    is added to `services` at once, so the caller stops it whatever fails."""
    plan: list[tuple[Target, list[int]]] = []  # each target and its instances' worker counts
    for workers in args.workers:
        plan += [(Target(f"1 instance x {workers}w", b, workers), [workers]) for b in args.backends]
    if args.lb_instances:
        setup = f"{args.lb_instances} instances x {args.lb_workers}w + HAProxy"
        plan += [(Target(setup, b, args.lb_instances * args.lb_workers), [args.lb_workers] * args.lb_instances)
                 for b in args.backends]
    jobs = []
    for t_index, (target, instances) in enumerate(plan):
        for i_index, workers in enumerate(instances):
            directory = workdir / f"t{t_index}-i{i_index}"
            directory.mkdir()
            # Instances of one setup share counters and learning, as replicas do; setups do not.
            config = proxy_config(api_base, target.backend, f"bench{t_index}", redis.url, args.limits)
            jobs.append((target, directory, config, workers))
    bases: dict[int, list[str]] = {id(target): [] for target, _ in plan}

    def start(job: tuple[Target, Path, dict[str, Any], int]) -> None:
        target, directory, config, workers = job
        service, base = start_proxy(directory, config, env=key_env(), workers=workers, log_level="warning",
                                    ready_timeout=300)
        services.append(service)
        target.proxies.append(service)
        bases[id(target)].append(base)

    with ThreadPoolExecutor(2) as pool:
        outcomes = [pool.submit(start, job) for job in jobs]
    errors = [str(o.exception()) for o in outcomes if o.exception() is not None]
    if errors:
        raise RuntimeError("\n".join(errors))
    for t_index, (target, _) in enumerate(plan):
        mine = bases[id(target)]
        if len(mine) == 1:
            target.base = mine[0]
            continue
        directory = workdir / f"t{t_index}-haproxy"
        directory.mkdir()
        target.balancer = HAProxy(directory, [int(base.rsplit(":", 1)[1]) for base in mine])
        services.append(target.balancer)
        target.base = f"http://127.0.0.1:{target.balancer.port}"
    return [target for target, _ in plan]


# ---- load -----------------------------------------------------------------------------------


@dataclass
class Measurement:
    target: str
    setup: str
    backend: str
    round: int
    sent: int
    ok: int
    errors: int
    unsent: int
    wall_s: float
    rps: float
    median_ms: float
    p99_ms: float
    proxy_cpu_ms: float
    redis_cpu_ms: float
    haproxy_cpu_ms: float | None
    redis_cmds_per_req: float
    error_samples: list[str] = field(default_factory=list)


def cpu(services: Sequence[Child]) -> float:
    return sum(s.cpu_seconds() for s in services)


async def measure(args: argparse.Namespace, target: Target, redis: RedisServer, round_no: int) -> Measurement:
    url = f"{target.base}/v1/chat/completions"
    # A fresh client per measurement: no idle connections from one target linger into the next.
    async with LoadClient(args.client, args.concurrency * 2) as client:
        await drive(client, url, BODY, args.concurrency, args.warmup, args.level_timeout)
        balancer = [target.balancer] if target.balancer else []
        cpu0 = (cpu(target.proxies), cpu([redis]), cpu(balancer))
        commands0 = redis.commands_processed() or 0
        latencies, errors, unsent, wall = await drive(client, url, BODY, args.concurrency, args.requests,
                                                      args.level_timeout)
        commands = (redis.commands_processed() or 0) - commands0 - 1  # less the INFO call itself
        cpu1 = (cpu(target.proxies), cpu([redis]), cpu(balancer))
    sent = args.requests - unsent
    per_req = [(after - before) * 1000 / max(sent, 1) for before, after in zip(cpu0, cpu1, strict=True)]
    ms = [x * 1000 for x in latencies]
    return Measurement(
        target.name, target.setup, target.backend, round_no, sent, len(latencies), len(errors), unsent, wall,
        len(latencies) / wall if wall else 0.0, median(ms), percentile(ms, 99),
        per_req[0], per_req[1], per_req[2] if balancer else None, max(commands, 0) / max(sent, 1), errors[:3],
    )


def round_order(targets: list[Target], round_no: int) -> list[Target]:
    """Forward on odd rounds, backward on even ones; a setup's backends stay side by side."""
    return targets if round_no % 2 else list(reversed(targets))


async def run_rounds(args: argparse.Namespace, targets: list[Target], redis: RedisServer) -> list[Measurement]:
    results = []
    for round_no in range(1, args.rounds + 1):
        for target in round_order(targets, round_no):
            m = await measure(args, target, redis, round_no)
            results.append(m)
            haproxy = "" if m.haproxy_cpu_ms is None else f" haproxy {m.haproxy_cpu_ms:.2f}"
            print(f"  round {round_no} {m.target:<34} {m.rps:7.0f} req/s  median {m.median_ms:7.1f} ms"
                  f"  p99 {m.p99_ms:7.1f} ms  errors {m.errors}{f' unsent {m.unsent}' if m.unsent else ''}"
                  f"  cpu ms/req: proxy {m.proxy_cpu_ms:.2f} redis {m.redis_cpu_ms:.2f}{haproxy}"
                  f"  redis cmds/req {m.redis_cmds_per_req:.2f}", flush=True)
            for sample in m.error_samples:
                print(f"      error: {sample}", flush=True)
    return results


# ---- report ---------------------------------------------------------------------------------


def summarize(results: list[Measurement], targets: list[Target], baseline_setup: str | None) -> tuple[str, dict[str, Any]]:
    by = {(m.setup, m.backend, m.round): m for m in results}
    rounds = sorted({m.round for m in results})
    setups = list(dict.fromkeys(t.setup for t in targets if t.setup != DIRECT))
    backends = list(dict.fromkeys(t.backend for t in targets if t.setup != DIRECT))
    workers = {t.setup: t.workers_total for t in targets}
    summary: dict[str, Any] = {}
    both = len(backends) == 2

    header = ["setup", "workers", *(f"{b} req/s" for b in backends)]
    align = "lr" + "r" * len(backends)
    if both:
        header += ["redis / memory", "Redis cost ms/req (per round)",
                   "redis CPU ms/req (proxies + redis-server − memory)"]
        align += "rlr"
    header += [f"{b} vs 1 worker" for b in backends]
    align += "r" * len(backends)
    main = []
    for setup in setups:
        entry: dict[str, Any] = {"workers": workers[setup]}
        cells = [setup, str(workers[setup])]
        for backend in backends:
            rps = [by[(setup, backend, n)].rps for n in rounds]
            entry[f"{backend}_rps"] = median(rps)
            entry[f"{backend}_rps_per_round"] = rps
            cells.append(f"{median(rps):.0f}")
        if both:
            ratio = [by[(setup, "redis", n)].rps / by[(setup, "memory", n)].rps for n in rounds]
            cost = [1000 / by[(setup, "redis", n)].rps - 1000 / by[(setup, "memory", n)].rps for n in rounds]
            cpu_cost = [by[(setup, "redis", n)].proxy_cpu_ms + by[(setup, "redis", n)].redis_cpu_ms
                        - by[(setup, "memory", n)].proxy_cpu_ms for n in rounds]
            entry.update(redis_over_memory=median(ratio), redis_cost_ms=median(cost), redis_cost_ms_per_round=cost,
                         redis_cpu_cost_ms=median(cpu_cost))
            cells += [f"{median(ratio):.2f}", f"{median(cost):+.2f} ({per_round(cost, '+.2f')})",
                      f"{median(cpu_cost):+.2f}"]
        for backend in backends:
            if baseline_setup is None:
                cells.append("—")
                continue
            scale = [by[(setup, backend, n)].rps / by[(baseline_setup, backend, n)].rps for n in rounds]
            entry[f"{backend}_vs_1_worker"] = median(scale)
            cells.append(f"{median(scale):.2f}x")
        summary[setup] = entry
        main.append(cells)

    detail = []
    pairs = [(setup, backend) for setup in setups for backend in backends]
    if any(m.setup == DIRECT for m in results):
        pairs.insert(0, (DIRECT, "none"))
        summary[DIRECT] = {}
    for setup, backend in pairs:
        mine = [by[(setup, backend, n)] for n in rounds]
        haproxy = [m.haproxy_cpu_ms for m in mine if m.haproxy_cpu_ms is not None]
        errors = sum(m.errors + m.unsent for m in mine)
        entry = summary[setup]
        entry[f"{backend}_errors"] = errors
        entry[f"{backend}_redis_cmds_per_req"] = median(m.redis_cmds_per_req for m in mine)
        if setup == DIRECT:
            entry["rps"] = median(m.rps for m in mine)
        rps = [m.rps for m in mine]
        detail.append([
            setup, backend, f"{median(rps):.0f} ({per_round(rps, '.0f')})",
            f"{median(m.median_ms for m in mine):.1f}", f"{median(m.p99_ms for m in mine):.1f}",
            f"{errors}/{sum(m.sent for m in mine)}",
            "—" if setup == DIRECT else f"{median(m.proxy_cpu_ms for m in mine):.2f}",
            f"{median(m.redis_cpu_ms for m in mine):.2f}", f"{median(haproxy):.2f}" if haproxy else "—",
            f"{median(m.redis_cmds_per_req for m in mine):.2f}",
        ])
    detail_header = ["setup", "backend", "req/s (per round)", "median ms", "p99 ms", "errors", "proxy CPU ms/req",
                     "redis-server CPU ms/req", "HAProxy CPU ms/req", "Redis cmds/req"]
    return (markdown_table(header, main, align) + "\n\n" + markdown_table(detail_header, detail, "lllrrrrrrr"),
            summary)


# ---- what one call to the shared state costs ----------------------------------------------------


async def state_costs(redis_url: str, calls: int, repeats: int) -> dict[str, dict[str, float]]:
    """ms per call, median over `repeats` of the mean over `calls` calls, of the state calls a request
    makes, on MemoryState, on LocalState (the file `serve --workers N` gives its workers) and on
    RedisState (this run's redis-server, its own key prefix): `admit`
    (a key with limits, on arrival), `add_totals` (a best-of-N route's estimate sync, before and
    after its run) and `get_json` (an upstream whose `n` support is unknown)."""
    from proxy.config.scale import StateSettings
    from proxy.state.base import Counter, SharedState
    from proxy.state.local import LocalState
    from proxy.state.memory import MemoryState
    from proxy.state.redis import RedisState

    async def measure(state: SharedState) -> dict[str, float]:
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
            result[name] = median(runs)
        return result

    redis = RedisState(StateSettings(backend="redis", url=redis_url, prefix="statecost"))
    await redis.start()
    try:
        if not redis.up:
            raise RuntimeError("the state-cost measurement could not reach redis-server")
        with tempfile.TemporaryDirectory(prefix="rvr-statecost-") as directory:
            local = LocalState(Path(directory) / "state.sqlite3")
            await local.start()
            try:
                workers_file = await measure(local)
            finally:
                await local.close()
        return {"memory (one worker)": await measure(MemoryState()), "memory (workers' file)": workers_file,
                "redis": await measure(redis)}
    finally:
        await redis.close()


def state_cost_table(costs: dict[str, dict[str, float]], calls: int, repeats: int) -> str:
    operations = ["admit", "add_totals", "get_json"]
    rows = [[backend, *(f"{row[op]:.3f}" for op in operations)] for backend, row in costs.items()]
    return (f"State calls, ms per call (median of {repeats} x {calls} calls, one process, no load):\n\n"
            + markdown_table(["backend", *operations], rows, "lrrr"))


# ---- main -----------------------------------------------------------------------------------


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                     formatter_class=HelpFormatter, epilog=__doc__)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--concurrency", type=int, default=64)
    parser.add_argument("--requests", type=int, default=2000, help="measured requests per target and round")
    parser.add_argument("--warmup", type=int, default=200, help="unmeasured requests before each measurement")
    parser.add_argument("--level-timeout", type=float, default=120.0, help="seconds per measurement before it stops issuing")
    parser.add_argument("--workers", default="1,2,4", help="worker counts of the single-instance setups")
    parser.add_argument("--lb-instances", type=int, default=2, help="instances behind HAProxy (0: no such setup)")
    parser.add_argument("--lb-workers", type=int, default=2, help="workers per instance behind HAProxy")
    parser.add_argument("--backends", default="memory,redis", help="state backends to measure")
    parser.add_argument("--no-limits", dest="limits", action="store_false",
                        help="the client key has no limits (passthrough then touches Redis ~never)")
    parser.add_argument("--client", choices=["aiohttp", "httpx"], default="aiohttp", help="load generator's HTTP client")
    parser.add_argument("--state-calls", type=int, default=500,
                        help="calls per repeat of the state-cost measurement (0: skip it)")
    parser.add_argument("--state-repeats", type=int, default=5, help="repeats of the state-cost measurement")
    parser.add_argument("--json", help="write the raw results here (default bench/results/scale-<time>.json; "
                        "--smoke: bench/results/smoke/)")
    add_smoke(parser, "1 round of 100 requests; 1 and 2 instances x 1 worker; 50 state calls x 2")
    args = apply_smoke(parser.parse_args(), SMOKE)
    args.workers = [int(x) for x in args.workers.split(",") if x]
    args.backends = [b for b in args.backends.split(",") if b]
    if unknown := set(args.backends) - set(BACKENDS):
        parser.error(f"--backends: unknown {', '.join(sorted(unknown))} (choose from {', '.join(BACKENDS)})")
    if args.warmup < 1 or args.requests < 1 or args.rounds < 1:
        parser.error("--rounds, --requests and --warmup must be at least 1")
    return args


def main() -> int:
    args = parse_args()
    install_uvloop()
    workdir = Path(tempfile.mkdtemp(prefix="rvr-scale-"))
    services: list[Child] = []
    started = time.time()
    try:
        upstream, api_base = start_fast_upstream(workdir)
        services.append(upstream)
        redis = RedisServer(workdir)
        services.append(redis)
        targets = start_targets(args, api_base, redis, workdir, services)
        targets.insert(0, Target(DIRECT, "none", 0, base=api_base.removesuffix("/v1")))
        baseline = next((t.setup for t in targets if t.setup == "1 instance x 1w"), None)
        print(f"# Scale out: passthrough req/s, c={args.concurrency}, state backend memory vs redis "
              f"({os.cpu_count()} cores)\n")
        print(f"load generator: {args.client}, one process | rounds: {args.rounds} | {args.requests} requests per "
              f"measurement (+{args.warmup} warm-up) | key limits: {'rpm+tpm, never reached' if args.limits else 'none'}"
              f" | load average before: {load_average()}\n", flush=True)
        results = asyncio.run(run_rounds(args, targets, redis))
        table, summary = summarize(results, targets, baseline)
        print("\n" + table + "\n")
        print("req/s: median over rounds. Redis cost = 1000/req/s(redis) − 1000/req/s(memory) in the same round: the "
              "extra capacity each request takes with Redis (median over rounds, each round listed). Redis CPU = "
              "CPU ms/req of the proxies plus redis-server with redis, minus the proxies' with memory. "
              "'vs 1 worker' = req/s over the 1-worker instance's with the same backend, in the same round.")
        print(f"All on one {os.cpu_count()}-core machine: load generator, upstream, proxies, redis-server and HAProxy "
              "share the cores, so past 2 busy processes, more workers share the cores rather than add to them.")
        costs = asyncio.run(state_costs(redis.url, args.state_calls, args.state_repeats)) if args.state_calls else {}
        if costs:
            print("\n" + state_cost_table(costs, args.state_calls, args.state_repeats) + "\n")
        print(f"load average after: {load_average()}; {time.time() - started:.0f} s")
        out = write_json(Path(args.json) if args.json else stamped("scale", args),
                         {"args": vars(args), "summary": summary, "state_cost_ms": costs,
                          "results": [asdict(m) for m in results]})
        print(f"raw results: {out}")
        failed = sum(m.errors + m.unsent for m in results)
        return 1 if failed else 0
    except RuntimeError as exc:
        print(f"scale: {exc}", file=sys.stderr)
        return 1
    finally:
        for service in reversed(services):
            service.stop()
        shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
