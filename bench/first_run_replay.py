"""Replay a first-run benchmark's stored candidates through today's `gemma-best` route, no model.

    python bench/first_run_replay.py /tmp/first_run.json                 # the table, in seconds
    python bench/first_run_replay.py /tmp/first_run.json --changed       # and every changed choice
    python bench/first_run_replay.py /tmp/first_run.json --out /tmp/replay.md --records /tmp/replay.json
    python bench/first_run_replay.py /tmp/first_run.json --n-curve 1,2,4,8   # fixed best-of-n at each n
    python bench/first_run_replay.py --smoke                             # 6 built-in records

`bench/first_run.py --records` stores, per question, the `gemma` reply and the 8 (or fewer)
candidate texts `gemma-best` sampled. This script builds the `gemma-best` route exactly as the
zero-config proxy does (its `strategy` block from proxy/config/default_config.yaml, through
`strategies.registry`) and runs `BestOfN.run` on the question as a one-message chat, with an
upstream that hands out the stored candidates in their sampling order (`bench.replay.PoolServices`).
So answer extraction, self-consistency, the stop rules and the selection are today's code; only
the samples are the recorded ones. A route that would now sample more than was recorded runs out
and keeps what it has (counted as `ran out`).

The served candidate is scored with first_run.py's own rule (`correct`) and the table is
first_run.py's (`table`, paired bootstrap `bootstrap_diff`): `gemma` as recorded against the
re-selected `gemma-best`. Its candidate and token columns are the replay's: the candidates it
used, and the recorded tokens scaled by the share of candidates used. `--smoke` replays a few
built-in records to check the path (it fails unless the route serves their right answers: the
restated "36" loses to "yes", "Paris" beats the numbers, "5" to "what is 5 times 1?" counts);
its numbers mean nothing.

`--n-curve 1,2,4,8` replays the route at each fixed n instead (`adaptive: false`, `max_n: n`, the
first n recorded candidates): what each candidate cap buys on these questions, and at what multiple
of `gemma`'s tokens. It is the curve `strategy.adapt_n` (method §4.8) reads off gold probes, measured
here on the benchmark's own questions; questions whose adaptive run recorded fewer than n
candidates keep what was recorded.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from pathlib import Path
from typing import Any

import numpy as np
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the checkout: bench.*, proxy, strategies

from bench.common import ROOT, HelpFormatter, add_smoke, apply_smoke, markdown_table
from bench.first_run import Question, bootstrap_diff, correct, table
from bench.replay import PoolServices, render_variants
from strategies.best_of_n.loop import BestOfN
from strategies.contract import StrategyRequest
from strategies.registry import build_strategy, parse_settings

ROUTE = "gemma-best"
DEFAULT_CONFIG = ROOT / "proxy" / "config" / "default_config.yaml"
SMOKE = {"bootstrap": 200}

# A few records of the shape first_run.py writes (yes/no, a fact, arithmetic), for --smoke.
SMOKE_RECORDS: list[dict[str, Any]] = [
    {"category": "yes/no", "kind": "yesno", "text": "is 36 even?", "gold": "yes", "aliases": [],
     "gemma": {"text": "36 is divisible by 5", "correct": False, "total_tokens": 26},
     "gemma-best": {"text": "36 is a prime number.", "candidates": 8, "total_tokens": 200, "candidate_texts": [
         "36 is a prime number.", "Yes, 36 is an even number.", "36", "36 is a prime number.",
         "Yes\nIs 36 even?", "36 is divisible by 4", "No.", "36"]}},
    {"category": "facts", "kind": "word", "text": "What is the capital of France?", "gold": "Paris", "aliases": [],
     "gemma": {"text": "Paris", "correct": True, "total_tokens": 20},
     "gemma-best": {"text": "31.5 million", "candidates": 8, "total_tokens": 160, "candidate_texts": [
         "Paris", "31.5 million", "17,942,365", "Paris", "Paris", "France is a country in Europe.",
         "The capital of France", "Paris"]}},
    {"category": "arithmetic", "kind": "number", "text": "What is 5 times 1?", "gold": "5", "aliases": [],
     "gemma": {"text": "5 times 1 is", "correct": False, "total_tokens": 24},
     "gemma-best": {"text": "5", "candidates": 4, "total_tokens": 100, "candidate_texts": [
         "5", "5 times 1 =", "5 x 1 = 5", "5"]}},
]


def route_strategy(
    seed: int, config: Path = DEFAULT_CONFIG, route: str = ROUTE, overrides: dict[str, Any] | None = None
) -> tuple[BestOfN, list[str]]:
    """The route's strategy as the proxy builds it from `config` (with `overrides` on its strategy
    block), with a fixed random generator (it only draws the risk report's resamples), and its
    variants' names."""
    routes = yaml.safe_load(config.read_text())["routes"]
    block = next(r["strategy"] for r in routes if r["model"] == route)
    built = build_strategy(parse_settings({**block, **(overrides or {})}))
    if not isinstance(built, BestOfN):
        raise SystemExit(f"route {route!r} is not best_of_n in {config}")
    strategy = BestOfN(built.settings, built.verifiers, built.variants, state=built.state,
                       rng=lambda: np.random.default_rng(seed))
    return strategy, [v.name for v in strategy.variants]


async def replay_one(strategy: BestOfN, variants: list[str], record: dict[str, Any]) -> dict[str, Any]:
    """The route's reply to the record's question when the upstream returns the recorded candidates."""
    messages = [{"role": "user", "content": record["text"]}]
    rendered = await render_variants(messages, variants)
    texts = record[ROUTE].get("candidate_texts") or []
    # One variant (the default route's `original`): the candidates in their sampling order.
    services = PoolServices({variants[0]: [{"text": t} for t in texts]}, rendered)
    outcome = await strategy.run(StrategyRequest(messages), services)  # type: ignore[arg-type]
    return {
        "text": outcome.chosen.text,
        "selected": outcome.selected,
        "candidates": len(outcome.candidates),
        "stop_reason": outcome.stop_reason.value,
        "scores": outcome.scores,
        "ran_out": outcome.stop_reason.value == "upstream_errors" and len(outcome.candidates) >= len(texts),
    }


def replay(records: list[dict[str, Any]], seed: int = 0, fixed_n: int | None = None) -> list[dict[str, Any]]:
    """Copies of `records` whose `gemma-best` entry is the replayed one (`recorded` keeps the old).

    `fixed_n`: the route at fixed best-of-n (never more than the record holds: a question whose
    adaptive run stopped early keeps what was recorded)."""
    routes: dict[int | None, tuple[BestOfN, list[str]]] = {}
    out = []
    for record in records:
        q = Question(record["category"], record["kind"], record["text"], record["gold"], tuple(record["aliases"]))
        recorded = record[ROUTE]
        new = dict(record)
        new["gemma"] = dict(record["gemma"], correct=correct(q, record["gemma"].get("text")))
        if "error" in recorded or not recorded.get("candidate_texts"):
            new[ROUTE] = dict(recorded, correct=False)  # a failed request stays failed
            out.append(new)
            continue
        cap = None if fixed_n is None else min(fixed_n, len(recorded["candidate_texts"]))
        if cap not in routes:
            routes[cap] = route_strategy(seed, overrides=None if cap is None else {"max_n": cap, "adaptive": False})
        strategy, variants = routes[cap]
        result = asyncio.run(replay_one(strategy, variants, record))
        used = result["candidates"] / max(1, len(recorded["candidate_texts"]))
        tokens = recorded.get("total_tokens")
        new[ROUTE] = dict(
            result,
            correct=correct(q, result["text"]),
            total_tokens=None if tokens is None else tokens * used,
            recorded={k: recorded.get(k) for k in ("text", "correct", "candidates", "stop_reason", "scores")},
        )
        out.append(new)
    return out


def n_curve(records: list[dict[str, Any]], ns: list[int], seed: int, resamples: int, bootstrap_seed: int) -> str:
    """Fixed best-of-n at each n: accuracy, candidates, tokens as a multiple of `gemma`'s, and the
    paired difference to `gemma` (95% bootstrap over questions)."""
    rows = []
    gemma_tokens = sum(r["gemma"].get("total_tokens") or 0 for r in records)
    for n in ns:
        replayed = [r for r in replay(records, seed, fixed_n=n) if "error" not in r[ROUTE]]
        best = np.array([bool(r[ROUTE]["correct"]) for r in replayed], dtype=float)
        plain = np.array([bool(r["gemma"]["correct"]) for r in replayed], dtype=float)
        mid, low, high = bootstrap_diff(plain, best, resamples, bootstrap_seed)  # best - plain
        tokens = sum(r[ROUTE].get("total_tokens") or 0 for r in replayed)
        rows.append([
            str(n), f"{100 * best.mean():.1f}%", f"{100 * mid:+.1f} [{100 * low:+.1f}, {100 * high:+.1f}]",
            f"{np.mean([r[ROUTE]['candidates'] for r in replayed]):.2f}",
            f"{tokens / gemma_tokens:.1f}x" if gemma_tokens else "-",
        ])
    head = ["n (fixed)", f"{ROUTE} acc", "diff vs gemma [95% CI]", "candidates", "tokens vs gemma"]
    gemma = np.mean([bool(r["gemma"]["correct"]) for r in records])
    return f"`gemma` (as recorded): {100 * gemma:.1f}%\n\n" + markdown_table(head, rows, "rrlrr")


def changes(replayed: list[dict[str, Any]]) -> str:
    """Every question whose served answer changed, with the candidates and their new scores."""
    lines = []
    for r in replayed:
        new, old = r[ROUTE], r[ROUTE].get("recorded")
        if old is None or new["text"] == old["text"]:
            continue
        mark = {(False, True): "+", (True, False): "-"}.get((bool(old["correct"]), new["correct"]), "=")
        lines.append(f"{mark} [{r['category']}] {r['text']!r} gold={r['gold']!r}")
        lines.append(f"    was: {old['text'][:70]!r}")
        lines.append(f"    now: {new['text'][:70]!r} ({new['stop_reason']}, {new['candidates']} candidates)")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0], formatter_class=HelpFormatter)
    parser.add_argument("records", type=Path, nargs="?", help="a bench/first_run.py --records file")
    parser.add_argument("--out", type=Path, default=None, help="write the Markdown table here")
    parser.add_argument("--records", dest="save", type=Path, default=None, help="write the replayed records here")
    parser.add_argument("--changed", action="store_true", help="list every question whose served answer changed")
    parser.add_argument("--bootstrap", type=int, default=2000, help="paired bootstrap resamples")
    parser.add_argument("--bootstrap-seed", type=int, default=12345)
    parser.add_argument("--seed", type=int, default=0, help="the route's random generator (risk only)")
    parser.add_argument("--n-curve", default=None, metavar="N,N,...",
                        help="replay at each fixed n instead (e.g. 1,2,4,8): what each cap buys")
    add_smoke(parser, "3 built-in records, 200 bootstrap resamples")
    args = apply_smoke(parser.parse_args(argv), SMOKE)
    if args.smoke:
        records = SMOKE_RECORDS
    elif args.records is None:
        parser.error("give a RECORDS file (bench/first_run.py --records) or --smoke")
    else:
        records = json.loads(args.records.read_text())

    if args.n_curve:
        ns = [int(n) for n in args.n_curve.split(",")]
        text = (f"First-run replay at fixed n: `{ROUTE}` re-selected by today's code from the first n recorded "
                f"candidates, {len(records)} questions\n\n"
                f"{n_curve(records, ns, args.seed, args.bootstrap, args.bootstrap_seed)}\n\n"
                f"Records: `{'--smoke' if args.smoke else args.records}`\n")
        print(text)
        if args.out:
            args.out.write_text(text)
        return 0
    replayed = replay(records, args.seed)
    with_texts = [r for r in replayed if r[ROUTE].get("recorded") is not None]
    same = sum(r[ROUTE]["text"] == r[ROUTE]["recorded"]["text"] for r in with_texts)
    ran_out = sum(bool(r[ROUTE].get("ran_out")) for r in replayed)
    text = (
        f"First-run replay: `gemma` as recorded vs `{ROUTE}` re-selected by today's code from the recorded "
        f"candidates, {len(replayed)} questions\n\n{table(replayed, args.bootstrap, args.bootstrap_seed)}\n\n"
        f"Served answer unchanged on {same}/{len(with_texts)}; ran out of recorded candidates on {ran_out} "
        f"(they keep what was recorded). Records: `{'--smoke' if args.smoke else args.records}`\n"
    )
    if args.changed:
        print(changes(replayed) + "\n")
    print(text)
    if args.out:
        args.out.write_text(text)
    if args.save:
        args.save.write_text(json.dumps(replayed, indent=1))
    if args.smoke and not all(r[ROUTE]["correct"] for r in replayed):
        print("smoke: the route no longer serves the built-in records' right answers", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
