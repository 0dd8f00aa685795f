"""Key limits under concurrency: bursts of parallel requests against keys with `tpm`,
`max_candidates_per_min` and `rpm` limits, and whether each limit held.

    python bench/limits.py                               # c = 16, 64, 256; 5 rounds each; ~2 min on 2 cores
    python bench/limits.py --levels 64 --rounds 10 --tpm 1000
    python bench/limits.py --backend redis --workers 2   # the counters in a redis-server, 2 workers
    python bench/limits.py --smoke                       # c = 8, 32; 1 round: a check of the path

Starts bench/fast_upstream.py with `--delay-ms` (every call is answered that long after it
arrived, all concurrently, so the requests of a burst overlap; usage 9 + 9 = 18 tokens a call)
and `python -m proxy.cli serve` with a passthrough route and a best_of_n route (`max_n` 8,
`adaptive: false`: 8 candidates a request, one upstream call each), and one client key per
burst, with one limit each:

- `tpm` (`--tpm`), passthrough requests: spent = the sum of `usage.total_tokens` of the
  admitted answers (the proxy's `rvr_key_tokens_total` for the key is shown beside it);
- `max_candidates_per_min` (`--candidates-per-min`), best-of-8 requests: spent = the sum of
  the admitted answers' `x-rvr-candidates` headers;
- `rpm` (`--rpm`), passthrough requests: spent = the requests admitted.

For each concurrency level c and round, a burst sends c requests at once with a fresh key, so
no round shares a window with another (keys reach the proxy as `os.environ/NAME` references,
one variable per key). Windows are UTC minutes: a burst starts only with `--guard-s` seconds
left in the minute, and one that still ends in the next minute (it saw two windows) is run
again with a spare key. Every request asks `max_tokens: 9`, the upstream's completion length,
so what a request costs (18 tokens) is close to what the proxy reserves for it (its estimate,
prompt bytes / 3 + `max_tokens`, printed at the start): the tight case, where a request
admitted past the limit would show.

The bound: spent ≤ limit + one request's cost (the most one admitted answer cost); `rpm` is
exact: admitted ≤ rpm. The table shows medians over rounds with the range, spent / limit as the
median and the worst round, and in how many rounds the bound held. "all at once" is what fits
when every admitted request is in flight together (limit // estimate); more are admitted where
early requests end, and settle at their lower cost, before later ones arrive.

Exit status: 0 when every bound held and every answer was a 200 or an OpenAI 429; 1 otherwise
(the table still prints); 2 when the run cannot start. Everything shares this machine's cores.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import shutil
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the checkout: bench.*, proxy, strategies

from bench.common import (
    Child,
    HelpFormatter,
    LoadClient,
    add_smoke,
    apply_smoke,
    load_average,
    markdown_table,
    median,
    spread,
    stamped,
    start_proxy,
    start_server_script,
    write_json,
)
from proxy.upstream.allowance import request_estimate

ROUTES = {"pass": "limits-pass", "best": "limits-best"}
MAX_N = 8
MAX_TOKENS = 9  # fast_upstream's completion: 9 tokens, whatever was asked
MESSAGES = [{"role": "user", "content": "Hi"}]
SPARE_KEYS = 2  # per limit and level: for bursts run again because they straddled two minutes
SMOKE = {"levels": [8, 32], "rounds": 1, "delay_ms": 300.0, "guard_s": 3.0}


@dataclass(frozen=True)
class Limit:
    kind: str  # the key's field
    label: str
    route: str  # a key of ROUTES
    unit: str  # what `spent` counts
    candidates: int  # per request, for the estimate

    def value(self, args: argparse.Namespace) -> int:
        return int({"tpm": args.tpm, "max_candidates_per_min": args.candidates_per_min, "rpm": args.rpm}[self.kind])


LIMITS = {
    "tpm": Limit("tpm", "tpm", "pass", "tokens", 1),
    "candidates": Limit("max_candidates_per_min", "max_candidates_per_min", "best", "candidates", MAX_N),
    "rpm": Limit("rpm", "rpm", "pass", "requests", 1),
}


def estimate(limit: Limit) -> int:
    """The tokens the proxy reserves for one request of this limit's route: its own function."""
    return request_estimate(MESSAGES, {"max_tokens": MAX_TOKENS}, limit.candidates, None).tokens


# ---- keys and config ------------------------------------------------------------------------


@dataclass
class Key:
    env: str  # the proxy's environment variable holding it
    value: str
    name: str  # what the proxy's metrics call it


def make_keys(args: argparse.Namespace) -> dict[tuple[str, int], list[Key]]:
    """A fresh key for each burst (and spares), per limit and level."""
    keys: dict[tuple[str, int], list[Key]] = {}
    number = 0
    for limit in args.limits:
        for level in args.levels:
            mine = keys.setdefault((limit, level), [])
            for i in range(args.rounds + SPARE_KEYS):
                number += 1
                mine.append(Key(f"RVR_BENCH_LIMITS_KEY_{number}", "sk-limits-" + os.urandom(16).hex(),
                                f"limits-{limit}-c{level}-{i}"))
    return keys


def proxy_config(args: argparse.Namespace, api_base: str, keys: dict[tuple[str, int], list[Key]],
                 redis_url: str | None) -> dict[str, Any]:
    entries = []
    for (limit, _), mine in keys.items():
        spec = LIMITS[limit]
        entries += [{"key": f"os.environ/{key.env}", "name": key.name, spec.kind: spec.value(args)} for key in mine]
    server: dict[str, Any] = {"keys": entries}
    if redis_url:
        server["state"] = {"backend": "redis", "url": redis_url, "prefix": "limits"}
    upstream = {"name": "delayed", "supports_n": False, "retries": 0, "max_concurrency": 1024, "timeout_s": 60,
                "litellm_params": {"model": "openai/fast", "api_base": api_base, "api_key": "none"}}
    best = {"name": "best_of_n", "max_n": MAX_N, "adaptive": False}
    return {
        "upstreams": [upstream],
        "routes": [{"model": ROUTES["pass"], "upstream": "delayed", "strategy": {"name": "passthrough"}},
                   {"model": ROUTES["best"], "upstream": "delayed", "strategy": best}],
        "server": server,
    }


# ---- a burst --------------------------------------------------------------------------------


class HeaderClient(LoadClient):
    """LoadClient that also returns the response headers (`x-rvr-candidates`, `retry-after`)."""

    async def post_headers(self, url: str, body: dict[str, Any]) -> tuple[int, dict[str, str], bytes]:
        if self.kind == "httpx":
            response = await self._session.post(url, json=body)
            return response.status_code, {k.lower(): v for k, v in response.headers.items()}, response.content
        async with self._session.post(url, json=body) as response:
            return response.status, {k.lower(): v for k, v in response.headers.items()}, await response.read()


@dataclass
class Burst:
    limit: str
    level: int
    round: int
    key: str
    admitted: int = 0
    refused: int = 0
    errors: int = 0
    spent: int = 0  # in the limit's unit
    tokens: int = 0  # usage.total_tokens of the admitted answers
    one_request: int = 0  # the most one admitted answer cost, in the limit's unit
    charged: float | None = None  # the proxy's rvr_key_tokens_total for the key
    wall_s: float = 0.0
    straddled: bool = False  # it began and ended in different UTC minutes
    error_samples: list[str] = field(default_factory=list)


def minute() -> int:
    return int(time.time() // 60)


async def room_in_minute(guard_s: float) -> None:
    """Wait for the next UTC minute unless this one has `guard_s` seconds left."""
    left = 60 - time.time() % 60
    if left < guard_s:
        await asyncio.sleep(left + 0.1)


def is_rate_limited(status: int, headers: dict[str, str], content: bytes) -> bool:
    """An OpenAI 429: Retry-After and `{"error": {"code": "rate_limit_exceeded", ...}}`."""
    if status != 429 or "retry-after" not in headers:
        return False
    try:
        return json.loads(content)["error"]["code"] == "rate_limit_exceeded"
    except (ValueError, KeyError, TypeError):
        return False


async def burst(args: argparse.Namespace, base: str, limit_name: str, level: int, round_no: int, key: Key) -> Burst:
    limit = LIMITS[limit_name]
    url = f"{base}/v1/chat/completions"
    body = {"model": ROUTES[limit.route], "messages": MESSAGES, "max_tokens": MAX_TOKENS}
    out = Burst(limit_name, level, round_no, key.name)
    async with HeaderClient(args.client, level, api_key=key.value) as client:
        await room_in_minute(args.guard_s)
        window, started = minute(), time.perf_counter()

        async def one() -> None:
            try:
                status, headers, content = await client.post_headers(url, body)
            except Exception as exc:  # noqa: BLE001 - every failure is a counted error
                out.errors += 1
                out.error_samples.append(f"{type(exc).__name__}: {str(exc)[:200]}")
                return
            if status == 200:
                try:
                    tokens = int(json.loads(content)["usage"]["total_tokens"])
                    cost = {"tokens": tokens, "candidates": int(headers["x-rvr-candidates"]), "requests": 1}[limit.unit]
                except (ValueError, KeyError, TypeError) as exc:
                    out.errors += 1
                    out.error_samples.append(f"200 without usage or x-rvr-candidates ({exc!r}): {content[:200]!r}")
                    return
                out.admitted += 1
                out.tokens += tokens
                out.spent += cost
                out.one_request = max(out.one_request, cost)
            elif is_rate_limited(status, headers, content):
                out.refused += 1
            else:
                out.errors += 1
                out.error_samples.append(f"HTTP {status}: {content[:200]!r}")

        await asyncio.gather(*(one() for _ in range(level)))
        out.wall_s = time.perf_counter() - started
        out.straddled = minute() != window
    out.charged = await charged_tokens(base, key.name)
    del out.error_samples[3:]
    return out


async def charged_tokens(base: str, name: str) -> float | None:
    """The proxy's `rvr_key_tokens_total` for the key: what it charged, from its own metrics."""
    async with httpx.AsyncClient(timeout=10) as client:
        text = (await client.get(f"{base}/metrics")).text
    found = re.search(rf'^rvr_key_tokens_total\{{key_name="{re.escape(name)}"\}} (\S+)$', text, flags=re.M)
    return float(found.group(1)) if found else 0.0


def bound_held(b: Burst, limit_value: int, unit: str) -> bool:
    if unit == "requests":
        return b.admitted <= limit_value  # rpm is counted atomically on arrival: exact
    spent = max(b.spent, int(b.charged or 0)) if unit == "tokens" else b.spent
    return spent <= limit_value + b.one_request


async def run_bursts(args: argparse.Namespace, base: str, keys: dict[tuple[str, int], list[Key]]) -> list[Burst]:
    results = []
    for round_no in range(1, args.rounds + 1):
        for level in args.levels:
            for limit_name in args.limits:
                spares = keys[(limit_name, level)]
                while True:
                    b = await burst(args, base, limit_name, level, round_no, spares.pop(0))
                    if not b.straddled or len(spares) <= args.rounds - round_no:
                        break  # done, or no spare key left: kept, marked, left out of the bound
                    print(f"  round {round_no} {limit_name} c={level}: the burst straddled two minutes, again "
                          "with a fresh key", flush=True)
                results.append(b)
                limit = LIMITS[limit_name]
                value = limit.value(args)
                held = "held" if bound_held(b, value, limit.unit) else "VIOLATED"
                print(f"  round {round_no} {limit.label} {value} c={level:<4} admitted {b.admitted:4d}"
                      f"  refused {b.refused:4d}  errors {b.errors}  spent {b.spent} {limit.unit}"
                      f" (tokens {b.tokens}, charged {b.charged:.0f})  {b.wall_s:5.2f} s  {held}"
                      f"{'  STRADDLED' if b.straddled else ''}", flush=True)
                for sample in b.error_samples:
                    print(f"      error: {sample}", flush=True)
    return results


# ---- report ---------------------------------------------------------------------------------


def summarize(args: argparse.Namespace, results: list[Burst]) -> tuple[str, list[dict[str, Any]], bool]:
    """The table, its rows as data, and whether every bound held (straddled bursts left out)."""
    rows, data, all_held = [], [], True
    for limit_name in args.limits:
        limit = LIMITS[limit_name]
        value = limit.value(args)
        per_request = limit.candidates if limit.unit == "candidates" else estimate(limit)
        # a request whose estimate alone is more than the limit still runs, alone, in an empty window
        at_once = value if limit.unit == "requests" else max(1, value // per_request)
        for level in args.levels:
            mine = [b for b in results if b.limit == limit_name and b.level == level]
            counted = [b for b in mine if not b.straddled]
            held = [bound_held(b, value, limit.unit) for b in counted]
            all_held &= all(held)
            ratios = [b.spent / value for b in counted]
            worst_over = max((max(b.spent, int(b.charged or 0)) if limit.unit == "tokens" else b.spent) - value
                             for b in counted) if counted else 0
            verdict = f"held {sum(held)}/{len(held)}" if all(held) else \
                f"VIOLATED {len(held) - sum(held)}/{len(held)} (worst +{worst_over})"
            if len(counted) < len(mine):
                verdict += f"; {len(mine) - len(counted)} straddled, left out"
            one = max((b.one_request for b in counted), default=0)
            charged = [b.charged for b in counted if b.charged is not None]
            rows.append([
                f"{limit.label} {value}", level, len(counted), min(level, at_once),
                spread([b.admitted for b in counted], ".0f"), spread([b.refused for b in counted], ".0f"),
                sum(b.errors for b in mine),
                f"{spread([b.spent for b in counted], '.0f')} {limit.unit}",
                spread(charged, ".0f") if limit.unit == "tokens" else "–",
                f"{median(ratios):.2f} ({max(ratios, default=float('nan')):.2f})",
                f"{one} {limit.unit}" if limit.unit != "requests" else "exact",
                verdict,
            ])
            data.append({"limit": limit.kind, "value": value, "concurrency": level, "rounds": len(counted),
                         "admitted_if_all_at_once": min(level, at_once),
                         "admitted": [b.admitted for b in counted], "refused": [b.refused for b in counted],
                         "errors": sum(b.errors for b in mine), "spent": [b.spent for b in counted],
                         "unit": limit.unit, "charged_tokens": charged, "one_request": one,
                         "held": all(held), "straddled": len(mine) - len(counted)})
    header = ["limit", "concurrency", "rounds", "all at once", "admitted", "refused (429)", "errors", "spent",
              "tokens charged (proxy)", "spent / limit (worst)", "one request", "bound: ≤ limit + one request"]
    return markdown_table(header, rows, "lrrrrrrrrrrl"), data, all_held


# ---- the run --------------------------------------------------------------------------------


def int_list(text: str) -> list[int]:
    return [int(x) for x in text.split(",") if x.strip()]


def limit_list(text: str) -> list[str]:
    names = [x.strip() for x in text.split(",") if x.strip()]
    unknown = [n for n in names if n not in LIMITS]
    if unknown or not names:
        raise argparse.ArgumentTypeError(f"limits are {', '.join(LIMITS)}; got {text!r}")
    return names


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=HelpFormatter)
    parser.add_argument("--levels", type=int_list, default=[16, 64, 256],
                        help="concurrency levels: the requests of one burst, all sent at once")
    parser.add_argument("--rounds", type=int, default=5, help="bursts per limit and level, each with a fresh key")
    parser.add_argument("--limits", type=limit_list, default=list(LIMITS), help="which limits to measure")
    parser.add_argument("--tpm", type=int, default=300, help="the tpm key's tokens per minute")
    parser.add_argument("--candidates-per-min", type=int, default=40,
                        help="the max_candidates_per_min key's candidates per minute")
    parser.add_argument("--rpm", type=int, default=10, help="the rpm key's requests per minute")
    parser.add_argument("--delay-ms", type=float, default=1500.0,
                        help="the upstream answers each call this long after it arrived (all concurrently)")
    parser.add_argument("--guard-s", type=float, default=10.0,
                        help="a burst starts only with this many seconds left in the UTC minute")
    parser.add_argument("--backend", choices=["memory", "redis"], default="memory",
                        help="where the proxy keeps its counters; redis starts a redis-server on loopback")
    parser.add_argument("--workers", type=int, default=1, help="proxy workers (more than 1 needs --backend redis)")
    parser.add_argument("--client", choices=["aiohttp", "httpx"], default="aiohttp")
    parser.add_argument("--json", help="raw results here (default: bench/results/limits-<time>.json)")
    add_smoke(parser, "c = 8 and 32, 1 round, a 300 ms upstream")
    args = apply_smoke(parser.parse_args(argv), SMOKE)
    if args.workers > 1 and args.backend == "memory":
        parser.error("--workers > 1 needs --backend redis: with memory each worker counts on its own")
    if min(args.levels, default=0) < 1 or args.rounds < 1:
        parser.error("--levels and --rounds must be at least 1")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    workdir = Path(tempfile.mkdtemp(prefix="rvr-limits-"))
    services: list[Child] = []
    started = time.time()
    try:
        try:
            redis_url = None
            if args.backend == "redis":
                from bench.scale import RedisServer  # imported here: only this backend needs redis

                redis = RedisServer(workdir)
                services.append(redis)
                redis_url = redis.url
            upstream, upstream_base = start_server_script(
                "upstream", "fast_upstream.py", ["--delay-ms", str(args.delay_ms)], workdir)
            services.append(upstream)
            keys = make_keys(args)
            env = {key.env: key.value for mine in keys.values() for key in mine}
            proxy, base = start_proxy(workdir, proxy_config(args, f"{upstream_base}/v1", keys, redis_url), env=env,
                                      workers=args.workers)
            services.append(proxy)
        except RuntimeError as exc:
            print(f"limits: cannot start: {exc}", file=sys.stderr)
            return 2
        print(f"load average before: {load_average()}")
        estimates = {ROUTES[LIMITS[n].route]: estimate(LIMITS[n]) for n in args.limits}
        print(f"upstream delay {args.delay_ms:.0f} ms, usage 18 tokens a call; proxy: {args.workers} worker(s), "
              f"{args.backend} counters; what the proxy reserves for a request (its estimate): "
              + ", ".join(f"{route} {tokens} tokens" for route, tokens in estimates.items())
              + f"; levels {','.join(map(str, args.levels))}, {args.rounds} round(s)", flush=True)
        results = asyncio.run(run_bursts(args, base, keys))
        table, rows, all_held = summarize(args, results)
        print("\n" + table + "\n")
        print("Medians over rounds (min–max); spent / limit: median (worst round). all at once: admitted when every "
              "admitted request is in flight together (limit // the request's estimate); more get in where early "
              "requests settle at their lower cost before later ones arrive. tokens charged: the proxy's "
              "rvr_key_tokens_total for the round's key. The bound: spent (and charged) ≤ limit + one request's "
              "cost, the most one admitted answer cost; rpm: admitted ≤ rpm.")
        errors = sum(b.errors for b in results)
        print(f"bounds: {'every one held' if all_held else 'VIOLATED (see the table)'}; errors: {errors}")
        print(f"load average after: {load_average()}; {time.time() - started:.0f} s")
        out = write_json(Path(args.json) if args.json else stamped("limits", args),
                         {"args": vars(args), "rows": rows,
                          "bursts": [asdict(b) for b in results]})
        print(f"raw results: {out}")
        return 0 if all_held and errors == 0 else 1
    finally:
        for service in reversed(services):
            service.stop()
        shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
