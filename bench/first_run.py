"""First-run benchmark: does the zero-config `gemma-best` route beat `gemma` (passthrough)?

    python bench/first_run.py                       # all questions (~200), default config
    python bench/first_run.py --limit 10            # a quick look
    python bench/first_run.py --out /tmp/first_run.md --records /tmp/first_run.json
    python bench/first_run.py --report-only /tmp/first_run.json   # re-render (also a partial run)
    python bench/first_run.py --smoke               # 6 questions: a check of the whole path

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
"""

from __future__ import annotations

import argparse
import json
import os
import random
import re
import shlex
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the checkout: bench.*, proxy, strategies

from bench.common import ROOT, Child, HelpFormatter, add_smoke, apply_smoke, free_port, markdown_table
from strategies.answers import extract_answer

SMOKE = {"limit": 6, "bootstrap": 200}  # the first 6 questions hold all three categories
ROUTES = ("gemma", "gemma-best")
CATEGORIES = ("arithmetic", "facts", "yes/no")
# What a zero-config start must not inherit from the caller's shell.
CONFIG_ENV = ("RVR_CONFIG", "RVR_UPSTREAM_API_BASE", "RVR_UPSTREAM_MODEL")


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
    return {
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
    add_smoke(parser, "the first 6 questions (all three categories), 200 bootstrap resamples")
    args = apply_smoke(parser.parse_args(argv), SMOKE)
    command = shlex.join([os.path.relpath(sys.executable, ROOT) if sys.executable.startswith(str(ROOT))
                          else "python", "bench/first_run.py", *(sys.argv[1:] if argv is None else argv)])

    if args.report_only:  # re-scored with this file's rule, so a scoring fix needs no re-run
        records = json.loads(args.report_only.read_text())
        for record in records:
            q = Question(record["category"], record["kind"], record["text"], record["gold"], tuple(record["aliases"]))
            for route in ROUTES:
                record[route]["correct"] = correct(q, record[route].get("text"))
        return report(records, args, command)

    import openai
    from tqdm import tqdm

    qs = questions(args.seed)[: args.limit]
    workdir = Path(tempfile.mkdtemp(prefix="rvr-first-run-"))
    records: list[dict[str, Any]] = []
    proxy, base = start_default_proxy(workdir)
    try:
        client = openai.OpenAI(base_url=f"{base}/v1", api_key="unused", max_retries=0, timeout=300)
        served = {m.id for m in client.models.list()}
        missing = set(ROUTES) - served
        if missing:
            raise SystemExit(f"the default proxy does not serve {sorted(missing)} (serves {sorted(served)})")
        for q in tqdm(qs, desc="questions", unit="q"):
            record: dict[str, Any] = asdict(q)
            for route in ROUTES:
                record[route] = ask(client, route, q, args.max_tokens)
            records.append(record)
            if args.records:
                args.records.write_text(json.dumps(records, indent=1))
    except KeyboardInterrupt:
        print(f"interrupted after {len(records)} questions", file=sys.stderr)
    finally:
        proxy.stop()

    return report(records, args, command)


def report(records: list[dict[str, Any]], args: argparse.Namespace, command: str) -> int:
    if not records:
        print("no questions completed", file=sys.stderr)
        return 1
    text = (
        f"First-run benchmark: `gemma` vs `gemma-best` (zero-config default), {len(records)} questions, "
        f"max_tokens={args.max_tokens}, routes' default temperature\n\n"
        f"{table(records, args.bootstrap, args.bootstrap_seed)}"
        f"\n\nCommand: `{command}`\n"
    )
    print(text)
    if args.out:
        args.out.write_text(text)
    failed = sum("error" in r[route] for r in records for route in ROUTES)
    if failed:
        print(f"{failed} request(s) failed (counted wrong in the table)", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
