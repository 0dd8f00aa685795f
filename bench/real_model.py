"""Real-model benchmark: rvr-proxy strategies on the embedded Gemma 3 270M, scored by ground truth.

    python bench/real_model.py                 # or: rvr-proxy bench [ARGS]
    python bench/real_model.py --n 8 --tasks arith1          # a quick look (~2 min)
    python bench/real_model.py --report-only bench/results/real_model.json   # re-render only
    python bench/real_model.py --embedded-latency      # only the embedded model's latency table (below)
    python bench/real_model.py --smoke                 # both, tiny: a check of the whole path (~3-5 min)

What it does:

1. Starts the embedded model (proxy/local/model.py) twice, both on loopback: `gemma` without
   per-token logits (fast) for sampling and judging, and `gemma-logits` with `logits_all` for the
   one route whose verifier needs logprobs (llama.cpp computes a 262k-vocab logit row for every
   prompt token then, ~4x slower prompt processing on 2 cores).
2. Writes a proxy config with one route per strategy (see `STRATEGIES`) and starts the real proxy
   as a subprocess (`python -m proxy.cli serve --config FILE --port P`).
3. For every task item, sends the same 3-shot chat to every route (interleaved, so load drift
   hits all strategies alike) with `rvr.details` on, and scores the returned answer and every
   candidate with the task's own scorer (bench/real_tasks.py).
4. Reports per strategy: accuracy (± standard error), candidates and tokens per request, median
   latency, the proxy's mean `risk.baseline` / `risk.residual` next to the true RVR and residual
   computed from the scored candidates; plus the oracle best-of-N curve from the pooled samples.

Writes bench/results/real_model.{md,png,json}. Needs the `local` and `bench` extras.

`--embedded-latency` measures the embedded model server instead (issue 15, item 5): how long a
short answer takes, by OpenMP wait policy and after an abandoned request, with and without
stopping generation on hang-up. Every row starts its own model server (`EmbeddedModel`, the
proxy's settings: n_ctx 2048, threads = usable cores, no per-token logits) on the cached model
file, then per repeat (`--latency-repeats`):

- `short`: POST /v1/completions, "The sky is", max_tokens 8, temperature 0; the time to the
  complete reply.
- `after abandoned`: first a request the model would continue for 300 tokens (end-of-text
  banned), hung up once the server has used 1 s of CPU on it; then the `short` request, timed
  from the hang-up to its complete reply.

Rows: `OMP_WAIT_POLICY` ACTIVE (llama.cpp's threads spin; what the proxy ran before) and
PASSIVE (the proxy's default now), and PASSIVE without the hang-up patch
(`stop_on_disconnect=False`, the server as llama-cpp-python ships it). Medians and ranges in
seconds; the load average is printed because the machine's other work moves every number.

`--smoke` runs the strategy table on 2 items of each default task (the logprob route on 1), then
the latency table with 1 repeat, and writes to bench/results/smoke/.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import os
import statistics
import sys
import tempfile
import time
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

# `rvr-proxy bench` runs this file with runpy, so it cannot count on bench/ being on sys.path.
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the checkout: bench.*, proxy, strategies

from bench.common import (
    ENDLESS,
    RESULTS,
    SMOKE_RESULTS,
    Child,
    HelpFormatter,
    add_smoke,
    apply_smoke,
    markdown_table,
    proc_cpu_seconds,
    spread,
    start_proxy,
    wait_generating,
)
from bench.real_tasks import GOLD_ENV, Task, load_task, write_gold
from strategies.risk.estimators import expected_max

SMOKE = {"n": 2, "logprob_items": 1, "latency_repeats": 1, "out": str(SMOKE_RESULTS)}
VARIANTS = ["original", "step_by_step", "format_reminder"]
ORACLE_NS = (1, 2, 4, 8, 16, 32)


@dataclass(frozen=True)
class Strategy:
    name: str  # the route's model name
    label: str  # what the table calls it
    route: dict[str, Any]  # `strategy` + `upstream` of the route


def strategies(args: argparse.Namespace) -> list[Strategy]:
    def fixed(verifiers: list[dict[str, Any]], **extra: Any) -> dict[str, Any]:
        return {
            "name": "best_of_n",
            "max_n": args.max_n,
            "adaptive": False,
            "verifiers": verifiers,
            "k_ref": args.k_ref,
            **extra,
        }

    n, a = args.max_n, args.adaptive_max_n
    return [
        Strategy("passthrough", "passthrough (1 sample)", {"upstream": "gemma", "strategy": {"name": "passthrough"}}),
        Strategy(
            f"bon{n}-sc",
            f"best-of-{n}, self_consistency",
            {"upstream": "gemma", "strategy": fixed([{"type": "self_consistency"}])},
        ),
        Strategy(
            f"bon{n}-judge",
            f"best-of-{n}, llm_judge (same model)",
            {"upstream": "gemma", "strategy": fixed([{"type": "llm_judge", "upstream": "judge"}])},
        ),
        Strategy(
            f"bon{n}-logprob",
            f"best-of-{n}, logprob",
            {"upstream": "gemma-logits", "strategy": fixed([{"type": "logprob"}])},
        ),
        Strategy(f"bon{n}-mbr", f"best-of-{n}, mbr", {"upstream": "gemma", "strategy": fixed([{"type": "mbr"}])}),
        Strategy(
            f"bon{n}-gold",
            f"best-of-{n}, gold verifier (reference)",
            {
                "upstream": "gemma",
                "strategy": fixed([{"type": "plugin", "function": "bench.real_tasks:gold_verifier"}]),
            },
        ),
        Strategy(
            f"adaptive{a}-sc",
            f"adaptive ≤{a}, self_consistency",
            {
                "upstream": "gemma",
                "strategy": {
                    "name": "best_of_n",
                    "max_n": a,
                    "adaptive": True,
                    "verifiers": [{"type": "self_consistency"}],
                    "k_ref": args.k_ref,
                },
            },
        ),
        Strategy(
            f"bon{n}-variants-sc",
            f"best-of-{n} over 3 variants, self_consistency",
            {"upstream": "gemma", "strategy": fixed([{"type": "self_consistency"}], variants=VARIANTS)},
        ),
    ]


def proxy_config(
    fast_api: str, logits_api: str, args: argparse.Namespace, chosen: Sequence[Strategy]
) -> dict[str, Any]:
    def upstream(name: str, api_base: str, **params: Any) -> dict[str, Any]:
        return {
            "name": name,
            "litellm_params": {
                "model": "text-completion-openai/gemma",
                "api_base": api_base,
                "api_key": "none",
                **params,
            },
            "mode": "completion",  # a base model: chats are rendered to a Question/Answer transcript
            "supports_n": False,  # llama.cpp's server ignores `n`
            "max_concurrency": 1,  # and serves one request at a time
            "timeout_s": 120,
            "retries": 1,
        }

    return {
        "upstreams": [
            upstream("gemma", fast_api),
            upstream("gemma-logits", logits_api),
            # The judge is the same model. Its reply is cut after a few tokens: a 270M base model
            # never writes the "Score: N" / "Verdict: yes" line the templates ask for, but its
            # first tokens are a bare number or yes/no, which the judge's parser accepts.
            upstream("judge", fast_api, max_tokens=args.judge_max_tokens),
        ],
        "routes": [{"model": s.name, **s.route} for s in chosen],
    }


# --------------------------------------------------------------------------------- running


async def ask(
    client: Any, strategy: Strategy, messages: list[dict[str, str]], args: argparse.Namespace
) -> dict[str, Any]:
    """One request; returns the raw response fields the analysis needs, or the error."""
    extra = {} if strategy.name == "passthrough" else {"extra_body": {"rvr": {"details": True}}}
    started = time.perf_counter()
    try:
        completion = await client.chat.completions.create(
            model=strategy.name, messages=messages, temperature=args.temperature, max_tokens=args.max_tokens, **extra
        )
    except Exception as exc:  # noqa: BLE001 - a failed request is recorded, not fatal
        return {"error": f"{type(exc).__name__}: {str(exc)[:300]}", "latency_s": time.perf_counter() - started}
    latency = time.perf_counter() - started
    usage = completion.usage
    rvr = (completion.model_extra or {}).get("rvr")
    text = completion.choices[0].message.content or ""
    return {
        "text": text,
        "latency_s": latency,
        "usage": {"prompt": usage.prompt_tokens, "completion": usage.completion_tokens, "total": usage.total_tokens}
        if usage
        else None,
        "rvr": rvr,
    }


async def run(args: argparse.Namespace, tasks: list[Task], chosen: list[Strategy]) -> dict[str, Any]:
    import openai
    from tqdm import tqdm

    from proxy.local.model import EmbeddedModel

    workdir = Path(tempfile.mkdtemp(prefix="rvr-real-bench-"))
    gold = workdir / "gold.json"
    write_gold(gold, tasks)
    records: list[dict[str, Any]] = []
    started = time.time()
    # llama.cpp's server samples from a fixed default seed: the same run gives the same samples.
    # The two servers get different seeds, else their first samples of a prompt coincide.
    seed = [] if args.model_seed is None else ["--seed", str(args.model_seed)]
    other_seed = ["--seed", str(1 if args.model_seed is None else args.model_seed + 1)]
    fast = EmbeddedModel(logits_all=False, n_threads=args.threads, extra_args=seed)
    # With logits_all llama-cpp-python keeps an n_ctx x 262k-vocab float buffer (2 GB at the
    # default n_ctx of 2048): give this server only the context the longest prompt needs. It does
    # not make logprobs cheap: llama-cpp-python sorts all 262k logprobs in Python for every
    # generated token, ~0.5 s per token here, hence `--logprob-items`.
    logits = EmbeddedModel(
        logits_all=True, n_threads=args.threads, n_ctx=logits_context(tasks, args), extra_args=other_seed
    )
    proxy: Child | None = None
    try:
        print("starting the embedded model (two llama.cpp servers) ...", file=sys.stderr)
        await fast.start()
        if any(s.route["upstream"] == "gemma-logits" for s in chosen):
            await logits.start()
            logits_api = logits.api_base
        else:
            logits_api = fast.api_base
        config = proxy_config(fast.api_base, logits_api, args, chosen)
        proxy, proxy_base = await asyncio.to_thread(start_proxy, workdir, config, {GOLD_ENV: str(gold)})
        print(f"proxy at {proxy_base}, config {workdir / 'proxy.yaml'}", file=sys.stderr)
        client = openai.AsyncOpenAI(
            base_url=f"{proxy_base}/v1", api_key="unused", max_retries=0, timeout=args.timeout
        )
        jobs = [
            (task, item, [s for s in chosen if wanted(s, item.index, args)]) for task in tasks for item in task.items
        ]
        with tqdm(total=sum(len(j[2]) for j in jobs), unit="req", dynamic_ncols=True) as bar:
            for task, item, routes in jobs:
                for strategy in routes:
                    bar.set_description(f"{task.name} #{item.index} {strategy.name}")
                    result = await ask(client, strategy, item.messages, args)
                    records.append(score_record(task, item, strategy, result))
                    bar.update(1)
        await client.close()
    finally:
        if proxy is not None:
            proxy.stop()
        await logits.stop()
        await fast.stop()
    return {
        "meta": {
            "started": time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(started)),
            "wall_s": round(time.time() - started, 1),
            "command": " ".join(["python bench/real_model.py", *args.argv]),
            "args": vars(args),
            "tasks": {t.name: {"description": t.description, "items": len(t.items)} for t in tasks},
            "strategies": [{"name": s.name, "label": s.label} for s in chosen],
            "config": config,
        },
        "records": records,
    }


def wanted(strategy: Strategy, index: int, args: argparse.Namespace) -> bool:
    """The logprob route runs on the first `--logprob-items` items of each task only (cost)."""
    return strategy.route["upstream"] != "gemma-logits" or args.logprob_items < 0 or index < args.logprob_items


def logits_context(tasks: Sequence[Task], args: argparse.Namespace) -> int:
    """A power of two ≥ 256 that holds the longest rendered prompt (≤ 2 chars per token, which
    over-counts for this tokenizer) plus the answer."""
    from proxy.upstream.chat_prompt import render_chat

    longest = max(len(render_chat(item.messages).prompt) for task in tasks for item in task.items)
    need = longest // 2 + args.max_tokens + 32
    return max(256, 1 << (need - 1).bit_length())


def score_record(task: Task, item: Any, strategy: Strategy, result: dict[str, Any]) -> dict[str, Any]:
    record: dict[str, Any] = {
        "task": task.name,
        "item": item.index,
        "strategy": strategy.name,
        "question": item.question,
        "answer": item.answer,
        **result,
    }
    if "error" in result:
        return record
    record["correct"] = task.score(result["text"], item)
    rvr = result.get("rvr")
    if rvr is None:  # passthrough: its one answer is a sample from the original prompt
        record["candidates"] = [
            {"text": result["text"], "variant": "original", "correct": record["correct"], "score": None}
        ]
    else:
        texts = rvr.get("candidate_texts") or []
        variants = rvr.get("candidate_variants") or ["original"] * len(texts)
        scores = rvr.get("scores") or [None] * len(texts)
        record["candidates"] = [
            {"text": t, "variant": v, "correct": task.score(t, item), "score": s}
            for t, v, s in zip(texts, variants, scores, strict=False)
        ]
        record["rvr"] = {k: v for k, v in rvr.items() if k != "candidate_texts"}
    return record


# ------------------------------------------------------------------------------- analysis


def mean(values: Sequence[float]) -> float | None:
    return sum(values) / len(values) if values else None


def se(values: Sequence[float]) -> float | None:
    return statistics.stdev(values) / math.sqrt(len(values)) if len(values) > 1 else None


def pool(records: Sequence[dict[str, Any]]) -> dict[int, list[float]]:
    """Per item: correctness of every candidate sampled from the original prompt, all routes."""
    pooled: dict[int, list[float]] = defaultdict(list)
    for r in records:
        for c in r.get("candidates", []):
            if c["variant"] == "original":
                pooled[r["item"]].append(c["correct"])
    return pooled


def true_risk(pooled: dict[int, list[float]], k: int) -> dict[str, Any]:
    """AEU, REU_K and RVR_K (per-item unbiased expected max of K draws), with SE over items."""
    smallest = min(map(len, pooled.values()))
    k = min(k, smallest)  # as large as every item's pool allows
    aeu = [sum(v) / len(v) for v in pooled.values() if v]
    reu = [expected_max(v, k) for v in pooled.values() if v]
    rvr = [r - a for r, a in zip(reu, aeu, strict=True)]
    return {
        "k": k,
        "min_pool": smallest,
        "items": len(aeu),
        "aeu": mean(aeu),
        "reu": mean(reu),
        "rvr": mean(rvr),
        "rvr_se": se(rvr),
        "per_item_reu": reu,
    }


def oracle_curve(pooled: dict[int, list[float]]) -> list[tuple[int, float, float | None]]:
    smallest = min(map(len, pooled.values()))
    curve = []
    for n in ORACLE_NS:
        if n > smallest:
            break
        values = [expected_max(v, n) for v in pooled.values()]
        curve.append((n, mean(values), se(values)))
    return curve  # type: ignore[return-value]


def verifier_auc(records: Sequence[dict[str, Any]]) -> float | None:
    """P(the proxy scores a right candidate above a wrong one of the same request); ties and
    missing scores count half. 0.5 = no better than chance at telling right from wrong."""
    wins = pairs = 0.0
    for r in records:
        cands = r.get("candidates", [])
        right = [c["score"] for c in cands if c["correct"] == 1.0]
        wrong = [c["score"] for c in cands if c["correct"] == 0.0]
        for a in right:
            for b in wrong:
                pairs += 1
                if a is None or b is None or a == b:
                    wins += 0.5
                elif a > b:
                    wins += 1
    return wins / pairs if pairs else None


def analyze(data: dict[str, Any]) -> dict[str, Any]:
    meta, records = data["meta"], data["records"]
    k = int(meta["args"]["k_ref"])
    out: dict[str, Any] = {"tasks": {}}
    for task in meta["tasks"]:
        task_records = [r for r in records if r["task"] == task and "error" not in r]
        pooled = pool(task_records)
        if not pooled:
            continue
        truth = true_risk(pooled, k)
        rows = []
        for s in meta["strategies"]:
            rs = [r for r in records if r["task"] == task and r["strategy"] == s["name"]]
            ok = [r for r in rs if "error" not in r]
            correct = [r["correct"] for r in ok]
            cands = [c for r in ok for c in r["candidates"]]
            risks = [r["rvr"]["risk"] for r in ok if r.get("rvr") and r["rvr"].get("risk")]
            reu_by_item = dict(zip(pooled.keys(), truth["per_item_reu"], strict=True))
            acc = mean(correct)
            row = {
                "strategy": s["name"],
                "label": s["label"],
                "n": len(ok),
                "errors": len(rs) - len(ok),
                "accuracy": acc,
                "accuracy_se": math.sqrt(acc * (1 - acc) / len(ok)) if ok and acc is not None else None,
                "candidates": mean([len(r["candidates"]) if r.get("rvr") else 1 for r in ok]),
                "tokens": mean([r["usage"]["total"] for r in ok if r.get("usage")]),
                "latency_median_s": statistics.median([r["latency_s"] for r in ok]) if ok else None,
                "candidate_accuracy": mean([c["correct"] for c in cands]),
                "pass_at_own": mean([max(c["correct"] for c in r["candidates"]) for r in ok if r["candidates"]]),
                "verifier_auc": verifier_auc(ok) if s["name"] != "passthrough" else None,
                "est_baseline": mean([x["baseline"] for x in risks if x.get("baseline") is not None]),
                "est_residual": mean([x["residual"] for x in risks if x.get("residual") is not None]),
                "est_residual_n": sum(1 for x in risks if x.get("residual") is not None),
                "true_rvr": truth["rvr"],
                "true_residual": mean([reu_by_item[r["item"]] - r["correct"] for r in ok if r["item"] in reu_by_item]),
                "stop_reasons": dict(sorted(_count(r["rvr"]["stop_reason"] for r in ok if r.get("rvr")).items())),
            }
            by_variant: dict[str, list[float]] = defaultdict(list)
            for c in cands:
                by_variant[c["variant"]].append(c["correct"])
            if len(by_variant) > 1:
                row["variant_accuracy"] = {v: (mean(x), len(x)) for v, x in by_variant.items()}
            judge = _judge_parse_rate(ok)
            if judge is not None:
                row["judge_views"] = judge
            rows.append(row)
        out["tasks"][task] = {
            "truth": {k2: v for k2, v in truth.items() if k2 != "per_item_reu"},
            "oracle": oracle_curve(pooled),
            "rows": rows,
            "description": meta["tasks"][task]["description"],
        }
    return out


def _count(values: Any) -> dict[str, int]:
    counts: dict[str, int] = defaultdict(int)
    for v in values:
        counts[v] += 1
    return counts


def _judge_parse_rate(records: Sequence[dict[str, Any]]) -> dict[str, Any] | None:
    """Per judge view: share of candidates with a parsed score, mean score on right vs wrong."""
    stats: dict[str, dict[str, list[float]]] = defaultdict(lambda: {"parsed": [], "right": [], "wrong": []})
    for r in records:
        for view, values in (r.get("rvr") or {}).get("views", {}).items():
            if not view.startswith("llm_judge"):
                continue
            for value, c in zip(values, r["candidates"], strict=False):
                stats[view]["parsed"].append(value is not None)
                if value is not None:
                    stats[view]["right" if c["correct"] else "wrong"].append(value)
    if not stats:
        return None
    return {
        view: {"parsed": mean(s["parsed"]), "mean_right": mean(s["right"]), "mean_wrong": mean(s["wrong"])}
        for view, s in stats.items()
    }


# -------------------------------------------------------------------------------- reports


def _f(value: Any, digits: int = 3) -> str:
    if value is None:
        return "–"
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return str(value)


def markdown(data: dict[str, Any], result: dict[str, Any]) -> str:
    meta = data["meta"]
    args = meta["args"]
    lines = [
        "# Real-model benchmark: rvr-proxy on Gemma 3 270M (base, Q4_K_M)",
        "",
        f"Run {meta['started']}, {meta['wall_s']:.0f} s wall. Command: `{meta['command']}`.",
        f"Sampling temperature {args['temperature']}, max_tokens {args['max_tokens']}; fixed best-of-N uses "
        f"N = {args['max_n']}; judge replies capped at {args['judge_max_tokens']} tokens; "
        f"proxy `k_ref` = {args['k_ref']}.",
        "Requests go one at a time (llama.cpp serves one request at a time); latency is wall time per request.",
        "",
    ]
    for task, t in result["tasks"].items():
        truth = t["truth"]
        lines += [
            f"## {task}: {t['description']}",
            "",
            f"Ground truth from the pooled original-prompt samples of all routes ({truth['items']} items, "
            f"≥ {truth['min_pool']} samples each): AEU (one-sample accuracy) = {_f(truth['aeu'])}, "
            f"REU_{truth['k']} = {_f(truth['reu'])}, **true RVR (K = {truth['k']}) = {_f(truth['rvr'])} "
            f"± {_f(truth['rvr_se'])}**."
            + (
                f" (K is below the proxy's k_ref = {args['k_ref']}: the smallest pool holds {truth['min_pool']}.)"
                if truth["k"] < args["k_ref"]
                else ""
            ),
            "",
            "| strategy | n | accuracy ± SE | cand./req | tokens/req | latency p50 (s) | cand. acc. | pass@own | "
            "verifier AUC | est. baseline | true RVR | est. residual | true residual |",
            "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
        ]
        for row in t["rows"]:
            acc = f"{_f(row['accuracy'])} ± {_f(row['accuracy_se'])}"
            errors = f" ({row['errors']} err)" if row["errors"] else ""
            lines.append(
                f"| {row['label']} | {row['n']}{errors} | {acc} | "
                f"{_f(row['candidates'], 1)} | {_f(row['tokens'], 0)} | {_f(row['latency_median_s'], 2)} | "
                f"{_f(row['candidate_accuracy'])} | {_f(row['pass_at_own'])} | {_f(row['verifier_auc'], 2)} | "
                f"{_f(row['est_baseline'])} | {_f(row['true_rvr'])} | "
                f"{_f(row['est_residual'])} | {_f(row['true_residual'])} |"
            )
        oracle = ", ".join(f"N={n}: {_f(v)}" for n, v, _ in t["oracle"])
        lines += ["", f"Oracle best-of-N accuracy (expected best of N pooled samples, perfect verifier): {oracle}.", ""]
        notes = []
        for row in t["rows"]:
            if row.get("variant_accuracy"):
                va = ", ".join(f"{v} {_f(a)} (n={n})" for v, (a, n) in row["variant_accuracy"].items())
                notes.append(f"- {row['label']}: candidate accuracy by variant: {va}.")
            if row.get("judge_views"):
                jv = "; ".join(
                    f"`{v}` parsed {_f(s['parsed'], 2)}, mean score right {_f(s['mean_right'], 2)} / "
                    f"wrong {_f(s['mean_wrong'], 2)}"
                    for v, s in row["judge_views"].items()
                )
                notes.append(f"- {row['label']}: judge views: {jv}.")
            if row["stop_reasons"] and row["strategy"].startswith("adaptive"):
                notes.append(f"- {row['label']}: stop reasons {row['stop_reasons']}.")
        lines += notes + [""]
    lines += [
        "Columns: *accuracy* = share of requests whose returned answer the task scorer accepts (SE = binomial); "
        "*cand./req*, *tokens/req* from the response (`rvr.candidates`, `usage.total_tokens`, judge calls included); "
        "*cand. acc.* = share of the route's own candidates that are right; *pass@own* = share of requests with "
        "at least "
        "one right candidate (what a perfect verifier would have returned); *verifier AUC* = chance that the proxy "
        "scored a right candidate above a wrong one of the same request "
        "(ties and missing scores count ½; 0.5 = chance); "
        "*est. baseline* / *est. residual* = mean `rvr.risk.baseline` / `rvr.risk.residual` (the proxy's estimates, "
        "from its verifier scores, extrapolated to `k_ref`); *true RVR* = REU_K − AEU from the task scorer over the "
        "pooled samples; *true residual* = REU_K − accuracy (what is still lost after the route's selection).",
        "",
    ]
    return "\n".join(lines)


def plot(result: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    tasks = list(result["tasks"].items())
    fig, axes = plt.subplots(1, len(tasks), figsize=(7 * len(tasks), 5.6), squeeze=False)
    markers = "osD^vP*Xh<>"
    handles: dict[str, Any] = {}
    for ax, (task, t) in zip(axes[0], tasks, strict=False):
        ns = [n for n, _, _ in t["oracle"]]
        values = [v for _, v, _ in t["oracle"]]
        handles["oracle"] = ax.plot(ns, values, "k--", marker=".", lw=1.5)[0]
        ax.fill_between(
            ns,
            [v - (e or 0) for _, v, e in t["oracle"]],
            [v + (e or 0) for _, v, e in t["oracle"]],
            color="k",
            alpha=0.08,
            lw=0,
        )
        handles["aeu"] = ax.axhline(t["truth"]["aeu"], color="grey", ls=":", lw=1)
        rows = [r for r in t["rows"] if r["accuracy"] is not None]
        # Routes with the same candidate count are spread sideways so none hides another.
        groups: dict[int, list[int]] = defaultdict(list)
        for i, row in enumerate(rows):
            groups[round(math.log2(row["candidates"]) * 4)].append(i)
        for members in groups.values():
            for k, i in enumerate(members):
                row = rows[i]
                x = row["candidates"] * 2 ** ((k - (len(members) - 1) / 2) * 0.09)
                j = [r["strategy"] for r in t["rows"]].index(row["strategy"])
                handles[row["label"]] = ax.errorbar(
                    x,
                    row["accuracy"],
                    yerr=row["accuracy_se"],
                    fmt=markers[j % len(markers)],
                    color=f"C{j % 10}",
                    ms=8,
                    capsize=3,
                    elinewidth=1,
                )
        ax.set_xscale("log", base=2)
        top = max(ns + [r["candidates"] for r in rows])
        ticks = [n for n in (1, 2, 4, 8, 16, 32, 64) if n <= top * 1.2]
        ax.set_xticks(ticks, [str(n) for n in ticks])
        ax.set_xlim(0.75, top * 1.35)
        ax.set_ylim(0, min(1.02, max(values + [r["accuracy"] + (r["accuracy_se"] or 0) for r in rows]) + 0.08))
        ax.set_xlabel("candidates per request (log scale)")
        ax.set_ylabel("accuracy (task scorer)")
        truth = t["truth"]
        ax.set_title(
            f"{task} ({truth['items']} items): AEU {truth['aeu']:.2f}, "
            f"REU@{truth['k']} {truth['reu']:.2f}, true RVR {truth['rvr']:.2f}",
            fontsize=10,
        )
        ax.grid(alpha=0.3)
    labels = {
        "oracle": "oracle best-of-N from pooled samples (perfect verifier: the ceiling)",
        "aeu": "one-sample accuracy (AEU)",
    }
    order = ["oracle", "aeu"] + [r["label"] for _, t in tasks for r in t["rows"] if r["label"] in handles]
    order = list(dict.fromkeys(order))
    fig.legend(
        [handles[k] for k in order],
        [labels[k] if k in labels else str(k) for k in order],
        loc="lower center",
        ncol=2,
        fontsize=8.5,
        frameon=False,
    )
    fig.suptitle("rvr-proxy strategies on Gemma 3 270M (base): accuracy ± SE vs candidates per request", fontsize=12)
    fig.tight_layout(rect=(0, 0.06 + 0.025 * math.ceil(len(handles) / 2), 1, 1))
    fig.savefig(path, dpi=110)
    plt.close(fig)


# ------------------------------------------------------------------ embedded model latency

SHORT = {"model": "gemma", "prompt": "The sky is", "max_tokens": 8, "temperature": 0}
LATENCY_ROWS = (  # label, OMP_WAIT_POLICY, stop generating on hang-up, after an abandoned request
    ("short, OMP_WAIT_POLICY=ACTIVE", "ACTIVE", True, False),
    ("short, PASSIVE", "PASSIVE", True, False),
    ("after abandoned, PASSIVE, stop on hang-up", "PASSIVE", True, True),
    ("after abandoned, PASSIVE, no stop (as shipped)", "PASSIVE", False, True),
)


async def latency_row(policy: str, stop_on_disconnect: bool, repeats: int, abandoned: bool,
                      threads: int | None) -> list[float]:
    import contextlib

    import httpx

    from proxy.local.model import EmbeddedModel

    async def short(client: httpx.AsyncClient, api_base: str) -> None:
        r = await client.post(f"{api_base}/completions", json=SHORT)
        r.raise_for_status()

    os.environ["OMP_WAIT_POLICY"] = policy  # the child inherits it; the proxy only sets a default
    model = EmbeddedModel(logits_all=False, stop_on_disconnect=stop_on_disconnect, n_threads=threads)
    await model.start()
    times = []
    try:
        async with httpx.AsyncClient(timeout=900) as client:
            await short(client, model.api_base)  # warm-up
            for _ in range(repeats):
                if abandoned:
                    assert model.pid is not None
                    since = proc_cpu_seconds(model.pid)
                    body = {"model": "gemma", **ENDLESS, "max_tokens": 300}
                    long = asyncio.ensure_future(client.post(f"{model.api_base}/completions", json=body))
                    await wait_generating(model.pid, since)
                    long.cancel()
                    with contextlib.suppress(asyncio.CancelledError):
                        await long
                start = time.monotonic()
                await short(client, model.api_base)
                times.append(time.monotonic() - start)
    finally:
        await model.stop()
    return times


async def embedded_latency(args: argparse.Namespace) -> str:
    policy = os.environ.get("OMP_WAIT_POLICY")
    lines = [f"load average before: {os.getloadavg()[0]:.1f}; cores usable: {len(os.sched_getaffinity(0))}", ""]
    rows = []
    try:
        for label, omp, stop, abandoned in LATENCY_ROWS:
            times = await latency_row(omp, stop, args.latency_repeats, abandoned, args.threads)
            rows.append([label, len(times), spread(times)])
            print(f"{label}: {spread(times)} s", file=sys.stderr, flush=True)
    finally:
        if policy is None:
            os.environ.pop("OMP_WAIT_POLICY", None)
        else:
            os.environ["OMP_WAIT_POLICY"] = policy
    lines.append(markdown_table(["case", "n", "median s (range)"], rows, "lrr"))
    lines += ["", f"load average after: {os.getloadavg()[0]:.1f}"]
    return "\n".join(lines)


# ----------------------------------------------------------------------------------- main


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="rvr-proxy bench",
        description=__doc__.split("\n\n")[0],
        formatter_class=HelpFormatter,
    )
    p.add_argument(
        "--tasks",
        default="arith1,rg:basic_arithmetic",
        help="comma-separated: arith1, rg:<reasoning-gym dataset> (e.g. rg:gsm_symbolic)",
    )
    p.add_argument("--n", type=int, default=16, help="items per task")
    p.add_argument("--seed", type=int, default=1, help="seed of the task items and their few-shot examples")
    p.add_argument(
        "--model-seed",
        type=int,
        default=None,
        help="llama.cpp sampling seed (-1: random); by default the server's fixed seed, so a rerun repeats its samples",
    )
    p.add_argument("--strategies", default="", help="comma-separated route names to run (default: all)")
    p.add_argument("--max-n", type=int, default=8, help="N of the fixed best-of-N routes")
    p.add_argument("--adaptive-max-n", type=int, default=16, help="max_n of the adaptive best-of-N route")
    p.add_argument("--k-ref", type=int, default=32, help="the proxy's k_ref and the K of the true RVR")
    p.add_argument("--temperature", type=float, default=0.8, help="sampling temperature of every request")
    p.add_argument("--max-tokens", type=int, default=16, help="max_tokens of every request")
    p.add_argument(
        "--logprob-items",
        type=int,
        default=8,
        help="run the logprob route on this many items per task (-1: all); each of its requests "
        "takes ~25 s, as llama-cpp-python's logprobs cost ~0.5 s per generated token",
    )
    p.add_argument("--judge-max-tokens", type=int, default=3,
                   help="max_tokens of the judge's replies (llm_judge routes)")
    p.add_argument("--threads", type=int, default=None, help="llama.cpp threads (default: the CPUs we may use)")
    p.add_argument("--timeout", type=float, default=300.0, help="per request, seconds")
    p.add_argument("--out", default=str(RESULTS), help="directory for real_model.{md,png,json}")
    p.add_argument("--report-only", metavar="JSON", help="re-render the report from a saved run; runs nothing")
    p.add_argument("--embedded-latency", action="store_true",
                   help="measure the embedded model's latency by OpenMP policy and after an abandoned request instead")
    p.add_argument("--latency-repeats", type=int, default=3, help="with --embedded-latency: repeats of each row")
    add_smoke(p, "2 items per task, the logprob route on 1; then the latency table with 1 repeat")
    return apply_smoke(p.parse_args(argv), SMOKE)


def strategy_table(args: argparse.Namespace, out: Path) -> int:
    """The strategy benchmark (or its re-render); 1 when a request failed, 2 when it cannot run."""
    if args.report_only:
        data = json.loads(Path(args.report_only).read_text())
    else:
        tasks = [load_task(spec.strip(), args.n, args.seed) for spec in args.tasks.split(",") if spec.strip()]
        chosen = strategies(args)
        if args.strategies:
            wanted = {s.strip() for s in args.strategies.split(",")}
            unknown = wanted - {s.name for s in chosen}
            if unknown:
                print(f"unknown strategies {sorted(unknown)}; known: {[s.name for s in chosen]}", file=sys.stderr)
                return 2
            chosen = [s for s in chosen if s.name in wanted]
        data = asyncio.run(run(args, tasks, chosen))
        (out / "real_model.json").write_text(json.dumps(data, indent=1))
    result = analyze(data)
    text = markdown(data, result)
    (out / "real_model.md").write_text(text)
    plot(result, out / "real_model.png")
    print(text)
    written = [out / "real_model.md", out / "real_model.png"] + ([] if args.report_only else [out / "real_model.json"])
    print("wrote " + ", ".join(map(str, written)), file=sys.stderr)
    failed = sum("error" in r for r in data["records"])
    if failed and not args.report_only:
        print(f"{failed} request(s) failed (see the table's err counts)", file=sys.stderr)
        return 1
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["--"]:  # `rvr-proxy bench -- ARGS`: the CLI passes the separator through
        argv = argv[1:]
    args = parse_args(argv)
    args.argv = argv
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    latency = args.embedded_latency or (args.smoke and not args.report_only)
    if latency or not args.report_only:
        from proxy.local.model import embedded_available

        problem = embedded_available()
        if problem is not None:
            print(problem, file=sys.stderr)
            return 2
    status = 0 if args.embedded_latency else strategy_table(args, out)
    if latency and status != 2:
        text = "## Embedded model latency\n\n" + asyncio.run(embedded_latency(args))
        (out / "embedded_latency.md").write_text(text + "\n")
        print("\n" + text)
        print(f"wrote {out / 'embedded_latency.md'}", file=sys.stderr)
    return status


if __name__ == "__main__":
    sys.exit(main())
