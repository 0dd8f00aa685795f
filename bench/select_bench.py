"""Selectors on shared candidates: majority, weighted, learned (cross-fitted), oracle, constant.

Every selector runs the proxy's own `BestOfN.run` over the same pooled candidates
(bench/gold_pools.py makes the pools, bench/replay.py replays them), so differences are the
selectors' alone. Per task and per n (candidates per request, spread round-robin over the
pool's prompt variants, as a route does):

* `majority`: `self_consistency` alone;
* `weighted`: today's default ensemble on these candidates, `self_consistency` + `mbr` (the
  pools hold texts only: no judge, no logprobs, no reward model);
* `learned`: `selection.mode: learned` with those verifiers, the model fitted on the other half
  of the items' clusters (cross-fitting: fit on half A, select on half B, then swap), exactly
  as a route fits it on its probe clusters;
* `oracle`: any of the n candidates right; `constant`: always the training half's most frequent
  gold answer.

Paired bootstrap over items (add1: over the 100 (a, b) pairs, each with all its few-shot seeds)
gives the 95% interval of learned − majority. Also: % of oracle, the few-shot copy rate (the
share of candidates whose answer is one of the request's few-shot answers, and of the wrong
candidates), and a PNG of accuracy against n per selector with the oracle curve.

    python bench/select_bench.py --tasks add1,legs,gcd,sum2,capitals     # pools from bench/gold_pools.py
    python bench/select_bench.py --pools bench/results/pools-logprobs --tasks add1   # + conf_mean, conf_low
    python bench/select_bench.py --tasks add1 --judge-items 60         # + the same-model judge's signal
    python bench/select_bench.py --smoke      # builds small add1 and capitals pools first (embedded model)
    python bench/select_bench.py --gate-only  # the simulated routes alone: confidence and safety gate
    python bench/select_bench.py --latency    # request latency during 2,000-item refits (bench/refit_latency.py)

Writes bench/results/select_bench.{md,json,png}. Every run also serves the safety gate's
constructed route (bench/gate_case.py: a route whose learned model is worse than weighted
selection) and reports what it serves; `--latency` measures a real proxy instead and writes
bench/results/refit_latency.{md,json}.

The same-model judge (`--judge-items N`, off by default): how well does the embedded model judge
its own answers? For each task's first N items (shuffled with `--judge-seed`), every distinct
extracted answer is put to the embedded Gemma 3 270M as a yes/no question, rendered as the proxy
renders a chat for a completion upstream (proxy.upstream.chat_prompt):

    Question: What is 1 plus 7?
    Proposed answer: 9
    Is the proposed answer correct? Reply yes or no.
    Answer:

P(yes) = P(yes or Yes) / P(yes, Yes, no or No), read by teacher forcing (bench/gold_pools.py's
`Scorer`). The report gives the AUROC of P(yes) for right against wrong answer clusters, next to
the vote share's on the same clusters: a judge signal is worth a learned weight only where it
ranks answers better than votes. The replay serves no judge, so the selectors above never use it.

`--smoke` first builds small pools with bench/gold_pools.py (8 items each of add1 and capitals,
8 samples per item, token logprobs added), then runs everything above on them, judge included,
writing to bench/results/smoke/.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import random
import sys
from collections import Counter, defaultdict
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the checkout: bench.*, proxy, strategies

from bench import confidence_case, gate_case, refit_latency
from bench.common import RESULTS, SMOKE_RESULTS, HelpFormatter, add_smoke, apply_smoke
from bench.real_tasks import CAPITALS_PATTERN, capitals_score
from bench.replay import PoolServices, load_pools, render_variants
from strategies.answers import answer_key, compile_patterns
from strategies.best_of_n.loop import BestOfN
from strategies.best_of_n.settings import BestOfNSettings
from strategies.registry import build_strategy
from strategies.contract import Candidate, StrategyRequest
from strategies.selection.clusters import shot_answers
from strategies.selection.confidence import reliability
from strategies.selection.learned import (
    ClusterRow,
    LearnedSelector,
    NotFittable,
    SelectorState,
    auroc,
    fit_selector,
)

NS = (1, 2, 4, 8, 16)
HEADLINE_N = 8
SELECTORS = ("majority", "weighted", "learned")
# How a route would extract each task's answers: the default extraction reads numbers only.
PATTERNS: dict[str, list[str]] = {"capitals": [CAPITALS_PATTERN]}
SMOKE_TASKS = ("add1", "capitals")
SMOKE = {"tasks": list(SMOKE_TASKS), "resamples": 200, "judge_items": 4, "out": SMOKE_RESULTS / "select_bench",
         "gate_items": 30, "gate_requests": 50, "latency_rounds": 1, "latency_seconds": 3.0,
         "confidence_items": [50]}


def majority_verifiers(task: str) -> list[dict[str, Any]]:
    return [{"type": "self_consistency", "patterns": PATTERNS.get(task, [])}]


def weighted_verifiers(task: str) -> list[dict[str, Any]]:
    return [*majority_verifiers(task), {"type": "mbr"}]


def strategy(variants: list[str], n: int, verifiers: list[dict[str, Any]], mode: str) -> BestOfN:
    settings = BestOfNSettings.model_validate({
        "max_n": n, "adaptive": False, "variants": variants, "verifiers": verifiers, "bootstrap": 10, "k_ref": 2,
        "selection": {"mode": mode, "min_items": 4},
    })
    built = build_strategy(settings)
    assert isinstance(built, BestOfN)
    built._rng = lambda: np.random.default_rng(0)  # risk bootstraps only; selection is deterministic
    return built


def utility_of(item: dict[str, Any]) -> dict[tuple[str, str], float]:
    return {(v, s["text"]): float(s["utility"]) for v, samples in item["pool"].items() for s in samples}


async def serve(best: BestOfN, item: dict[str, Any], render: dict[str, Any]) -> Any:
    services = PoolServices(item["pool"], render)
    return await best.run(StrategyRequest(item["messages"]), services)  # type: ignore[arg-type]


def group_of(item: dict[str, Any]) -> str:
    """add1 and capitals items are resampled by (a, b) pair or country: their few-shot seeds are
    not independent items."""
    return item["id"].split("-", 2)[-1] if item["task"] in ("add1", "capitals") else item["id"]


def copy_rate(items: Sequence[dict[str, Any]]) -> tuple[float, float]:
    """(share of all candidates, share of wrong candidates) whose answer is a few-shot answer."""
    total = copied = wrong = wrong_copied = 0
    for item in items:
        patterns = compile_patterns(PATTERNS.get(item["task"], []))
        key_of = lambda c: answer_key(c, patterns)  # noqa: E731
        shots = shot_answers(item["messages"], key_of)
        for samples in item["pool"].values():
            for s in samples:
                key = key_of(Candidate(0, "x", {"role": "assistant", "content": s["text"]}))
                hit = key is not None and key in shots
                total += 1
                copied += hit
                if s["utility"] < 1.0:
                    wrong += 1
                    wrong_copied += hit
    return copied / max(total, 1), wrong_copied / max(wrong, 1)


async def run_task(items: list[dict[str, Any]], seed: int, ns: Sequence[int]) -> dict[str, Any]:
    variants = list(items[0]["pool"])
    renders = [await render_variants(item["messages"], variants) for item in items]
    utilities = [utility_of(item) for item in items]
    groups = sorted({group_of(i) for i in items})
    random.Random(seed).shuffle(groups)
    half = {g: k % 2 for k, g in enumerate(groups)}
    fold = [half[group_of(i)] for i in items]
    per_n: dict[int, dict[str, list[float]]] = {}
    models: dict[int, list[dict[str, Any]]] = {}
    confidence: dict[int, list[float | None]] = {}  # the learned route's rvr.confidence per held-out item
    before: dict[int, list[float | None]] = {}  # the chosen cluster's own P(correct): the confidence before issue 20
    for n in ns:
        scores: dict[str, list[float]] = defaultdict(list)
        task = items[0]["task"]
        majority = strategy(variants, n, majority_verifiers(task), "weighted")
        weighted = strategy(variants, n, weighted_verifiers(task), "weighted")
        rows: list[list[ClusterRow]] = [[], []]
        for item, render, util, f in zip(items, renders, utilities, fold, strict=True):
            m = await serve(majority, item, render)
            scores["majority"].append(util[(m.chosen.variant, m.chosen.text)])
            w = await serve(weighted, item, render)
            scores["weighted"].append(util[(w.chosen.variant, w.chosen.text)])
            scores["oracle"].append(max(util[(c.variant, c.text)] for c in w.candidates))
            for c in w.clusters:
                rep = w.candidates[c["representative"]]
                rows[f].append(ClusterRow(item["id"], c["features"], util[(rep.variant, rep.text)] >= 1.0))
        fitted: list[LearnedSelector | None] = []
        for train in (1, 0):  # the model that selects on fold 0 is fitted on fold 1, and back
            try:
                fitted.append(fit_selector(rows[train]))
            except NotFittable:
                fitted.append(None)
        models[n] = [m.public() if m is not None else {} for m in fitted]
        learners = []
        for model in fitted:
            best = strategy(variants, n, weighted_verifiers(task), "learned")
            reason = None if model is not None else "not fittable on the training half"
            best.use_selector(lambda s=SelectorState(model, reason): s)
            learners.append(best)
        confidence[n], before[n] = [], []
        for item, render, util, f in zip(items, renders, utilities, fold, strict=True):
            out = await serve(learners[f], item, render)
            scores["learned"].append(util[(out.chosen.variant, out.chosen.text)])
            confidence[n].append(out.confidence)
            before[n].append(own_probability(fitted[f], out.selection))
        train_answers = [Counter(i["answer"] for i, g in zip(items, fold, strict=True) if g == 1 - f) for f in (0, 1)]
        constant = [train_answers[f].most_common(1)[0][0] for f in (0, 1)]
        scores["constant"] = [float(i["answer"] == constant[f]) for i, f in zip(items, fold, strict=True)]
        per_n[n] = dict(scores)
    return {"per_n": per_n, "models": models, "groups": [group_of(i) for i in items], "confidence": confidence,
            "confidence_before": before}


def own_probability(model: LearnedSelector | None, selection: dict[str, Any] | None) -> float | None:
    """The chosen cluster's own P(correct) under `model`, from the features `rvr.selection` shows."""
    if model is None or not selection or selection.get("chosen_cluster") is None or selection.get("mode") != "learned":
        return None
    features = selection["clusters"][selection["chosen_cluster"]]["features"]
    return model.probability({k: math.nan if v is None else v for k, v in features.items()})


def calibrated_floor(confidence: Sequence[float], draws: int = 200, seed: int = 0) -> float:
    """The ECE a perfectly calibrated confidence shows at these values and this n: outcomes drawn
    with exactly the stated probabilities. With few items the binned ECE sits well above 0."""
    rng = np.random.default_rng(seed)
    c = np.asarray(confidence, dtype=float)
    return float(np.mean([reliability(c, rng.random(len(c)) < c).ece for _ in range(draws)]))


def confidence_table(results: dict[str, Any]) -> str:
    """Is the learned route's `rvr.confidence` P(the served answer is right), on held-out items?"""
    lines = ["", f"Learned selection's `rvr.confidence` on the held-out half (best-of-{HEADLINE_N}), ECE over 10 bins; "
             "before: the chosen cluster's own P(correct); floor: the ECE a perfectly calibrated confidence shows "
             "at these values and this many items:", "",
             "| task | items with a confidence | served accuracy | mean confidence (before) | ECE (before) | floor |",
             "|---|---|---|---|---|---|"]
    for task, res in results.items():
        if HEADLINE_N not in res["confidence"]:
            continue
        rows = [(c, b, r) for c, b, r in zip(res["confidence"][HEADLINE_N], res["confidence_before"][HEADLINE_N],
                                             res["per_n"][HEADLINE_N]["learned"], strict=True) if c is not None]
        if not rows:
            lines.append(f"| {task} | 0 | – | – | – | – |")
            continue
        now, right = [c for c, _, _ in rows], [r >= 1.0 for _, _, r in rows]
        old = [b if b is not None else c for c, b, _ in rows]
        lines.append(f"| {task} | {len(rows)} | {np.mean(right):.3f} | {np.mean(now):.3f} ({np.mean(old):.3f}) | "
                     f"{reliability(now, right).ece:.3f} ({reliability(old, right).ece:.3f}) | "
                     f"{calibrated_floor(now):.3f} |")
    return "\n".join(lines)


def paired_bootstrap(a: Sequence[float], b: Sequence[float], groups: Sequence[str], resamples: int, seed: int) -> tuple[float, float, float]:
    """Mean of a − b and its 95% percentile interval, resampling whole groups."""
    by: dict[str, list[int]] = defaultdict(list)
    for i, g in enumerate(groups):
        by[g].append(i)
    keys = list(by)
    diff = np.asarray(a, float) - np.asarray(b, float)
    sums = np.array([diff[by[k]].sum() for k in keys])
    counts = np.array([len(by[k]) for k in keys])
    rng = np.random.default_rng(seed)
    draws = rng.integers(0, len(keys), size=(resamples, len(keys)))
    boot = sums[draws].sum(axis=1) / counts[draws].sum(axis=1)
    return float(diff.mean()), float(np.percentile(boot, 2.5)), float(np.percentile(boot, 97.5))


def report(results: dict[str, Any], resamples: int, seed: int) -> str:
    lines = [
        f"# Selection on shared candidates (best-of-{HEADLINE_N})", "",
        "| task | items | majority | weighted | learned | learned − majority [95%] | oracle | learned % of oracle | majority % of oracle | constant | copy rate (all / wrong) |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for task, res in results.items():
        s = res["per_n"][HEADLINE_N]
        mean = {k: float(np.mean(v)) for k, v in s.items()}
        d, lo, hi = paired_bootstrap(s["learned"], s["majority"], res["groups"], resamples, seed)
        oracle = mean["oracle"] or float("nan")
        lines.append(
            f"| {task} | {len(s['majority'])} | {mean['majority']:.3f} | {mean['weighted']:.3f} | {mean['learned']:.3f} | "
            f"{d:+.3f} [{lo:+.3f}, {hi:+.3f}] | {mean['oracle']:.3f} | {100 * mean['learned'] / oracle:.0f}% | "
            f"{100 * mean['majority'] / oracle:.0f}% | {mean['constant']:.3f} | "
            f"{res['copy_rate'][0]:.2f} / {res['copy_rate'][1]:.2f} |"
        )
    lines += ["", "Accuracy against candidates per request:", "",
              "| task | selector | " + " | ".join(f"n={n}" for n in NS) + " |", "|---|---|" + "---|" * len(NS)]
    for task, res in results.items():
        for sel in (*SELECTORS, "oracle"):
            cells = [f"{np.mean(res['per_n'][n][sel]):.3f}" if n in res["per_n"] else "-" for n in NS]
            lines.append(f"| {task} | {sel} | " + " | ".join(cells) + " |")
        diffs = []
        for n in NS:
            if n not in res["per_n"]:
                diffs.append("-")
                continue
            d, lo, hi = paired_bootstrap(res["per_n"][n]["learned"], res["per_n"][n]["majority"], res["groups"], resamples, seed)
            diffs.append(f"{d:+.3f} [{lo:+.3f}, {hi:+.3f}]")
        lines.append(f"| {task} | learned − majority [95%] | " + " | ".join(diffs) + " |")
    lines += ["", f"Learned models at n={HEADLINE_N} (one per training half): weights in standardised units, probe AUROC per signal.", ""]
    for task, res in results.items():
        for k, model in enumerate(res["models"][HEADLINE_N]):
            lines.append(f"- {task} half {k}: weights {model.get('weights')}; AUROC {model.get('auroc')}")
    return "\n".join(lines)


def plot(results: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(results), figsize=(4.2 * len(results), 3.6), squeeze=False)
    for ax, (task, res) in zip(axes[0], results.items(), strict=True):
        ns = sorted(res["per_n"])
        for sel, style in (("oracle", "k--"), ("majority", "C0-o"), ("weighted", "C1-s"), ("learned", "C2-^")):
            ax.plot(ns, [np.mean(res["per_n"][n][sel]) for n in ns], style, label=sel)
        ax.set_xscale("log", base=2)
        ax.set_xticks(ns, [str(n) for n in ns])
        ax.set_title(f"{task} ({len(res['groups'])} items)")
        ax.set_xlabel("candidates per request")
        ax.set_ylim(0, 1)
    axes[0][0].set_ylabel("accuracy")
    axes[0][0].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


# ---- the same-model judge's signal (--judge-items) ------------------------------------------------


def p_yes(scorer: Any, question: str, answer: str) -> float:
    """P(yes) of the embedded model asked whether `answer` answers `question`, by teacher forcing."""
    from proxy.upstream.chat_prompt import render_chat

    prompt = render_chat([{"role": "user", "content": (
        f"{question}\nProposed answer: {answer}\nIs the proposed answer correct? Reply yes or no."
    )}]).prompt

    def mass(*words: str) -> float:
        return float(np.logaddexp.reduce([sum(scorer.token_logprobs(prompt, w)) for w in words]))

    return 1.0 / (1.0 + math.exp(mass("no", "No") - mass("yes", "Yes")))


def judge_signal(scorer: Any, items: list[dict[str, Any]], count: int, seed: int) -> dict[str, Any]:
    """AUROC of the judge's P(yes) and of the vote share, right against wrong answer clusters, on
    `count` of the items (shuffled with `seed`)."""
    chosen = list(items)
    random.Random(seed).shuffle(chosen)
    chosen = chosen[:count]
    judged, shares, right = [], [], []
    for item in chosen:
        patterns = compile_patterns(PATTERNS.get(item["task"], []))
        texts = [s["text"] for samples in item["pool"].values() for s in samples]
        votes = Counter(answer_key(Candidate(0, "pool", {"role": "assistant", "content": t}), patterns) for t in texts)
        for answer, votes_for in votes.items():
            if answer is None:
                continue
            judged.append(p_yes(scorer, item["messages"][-1]["content"], answer))
            shares.append(votes_for / len(texts))
            right.append(capitals_score(answer, item["answer"]) == 1.0 if item["task"] == "capitals"
                         else answer == item["answer"])
    y = np.array(right, dtype=bool)
    both = 0 < y.sum() < len(y)  # an AUROC needs right and wrong clusters
    return {"items": len(chosen), "clusters": len(y), "right": int(y.sum()),
            "judge_auroc": float(auroc(np.array(judged), y)) if both else None,
            "vote_auroc": float(auroc(np.array(shares), y)) if both else None}


def judge_report(signals: dict[str, dict[str, Any]]) -> str:
    def fmt(x: float | None) -> str:
        return "–" if x is None else f"{x:.3f}"

    lines = ["", "Same-model judge: AUROC of P(yes) against the vote share, right vs wrong answer clusters:", "",
             "| task | items | clusters | right | judge P(yes) AUROC | vote share AUROC |", "|---|---|---|---|---|---|"]
    lines += [f"| {task} | {r['items']} | {r['clusters']} | {r['right']} | {fmt(r['judge_auroc'])} | "
              f"{fmt(r['vote_auroc'])} |" for task, r in signals.items()]
    return "\n".join(lines)


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=HelpFormatter)
    p.add_argument("--pools", type=Path, default=RESULTS / "pools")
    p.add_argument("--tasks", default="add1,legs,gcd,sum2,capitals", type=lambda s: s.split(","))
    p.add_argument("--variants", type=lambda s: s.split(","), default=None,
                   help="use only these of the pools' prompt variants (default: all)")
    p.add_argument("--resamples", type=int, default=2000)
    p.add_argument("--seed", type=int, default=12)
    p.add_argument("--out", type=Path, default=RESULTS / "select_bench", help="report path, less its suffix")
    p.add_argument("--judge-items", type=int, default=0,
                   help="also measure the same-model judge's signal on this many items per task (embedded model)")
    p.add_argument("--judge-seed", type=int, default=3)
    p.add_argument("--threads", type=int, default=None, help="llama.cpp threads for the judge")
    p.add_argument("--gate-items", type=int, default=100, help="probe items of the safety gate's constructed route")
    p.add_argument("--gate-requests", type=int, default=2000, help="fresh requests each simulated route serves")
    p.add_argument("--gate-only", action="store_true",
                   help="only the simulated routes: the safety gate's and the confidence's (no pools)")
    p.add_argument("--confidence-items", type=lambda s: [int(v) for v in s.split(",")], default=[50, 100, 400],
                   help="probe-set sizes of the simulated confidence route")
    p.add_argument("--latency", action="store_true",
                   help="only the request latency during refits, on a real proxy (bench/refit_latency.py)")
    p.add_argument("--latency-rounds", type=int, default=4)
    p.add_argument("--latency-seconds", type=float, default=15.0, help="each phase of each round")
    add_smoke(p, "small add1 and capitals pools built first, judge on 4 items")
    return apply_smoke(p.parse_args(argv), SMOKE)


async def latency_only(args: argparse.Namespace) -> None:
    result = await refit_latency.run(args.latency_rounds, args.latency_seconds)
    text = refit_latency.report(result)
    out = args.out.with_name("refit_latency")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".md").write_text(text + "\n")
    out.with_suffix(".json").write_text(json.dumps(result))
    print(text)


def gate_only(args: argparse.Namespace) -> None:
    confident = confidence_case.run(tuple(args.confidence_items), args.gate_requests, args.seed)
    text = "\n".join([confidence_case.report(confident, args.gate_requests),
                      gate_case.report(gate_case.run(args.gate_items, args.gate_requests, args.seed))])
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.with_name("gate_case").with_suffix(".md").write_text(text + "\n")
    print(text)


async def main(args: argparse.Namespace) -> None:
    if args.latency:
        await latency_only(args)
        if not args.smoke:
            return
    if args.gate_only:
        gate_only(args)
        return
    if args.smoke:
        from bench.gold_pools import make_pools

        args.pools = await make_pools(SMOKE_RESULTS / "select_bench-pools", SMOKE_TASKS, 8, logprobs=True)
    results = {}
    pools: dict[str, list[dict[str, Any]]] = {}
    for task in args.tasks:
        path = args.pools / f"{task}.jsonl"
        if not path.exists():
            print(f"{task}: no pool at {path}, skipped", file=sys.stderr)
            continue
        items = load_pools(path)
        if args.variants:
            missing = set(args.variants) - set(items[0]["pool"]) if items else set()
            if missing:
                raise SystemExit(f"{task}: the pool has no variant {sorted(missing)}")
            items = [{**i, "pool": {v: i["pool"][v] for v in args.variants}} for i in items]
        if len(items) < 4:
            print(f"{task}: {len(items)} pooled items, too few, skipped", file=sys.stderr)
            continue
        pool_size = min(len(s) for i in items for s in i["pool"].values()) * len(items[0]["pool"])
        res = await run_task(items, args.seed, [n for n in NS if n <= pool_size])
        res["copy_rate"] = copy_rate(items)
        results[task] = res
        pools[task] = items
    if not results:
        raise SystemExit("no pools to benchmark")
    gate = gate_case.run(args.gate_items, args.gate_requests, args.seed)
    confident = confidence_case.run(tuple(args.confidence_items), args.gate_requests, args.seed)
    text = "\n".join([report(results, args.resamples, args.seed), confidence_table(results),
                      confidence_case.report(confident, args.gate_requests), gate_case.report(gate)])
    if args.smoke:
        text = "(--smoke: a check of the whole path on tiny pools; these numbers measure nothing)\n\n" + text
    signals: dict[str, dict[str, Any]] = {}
    if args.judge_items > 0:
        from bench.gold_pools import Scorer
        from proxy.local.model import EmbeddedModel

        scorer = Scorer(await asyncio.to_thread(EmbeddedModel().model_path), 1024, args.threads)
        signals = {task: judge_signal(scorer, items, args.judge_items, args.judge_seed)
                   for task, items in pools.items()}
        text += "\n" + judge_report(signals)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.with_suffix(".md").write_text(text + "\n")
    args.out.with_suffix(".json").write_text(json.dumps(
        {t: {"per_n": {str(n): v for n, v in r["per_n"].items()}, "models": {str(n): m for n, m in r["models"].items()},
             "groups": r["groups"], "copy_rate": r["copy_rate"], "judge_signal": signals.get(t)}
         for t, r in results.items()} | {"gate_case": gate, "confidence_case": confident}))
    plot(results, args.out.with_suffix(".png"))
    print(text)


if __name__ == "__main__":
    asyncio.run(main(parse_args()))
