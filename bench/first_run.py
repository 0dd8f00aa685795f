"""First-run benchmark: does the zero-config `gemma-best` route beat `gemma` (passthrough)?

    python bench/first_run.py                       # all questions (~200), default config
    python bench/first_run.py --limit 10            # a quick look
    python bench/first_run.py --out /tmp/first_run.md --records /tmp/first_run.json
    python bench/first_run.py --report-only /tmp/first_run.json   # re-render (also a partial run)
    python bench/first_run.py --smoke               # 6 questions: a check of the whole path
    python bench/first_run.py --fusion              # also `gemma-fused`: Gemma as its own fuser
    python bench/first_run.py --smoke --fusion      # the same check with the fused route

What it does: starts `rvr-proxy serve` with nothing configured (no --config, no RVR_CONFIG /
RVR_UPSTREAM_* in its environment), exactly as a first-time user runs it, so the proxy starts the
embedded Gemma 3 270M base model via llama.cpp and serves the routes of proxy/config/default_config.yaml:
`gemma` (passthrough) and `gemma-best` (best-of-8, self_consistency, confidence stop). Then it
sends every question, phrased as a user would type it, as a one-message chat to both routes (same
order; `gemma` first, then `gemma-best`) through the official openai SDK with max_tokens=16 and
the routes' default temperature, and scores both replies against the gold answer.

Questions (generated deterministically, `--seed`): ~100 arithmetic (small +, -, x), ~50 short
facts with one-word answers, ~50 yes/no questions.

Scoring rule (a reply is correct when):
- number gold: strategies.answers.extract_answer(reply) equals the gold number, or the gold number
  occurs in the reply as a whole word, not part of "-GOLD" or a decimal
  (regex `(?<![\\w.-])GOLD(?!\\w|\\.\\d)`);
- word gold (facts): the gold word (or one of its listed aliases) occurs in the reply as a
  case-insensitive whole word;
- yes/no gold: the first whole word "yes" or "no" in the reply (case-insensitive) equals the gold;
  a reply with neither is wrong.
A failed request counts as wrong and is reported, and the exit status is then 1.

Table: per category and overall: n, accuracy of each route, the paired difference
(gemma-best - gemma) with a 95% percentile interval from a paired bootstrap over questions
(2000 resamples, numpy, fixed seed), and the mean candidates (`rvr.candidates`) and total tokens
(`usage.total_tokens`) per gemma-best request (gemma's tokens shown for comparison).

`--fusion` (issue 23, method §10.8): in the same run, on the same questions, also ask a third route,
`gemma-fused`: gemma-best's strategy (proxy/config/default_config.yaml) plus
`selection.fusion: {fuser: gemma-up, top_k: 4, min_clusters: 2, when: always}`, so Gemma writes the
final answer from the top (at most 4) distinct answer clusters' representatives, shown anonymized
and shuffled (strategies/selection/fusion.py `DEFAULT_TEMPLATE`). Only the zero-config proxy can
start the embedded model, so it is kept exactly as above and a SECOND proxy is started
(`python -m proxy.cli serve --config FILE --port P`, bench.common.start_proxy) whose one upstream,
`gemma-up` (`openai/gemma`, supports_n false, max_concurrency 1, retries 0), is the first proxy's
passthrough `gemma` route, and which serves `gemma-fused`. Every question goes to `gemma`, then
`gemma-best`, then `gemma-fused`, with the same max_tokens and client settings (the fuser call gets
the client's max_tokens too). The report then has three tables:
- accuracy: each route's, and the paired bootstrap differences best - gemma, fused - best and
  fused - gemma with 95% intervals;
- cost: mean sampled candidates (`rvr.candidates`, less the fused answer, which the proxy counts as
  a candidate), mean `usage.total_tokens` and mean latency per request and route;
- fusion: how often gemma-fused fused (`rvr.fusion.fused`), skipped (`skipped`) or had its fuser
  fail (`error`); how often the fused answer agreed with the selection (`agrees`); on fused
  requests, the accuracy of the selection's own choice (`selected_candidate`) against the fused
  answer's; and served minus own-selection accuracy over all gemma-fused requests (a paired,
  within-request measure of what fusion changed, free of the sampling noise between gemma-best's
  and gemma-fused's candidates). Then the skip reasons and fuser errors, grouped and counted, the
  tokens per upstream (`rvr.cost.by_upstream`; candidates and fuser share `gemma-up`) and the
  fuser call's tokens, estimated as total minus sampled candidates x `rvr.cost.single_call_tokens`.
The records then also hold `gemma-fused` (with `fusion`, `by_upstream`, `single_call_tokens`,
`selected`), and `--report-only` renders the fusion report for records that hold it. Without
`--fusion` nothing changes: one proxy, two routes, the same table and records.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import random
import re
import shlex
import sys
import tempfile
import time
from collections import Counter
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the checkout: bench.*, proxy, strategies

import yaml

from bench.common import ROOT, Child, HelpFormatter, add_smoke, apply_smoke, free_port, markdown_table, start_proxy
from strategies.answers import extract_answer

SMOKE = {"limit": 6, "bootstrap": 200}  # the first 6 questions hold all three categories
ROUTES = ("gemma", "gemma-best")
CATEGORIES = ("arithmetic", "facts", "yes/no")
# What a zero-config start must not inherit from the caller's shell.
CONFIG_ENV = ("RVR_CONFIG", "RVR_UPSTREAM_API_BASE", "RVR_UPSTREAM_MODEL")
# --fusion: the third route, served by a second proxy whose one upstream is the first's `gemma`.
FUSED = "gemma-fused"
FUSION_ROUTES = (*ROUTES, FUSED)
FUSER_UPSTREAM = "gemma-up"
FUSION = {"fuser": FUSER_UPSTREAM, "top_k": 4, "min_clusters": 2, "when": "always"}
DEFAULT_CONFIG = ROOT / "proxy" / "config" / "default_config.yaml"


@dataclass(frozen=True)
class Question:
    category: str
    kind: str  # "number" | "word" | "yesno"
    text: str
    gold: str
    aliases: tuple[str, ...] = ()


# ----------------------------------------------------------------------------- questions

# (question, gold, aliases): answers that are unambiguous and one word.
FACTS: list[tuple[str, str, tuple[str, ...]]] = [
    ("What is the capital of France?", "Paris", ()),
    ("what's the capital of Japan", "Tokyo", ()),
    ("What is the capital of Italy?", "Rome", ()),
    ("capital of Germany?", "Berlin", ()),
    ("What is the capital of Spain?", "Madrid", ()),
    ("What's the capital of the United Kingdom?", "London", ()),
    ("what is the capital of russia", "Moscow", ()),
    ("What is the capital of Egypt?", "Cairo", ()),
    ("Which city is the capital of Greece?", "Athens", ()),
    ("What is the capital of Portugal?", "Lisbon", ()),
    ("what's the capital of Ireland?", "Dublin", ()),
    ("What is the capital city of Norway?", "Oslo", ()),
    ("What is the capital of Sweden?", "Stockholm", ()),
    ("capital of Austria", "Vienna", ()),
    ("What is the capital of Poland?", "Warsaw", ()),
    ("What is the capital of China?", "Beijing", ("Peking",)),
    ("What's the capital of Canada?", "Ottawa", ()),
    ("What is the capital of Kenya?", "Nairobi", ()),
    ("What is the capital of Thailand?", "Bangkok", ()),
    ("What color is the sky on a clear day?", "blue", ()),
    ("what color is grass", "green", ()),
    ("What color is snow?", "white", ()),
    ("What colour is a ripe banana?", "yellow", ()),
    ("What color do you get when you mix blue and yellow?", "green", ()),
    ("What color is coal?", "black", ()),
    ("How many days are in a week?", "7", ("seven",)),
    ("how many legs does a spider have", "8", ("eight",)),
    ("How many legs does a dog have?", "4", ("four",)),
    ("How many months are in a year?", "12", ("twelve",)),
    ("How many hours are in a day?", "24", ("twenty-four",)),
    ("how many minutes are in an hour?", "60", ("sixty",)),
    ("How many sides does a triangle have?", "3", ("three",)),
    ("How many sides does a square have?", "4", ("four",)),
    ("How many continents are there?", "7", ("seven",)),
    ("What is the largest planet in our solar system?", "Jupiter", ()),
    ("Which planet is known as the Red Planet?", "Mars", ()),
    ("What planet do we live on?", "Earth", ()),
    ("What is frozen water called?", "ice", ()),
    ("What gas do humans need to breathe to survive?", "oxygen", ()),
    ("what is the opposite of hot", "cold", ()),
    ("What is the opposite of up?", "down", ()),
    ("What is the opposite of day?", "night", ()),
    ("What animal says moo?", "cow", ("cows",)),
    ("What animal barks?", "dog", ("dogs",)),
    ("What do bees make?", "honey", ()),
    ("What is the largest ocean on Earth?", "Pacific", ()),
    ("Which day comes after Monday?", "Tuesday", ()),
    ("What day comes before Sunday?", "Saturday", ()),
    ("What month comes after January?", "February", ()),
    ("What is the first letter of the English alphabet?", "A", ()),
]

ADD = ["What is {a} + {b}?", "what's {a} plus {b}", "How much is {a} plus {b}?", "{a}+{b}=?",
       "What is {a} plus {b}?", "what is {a} + {b}", "Can you add {a} and {b}?"]
SUB = ["What is {a} - {b}?", "what's {a} minus {b}", "How much is {a} minus {b}?", "{a}-{b}=?",
       "What is {a} minus {b}?", "what do you get if you take {b} from {a}?"]
MUL = ["What is {a} * {b}?", "what's {a} times {b}", "How much is {a} times {b}?", "{a}x{b}=?",
       "What is {a} multiplied by {b}?", "what is {a} times {b}?"]


def arithmetic(rng: random.Random, count: int) -> list[Question]:
    out: list[Question] = []
    for i in range(count):
        op = ("+", "-", "*")[i % 3]
        if op == "+":
            a, b = rng.randint(1, 20), rng.randint(1, 20)
            text, gold = rng.choice(ADD).format(a=a, b=b), a + b
        elif op == "-":
            a = rng.randint(2, 20)
            b = rng.randint(1, a)
            text, gold = rng.choice(SUB).format(a=a, b=b), a - b
        else:
            a, b = rng.randint(2, 10), rng.randint(2, 10)
            text, gold = rng.choice(MUL).format(a=a, b=b), a * b
        out.append(Question("arithmetic", "number", text, str(gold)))
    return out


YES_NO_FACTS: list[tuple[str, str]] = [
    ("Is the sun a star?", "yes"),
    ("Is the earth flat?", "no"),
    ("Do fish live in water?", "yes"),
    ("Can a dog fly?", "no"),
    ("Is ice cold?", "yes"),
    ("Is fire cold?", "no"),
    ("Is Paris in France?", "yes"),
    ("Is Tokyo in Brazil?", "no"),
    ("Does a week have seven days?", "yes"),
    ("Does a triangle have four sides?", "no"),
]


def yes_no(rng: random.Random, count: int) -> list[Question]:
    out = [Question("yes/no", "yesno", q, g) for q, g in YES_NO_FACTS]
    i = 0
    while len(out) < count:
        form = i % 4
        i += 1
        if form == 0:
            a, b = rng.sample(range(1, 30), 2)
            text = rng.choice(["Is {a} greater than {b}?", "is {a} bigger than {b}", "Is {a} larger than {b}?"])
            out.append(Question("yes/no", "yesno", text.format(a=a, b=b), "yes" if a > b else "no"))
        elif form == 1:
            a, b = rng.sample(range(1, 30), 2)
            text = rng.choice(["Is {a} less than {b}?", "is {a} smaller than {b}?"])
            out.append(Question("yes/no", "yesno", text.format(a=a, b=b), "yes" if a < b else "no"))
        elif form == 2:
            n = rng.randint(1, 40)
            text = rng.choice(["Is {n} an even number?", "is {n} even?", "Is {n} odd?"]).format(n=n)
            even = n % 2 == 0
            gold = (not even) if "odd" in text else even
            out.append(Question("yes/no", "yesno", text, "yes" if gold else "no"))
        else:
            a, b = rng.randint(1, 9), rng.randint(1, 9)
            shown = a + b + rng.choice([0, 0, 1, -1, 2])
            text = rng.choice(["Is {a} + {b} equal to {s}?", "does {a} plus {b} equal {s}?"]).format(a=a, b=b, s=shown)
            out.append(Question("yes/no", "yesno", text, "yes" if shown == a + b else "no"))
    return out


def questions(seed: int) -> list[Question]:
    rng = random.Random(seed)
    facts = [Question("facts", "number" if gold.isdigit() else "word", q, gold, aliases) for q, gold, aliases in FACTS]
    pool = arithmetic(rng, 100) + facts + yes_no(rng, 50)
    # Interleave categories so a --limit run samples all three.
    rng.shuffle(pool)
    return pool


# ------------------------------------------------------------------------------- scoring


def whole_word(word: str, text: str) -> bool:
    # A number is not matched inside "-2" or "1.5": the sign and the decimal point belong to it.
    before = r"(?<![\w.\-])" if word.isdigit() else r"(?<![\w.])"
    return re.search(rf"{before}{re.escape(word)}(?![\w]|\.\d)", text, re.IGNORECASE) is not None


def correct(q: Question, reply: str | None) -> bool:
    if not reply:
        return False
    if q.kind == "number":
        if extract_answer(reply) == q.gold or whole_word(q.gold, reply):
            return True
        return any(whole_word(a, reply) for a in q.aliases)
    if q.kind == "word":
        return any(whole_word(w, reply) for w in (q.gold, *q.aliases))
    found = re.search(r"\b(yes|no)\b", reply, re.IGNORECASE)
    return found is not None and found.group(1).lower() == q.gold


# ------------------------------------------------------------------------------- running


def start_default_proxy(workdir: Path) -> tuple[Child, str]:
    """`rvr-proxy serve` with no config: the embedded model and proxy/config/default_config.yaml."""
    port = free_port()
    command = [sys.executable, "-m", "proxy.cli", "serve", "--port", str(port), "--log-level", "warning"]
    child = Child("proxy", command, workdir, env={"LITELLM_LOCAL_MODEL_COST_MAP": "True", "PYTHONUNBUFFERED": "1"},
                  drop=CONFIG_ENV)
    base = f"http://127.0.0.1:{port}"
    try:
        child.wait_ready(f"{base}/readyz", timeout=600)  # first start may unpack the model
    except BaseException:
        child.stop()
        raise
    return child, base


def fusion_config(first_base: str) -> dict[str, Any]:
    """The second proxy's config: `gemma-up` (the first proxy's passthrough `gemma` route) and
    `gemma-fused`, gemma-best's strategy from the default config plus the fusion block."""
    default = yaml.safe_load(DEFAULT_CONFIG.read_text())
    best = next(r for r in default["routes"] if r["model"] == "gemma-best")
    strategy = copy.deepcopy(best["strategy"])
    strategy.setdefault("selection", {})["fusion"] = dict(FUSION)
    upstream = {
        "name": FUSER_UPSTREAM,
        "litellm_params": {"model": "openai/gemma", "api_base": f"{first_base}/v1", "api_key": "none"},
        "supports_n": False,
        "max_concurrency": 1,
        "retries": 0,
    }
    return {"server": {}, "upstreams": [upstream],
            "routes": [{"model": FUSED, "upstream": FUSER_UPSTREAM, "strategy": strategy}]}


def start_fusion_proxy(workdir: Path, first_base: str) -> tuple[Child, str]:
    """`python -m proxy.cli serve --config FILE --port P` serving `gemma-fused` (its own workdir:
    bench.common.start_proxy names its config and log as the first proxy's log is named)."""
    own = workdir / "fusion"
    own.mkdir(parents=True, exist_ok=True)
    return start_proxy(own, fusion_config(first_base))


def ask(client: Any, route: str, q: Question, max_tokens: int) -> dict[str, Any]:
    extra = {"extra_body": {"rvr": {"details": True}}} if route != "gemma" else {}
    started = time.perf_counter()
    try:
        completion = client.chat.completions.create(
            model=route, messages=[{"role": "user", "content": q.text}], max_tokens=max_tokens, **extra
        )
    except Exception as exc:  # noqa: BLE001 - a failed request is recorded and scored wrong
        return {"error": f"{type(exc).__name__}: {str(exc)[:300]}", "latency_s": time.perf_counter() - started,
                "correct": False}
    text = completion.choices[0].message.content or ""
    rvr = (completion.model_extra or {}).get("rvr")
    usage = completion.usage
    out = {
        "text": text,
        "correct": correct(q, text),
        "latency_s": round(time.perf_counter() - started, 3),
        "total_tokens": usage.total_tokens if usage else None,
        "candidates": rvr.get("candidates") if rvr else 1,
        "stop_reason": rvr.get("stop_reason") if rvr else None,
        "candidate_texts": rvr.get("candidate_texts") if rvr else None,
        "candidates_correct": [correct(q, t) for t in rvr.get("candidate_texts") or []] if rvr else None,
        "scores": rvr.get("scores") if rvr else None,
    }
    if rvr and "fusion" in rvr:  # only a route with selection.fusion: gemma-fused
        cost = rvr.get("cost") or {}
        out.update(fusion=rvr["fusion"], selected=rvr.get("selected"), by_upstream=cost.get("by_upstream"),
                   single_call_tokens=cost.get("single_call_tokens"))
    return out


# ------------------------------------------------------------------------------- report


def bootstrap_diff(a: Any, b: Any, resamples: int, seed: int) -> tuple[float, float, float]:
    """Mean of b - a with a 95% percentile interval from a paired bootstrap over questions."""
    import numpy as np

    diff = np.asarray(b, dtype=float) - np.asarray(a, dtype=float)
    if diff.size == 0:
        return float("nan"), float("nan"), float("nan")
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, diff.size, size=(resamples, diff.size))
    means = diff[idx].mean(axis=1)
    lo, hi = np.percentile(means, [2.5, 97.5])
    return float(diff.mean()), float(lo), float(hi)


def table(records: list[dict[str, Any]], resamples: int, seed: int) -> str:
    import numpy as np

    header = ["category", "n", "gemma acc", "gemma-best acc", "diff (best - gemma) [95% CI]",
              "gemma-best mean candidates", "gemma-best mean tokens", "gemma mean tokens", "errors (gemma / best)"]
    out = []
    groups = [(c, [r for r in records if r["category"] == c]) for c in CATEGORIES] + [("overall", records)]
    for name, rows in groups:
        if not rows:
            continue
        plain = [r["gemma"]["correct"] for r in rows]
        best = [r["gemma-best"]["correct"] for r in rows]
        mean, lo, hi = bootstrap_diff(plain, best, resamples, seed)

        def avg(route: str, field: str, rows: list[dict[str, Any]] = rows) -> str:
            values = [r[route][field] for r in rows if r[route].get(field) is not None]
            return f"{np.mean(values):.1f}" if values else "n/a"

        errors = f"{sum('error' in r['gemma'] for r in rows)} / {sum('error' in r['gemma-best'] for r in rows)}"
        out.append([name, len(rows), f"{np.mean(plain):.1%}", f"{np.mean(best):.1%}",
                    f"{mean:+.1%} [{lo:+.1%}, {hi:+.1%}]", avg("gemma-best", "candidates"),
                    avg("gemma-best", "total_tokens"), avg("gemma", "total_tokens"), errors])
    return markdown_table(header, out, "lrrrlrrrr")


def groups_of(records: list[dict[str, Any]]) -> list[tuple[str, list[dict[str, Any]]]]:
    groups = [(c, [r for r in records if r["category"] == c]) for c in CATEGORIES] + [("overall", records)]
    return [(name, rows) for name, rows in groups if rows]


def sampled(answer: dict[str, Any]) -> int | None:
    """Candidates the route sampled: `rvr.candidates` counts a fused answer as one more."""
    if answer.get("candidates") is None:
        return None
    return answer["candidates"] - (1 if (answer.get("fusion") or {}).get("fused") else 0)


def selection_correct(answer: dict[str, Any]) -> bool:
    """Whether gemma-fused's own selection was right: the candidate it chose before fusing
    (`rvr.fusion.selected_candidate`), else (skipped, fuser failed) the answer it served."""
    fusion = answer.get("fusion") or {}
    index, marks = fusion.get("selected_candidate"), answer.get("candidates_correct") or []
    if fusion.get("fused") and index is not None and 0 <= index < len(marks):
        return bool(marks[index])
    return bool(answer.get("correct"))


def fusion_tables(records: list[dict[str, Any]], resamples: int, seed: int) -> str:
    """--fusion: accuracy of the three routes, their cost, and what fusion did."""
    import numpy as np

    def ci(a: list[bool], b: list[bool]) -> str:
        mean, lo, hi = bootstrap_diff(a, b, resamples, seed)
        return f"{mean:+.1%} [{lo:+.1%}, {hi:+.1%}]"

    def avg(values: list[Any], spec: str = ".1f") -> str:
        values = [v for v in values if v is not None]
        return format(float(np.mean(values)), spec) if values else "n/a"

    acc_header = ["category", "n", "gemma acc", "gemma-best acc", "gemma-fused acc",
                  "diff (best - gemma) [95% CI]", "diff (fused - best) [95% CI]", "diff (fused - gemma) [95% CI]",
                  "errors (gemma / best / fused)"]
    cost_header = ["category", "n", "gemma mean tokens", "gemma-best mean candidates", "gemma-best mean tokens",
                   "gemma-fused mean candidates (sampled)", "gemma-fused mean tokens",
                   "mean latency s (gemma / best / fused)"]
    fusion_header = ["category", "n", "fused", "skipped", "fuser failed", "request failed",
                     "fused agrees with selection", "fused requests: selection acc -> fused acc",
                     "fused: wrong->right / right->wrong", "served - own selection, all fused-route requests [95% CI]"]
    acc_rows, cost_rows, fusion_rows = [], [], []
    for name, rows in groups_of(records):
        ok = {route: [r[route]["correct"] for r in rows] for route in FUSION_ROUTES}
        errors = " / ".join(str(sum("error" in r[route] for r in rows)) for route in FUSION_ROUTES)
        acc_rows.append([name, len(rows), *(f"{np.mean(ok[route]):.1%}" for route in FUSION_ROUTES),
                         ci(ok["gemma"], ok["gemma-best"]), ci(ok["gemma-best"], ok[FUSED]), ci(ok["gemma"], ok[FUSED]),
                         errors])
        latency = " / ".join(avg([r[route].get("latency_s") for r in rows], ".2f") for route in FUSION_ROUTES)
        cost_rows.append([name, len(rows), avg([r["gemma"].get("total_tokens") for r in rows]),
                          avg([r["gemma-best"].get("candidates") for r in rows]),
                          avg([r["gemma-best"].get("total_tokens") for r in rows]),
                          avg([sampled(r[FUSED]) for r in rows]), avg([r[FUSED].get("total_tokens") for r in rows]),
                          latency])
        answers = [r[FUSED] for r in rows]
        fusions = [a.get("fusion") or {} for a in answers]
        fused = [a for a, f in zip(answers, fusions, strict=True) if f.get("fused")]
        agrees = sum(bool(a["fusion"].get("agrees")) for a in fused)
        before = [selection_correct(a) for a in fused]
        after = [bool(a["correct"]) for a in fused]
        gained = sum(a and not b for a, b in zip(after, before, strict=True))
        lost = sum(b and not a for a, b in zip(after, before, strict=True))
        changed = (f"{np.mean(before):.1%} -> {np.mean(after):.1%} ({sum(before)} -> {sum(after)})"
                   if fused else "n/a")
        fusion_rows.append([name, len(rows), len(fused), sum("skipped" in f for f in fusions),
                            sum("error" in f for f in fusions), sum("error" in a for a in answers),
                            f"{agrees} / {len(fused)}", changed, f"{gained} / {lost}",
                            ci([selection_correct(a) for a in answers], [bool(a["correct"]) for a in answers])])

    fusions = [r[FUSED].get("fusion") or {} for r in records]
    skipped = Counter(f["skipped"] for f in fusions if "skipped" in f)
    failed = Counter(f["error"] for f in fusions if "error" in f)
    requests = Counter(r[FUSED]["error"] for r in records if "error" in r[FUSED])
    by_upstream: dict[str, list[float]] = {}
    for r in records:
        for upstream, usage in (r[FUSED].get("by_upstream") or {}).items():
            by_upstream.setdefault(upstream, []).append((usage or {}).get("total_tokens") or 0)
    answered = [r[FUSED] for r in records if "error" not in r[FUSED]]
    fuser_tokens = [a["total_tokens"] - sampled(a) * a["single_call_tokens"] for a in answered
                    if (a.get("fusion") or {}).get("fused") and a.get("total_tokens") is not None
                    and a.get("single_call_tokens")]

    def counted(counter: Counter[str], none: str) -> str:
        return "\n".join(f"- {n} x {why}" for why, n in counter.most_common()) if counter else f"- {none}"

    per_upstream = ", ".join(f"`{u}` {np.mean(v):.1f} (in {len(v)} of {len(answered)} answered requests)"
                             for u, v in by_upstream.items()) or "none reported"
    return (
        f"Accuracy\n\n{markdown_table(acc_header, acc_rows, 'lrrrrlllr')}\n\n"
        f"Cost per request\n\n{markdown_table(cost_header, cost_rows, 'lrrrrrrr')}\n\n"
        f"Fusion (`{FUSED}`: `rvr.fusion`)\n\n{markdown_table(fusion_header, fusion_rows, 'lrrrrrrrrl')}\n\n"
        f"Skip reasons (`rvr.fusion.skipped`):\n{counted(skipped, 'none')}\n\n"
        f"Fuser failures (`rvr.fusion.error`; the selected answer was served):\n{counted(failed, 'none')}\n\n"
        f"Failed `{FUSED}` requests:\n{counted(requests, 'none')}\n\n"
        f"`{FUSED}` mean tokens per request by upstream (`rvr.cost.by_upstream`): {per_upstream}\n\n"
        f"Fuser call, estimated tokens (total - sampled candidates x `single_call_tokens`, fused requests): "
        f"mean {avg(fuser_tokens)} over {len(fuser_tokens)}"
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0], formatter_class=HelpFormatter)
    parser.add_argument("--limit", type=int, default=None, help="only the first N questions")
    parser.add_argument("--out", type=Path, default=None, help="write the Markdown table here")
    parser.add_argument("--records", type=Path, default=None, help="write every question's replies here (JSON)")
    parser.add_argument("--max-tokens", type=int, default=16)
    parser.add_argument("--seed", type=int, default=0, help="question generation seed")
    parser.add_argument("--bootstrap", type=int, default=2000, help="paired bootstrap resamples")
    parser.add_argument("--bootstrap-seed", type=int, default=12345)
    parser.add_argument("--report-only", type=Path, default=None, metavar="RECORDS",
                        help="re-render the table from a --records file (e.g. of an interrupted run); no model")
    parser.add_argument("--fusion", action="store_true",
                        help=f"also ask `{FUSED}` (gemma-best plus Gemma as its own fuser) through a second proxy")
    add_smoke(parser, "the first 6 questions (all three categories), 200 bootstrap resamples")
    args = apply_smoke(parser.parse_args(argv), SMOKE)
    command = shlex.join([os.path.relpath(sys.executable, ROOT) if sys.executable.startswith(str(ROOT))
                          else "python", "bench/first_run.py", *(sys.argv[1:] if argv is None else argv)])

    if args.report_only:  # re-scored with this file's rule, so a scoring fix needs no re-run
        records = json.loads(args.report_only.read_text())
        args.fusion = bool(records) and FUSED in records[0]  # the records say which routes were asked
        for record in records:
            q = Question(record["category"], record["kind"], record["text"], record["gold"], tuple(record["aliases"]))
            for route in FUSION_ROUTES if args.fusion else ROUTES:
                record[route]["correct"] = correct(q, record[route].get("text"))
            if args.fusion and record[FUSED].get("candidate_texts") is not None:
                record[FUSED]["candidates_correct"] = [correct(q, t) for t in record[FUSED]["candidate_texts"]]
        return report(records, args, command)

    import openai
    from tqdm import tqdm

    qs = questions(args.seed)[: args.limit]
    workdir = Path(tempfile.mkdtemp(prefix="rvr-first-run-"))
    records: list[dict[str, Any]] = []
    started = time.perf_counter()
    proxy, base = start_default_proxy(workdir)
    fused_proxy: Child | None = None
    try:
        client = openai.OpenAI(base_url=f"{base}/v1", api_key="unused", max_retries=0, timeout=300)
        served = {m.id for m in client.models.list()}
        missing = set(ROUTES) - served
        if missing:
            raise SystemExit(f"the default proxy does not serve {sorted(missing)} (serves {sorted(served)})")
        clients = dict.fromkeys(ROUTES, client)
        if args.fusion:
            fused_proxy, fused_base = start_fusion_proxy(workdir, base)
            clients[FUSED] = openai.OpenAI(base_url=f"{fused_base}/v1", api_key="unused", max_retries=0, timeout=300)
            served = {m.id for m in clients[FUSED].models.list()}
            if FUSED not in served:
                raise SystemExit(f"the fusion proxy does not serve {FUSED} (serves {sorted(served)})")
        for q in tqdm(qs, desc="questions", unit="q"):
            record: dict[str, Any] = asdict(q)
            for route, route_client in clients.items():
                record[route] = ask(route_client, route, q, args.max_tokens)
            records.append(record)
            if args.records:
                args.records.write_text(json.dumps(records, indent=1))
    except KeyboardInterrupt:
        print(f"interrupted after {len(records)} questions", file=sys.stderr)
    finally:
        if fused_proxy is not None:
            fused_proxy.stop()
        proxy.stop()
    if args.fusion:
        print(f"proxy logs: {workdir}/proxy.log, {workdir}/fusion/proxy.log", file=sys.stderr)

    return report(records, args, command, time.perf_counter() - started)


def report(records: list[dict[str, Any]], args: argparse.Namespace, command: str, wall_s: float | None = None) -> int:
    if not records:
        print("no questions completed", file=sys.stderr)
        return 1
    if args.fusion:
        return fusion_report(records, args, command, wall_s)
    text = (
        f"First-run benchmark: `gemma` vs `gemma-best` (zero-config default), {len(records)} questions, "
        f"max_tokens={args.max_tokens}, routes' default temperature\n\n"
        f"{table(records, args.bootstrap, args.bootstrap_seed)}"
        f"\n\nCommand: `{command}`\n"
    )
    return publish(text, records, ROUTES, args.out)


def publish(text: str, records: list[dict[str, Any]], routes: tuple[str, ...], out: Path | None) -> int:
    """Print the report (and write it to `out`); 1 when any request of `routes` failed."""
    print(text)
    if out:
        out.write_text(text)
    failed = sum("error" in r[route] for r in records for route in routes)
    if failed:
        print(f"{failed} request(s) failed (counted wrong in the table)", file=sys.stderr)
    return 1 if failed else 0


def fusion_report(records: list[dict[str, Any]], args: argparse.Namespace, command: str, wall_s: float | None) -> int:
    wall = f"Wall time: {wall_s:.0f} s (both proxies' start included)\n" if wall_s is not None else ""
    text = (
        f"First-run benchmark with fusion: `gemma` vs `gemma-best` (zero-config default) vs `{FUSED}` "
        f"(gemma-best's strategy plus `selection.fusion: {json.dumps(FUSION)}`, Gemma as its own fuser, "
        f"through a second proxy), {len(records)} questions, max_tokens={args.max_tokens}, "
        f"routes' default temperature\n\n"
        f"{fusion_tables(records, args.bootstrap, args.bootstrap_seed)}"
        f"\n\n{wall}Command: `{command}`\n"
    )
    return publish(text, records, FUSION_ROUTES, args.out)


if __name__ == "__main__":
    sys.exit(main())
