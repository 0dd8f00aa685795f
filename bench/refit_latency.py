"""A request's latency while its route refits learned selection on 2,000 probe items (issue 20).

A real `rvr-proxy serve` (one worker) with a `learned` best_of_n route over bench/fast_upstream.py,
and a gold file in `server.state_dir` of 2,000 probe items with 3 answer clusters each (6,000
training rows: the most a refit takes, proxy/probes/selection.py's MAX_FIT_ROWS). Sequential
requests, in alternating phases of equal length (`--seconds` each):

* `quiet`: no new gold record, so no refit runs;
* `refit`: a new gold record is appended every 0.25 s, so the route refits on all 2,000 items
  about once a second (a refit starts at most once a second), in the worker's fit helper.

The report compares the p50 and p99 of the two phases (target: p99 within 5 ms) and counts the
refits that finished during the `refit` phases (the model file the helper rewrites after each).
For scale it also times one such refit in this process: what a request that started it waited
for before the refits left the request path.

    python bench/select_bench.py --latency                 # 4 rounds × 2 phases × 15 s (about 2.5 min)
    python bench/refit_latency.py --rounds 2 --seconds 5
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the checkout: bench.*, proxy, strategies

from bench.common import (
    API_KEY_REF,
    HelpFormatter,
    LoadClient,
    add_smoke,
    apply_smoke,
    key_env,
    percentile,
    start_fast_upstream,
    start_proxy,
)
from proxy.probes.jobs import FitRequest, fit_of
from strategies.risk.calibration import GoldRecord

ROUTE = "learned"
ITEMS = 2000
CLUSTERS = 3
RECORD_EVERY_S = 0.25
BODY = {"model": ROUTE, "messages": [{"role": "user", "content": "Say hello."}], "max_tokens": 16}


def gold_record(i: int, rng: np.random.Generator, at: float) -> GoldRecord:
    """A probe item with `CLUSTERS` answer clusters whose signals tell the right one a little."""
    right = int(rng.integers(CLUSTERS))
    clusters = tuple(
        {"features": {
            "vote_share": float(rng.dirichlet(np.ones(CLUSTERS))[c]),
            "variant_support": float(rng.random()),
            "copied_shot": float(rng.random() < (0.1 if c == right else 0.4)),
            "format_ok": 1.0,
            "v:self_consistency": float(rng.normal(0.6 if c == right else 0.4, 0.2)),
        }, "size": 1, "correct": c == right, **({"weighted": True} if c == 0 else {})}
        for c in range(CLUSTERS)
    )
    return GoldRecord(f"i{i}", 1.0, 1.0, 1.0, 1.0, 0.5, {}, tokens=0, time=at, clusters=clusters)


def config(api_base: str, probes: Path, state_dir: Path) -> dict[str, Any]:
    return {
        "server": {"api_keys": [API_KEY_REF], "state_dir": str(state_dir)},
        "upstreams": [{"name": "fast", "litellm_params": {
            "model": "openai/fast", "api_base": api_base, "api_key": API_KEY_REF}}],
        "routes": [{
            "model": ROUTE, "upstream": "fast",
            "strategy": {"name": "best_of_n", "max_n": 4, "adaptive": False, "k_ref": 4, "bootstrap": 10,
                         "verifiers": [{"type": "self_consistency"}],
                         "selection": {"mode": "learned", "min_items": 50, "gate_margin": 1.0}},
            "probes": {"file": str(probes), "every_s": 0, "window_items": 5000},
        }],
    }


async def phase(client: LoadClient, url: str, requests: int, seconds: float = float("inf")) -> list[float]:
    """Latencies of sequential requests: `requests` of them, or as many as `seconds` allow."""
    latencies: list[float] = []
    until = time.perf_counter() + seconds
    while len(latencies) < requests and time.perf_counter() < until:
        started = time.perf_counter()
        status, content = await client.post(url, BODY)
        if status != 200:
            raise RuntimeError(f"HTTP {status}: {content[:200]!r}")
        latencies.append(time.perf_counter() - started)
    return latencies


async def append_records(path: Path, start: int, stop: asyncio.Event, rng: np.random.Generator) -> int:
    """A new gold record every `RECORD_EVERY_S` until `stop`: each one makes the route refit."""
    written = 0
    while not stop.is_set():
        with path.open("a") as out:
            out.write(json.dumps(gold_record(start + written, rng, time.time()).as_dict()) + "\n")
        written += 1
        try:
            await asyncio.wait_for(stop.wait(), RECORD_EVERY_S)
        except TimeoutError:
            pass
    return written


def refit_in_process(records: list[GoldRecord]) -> float:
    """Seconds one refit on these records takes here: what a request once waited for."""
    started = time.perf_counter()
    fit_of(records, FitRequest(min_items=50, max_rows=6000, margin=0.02))
    return time.perf_counter() - started


async def measure(rounds: int, seconds: float, workdir: Path) -> dict[str, Any]:
    rng = np.random.default_rng(0)
    records = [gold_record(i, rng, float(i)) for i in range(ITEMS)]
    state_dir = workdir / "state"
    gold = state_dir / "probes" / f"{ROUTE}.jsonl"
    gold.parent.mkdir(parents=True)
    gold.write_text("".join(json.dumps(r.as_dict()) + "\n" for r in records))
    probes = workdir / "probes.jsonl"
    probes.write_text(json.dumps({"id": "p", "messages": [{"role": "user", "content": "hi"}], "answer": "x"}) + "\n")
    model = state_dir / "selection" / f"{ROUTE}.json"
    upstream, api_base = start_fast_upstream(workdir)
    try:
        proxy, base = start_proxy(workdir, config(api_base, probes, state_dir), env=key_env())
        try:
            url = f"{base}/v1/chat/completions"
            async with LoadClient("httpx", 1) as client:
                await phase(client, url, 30)
                deadline = time.monotonic() + 120
                while not model.exists():  # the first fit, started by the first request
                    assert time.monotonic() < deadline, "no model after 120 s"
                    await phase(client, url, 5)
                quiet: list[float] = []
                refit: list[float] = []
                refits = 0
                written = 0
                for _ in range(rounds):
                    quiet += await phase(client, url, 10**9, seconds)
                    stop = asyncio.Event()
                    before = model.stat().st_mtime_ns
                    writer = asyncio.create_task(append_records(gold, ITEMS + written, stop, rng))
                    seen = {before}
                    until = time.perf_counter() + seconds
                    while time.perf_counter() < until:
                        refit += await phase(client, url, 10)
                        seen.add(model.stat().st_mtime_ns)
                    stop.set()
                    written += await writer
                    refits += len(seen) - 1
                    await asyncio.sleep(1.5)  # the last refit ends before the next quiet phase
        finally:
            proxy.stop()
    finally:
        upstream.stop()
    ms = lambda values, q: 1000 * percentile(values, q)  # noqa: E731
    return {
        "rounds": rounds, "seconds_per_phase": seconds, "items": ITEMS, "rows": ITEMS * CLUSTERS,
        "quiet": {"p50_ms": ms(quiet, 50), "p99_ms": ms(quiet, 99), "n": len(quiet)},
        "refit": {"p50_ms": ms(refit, 50), "p99_ms": ms(refit, 99), "n": len(refit)},
        "p99_added_ms": ms(refit, 99) - ms(quiet, 99), "refits_during": refits, "records_appended": written,
        "refit_in_process_ms": 1000 * refit_in_process(records),
    }


def report(result: dict[str, Any]) -> str:
    q, r = result["quiet"], result["refit"]
    return "\n".join([
        f"Request latency while the route refits on {result['items']} probe items ({result['rows']} rows), "
        f"{result['rounds']} rounds of two {result['seconds_per_phase']:g} s phases of sequential requests:", "",
        "| phase | requests | p50 ms | p99 ms |", "|---|---|---|---|",
        f"| quiet (no refit) | {q['n']} | {q['p50_ms']:.2f} | {q['p99_ms']:.2f} |",
        f"| refit (every ~1 s, in the fit helper) | {r['n']} | {r['p50_ms']:.2f} | {r['p99_ms']:.2f} |", "",
        f"p99 added during refits: {result['p99_added_ms']:+.2f} ms (target ≤ 5 ms); {result['refits_during']} refits "
        f"finished during the refit phases ({result['records_appended']} records appended). One such refit in "
        f"this process takes {result['refit_in_process_ms']:.0f} ms: what the request that started it used to wait.",
    ])


async def run(rounds: int, seconds: float) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="rvr-refit-latency-") as workdir:
        return await measure(rounds, seconds, Path(workdir))


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=HelpFormatter)
    p.add_argument("--rounds", type=int, default=4)
    p.add_argument("--seconds", type=float, default=15.0, help="length of each phase of each round")
    add_smoke(p, "1 round of 2 s phases")
    args = apply_smoke(p.parse_args(argv), {"rounds": 1, "seconds": 2.0})
    print(report(asyncio.run(run(args.rounds, args.seconds))))


if __name__ == "__main__":
    main()
