"""Strategies compared on the simulated upstream, through the REAL proxy.

Starts bench/sim_upstream.py (every generation call takes `--latency` seconds, served in
parallel) and `python -m proxy.cli serve` with one route per strategy, then sends every item to
every route. Sampling uses common random numbers: the j-th sample of an item and variant is the
same on every route, so differences between routes come from the strategy alone and the paired
standard errors are small.

Tasks: ``discrete`` (0/1 utility, p_x ~ Beta(0.5, 2): hard, heavy near 0, four wrong answers;
accuracy), ``easy`` (the same with p_x ~ Beta(2, 0.5), heavy near 1), ``scored``
(U ~ Beta(a_x, b_x); mean utility) and ``mix``, traffic as a capable model sees it (method §4.6):
85% questions it answers right most of the time (the easy task's items with p_x ≥ 0.8, mean
p_x ≈ 0.93) and 15% hard ones (the discrete task's), in one random order that every route gets.
Verifiers available on the sim: self_consistency and mbr (built in), reward_model (the sim's
/score: U + noise, one view per verifier) and llm_judge (the sim as a judge: pointwise rubric_10
plus pairwise in both orders, with a position bias for slot A).

Reported per route: accuracy or mean utility (± standard error over items), candidates per
request, tokens per request (all upstream tokens: candidates, judges), latency median and p90
(client-measured at `--concurrency` requests in flight, so it includes queueing in the proxy).
Then the targets:

1. adaptive (max_n 16, self-consistency) vs fixed best-of-16 on each discrete task, the mix above
   all: accuracy within 0.5 points (paired difference ± se) with at most a third of the samples;
   next to the published anchors (Adaptive-Consistency, CGES, Optimal Bayesian Stopping);
2. a best-of-8 request's wall time vs one plain call, measured side by side (interleaved, one
   request at a time, medians over repeats), with n-batching (one upstream call with n=8) and with
   `supports_n: false` (eight parallel calls);
3. the same routes replayed in-process (bench/replay.py: the serving code, no HTTP) on stub-like
   questions, one sample right with p = 0.9 (tests/stub_upstream.py's `math` model): at most three
   candidates per request at the accuracy of fixed best-of-16, on a fresh route (the first
   `--stub-questions`, while it learns) and on the same route after them; and on pooled Gemma
   candidates where `--pools` names pool files (bench/gold_pools.py).

    python bench/compare_strategies.py                     # ~8–10 min on 2 cores
    python bench/compare_strategies.py --discrete 200 --scored 100 --latency-repeats 20
    python bench/compare_strategies.py --smoke             # a quick check of the whole path (~1 min)
    python bench/compare_strategies.py --only m-single,m-fixed16-sc,m-adaptive-beta,m-adaptive-prior \
        --mix 400 --latency 0.05                           # the mix and the stub-like replay only
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import math
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the checkout: bench.*, proxy, strategies

from bench.common import HelpFormatter, add_smoke, apply_smoke, markdown_table, median
from bench.replay import Served, load_pools, serve_pools, stub_like_pools
from bench.sim_upstream import World, parse_marker, prompt, reward_views, sim_and_proxy, upstream
from strategies.best_of_n.loop import BestOfN
from strategies.best_of_n.settings import BestOfNSettings

VARIANTS = ["original", "step_by_step", "reread", "expert"]
JUDGE = "judge-s0.15-p0.15"  # judge noise σ=0.15, position bias +0.15 for slot A
SMOKE = {"discrete": 12, "scored": 8, "judge_items": 3, "mix": 12, "latency": 0.02, "concurrency": 8,
         "latency_repeats": 2, "stub_seeds": 1, "stub_questions": 12}
MIX_HARD_SHARE = 0.15  # of the mix: hard questions (the discrete task's)
MIX_EASY_P = 0.8  # the mix's easy questions: the easy task's items a sample answers right this often
TRIALS = {"discrete": 10, "scored": 11, "easy": 12, "mix": 13}
# Published anchors for adaptive sampling (method §4.6), as their papers report them.
ANCHORS = [
    ("Adaptive-Consistency (arXiv 2305.11860)", "3.3× fewer samples on average (up to 7.9×)", "< 0.1 point lost"),
    ("CGES", "16 → 4.9 calls (31%)", "within 0.06 points"),
    ("Optimal Bayesian Stopping (arXiv 2602.05395)", "30–80% fewer calls, prior from past answers", "similar accuracy"),
]


@dataclass
class Route:
    name: str
    task: str
    label: str
    strategy: dict[str, Any]
    upstream: str = "sim"


def routes(base: str) -> list[Route]:
    sc = [{"type": "self_consistency"}]
    rm_d = reward_views(base, 2, 0.3)  # discrete: a noisy correctness scorer
    rm_s = reward_views(base, 4, 0.1)  # scored: four views, σ = 0.1 each
    judge = [{"type": "llm_judge", "upstream": "judge", "templates": ["rubric_10"], "mode": "pairwise"}]

    def bon(max_n: int, adaptive: bool, verifiers: list[dict[str, Any]], variants: list[str] | None = None) -> dict[str, Any]:
        return {"name": "best_of_n", "max_n": max_n, "adaptive": adaptive, "verifiers": verifiers,
                "variants": variants or ["original"]}

    d, s, e, m = "discrete", "scored", "easy", "mix"

    def learned(confidence: float = 0.99, **extra: Any) -> dict[str, Any]:
        return {**bon(16, True, sc), "stop": {"prior": {"confidence": confidence}}, **extra}

    return [
        Route("m-single", m, "single sample (passthrough)", {"name": "passthrough"}),
        Route("m-fixed16-sc", m, "fixed best-of-16, self_consistency", bon(16, False, sc)),
        Route("m-adaptive-beta", m, "adaptive ≤16, Beta rule only (as before §4.6)",
              {**bon(16, True, sc), "stop": {"prior": None}}),
        Route("m-adaptive-beta-step1", m, "adaptive ≤16, Beta rule only, later_batch 1",
              {**bon(16, True, sc), "stop": {"prior": None}, "later_batch": 1}),
        Route("m-adaptive-prior", m, "adaptive ≤16, learned prior at 0.99 (the default)", learned()),
        Route("m-adaptive-prior-step1", m, "adaptive ≤16, learned prior at 0.99, later_batch 1",
              learned(later_batch=1)),
        Route("m-adaptive-prior98", m, "adaptive ≤16, learned prior at 0.98", learned(0.98)),
        Route("m-adaptive-prior98-step1", m, "adaptive ≤16, learned prior at 0.98, later_batch 1",
              learned(0.98, later_batch=1)),
        Route("e-single", e, "single sample (passthrough)", {"name": "passthrough"}),
        Route("e-fixed16-sc", e, "fixed best-of-16, self_consistency", bon(16, False, sc)),
        Route("e-adaptive-sc", e, "adaptive ≤16, self_consistency", bon(16, True, sc)),
        Route("e-adaptive-sc-var", e, "adaptive ≤16, self_consistency, 4 variants", bon(16, True, sc, VARIANTS)),
        Route("e-fixed16-sc-var", e, "fixed best-of-16, self_consistency, 4 variants", bon(16, False, sc, VARIANTS)),
        Route("d-single", d, "single sample (passthrough)", {"name": "passthrough"}),
        Route("d-fixed16-sc", d, "fixed best-of-16, self_consistency", bon(16, False, sc)),
        Route("d-adaptive-sc", d, "adaptive ≤16, self_consistency", bon(16, True, sc)),
        Route("d-fixed16-sc-var", d, "fixed best-of-16, self_consistency, 4 variants", bon(16, False, sc, VARIANTS)),
        Route("d-adaptive-sc-var", d, "adaptive ≤16, self_consistency, 4 variants", bon(16, True, sc, VARIANTS)),
        Route("d-adaptive-mbr", d, "adaptive ≤16, mbr", bon(16, True, [{"type": "mbr"}])),
        Route("d-adaptive-rm", d, "adaptive ≤16, reward_model (2 views, σ=0.3)", bon(16, True, rm_d)),
        Route("d-adaptive-judge", d, "adaptive ≤16, llm_judge pairwise (σ=0.15, pos. bias 0.15)", bon(16, True, judge)),
        Route("s-single", s, "single sample (passthrough)", {"name": "passthrough"}),
        Route("s-fixed16-rm", s, "fixed best-of-16, reward_model (4 views, σ=0.1)", bon(16, False, rm_s)),
        Route("s-adaptive-rm", s, "adaptive ≤16, reward_model (4 views, σ=0.1)", bon(16, True, rm_s)),
        Route("s-adaptive-rm-var", s, "adaptive ≤16, reward_model, 4 variants", bon(16, True, rm_s, VARIANTS)),
        Route("s-fixed16-rm-var", s, "fixed best-of-16, reward_model, 4 variants", bon(16, False, rm_s, VARIANTS)),
        Route("s-adaptive-mbr", s, "adaptive ≤16, mbr", bon(16, True, [{"type": "mbr"}])),
        Route("s-adaptive-judge", s, "adaptive ≤16, llm_judge pairwise (σ=0.15, pos. bias 0.15)", bon(16, True, judge)),
    ]


LATENCY_ROUTES = [
    ("lat-single", "one plain call (passthrough)", "sim", {"name": "passthrough"}),
    ("lat-best8-batched", "fixed best-of-8, one upstream call with n=8", "sim",
     {"name": "best_of_n", "max_n": 8, "adaptive": False}),
    ("lat-best8-parallel", "fixed best-of-8, 8 parallel calls (supports_n: false)", "sim-no-n",
     {"name": "best_of_n", "max_n": 8, "adaptive": False}),
]


def proxy_config(base: str, rs: list[Route]) -> dict[str, Any]:
    ups = [upstream("sim", base), upstream("sim-no-n", base, model="sim", supports_n=False),
           upstream("judge", base, model=JUDGE)]
    cfg_routes = [{"model": r.name, "upstream": r.upstream, "strategy": r.strategy} for r in rs]
    cfg_routes += [{"model": name, "upstream": up, "strategy": strat} for name, _, up, strat in LATENCY_ROUTES]
    return {"server": {"request_timeout_s": 120}, "upstreams": ups, "routes": cfg_routes}


@dataclass
class Result:
    item: int
    utility: float
    candidates: int
    tokens: int
    latency: float
    stop: str


def mix_schedule(seed: int, count: int) -> list[tuple[str, int]]:
    """The `mix` task's traffic: (sim task, item) per request, the same for every route."""
    world = World(seed)
    rng = np.random.default_rng([seed, 13])
    easy = (i for i in itertools.count() if world.item(i, "easy").p["original"] >= MIX_EASY_P)
    hard = itertools.count()
    return [("discrete", next(hard)) if rng.random() < MIX_HARD_SHARE else ("easy", next(easy)) for _ in range(count)]


async def run_route(client: httpx.AsyncClient, route: Route, items: int, trial: int, concurrency: int,
                    schedule: list[tuple[str, int]] | None = None) -> list[Result]:
    limit = asyncio.Semaphore(concurrency)

    async def one(item: int) -> Result | None:
        task, asked = schedule[item] if schedule is not None else (route.task, item)
        body = {"model": route.name, "messages": [{"role": "user", "content": prompt(asked, task, trial, route.name)}]}
        async with limit:
            started = time.perf_counter()
            response = await client.post("/v1/chat/completions", json=body)
            elapsed = time.perf_counter() - started
        if response.status_code != 200:
            print(f"[{route.name}] item {item}: HTTP {response.status_code} {response.text[:300]}", file=sys.stderr)
            return None
        data = response.json()
        mark = parse_marker(data["choices"][0]["message"]["content"] or "")
        rvr = data.get("rvr") or {}
        return Result(item, mark[0] if mark else 0.0, int(rvr.get("candidates", 1)), int(data["usage"]["total_tokens"]),
                      elapsed, str(rvr.get("stop_reason", "passthrough")))

    done = await asyncio.gather(*(one(i) for i in range(items)))
    return [r for r in done if r is not None]


async def latency_side_by_side(client: httpx.AsyncClient, repeats: int) -> dict[str, list[float]]:
    times: dict[str, list[float]] = {name: [] for name, *_ in LATENCY_ROUTES}
    for rep in range(repeats + 2):
        for name, *_ in LATENCY_ROUTES:
            body = {"model": name, "messages": [{"role": "user", "content": prompt(rep % 50, "discrete", 99, name)}]}
            started = time.perf_counter()
            response = await client.post("/v1/chat/completions", json=body)
            elapsed = time.perf_counter() - started
            response.raise_for_status()
            if rep >= 2:  # two warm-up rounds (connections, litellm's first-call imports)
                times[name].append(elapsed)
    return times


def pct(values: list[float], q: float) -> float:
    return float(np.percentile(values, q))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0], formatter_class=HelpFormatter)
    parser.add_argument("--discrete", type=int, default=400, help="items of the discrete task")
    parser.add_argument("--scored", type=int, default=200, help="items of the scored task")
    parser.add_argument("--judge-items", type=int, default=100, help="items for llm_judge routes (~50 judge calls each)")
    parser.add_argument("--mix", type=int, default=400, help="requests of the mix task")
    parser.add_argument("--stub-questions", type=int, default=60,
                        help="stub-like questions per half (fresh, then learned)")
    parser.add_argument("--stub-seeds", type=int, default=20, help="stub-like runs, each on a fresh route")
    parser.add_argument("--pools", default="", help="comma-separated pool files to replay (bench/gold_pools.py)")
    parser.add_argument("--latency", type=float, default=0.2, help="sim seconds per generation call")
    parser.add_argument("--concurrency", type=int, default=32, help="requests in flight per route")
    parser.add_argument("--latency-repeats", type=int, default=30)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--only", default="", help="comma-separated route names (default: all)")
    add_smoke(parser, "12 discrete, 8 scored and 3 judge items, 0.02 s sim latency, 2 latency repeats")
    args = apply_smoke(parser.parse_args(argv), SMOKE)
    started = time.monotonic()
    results: dict[str, list[Result]] = {}
    failed = 0
    with tempfile.TemporaryDirectory(prefix="rvr-strategies-") as tmp:
        workdir = Path(tmp)
        selected = [r for r in routes("") if not args.only or r.name in args.only.split(",")]
        def config(sim_base: str) -> dict[str, Any]:
            return proxy_config(sim_base, routes(sim_base))

        with sim_and_proxy(workdir, args.seed, args.latency, config) as (_, proxy_base):

            async def drive() -> dict[str, list[float]]:
                nonlocal failed
                limits = httpx.Limits(max_connections=max(args.concurrency, 4))
                async with httpx.AsyncClient(base_url=proxy_base, timeout=120, limits=limits) as client:
                    lat = await latency_side_by_side(client, args.latency_repeats)
                    for route in selected:
                        t0 = time.monotonic()
                        items = {"scored": args.scored, "mix": args.mix}.get(route.task, args.discrete)
                        if "judge" in route.name:
                            items = min(items, args.judge_items)
                        schedule = mix_schedule(args.seed, items) if route.task == "mix" else None
                        results[route.name] = await run_route(client, route, items, TRIALS[route.task],
                                                              args.concurrency, schedule)
                        failed += items - len(results[route.name])
                        print(f"[{route.name}] {len(results[route.name])} requests in {time.monotonic() - t0:.1f}s", file=sys.stderr)
                    return lat

            lat = asyncio.run(drive())
    replayed = asyncio.run(replay_sections(args))
    report(args, [r for r in routes("http://x") if r.name in results], results, lat, time.monotonic() - started)
    report_replays(args, replayed)
    if failed:
        print(f"{failed} request(s) failed (see above)", file=sys.stderr)
    return 1 if failed else 0


def report(args: argparse.Namespace, rs: list[Route], results: dict[str, list[Result]], lat: dict[str, list[float]],
           elapsed: float) -> None:
    print("## Strategies on the simulated upstream (bench/compare_strategies.py)\n")
    smoke = " (--smoke: these numbers measure nothing)" if args.smoke else ""
    print(f"`python bench/compare_strategies.py --discrete {args.discrete} --scored {args.scored} --latency {args.latency} "
          f"--concurrency {args.concurrency} --latency-repeats {args.latency_repeats} --seed {args.seed}` — {elapsed:.0f} s "
          f"on this machine. Sim: {args.latency} s per generation call (parallel), /score 0.02 s, judge 0.05 s. "
          f"Latency columns are at {args.concurrency} requests in flight{smoke}.\n")
    for task, metric in (("mix", "accuracy %"), ("easy", "accuracy %"), ("discrete", "accuracy %"),
                         ("scored", "mean utility")):
        chosen = [r for r in rs if r.task == task]
        if not chosen:
            continue
        n_items = max(len(results[r.name]) for r in chosen)
        print(f"### {task} task ({n_items} items; llm_judge routes: the first {args.judge_items})\n")
        rows = []
        for r in chosen:
            res = results[r.name]
            u = np.array([x.utility for x in res])
            scale = 1.0 if task == "scored" else 100.0
            value = f"{scale * u.mean():.2f} ± {scale * u.std(ddof=1) / math.sqrt(len(u)):.2f}" if task != "scored" \
                else f"{u.mean():.4f} ± {u.std(ddof=1) / math.sqrt(len(u)):.4f}"
            stops: dict[str, int] = {}
            for x in res:
                stops[x.stop] = stops.get(x.stop, 0) + 1
            stop_text = ", ".join(f"{k} {v}" for k, v in sorted(stops.items(), key=lambda kv: -kv[1]))
            rows.append([r.name, r.label, value, f"{np.mean([x.candidates for x in res]):.2f}",
                         f"{np.mean([x.tokens for x in res]):.0f}", f"{pct([x.latency for x in res], 50):.3f}",
                         f"{pct([x.latency for x in res], 90):.3f}", stop_text])
        print(markdown_table(["route", "strategy", f"{metric} ± se", "candidates / req", "tokens / req",
                              "latency median s", "latency p90 s", "stop reasons"], rows))
        print()
    for route in ("m-adaptive-beta", "m-adaptive-beta-step1", "m-adaptive-prior", "m-adaptive-prior-step1",
                  "m-adaptive-prior98", "m-adaptive-prior98-step1"):
        paired(results, route, "m-fixed16-sc", "mix accuracy")
    print("\nAnchors, as published (their models and tasks, not ours):\n")
    print(markdown_table(["method", "samples", "accuracy"], [list(a) for a in ANCHORS]))
    print()
    paired(results, "e-adaptive-sc", "e-fixed16-sc", "easy accuracy, no variants")
    paired(results, "e-adaptive-sc-var", "e-fixed16-sc-var", "easy accuracy, 4 variants")
    paired(results, "d-adaptive-sc", "d-fixed16-sc", "discrete accuracy, no variants")
    paired(results, "d-adaptive-sc-var", "d-fixed16-sc-var", "discrete accuracy, 4 variants")
    paired(results, "s-adaptive-rm", "s-fixed16-rm", "scored mean utility, reward model", points=False)
    print("\n### Best-of-8 wall time vs one call (side by side, one request at a time)\n")
    print(f"{args.latency_repeats} interleaved repeats after 2 warm-up rounds; sim latency {args.latency} s per call.\n")
    single = median(lat["lat-single"])
    rows = [[label, f"{median(lat[name]):.3f}", f"{pct(lat[name], 90):.3f}", f"{median(lat[name]) / single:.2f}×"]
            for name, label, *_ in LATENCY_ROUTES]
    print(markdown_table(["request", "median s", "p90 s", "median / single"], rows))


def paired(results: dict[str, list[Result]], adaptive: str, fixed: str, what: str, points: bool = True) -> None:
    if adaptive not in results or fixed not in results:
        return
    a = {x.item: x for x in results[adaptive]}
    f = {x.item: x for x in results[fixed]}
    common = sorted(set(a) & set(f))
    diff = np.array([a[i].utility - f[i].utility for i in common])
    scale = 100.0 if points else 1.0
    se = scale * diff.std(ddof=1) / math.sqrt(len(diff))
    share = np.mean([a[i].candidates for i in common]) / np.mean([f[i].candidates for i in common])
    unit = " points" if points else ""
    verdict = ""
    if points:
        met = abs(scale * diff.mean()) <= 0.5 and share <= 1 / 3
        verdict = f" — target (|Δ| ≤ 0.5 points, ≤ 1/3 of the samples): {'MET' if met else 'MISSED'}"
    print(f"- **{adaptive} vs {fixed}** ({what}, {len(common)} paired items): Δ = {scale * diff.mean():+.2f} ± {se:.2f}{unit} "
          f"(adaptive − fixed), items that differ: {int((diff != 0).sum())}; samples used: {100 * share:.1f}% of fixed{verdict}")


# ---- the serving code replayed on pools (bench/replay.py) ------------------------------------------

REPLAY_ROUTES: list[tuple[str, dict[str, Any]]] = [
    ("fixed", {"adaptive": False}),
    ("beta", {"stop": {"prior": None}}),
    ("beta-step1", {"stop": {"prior": None}, "later_batch": 1}),
    ("prior", {}),
    ("prior-step1", {"later_batch": 1}),
    ("prior98", {"stop": {"prior": {"confidence": 0.98}}}),
    ("prior98-step1", {"stop": {"prior": {"confidence": 0.98}}, "later_batch": 1}),
]
REPLAY_LABELS = {
    "fixed": "fixed best-of-N", "beta": "adaptive, Beta rule only (as before §4.6)",
    "beta-step1": "adaptive, Beta rule only, later_batch 1",
    "prior": "adaptive, learned prior at 0.99 (the default)", "prior-step1": "adaptive, prior 0.99, later_batch 1",
    "prior98": "adaptive, learned prior at 0.98", "prior98-step1": "adaptive, prior 0.98, later_batch 1",
}
Replays = dict[str, dict[str, list[Served]]]  # section → route → what it served, item by item


async def replay_sections(args: argparse.Namespace) -> tuple[Replays, dict[str, int]]:
    """Stub-like questions (a fresh route per seed: its first questions, then as many more) and
    any pool files, through every replay route; and the N of fixed best-of-N per section."""
    sections: Replays = {}
    sizes: dict[str, int] = {}
    q = args.stub_questions
    # Four wrong answers (the stub's), and one: a wrong answer the model repeats, where two
    # agreeing samples prove least (the worst case for stopping early).
    for wrong, what in ((4, "stub-like p=0.9"), (1, "p=0.9, one wrong answer")):
        for seed in range(args.stub_seeds):
            fresh = stub_like_pools(q, 0.9, 16, args.seed * 10_000 + seed, wrong, prefix=f"s{seed}q")
            learned = stub_like_pools(q, 0.9, 16, args.seed * 10_000 + 5_000 + seed, wrong, prefix=f"s{seed}w")
            for name, extra in REPLAY_ROUTES:
                route = BestOfN.build(BestOfNSettings.model_validate({"max_n": 16, **extra}))
                served = await serve_pools(route, fresh + learned)
                sections.setdefault(f"{what}, fresh route", {}).setdefault(name, []).extend(served[:q])
                sections.setdefault(f"{what}, after learning", {}).setdefault(name, []).extend(served[q:])
        sizes[f"{what}, fresh route"] = sizes[f"{what}, after learning"] = 16
    for path in filter(None, args.pools.split(",")):
        items = [{**i, "pool": {"original": i["pool"]["original"]}} for i in load_pools(Path(path))]
        n = min(len(i["pool"]["original"]) for i in items)
        section = f"pools {Path(path).name} ({len(items)} items, best-of-{n})"
        sizes[section] = n
        for name, extra in REPLAY_ROUTES:
            route = BestOfN.build(BestOfNSettings.model_validate({"max_n": n, **extra}))
            sections.setdefault(section, {})[name] = await serve_pools(route, items)
    return sections, sizes


def report_replays(args: argparse.Namespace, replayed: tuple[Replays, dict[str, int]]) -> None:
    sections, sizes = replayed
    print("\n### The serving code replayed in-process (bench/replay.py)\n")
    print(f"Stub-like: one sample right with p = 0.9, else one of four wrong answers (or one); {args.stub_seeds} "
          f"fresh routes, each serving {args.stub_questions} questions and then {args.stub_questions} more. Paired by "
          "question against fixed best-of-N on the same samples.\n")
    for section, by_route in sections.items():
        fixed = {x.item: x for x in by_route["fixed"]}
        stub = "p=0.9" in section
        rows = []
        for name, served in by_route.items():
            u = np.array([x.utility for x in served])
            diff = np.array([x.utility - fixed[x.item].utility for x in served])
            n = np.mean([x.candidates for x in served])
            se = 100 * diff.std(ddof=1) / math.sqrt(len(diff)) if len(diff) > 1 else math.nan
            met = (n <= 3 if stub else n <= sizes[section] / 3) and 100 * diff.mean() >= -0.5
            verdict = "—" if name == "fixed" else ("MET" if met else "MISSED")
            rows.append([REPLAY_LABELS[name], f"{100 * u.mean():.2f}", f"{n:.2f}", f"{100 * n / sizes[section]:.0f}%",
                         f"{100 * diff.mean():+.2f} ± {se:.2f}", verdict])
        target = "≤ 3 candidates" if stub else "≤ 1/3 of the candidates"
        print(f"**{section}** ({len(by_route['fixed'])} requests; target: {target}, "
              "no more than 0.5 points below fixed)\n")
        print(markdown_table(["route", "accuracy %", "candidates / req", "of fixed", "Δ vs fixed (points ± se)",
                              "target"], rows))
        print()


if __name__ == "__main__":
    sys.exit(main())
