"""Tasks with ground truth for the real-model benchmark (bench/real_model.py).

Every task item is asked as a short chat: three solved examples as earlier user/assistant turns,
then the question. The proxy renders that to its "Question:/Answer:" transcript for the base model
(proxy/chat_prompt.py), so the few-shot examples, the prompt variants (which rewrite only the last
user message) and the LLM judge (which sees the whole conversation) all work on one request shape.

Scoring is the task's own: an answer is extracted from the candidate text (`extract_answer`), then
- `arith1`: BIG-bench-style 1-digit addition ("What is 3 plus 4?"), exact match with the sum;
- `rg:<name>`: reasoning-gym's `dataset.score_answer(answer, item)`. Its default scorer gives
  partial credit when the oracle string occurs inside the answer ("12" for "2" scores 0.5), which
  means nothing for numbers, so an item counts as correct only when the scorer returns 1.0.

`gold_verifier` is a plugin verifier (`function: "bench.real_tasks:gold_verifier"`) that scores
candidates with the task scorer: the "correct verifier" reference route. It reads the gold
answers from the JSON file named by `$RVR_BENCH_GOLD`, written by the benchmark before the proxy
starts.
"""

from __future__ import annotations

import json
import os
import random
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

GOLD_ENV = "RVR_BENCH_GOLD"
SHOTS = 3

# Default task specs: name -> reasoning-gym dataset config. The 270M base model scores ~0 on
# anything harder than single-digit operands (2-digit addition: 0/20 in every mode; gsm_symbolic
# ~1% per sample), and a task it never solves carries no signal about selection.
RG_CONFIGS: dict[str, dict[str, Any]] = {
    "basic_arithmetic": {
        "min_terms": 2,
        "max_terms": 2,
        "min_digits": 1,
        "max_digits": 1,
        "operators": ["+", "-"],
        "allow_parentheses": False,
        "allow_negation": False,
    },
    "gsm_symbolic": {},
}


@dataclass
class Item:
    task: str
    index: int
    question: str
    answer: str
    messages: list[dict[str, str]]
    raw: dict[str, Any] = field(default_factory=dict)  # the reasoning-gym entry


@dataclass
class Task:
    name: str
    items: list[Item]
    score: Callable[[str, Item], float]  # candidate text -> 1.0 right / 0.0 wrong
    description: str


# --- answer extraction ---------------------------------------------------------------------

_NUMBER = re.compile(r"-?\d+(?:\.\d+)?")
_ANSWER_IS = re.compile(r"answer is\s*:?\s*\**\s*(-?\d+(?:\.\d+)?)", re.IGNORECASE)
_AFTER_EQUALS = re.compile(r"=\s*(-?\d+(?:\.\d+)?)")


def extract_answer(text: str) -> str | None:
    """The number a short answer gives: the last "answer is N" anywhere (what the format_reminder
    variant asks for); else the number after "=" in the first non-empty line ("3+4=7"); else that
    line's first number. This is the protocol proxy/chat_prompt.py measured its format with."""
    phrase = _ANSWER_IS.findall(text)
    if phrase:
        return _canonical(phrase[-1])
    line = next((ln for ln in text.strip().splitlines() if ln.strip()), "")
    found = _AFTER_EQUALS.search(line) or _NUMBER.search(line)
    if found is None:
        return None
    return _canonical(found.group(1) if found.lastindex else found.group(0))


def _canonical(number: str) -> str:
    if "." in number:
        number = number.rstrip("0").rstrip(".")
    return "0" if number in ("-0", "") else number


# --- tasks ---------------------------------------------------------------------------------


def few_shot(shots: Sequence[tuple[str, str]], question: str) -> list[dict[str, str]]:
    messages: list[dict[str, str]] = []
    for q, a in shots:
        messages += [{"role": "user", "content": q}, {"role": "assistant", "content": a}]
    return messages + [{"role": "user", "content": question}]


def arith1(size: int, seed: int) -> Task:
    """BIG-bench `arithmetic` 1-digit addition, generated locally: "What is a plus b?"."""
    rng = random.Random(seed)
    shot_rng = random.Random(seed + 10_000)
    shots = [
        (f"What is {a} plus {b}?", str(a + b))
        for a, b in ((shot_rng.randint(0, 9), shot_rng.randint(0, 9)) for _ in range(SHOTS))
    ]
    items = []
    for i in range(size):
        a, b = rng.randint(0, 9), rng.randint(0, 9)
        question = f"What is {a} plus {b}?"
        items.append(Item("arith1", i, question, str(a + b), few_shot(shots, question)))

    def score(text: str, item: Item) -> float:
        return 1.0 if extract_answer(text) == item.answer else 0.0

    return Task("arith1", items, score, "BIG-bench-style 1-digit addition, 3-shot, exact match")


def reasoning_gym_task(name: str, size: int, seed: int) -> Task:
    import reasoning_gym as rg

    config = RG_CONFIGS.get(name, {})
    dataset = rg.create_dataset(name, size=size, seed=seed, **config)
    shot_set = rg.create_dataset(name, size=SHOTS, seed=seed + 10_000, **config)
    shots = [(str(e["question"]), str(e["answer"])) for e in shot_set]
    items = [
        Item(f"rg:{name}", i, str(e["question"]), str(e["answer"]), few_shot(shots, str(e["question"])), dict(e))
        for i, e in enumerate(dataset)
    ]

    def score(text: str, item: Item) -> float:
        return 1.0 if dataset.score_answer(extract_answer(text), item.raw) == 1.0 else 0.0

    where = f" ({', '.join(f'{k}={v}' for k, v in config.items())})" if config else ""
    return Task(f"rg:{name}", items, score, f"reasoning-gym `{name}`{where}, 3-shot, score_answer == 1")


def load_task(spec: str, size: int, seed: int) -> Task:
    """`arith1` or `rg:<reasoning-gym dataset name>`."""
    if spec == "arith1":
        return arith1(size, seed)
    if spec.startswith("rg:"):
        return reasoning_gym_task(spec[3:], size, seed)
    raise ValueError(f"unknown task {spec!r}: use arith1 or rg:<reasoning-gym dataset>")


# --- the gold verifier plugin --------------------------------------------------------------


def write_gold(path: str | os.PathLike[str], tasks: Sequence[Task]) -> None:
    """question -> (task spec, item fields) for `gold_verifier`, one file for all tasks."""
    gold: dict[str, Any] = {}
    for task in tasks:
        for item in task.items:
            gold[item.question] = {"task": task.name, "answer": item.answer, "raw": item.raw}
    with open(path, "w", encoding="utf-8") as fh:
        json.dump(gold, fh)


_GOLD_CACHE: dict[str, Any] = {}


def _gold() -> dict[str, Any]:
    path = os.environ.get(GOLD_ENV, "")
    if path not in _GOLD_CACHE:
        with open(path, encoding="utf-8") as fh:
            _GOLD_CACHE[path] = json.load(fh)
    return _GOLD_CACHE[path]  # type: ignore[no-any-return]


def _scorer(task: str) -> Callable[[str, dict[str, Any]], float]:
    if task == "arith1":
        return lambda text, entry: 1.0 if extract_answer(text) == entry["answer"] else 0.0
    import reasoning_gym as rg

    name = task[3:]
    score_answer = rg.create_dataset(name, size=1, seed=0, **RG_CONFIGS.get(name, {})).score_answer
    return lambda text, entry: 1.0 if score_answer(extract_answer(text), entry["raw"]) == 1.0 else 0.0


def gold_verifier(ctx: Any, candidates: Sequence[Any]) -> list[float | None]:
    """A perfect verifier: 1 for a right answer, 0 for a wrong one, by the task's own scorer."""
    last_user = next((m for m in reversed(list(ctx.messages)) if m.get("role") == "user"), None)
    question = last_user.get("content") if last_user else None
    entry = _gold().get(question) if isinstance(question, str) else None
    if entry is None:
        return [None] * len(candidates)
    score = _scorer(entry["task"])
    return [score(c.text, entry) for c in candidates]
