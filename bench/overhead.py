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
    python bench/overhead.py --smoke               # a quick check of the whole path (numbers mean nothing)

Exits 1 when a request failed or was not sent in time.

The LiteLLM proxy needs `litellm[proxy]`, whose dependencies clash with ours; keep it in its own
venv: `python3 -m venv .bench-venv && .bench-venv/bin/pip install 'litellm[proxy]==1.106.2'`.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import subprocess
import sys
import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the checkout: bench.*, proxy, strategies

from bench.common import (
    API_KEY,
    API_KEY_REF,
    ROOT,
    Child,
    HelpFormatter,
    LoadClient,
    add_smoke,
    apply_smoke,
    drive,
    free_port,
    install_uvloop,
    key_env,
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
SMOKE = {"rounds": 1, "requests_c1": 20, "requests_high": 100, "warmup": 5, "level_timeout": 30.0}


# ---- processes ------------------------------------------------------------------------------


def start_rvr_proxy(api_base: str, workers: int, workdir: Path) -> tuple[Child, str]:
    # The client key as a reference: the proxy refuses keys written into its config in plain text.
    config = {
        "upstreams": [{"name": "fast", "litellm_params": {"model": "openai/fast", "api_base": api_base, "api_key": "none"}}],
        "routes": [{"model": MODEL, "upstream": "fast", "strategy": {"name": "passthrough"}}],
        "server": {"api_keys": [API_KEY_REF]},
    }
    child, base = start_proxy(workdir, config, env=key_env(), workers=workers, log_level="info")
    return child, f"{base}/v1"


def start_litellm_proxy(binary: str, api_base: str, workers: int, workdir: Path) -> tuple[Child, str]:
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
    service = Child("litellm-proxy", [binary, "--config", str(path), "--host", "127.0.0.1", "--port", str(port),
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


async def measure(client: LoadClient, target: str, base: str, service: Child | None, concurrency: int,
                  total: int, warmup: int, round_no: int, deadline_s: float) -> LevelResult:
    url = f"{base}/chat/completions"
    await drive(client, url, BODY, concurrency, warmup, deadline_s)
    cpu0 = service.cpu_seconds() if service else None
    latencies, errors, unsent, wall = await drive(client, url, BODY, concurrency, total, deadline_s)
    cpu = (service.cpu_seconds() - cpu0) if service and cpu0 is not None else None
    sent = total - unsent
    ms = [x * 1000 for x in latencies]
    return LevelResult(
        target, concurrency, round_no, sent, len(latencies), len(errors), unsent, wall,
        median(ms), percentile(ms, 99), len(latencies) / wall if wall else 0.0,
        (cpu * 1000 / sent) if cpu is not None and sent else None, errors[:3],
    )


# ---- report ---------------------------------------------------------------------------------


def summarize(results: list[LevelResult], targets: list[str], levels: list[int]) -> tuple[str, dict[str, Any]]:
    rows = []
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
                "median_ms": median(r.median_ms for r in mine),
                "p99_ms": median(r.p99_ms for r in mine),
                "added_median_ms": median(added_med),
                "added_p99_ms": median(added_p99),
                "added_median_per_round": added_med,
                "rps": median(r.rps for r in mine),
                "errors": errors,
                "requests": sum(r.sent for r in mine),
                "cpu_ms_per_req": median(cpu) if cpu else None,
            }
            summary[f"{target}@{c}"] = entry
            direct = target == "direct"
            rows.append([
                target, c, f"{entry['median_ms']:.2f}", f"{entry['p99_ms']:.2f}",
                "—" if direct else f"{entry['added_median_ms']:+.2f}",
                "—" if direct else f"{entry['added_p99_ms']:+.2f}",
                "—" if direct else per_round(added_med, "+.2f"),
                f"{entry['rps']:.0f}", f"{errors}/{entry['requests']}",
                "—" if entry["cpu_ms_per_req"] is None else f"{entry['cpu_ms_per_req']:.2f}",
            ])
    header = ["target", "conc.", "median ms", "p99 ms", "added median ms", "added p99 ms", "added median, per round",
              "req/s", "errors", "proxy CPU ms/req"]
    return markdown_table(header, rows, "lrrrrrlrrr"), summary


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


async def run_rounds(args: argparse.Namespace, targets: dict[str, tuple[str, Child | None]], levels: list[int]
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


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                     formatter_class=HelpFormatter, epilog=__doc__)
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
    parser.add_argument("--json", help="write the raw results here (default bench/results/overhead-<time>.json; --smoke: bench/results/smoke/)")
    add_smoke(parser, "1 round, 20 requests at c=1 and 100 at every other level")
    return apply_smoke(parser.parse_args(argv), SMOKE)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    levels = [int(x) for x in args.concurrency.split(",")]

    install_uvloop()

    litellm_bin = None if args.no_litellm else find_litellm_proxy(args.litellm_proxy_bin)
    workdir = Path(tempfile.mkdtemp(prefix="rvr-overhead-"))
    services: list[Child] = []
    try:
        upstream, api_base = start_fast_upstream(workdir)
        services.append(upstream)
        rvr, rvr_base = start_rvr_proxy(api_base, args.workers, workdir)
        services.append(rvr)
        targets: dict[str, tuple[str, Child | None]] = {"direct": (api_base, None), "rvr-proxy": (rvr_base, rvr)}
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
        out = write_json(Path(args.json) if args.json else stamped("overhead", args),
                         {"args": vars(args), "litellm_proxy_bin": litellm_bin, "summary": summary,
                          "results": [asdict(r) for r in results]})
        print(f"\nraw results: {out}")
        failed = sum(r.errors + r.unsent for r in results)
        if failed:
            print(f"overhead: {failed} request(s) failed or were not sent in time", file=sys.stderr)
        return 1 if failed else 0
    except RuntimeError as exc:
        print(f"overhead: {exc}", file=sys.stderr)
        return 1
    finally:
        for service in reversed(services):
            service.stop()
        shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
