"""Latency and CPU the proxy adds on a passthrough route, against the LiteLLM proxy and a bare relay.

Starts a fast loopback upstream (bench/fast_upstream.py, its own process), rvr-proxy
(`python -m proxy.cli serve`) with one passthrough route to it (the native client: `client:
auto` on an `openai/` upstream), the floor (bench/floor_proxy.py: uvicorn with httptools and
uvloop, one aiohttp session, nothing but the relay), and, where `litellm[proxy]` is installed,
the LiteLLM proxy with one `model_list` entry for the same upstream. With `--rvr-litellm`, a
second rvr-proxy whose upstream says `client: litellm`. Then, for each round, it drives the same
non-streaming chat requests at each concurrency level against each target in turn, interleaved
(direct, floor, rvr-proxy, litellm-proxy, direct, ...), and streamed ones at concurrency 1 for
the time to the first byte.

Added latency = a target's median (or p99) per-request latency minus the direct median (or p99)
of the same round and concurrency; the table shows the median over rounds. Everything (load
generator, upstream, proxies) shares this machine's cores, so absolute numbers are pessimistic and
proxies that burn more CPU also slow the load generator and upstream they share cores with.

    python bench/overhead.py                       # 3 rounds, c=1 x 300 and c=64 x 2000, 200 streams
    python bench/overhead.py --rounds 5 --workers 2
    python bench/overhead.py --rvr-litellm         # also rvr-proxy over litellm, for the difference
    python bench/overhead.py --litellm-proxy-bin .bench-venv/bin/litellm
    python bench/overhead.py --smoke               # a quick check of the whole path (numbers mean nothing)

Exits 1 when a request failed or was not sent in time.

The LiteLLM proxy needs `litellm[proxy]`, whose dependencies clash with ours; keep it in its own
venv: `python3 -m venv .bench-venv && .bench-venv/bin/pip install 'litellm[proxy]==1.106.2'`.
Without it the run says so and compares rvr-proxy with the floor alone.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import subprocess
import sys
import tempfile
import time
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
    load_average,
    markdown_table,
    median,
    per_round,
    percentile,
    stamped,
    start_fast_upstream,
    start_proxy,
    start_server_script,
    write_json,
)

MODEL = "bench"
BODY = {"model": MODEL, "messages": [{"role": "user", "content": "Say hello."}], "max_tokens": 16}
STREAM_BODY = {**BODY, "stream": True, "stream_options": {"include_usage": True}}
SMOKE = {"rounds": 1, "requests_c1": 20, "requests_high": 100, "streams": 10, "warmup": 5, "level_timeout": 30.0}
# The issue-24 targets the verdict checks (non-streaming unless said).
ADDED_C1_MS = 1.5  # added median at c=1
RPS_RATIO = 3.0  # req/s at the top level, against the LiteLLM proxy's
CPU_RATIO = 1 / 3  # CPU per request at the top level, against the LiteLLM proxy's
TTFB_ADDED_MS = 2.0  # streaming: time to first byte added at c=1
SKIPPED_LITELLM = ("not installed, skipped (python3 -m venv .bench-venv && "
                   ".bench-venv/bin/pip install 'litellm[proxy]==1.106.2')")


# ---- processes ------------------------------------------------------------------------------


def start_rvr_proxy(api_base: str, workers: int, workdir: Path, client: str = "auto") -> tuple[Child, str]:
    # The client key as a reference: the proxy refuses keys written into its config in plain text.
    upstream = {"name": "fast", "litellm_params": {"model": "openai/fast", "api_base": api_base, "api_key": "none"},
                "client": client}
    config = {
        "upstreams": [upstream],
        "routes": [{"model": MODEL, "upstream": "fast", "strategy": {"name": "passthrough"}}],
        "server": {"api_keys": [API_KEY_REF]},
    }
    folder = workdir / f"rvr-{client}"  # each proxy its own config file and log
    folder.mkdir(exist_ok=True)
    child, base = start_proxy(folder, config, env=key_env(), workers=workers, log_level="info")
    return child, f"{base}/v1"


def start_floor(api_base: str, workdir: Path) -> tuple[Child, str]:
    """bench/floor_proxy.py in front of the upstream (its origin: the floor relays paths as they come)."""
    child, base = start_server_script("floor", "floor_proxy.py", ["--upstream", api_base.removesuffix("/v1")], workdir)
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


@dataclass
class StreamResult:
    target: str
    round: int
    sent: int
    ok: int
    errors: int
    ttfb_median_ms: float  # request sent to the first byte of the stream's body
    ttfb_p99_ms: float
    total_median_ms: float  # request sent to the stream's end
    error_samples: list[str] = field(default_factory=list)


async def measure_stream(session: Any, target: str, base: str, total: int, warmup: int, round_no: int,
                         deadline_s: float) -> StreamResult:
    """`total` streamed chat requests one after another: each one's time to its first body byte
    and to its end; a stream that does not end with `[DONE]` is an error."""
    url = f"{base}/chat/completions"
    ttfb: list[float] = []
    ends: list[float] = []
    errors: list[str] = []
    stop_at = time.perf_counter() + deadline_s
    sent = 0
    for i in range(warmup + total):
        if time.perf_counter() > stop_at:
            break
        t0 = time.perf_counter()
        try:
            async with session.post(url, json=STREAM_BODY) as response:
                first = await response.content.readany()
                t1 = time.perf_counter()
                body = first + await response.content.read()
                t2 = time.perf_counter()
                status = response.status
        except Exception as exc:  # noqa: BLE001 - every failure is a counted error
            status, body, t1, t2 = 0, f"{type(exc).__name__}: {exc}".encode(), 0.0, 0.0
        if i < warmup:
            continue
        sent += 1
        if status != 200 or not body.rstrip().endswith(b"data: [DONE]"):
            errors.append(f"HTTP {status}: {body[-200:]!r}")
            continue
        ttfb.append((t1 - t0) * 1000)
        ends.append((t2 - t0) * 1000)
    return StreamResult(target, round_no, sent, len(ttfb), len(errors) + (total - sent), median(ttfb),
                        percentile(ttfb, 99), median(ends), errors[:3])


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


def summarize_streams(results: list[StreamResult], targets: list[str]) -> tuple[str, dict[str, Any]]:
    """Time to first byte of a streamed answer at c=1, added over direct, per round then median."""
    by = {(r.target, r.round): r for r in results}
    rows = []
    summary: dict[str, Any] = {}
    for target in targets:
        mine = [r for r in results if r.target == target]
        if not mine:
            continue
        added = [r.ttfb_median_ms - by[("direct", r.round)].ttfb_median_ms for r in mine]
        entry = {"ttfb_median_ms": median(r.ttfb_median_ms for r in mine),
                 "ttfb_p99_ms": median(r.ttfb_p99_ms for r in mine),
                 "added_ttfb_median_ms": median(added), "added_ttfb_per_round": added,
                 "total_median_ms": median(r.total_median_ms for r in mine),
                 "errors": sum(r.errors for r in mine), "streams": sum(r.sent for r in mine)}
        summary[f"{target}@stream"] = entry
        direct = target == "direct"
        rows.append([target, f"{entry['ttfb_median_ms']:.2f}", f"{entry['ttfb_p99_ms']:.2f}",
                     "—" if direct else f"{entry['added_ttfb_median_ms']:+.2f}",
                     "—" if direct else per_round(added, "+.2f"), f"{entry['total_median_ms']:.2f}",
                     f"{entry['errors']}/{entry['streams']}"])
    header = ["target", "TTFB median ms", "TTFB p99 ms", "added TTFB median ms", "added TTFB, per round",
              "whole stream median ms", "errors"]
    return markdown_table(header, rows, "lrrrlrr"), summary


def verdict(summary: dict[str, Any], top: int) -> list[str]:
    """The issue-24 targets, each MET or MISSED, with the numbers compared."""
    lines = []
    rvr1, floor1 = summary.get("rvr-proxy@1"), summary.get("floor@1")
    if rvr1:
        floor = f" (floor {floor1['added_median_ms']:+.2f} ms)" if floor1 else ""
        lines.append(f"- c=1: rvr-proxy added median {rvr1['added_median_ms']:+.2f} ms{floor} -> "
                     f"{_met(rvr1['added_median_ms'] <= ADDED_C1_MS)} (<= {ADDED_C1_MS} ms)")
    rvr, lite = summary.get(f"rvr-proxy@{top}"), summary.get(f"litellm-proxy@{top}")
    if rvr and lite:
        ratio = rvr["rps"] / lite["rps"] if lite["rps"] else float("inf")
        lines.append(f"- c={top}: rvr-proxy {rvr['rps']:.0f} req/s vs LiteLLM proxy {lite['rps']:.0f} "
                     f"({ratio:.1f}x) -> {_met(ratio >= RPS_RATIO)} (>= {RPS_RATIO:.0f}x)")
        lines.append(f"- c={top}: rvr-proxy p99 {rvr['p99_ms']:.1f} ms vs LiteLLM proxy {lite['p99_ms']:.1f} ms -> "
                     f"{_met(rvr['p99_ms'] <= lite['p99_ms'])} (no worse)")
        if rvr["cpu_ms_per_req"] is not None and lite["cpu_ms_per_req"]:
            share = rvr["cpu_ms_per_req"] / lite["cpu_ms_per_req"]
            lines.append(f"- c={top}: rvr-proxy CPU {rvr['cpu_ms_per_req']:.2f} ms/req vs LiteLLM proxy "
                         f"{lite['cpu_ms_per_req']:.2f} ({share:.2f}) -> {_met(share <= CPU_RATIO)} (<= 1/3)")
    elif rvr:
        lines.append(f"- c={top}: rvr-proxy {rvr['rps']:.0f} req/s, p99 {rvr['p99_ms']:.1f} ms "
                     "(no LiteLLM proxy to compare with)")
    streamed = summary.get("rvr-proxy@stream")
    if streamed:
        added = streamed["added_ttfb_median_ms"]
        lines.append(f"- streaming, c=1: rvr-proxy time to first byte added {added:+.2f} ms -> "
                     f"{_met(added <= TTFB_ADDED_MS)} (<= {TTFB_ADDED_MS} ms)")
    if rvr:
        lines.append(f"- c={top}: rvr-proxy errors {rvr['errors']}/{rvr['requests']} -> {_met(rvr['errors'] == 0)} "
                     "(zero errors)")
    return lines


def _met(ok: bool) -> str:
    return "MET" if ok else "MISSED"


# ---- main -----------------------------------------------------------------------------------


async def run_rounds(args: argparse.Namespace, targets: dict[str, tuple[str, Child | None]], levels: list[int]
                     ) -> tuple[list[LevelResult], list[StreamResult]]:
    import aiohttp

    counts = {1: args.requests_c1}
    results: list[LevelResult] = []
    streams: list[StreamResult] = []
    headers = {"authorization": f"Bearer {API_KEY}"}
    async with LoadClient(args.client, max(levels) * 2 + 16) as client, \
            aiohttp.ClientSession(headers=headers, timeout=aiohttp.ClientTimeout(total=60)) as session:
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
            if args.streams:
                for name, (base, _) in targets.items():
                    s = await measure_stream(session, name, base, args.streams, min(args.warmup, args.streams),
                                             round_no, args.level_timeout)
                    streams.append(s)
                    print(f"  round {round_no} stream {name:<14} TTFB median {s.ttfb_median_ms:7.2f} ms  "
                          f"p99 {s.ttfb_p99_ms:7.2f} ms  whole {s.total_median_ms:7.2f} ms  errors {s.errors}",
                          flush=True)
                    for sample in s.error_samples:
                        print(f"      error: {sample}", flush=True)
    return results, streams


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                     formatter_class=HelpFormatter, epilog=__doc__)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--concurrency", default="1,64", help="comma-separated levels (default 1,64)")
    parser.add_argument("--requests-c1", type=int, default=300, help="measured requests at concurrency 1")
    parser.add_argument("--requests-high", type=int, default=2000, help="measured requests at every other level")
    parser.add_argument("--streams", type=int, default=200, help="measured streamed requests per target and round, "
                        "at concurrency 1 (0: none)")
    parser.add_argument("--warmup", type=int, default=50, help="unmeasured requests before each measurement")
    parser.add_argument("--level-timeout", type=float, default=120.0, help="seconds per measurement before it stops issuing")
    parser.add_argument("--workers", type=int, default=1, help="worker processes for both proxies")
    parser.add_argument("--litellm-proxy-bin", help="the `litellm` CLI of a litellm[proxy] install "
                        "(default: .bench-venv/bin/litellm, else `litellm` on PATH)")
    parser.add_argument("--no-litellm", action="store_true", help="skip the LiteLLM proxy")
    parser.add_argument("--rvr-litellm", action="store_true",
                        help="also rvr-proxy with its upstream on litellm (`client: litellm`), as target rvr-litellm")
    parser.add_argument("--client", choices=["aiohttp", "httpx"], default="aiohttp",
                        help="load generator's HTTP client (httpx saturates near 250 req/s at c=64 here)")
    parser.add_argument("--json", help="write the raw results here (default bench/results/overhead-<time>.json; --smoke: bench/results/smoke/)")
    add_smoke(parser, "1 round, 20 requests at c=1, 100 at every other level, 10 streams")
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
        floor, floor_base = start_floor(api_base, workdir)
        services.append(floor)
        rvr, rvr_base = start_rvr_proxy(api_base, args.workers, workdir)
        services.append(rvr)
        targets: dict[str, tuple[str, Child | None]] = {
            "direct": (api_base, None), "floor": (floor_base, floor), "rvr-proxy": (rvr_base, rvr)
        }
        if args.rvr_litellm:
            on_litellm, on_litellm_base = start_rvr_proxy(api_base, args.workers, workdir, client="litellm")
            services.append(on_litellm)
            targets["rvr-litellm"] = (on_litellm_base, on_litellm)
        if litellm_bin:
            lite, lite_base = start_litellm_proxy(litellm_bin, api_base, args.workers, workdir)
            services.append(lite)
            targets["litellm-proxy"] = (lite_base, lite)
        print(f"# Proxy overhead, passthrough route, chat ({os.cpu_count()} cores)\n")
        print(f"upstream {api_base} | load generator: {args.client} | workers per proxy: {args.workers} | "
              f"rounds: {args.rounds} | requests: c=1 x {args.requests_c1}, others x {args.requests_high}, "
              f"streams x {args.streams} at c=1 (+{args.warmup} warm-up each)")
        print(f"LiteLLM proxy: {litellm_bin or ('skipped (--no-litellm)' if args.no_litellm else SKIPPED_LITELLM)}")
        print(f"load average before: {load_average()}\n", flush=True)
        results, streams = asyncio.run(run_rounds(args, targets, levels))
        table, summary = summarize(results, list(targets), levels)
        stream_table, stream_summary = summarize_streams(streams, list(targets))
        summary.update(stream_summary)
        print("\n" + table + "\n")
        if streams:
            print(stream_table + "\n")
        print("Added = target minus direct, per round and concurrency; columns are medians over rounds; errors summed "
              "(incl. requests not sent before the time limit). Proxy CPU = CPU seconds of the proxy's processes "
              "during the measurement / requests. floor = uvicorn (httptools) + one aiohttp session relaying, "
              "nothing else (bench/floor_proxy.py).")
        print(f"NOTE: all on one {os.cpu_count()}-core machine: load generator ({args.client}, one process), "
              "upstream (one process) and the proxy share the cores, so a proxy's CPU cost also slows the other two. "
              f"Load average after: {load_average()}.\n")
        print("Targets (issue 24):")
        print("\n".join(verdict(summary, max(levels))))
        out = write_json(Path(args.json) if args.json else stamped("overhead", args),
                         {"args": vars(args), "litellm_proxy_bin": litellm_bin, "summary": summary,
                          "load_average_after": load_average(),
                          "results": [asdict(r) for r in results], "streams": [asdict(r) for r in streams]})
        print(f"\nraw results: {out}")
        failed = sum(r.errors + r.unsent for r in results) + sum(s.errors for s in streams)
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
