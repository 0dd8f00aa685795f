"""Latency the proxy adds on a passthrough route, against the LiteLLM proxy, on one loopback upstream.

Starts a fast loopback upstream (bench/fast_upstream.py, its own process), rvr-proxy
(`python -m proxy.cli serve`) with one passthrough route to it, and, where `litellm[proxy]` is
installed, the LiteLLM proxy with one `model_list` entry for the same upstream. Then, for each
round, it drives the same non-streaming chat requests at each concurrency level against each
target in turn, interleaved: direct, rvr-proxy, litellm-proxy, direct, ...

Added latency = a proxy's median (or p99) per-request latency minus the direct median (or p99) of
the same round and concurrency; the table shows the median over rounds. Everything (load
generator, upstream, proxies) shares this machine's cores, so absolute numbers are pessimistic and
proxies that burn more CPU also slow the load generator and upstream they share cores with.

    python bench/overhead.py                       # 3 rounds, c=1 x 300 and c=64 x 2000
    python bench/overhead.py --rounds 5 --workers 2
    python bench/overhead.py --litellm-proxy-bin .bench-venv/bin/litellm

The LiteLLM proxy needs `litellm[proxy]`, whose dependencies clash with ours; keep it in its own
venv: `python3 -m venv .bench-venv && .bench-venv/bin/pip install 'litellm[proxy]==1.106.2'`.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import httpx
import yaml
from processes import ROOT, Child, free_port, install_uvloop, start_proxy

MODEL = "bench"
BODY = {"model": MODEL, "messages": [{"role": "user", "content": "Say hello."}], "max_tokens": 16}
REQUEST_TIMEOUT_S = 30.0
# Both proxies check a bearer key (the LiteLLM proxy refuses to start without a strong master key).
API_KEY = "sk-bench-" + os.urandom(24).hex()


# ---- processes ------------------------------------------------------------------------------


class Service(Child):
    """A benchmarked process, whose CPU time (its workers' included) the report charges per request."""

    def cpu_seconds(self) -> float:
        """User+system CPU of the process and all its descendants (uvicorn workers) still alive."""
        return sum(_proc_cpu(pid) for pid in _descendants(self.process.pid))


def _proc_cpu(pid: int) -> float:
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")  # utime + stime


def _descendants(root: int) -> list[int]:
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            children.setdefault(ppid, []).append(int(entry.name))
    out, stack = [], [root]
    while stack:
        pid = stack.pop()
        out.append(pid)
        stack.extend(children.get(pid, []))
    return out


def start_upstream(workdir: Path) -> tuple[Service, str]:
    port = free_port()
    service = Service("upstream", [sys.executable, str(ROOT / "bench" / "fast_upstream.py"), "--port", str(port)],
                      workdir)
    base = f"http://127.0.0.1:{port}"
    service.wait_ready(f"{base}/v1/models", 30)
    return service, f"{base}/v1"


def start_rvr_proxy(api_base: str, workers: int, workdir: Path) -> tuple[Service, str]:
    config = {
        "upstreams": [{"name": "fast", "litellm_params": {"model": "openai/fast", "api_base": api_base, "api_key": "none"}}],
        "routes": [{"model": MODEL, "upstream": "fast", "strategy": {"name": "passthrough"}}],
        "server": {"api_keys": [API_KEY]},
    }
    service, base = start_proxy(workdir, config, workers=workers, log_level="info", child_type=Service)
    return service, f"{base}/v1"


def start_litellm_proxy(binary: str, api_base: str, workers: int, workdir: Path) -> tuple[Service, str]:
    config = {
        "model_list": [{"model_name": MODEL, "litellm_params": {"model": "openai/fast", "api_base": api_base,
                                                                "api_key": "none", "max_retries": 0}}],
        "litellm_settings": {"telemetry": False, "set_verbose": False, "json_logs": False, "drop_params": True},
        "general_settings": {"master_key": API_KEY, "disable_spend_logs": True, "disable_error_logs": True, "disable_reset_budget": True,
                             "disable_prisma_schema_update": True, "allow_requests_on_db_unavailable": True},
    }
    path = workdir / "litellm-config.yaml"
    path.write_text(yaml.safe_dump(config))
    port = free_port()
    env = {"LITELLM_LOCAL_MODEL_COST_MAP": "True", "PYTHONUNBUFFERED": "1", "LITELLM_LOG": "ERROR",
           "LITELLM_TELEMETRY": "False", "DISABLE_ADMIN_UI": "True"}
    # Run from the work dir, so the LiteLLM proxy never picks up files from our checkout.
    service = Service("litellm-proxy", [binary, "--config", str(path), "--host", "127.0.0.1", "--port", str(port),
                                        "--num_workers", str(workers)], workdir, env=env, cwd=workdir,
                      drop=("DATABASE_URL", "LITELLM_MASTER_KEY", "REDIS_HOST", "REDIS_URL"))
    base = f"http://127.0.0.1:{port}"
    service.wait_ready(f"{base}/health/liveliness", 180)
    return service, f"{base}/v1"


def find_litellm_proxy(explicit: str | None) -> str | None:
    """The given binary, else `.bench-venv/bin/litellm`, else `litellm` on PATH if it can run the proxy."""
    candidates = [explicit] if explicit else [str(ROOT / ".bench-venv" / "bin" / "litellm"), shutil.which("litellm")]
    for binary in candidates:
        if not binary or not Path(binary).exists():
            continue
        python = Path(binary).resolve().parent / "python"
        if not python.exists():  # a pyenv shim or similar: trust the explicit choice only
            return binary if explicit else None
        check = subprocess.run([str(python), "-c", "import litellm.proxy.proxy_server"], capture_output=True,
                               env={**os.environ, "LITELLM_LOCAL_MODEL_COST_MAP": "True"}, timeout=120)
        if check.returncode == 0:
            return binary
        if explicit:
            raise SystemExit(f"{binary}: cannot import litellm.proxy.proxy_server (is litellm[proxy] installed there?)\n"
                             + check.stderr.decode(errors="replace")[-800:])
    return None


# ---- load -----------------------------------------------------------------------------------


@dataclass
class LevelResult:
    target: str
    concurrency: int
    round: int
    sent: int
    ok: int
    errors: int
    unsent: int
    wall_s: float
    median_ms: float
    p99_ms: float
    rps: float
    cpu_ms_per_req: float | None
    error_samples: list[str] = field(default_factory=list)


def percentile(values: list[float], q: float) -> float:
    """Nearest-rank percentile."""
    if not values:
        return float("nan")
    ordered = sorted(values)
    rank = max(1, min(len(ordered), int(-(-q * len(ordered) // 100))))
    return ordered[rank - 1]


class LoadClient:
    """One shared HTTP client for every request of the run: aiohttp (default) or httpx.

    httpx's AsyncClient is the natural choice but cannot drive 64 concurrent requests here: against
    the bare upstream it falls from ~1200 req/s at c=1 to ~250 req/s at c=64 (~110 ms median, pool
    contention in httpcore), so the load generator, not the proxy, would set the c=64 numbers.
    aiohttp does ~4000+ req/s at c=64 on the same upstream."""

    def __init__(self, kind: str, connections: int) -> None:
        self.kind = kind
        self.connections = connections
        self._session: Any = None

    async def __aenter__(self) -> LoadClient:
        headers = {"authorization": f"Bearer {API_KEY}"}
        if self.kind == "httpx":
            limits = httpx.Limits(max_connections=self.connections, max_keepalive_connections=self.connections)
            self._session = httpx.AsyncClient(limits=limits, timeout=REQUEST_TIMEOUT_S, headers=headers)
        else:
            import aiohttp

            self._session = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(limit=self.connections, limit_per_host=0, force_close=False),
                timeout=aiohttp.ClientTimeout(total=REQUEST_TIMEOUT_S), headers=headers)
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self.kind == "httpx":
            await self._session.aclose()
        else:
            await self._session.close()

    async def post(self, url: str, body: dict[str, Any]) -> tuple[int, bytes]:
        if self.kind == "httpx":
            response = await self._session.post(url, json=body)
            return response.status_code, response.content
        async with self._session.post(url, json=body) as response:
            return response.status, await response.read()


async def drive(client: LoadClient, url: str, concurrency: int, total: int, deadline_s: float
                ) -> tuple[list[float], list[str], int, float]:
    """`total` requests, `concurrency` at a time; stops issuing new ones after `deadline_s`."""
    latencies: list[float] = []
    errors: list[str] = []
    issued = 0
    started = time.perf_counter()
    stop_at = started + deadline_s

    async def worker() -> None:
        nonlocal issued
        while issued < total and time.perf_counter() < stop_at:
            issued += 1
            t0 = time.perf_counter()
            try:
                status, content = await client.post(url, BODY)
                elapsed = time.perf_counter() - t0
                if status != 200:
                    errors.append(f"HTTP {status}: {content[:200]!r}")
                elif not json.loads(content).get("choices"):
                    errors.append(f"no choices: {content[:200]!r}")
                else:
                    latencies.append(elapsed)
            except Exception as exc:  # noqa: BLE001 - every failure is a counted error
                errors.append(f"{type(exc).__name__}: {str(exc)[:200]}")

    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return latencies, errors, total - issued, time.perf_counter() - started


async def measure(client: LoadClient, target: str, base: str, service: Service | None, concurrency: int,
                  total: int, warmup: int, round_no: int, deadline_s: float) -> LevelResult:
    url = f"{base}/chat/completions"
    await drive(client, url, concurrency, warmup, deadline_s)
    cpu0 = service.cpu_seconds() if service else None
    latencies, errors, unsent, wall = await drive(client, url, concurrency, total, deadline_s)
    cpu = (service.cpu_seconds() - cpu0) if service and cpu0 is not None else None
    sent = total - unsent
    ms = [x * 1000 for x in latencies]
    return LevelResult(
        target, concurrency, round_no, sent, len(latencies), len(errors), unsent, wall,
        statistics.median(ms) if ms else float("nan"), percentile(ms, 99), len(latencies) / wall if wall else 0.0,
        (cpu * 1000 / sent) if cpu is not None and sent else None, errors[:3],
    )


# ---- report ---------------------------------------------------------------------------------


def summarize(results: list[LevelResult], targets: list[str], levels: list[int]) -> tuple[str, dict[str, Any]]:
    rows = ["| target | conc. | median ms | p99 ms | added median ms | added p99 ms | added median, per round | req/s | errors | proxy CPU ms/req |",
            "|---|---:|---:|---:|---:|---:|---|---:|---:|---:|"]
    summary: dict[str, Any] = {}
    by = {(r.target, r.concurrency, r.round): r for r in results}
    rounds = sorted({r.round for r in results})
    for c in levels:
        for target in targets:
            mine = [by[(target, c, n)] for n in rounds if (target, c, n) in by]
            if not mine:
                continue
            added_med = [r.median_ms - by[("direct", c, r.round)].median_ms for r in mine]
            added_p99 = [r.p99_ms - by[("direct", c, r.round)].p99_ms for r in mine]
            errors = sum(r.errors + r.unsent for r in mine)
            cpu = [r.cpu_ms_per_req for r in mine if r.cpu_ms_per_req is not None]
            entry = {
                "median_ms": statistics.median(r.median_ms for r in mine),
                "p99_ms": statistics.median(r.p99_ms for r in mine),
                "added_median_ms": statistics.median(added_med),
                "added_p99_ms": statistics.median(added_p99),
                "added_median_per_round": added_med,
                "rps": statistics.median(r.rps for r in mine),
                "errors": errors,
                "requests": sum(r.sent for r in mine),
                "cpu_ms_per_req": statistics.median(cpu) if cpu else None,
            }
            summary[f"{target}@{c}"] = entry
            direct = target == "direct"
            rows.append("| {} | {} | {:.2f} | {:.2f} | {} | {} | {} | {:.0f} | {}/{} | {} |".format(
                target, c, entry["median_ms"], entry["p99_ms"],
                "—" if direct else f"{entry['added_median_ms']:+.2f}",
                "—" if direct else f"{entry['added_p99_ms']:+.2f}",
                "—" if direct else ", ".join(f"{x:+.2f}" for x in added_med),
                entry["rps"], errors, entry["requests"],
                "—" if entry["cpu_ms_per_req"] is None else f"{entry['cpu_ms_per_req']:.2f}",
            ))
    return "\n".join(rows), summary


def verdict(summary: dict[str, Any], levels: list[int], top: int) -> list[str]:
    lines = []
    for c in levels:
        rvr, lite = summary.get(f"rvr-proxy@{c}"), summary.get(f"litellm-proxy@{c}")
        if rvr and lite:
            ok = rvr["added_median_ms"] <= lite["added_median_ms"]
            lines.append(f"- c={c}: rvr-proxy added median {rvr['added_median_ms']:+.2f} ms vs LiteLLM proxy "
                         f"{lite['added_median_ms']:+.2f} ms -> {'MET' if ok else 'MISSED'} (no worse than LiteLLM)")
        elif rvr:
            lines.append(f"- c={c}: rvr-proxy added median {rvr['added_median_ms']:+.2f} ms (no LiteLLM proxy to compare)")
    rvr_top = summary.get(f"rvr-proxy@{top}")
    if rvr_top:
        lines.append(f"- c={top}: rvr-proxy errors {rvr_top['errors']}/{rvr_top['requests']} -> "
                     f"{'MET' if rvr_top['errors'] == 0 else 'MISSED'} (zero errors)")
    return lines


# ---- main -----------------------------------------------------------------------------------


async def run_rounds(args: argparse.Namespace, targets: dict[str, tuple[str, Service | None]], levels: list[int]
                     ) -> list[LevelResult]:
    counts = {1: args.requests_c1}
    results: list[LevelResult] = []
    async with LoadClient(args.client, max(levels) * 2 + 16) as client:
        for round_no in range(1, args.rounds + 1):
            for c in levels:
                total = counts.get(c, args.requests_high)
                for name, (base, service) in targets.items():
                    r = await measure(client, name, base, service, c, total, min(args.warmup, total), round_no,
                                      args.level_timeout)
                    results.append(r)
                    cpu = "" if r.cpu_ms_per_req is None else f" cpu {r.cpu_ms_per_req:.2f} ms/req"
                    print(f"  round {round_no} c={c:<3} {name:<14} median {r.median_ms:7.2f} ms  p99 {r.p99_ms:7.2f} ms"
                          f"  {r.rps:7.0f} req/s  errors {r.errors}{f' unsent {r.unsent}' if r.unsent else ''}{cpu}",
                          flush=True)
                    for sample in r.error_samples:
                        print(f"      error: {sample}", flush=True)
    return results


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--concurrency", default="1,64", help="comma-separated levels (default 1,64)")
    parser.add_argument("--requests-c1", type=int, default=300, help="measured requests at concurrency 1")
    parser.add_argument("--requests-high", type=int, default=2000, help="measured requests at every other level")
    parser.add_argument("--warmup", type=int, default=50, help="unmeasured requests before each measurement")
    parser.add_argument("--level-timeout", type=float, default=120.0, help="seconds per measurement before it stops issuing")
    parser.add_argument("--workers", type=int, default=1, help="worker processes for both proxies")
    parser.add_argument("--litellm-proxy-bin", help="the `litellm` CLI of a litellm[proxy] install "
                        "(default: .bench-venv/bin/litellm, else `litellm` on PATH)")
    parser.add_argument("--no-litellm", action="store_true", help="skip the LiteLLM proxy")
    parser.add_argument("--client", choices=["aiohttp", "httpx"], default="aiohttp",
                        help="load generator's HTTP client (httpx saturates near 250 req/s at c=64 here)")
    parser.add_argument("--json", help="write the raw results here (default bench/results/overhead-<time>.json)")
    args = parser.parse_args()
    levels = [int(x) for x in args.concurrency.split(",")]

    install_uvloop()

    litellm_bin = None if args.no_litellm else find_litellm_proxy(args.litellm_proxy_bin)
    workdir = Path(tempfile.mkdtemp(prefix="rvr-overhead-"))
    services: list[Service] = []
    try:
        upstream, api_base = start_upstream(workdir)
        services.append(upstream)
        rvr, rvr_base = start_rvr_proxy(api_base, args.workers, workdir)
        services.append(rvr)
        targets: dict[str, tuple[str, Service | None]] = {"direct": (api_base, None), "rvr-proxy": (rvr_base, rvr)}
        if litellm_bin:
            lite, lite_base = start_litellm_proxy(litellm_bin, api_base, args.workers, workdir)
            services.append(lite)
            targets["litellm-proxy"] = (lite_base, lite)
        print(f"# Proxy overhead, passthrough route, non-streaming chat ({os.cpu_count()} cores)\n")
        print(f"upstream {api_base} | load generator: {args.client} | workers per proxy: {args.workers} | rounds: {args.rounds} | "
              f"requests: c=1 x {args.requests_c1}, others x {args.requests_high} (+{args.warmup} warm-up each)")
        print(f"LiteLLM proxy: {litellm_bin or 'not found (install litellm[proxy] into .bench-venv)'}\n", flush=True)
        results = asyncio.run(run_rounds(args, targets, levels))
        table, summary = summarize(results, list(targets), levels)
        print("\n" + table + "\n")
        print("Added = proxy minus direct, per round and concurrency; columns are medians over rounds; errors summed "
              "(incl. requests not sent before the time limit). Proxy CPU = CPU seconds of the proxy's processes "
              "during the measurement / requests.")
        print(f"NOTE: all on one {os.cpu_count()}-core machine: load generator ({args.client}, one process), upstream (one "
              "process) and the proxy share the cores, so a proxy's CPU cost also slows the other two.\n")
        print("Targets:")
        print("\n".join(verdict(summary, levels, max(levels))))
        out = Path(args.json) if args.json else ROOT / "bench" / "results" / f"overhead-{time.strftime('%Y%m%d-%H%M%S')}.json"
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps({"args": vars(args), "litellm_proxy_bin": litellm_bin, "summary": summary,
                                   "results": [asdict(r) for r in results]}, indent=2))
        print(f"\nraw results: {out}")
        return 0
    except RuntimeError as exc:
        print(f"overhead: {exc}", file=sys.stderr)
        return 1
    finally:
        for service in reversed(services):
            service.stop()
        shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
