"""Tasks with ground truth for the embedded-model benchmarks: bench/real_model.py, and the pools of
bench/gold_pools.py that bench/select_bench.py and bench/validate_calibration.py replay.

Every task item is asked as a short chat: three solved examples as earlier user/assistant turns,
then the question. The proxy renders that to its "Question:/Answer:" transcript for the base model
(proxy/upstream/chat_prompt.py), so the few-shot examples, the prompt variants (which rewrite only the last
user message) and the LLM judge (which sees the whole conversation) all work on one request shape.

Scoring is the task's own: an answer is extracted from the candidate text (`extract_answer`), then
- `arith1`: BIG-bench-style 1-digit addition ("What is 3 plus 4?"), exact match with the sum;
- `rg:<name>`: reasoning-gym's `dataset.score_answer(answer, item)`. Its default scorer gives
  partial credit when the oracle string occurs inside the answer ("12" for "2" scores 0.5), which
  means nothing for numbers, so an item counts as correct only when the scorer returns 1.0.

`capitals` (the capital of 118 countries) is the control task of the selection benchmark, where
majority vote already works (see its section below).

`gold_verifier` is a plugin verifier (`function: "bench.real_tasks:gold_verifier"`) that scores
candidates with the task scorer: the "correct verifier" reference route. It reads the gold
answers from the JSON file named by `$RVR_BENCH_GOLD`, written by the benchmark before the proxy
starts.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import re
import unicodedata
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
    line's first number. This is the protocol proxy/upstream/chat_prompt.py measured its format with."""
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


# --- capitals: the control task of the selection benchmark ----------------------------------
#
# The embedded 270M model names the capital of a well-known country right in most samples, so
# the vote is usually right and there is little for a learned selector to add: what this task
# measures is that learned selection does no harm where agreement suffices. Countries whose
# capital has common variant names, is disputed or equals the country's name are left out.
#
# The answer is the first line's leading words ("Paris", "Paris.", "Paris <s>..." and "The capital
# of France is Paris" all answer Paris); accents and case are ignored, so "Brasilia" answers
# Brasília. Routes extract it with the same pattern (`CAPITALS_PATTERN`, a self-consistency pattern).

CAPITALS: tuple[tuple[str, str], ...] = (
    ("France", "Paris"), ("Germany", "Berlin"), ("Italy", "Rome"), ("Spain", "Madrid"),
    ("Portugal", "Lisbon"), ("Japan", "Tokyo"), ("China", "Beijing"), ("Russia", "Moscow"),
    ("Egypt", "Cairo"), ("Greece", "Athens"), ("Ireland", "Dublin"), ("Norway", "Oslo"),
    ("Sweden", "Stockholm"), ("Finland", "Helsinki"), ("Denmark", "Copenhagen"), ("Poland", "Warsaw"),
    ("Austria", "Vienna"), ("Hungary", "Budapest"), ("Belgium", "Brussels"), ("the Netherlands", "Amsterdam"),
    ("the Czech Republic", "Prague"), ("Romania", "Bucharest"), ("Bulgaria", "Sofia"), ("Serbia", "Belgrade"),
    ("Croatia", "Zagreb"), ("Iceland", "Reykjavik"), ("Latvia", "Riga"), ("Lithuania", "Vilnius"),
    ("Estonia", "Tallinn"), ("Slovakia", "Bratislava"), ("Slovenia", "Ljubljana"), ("Albania", "Tirana"),
    ("Cyprus", "Nicosia"), ("Malta", "Valletta"), ("Turkey", "Ankara"), ("Iran", "Tehran"),
    ("Iraq", "Baghdad"), ("Syria", "Damascus"), ("Lebanon", "Beirut"), ("Jordan", "Amman"),
    ("Saudi Arabia", "Riyadh"), ("Qatar", "Doha"), ("Oman", "Muscat"), ("Afghanistan", "Kabul"),
    ("Pakistan", "Islamabad"), ("India", "New Delhi"), ("Nepal", "Kathmandu"), ("Bangladesh", "Dhaka"),
    ("Thailand", "Bangkok"), ("Vietnam", "Hanoi"), ("Cambodia", "Phnom Penh"), ("Laos", "Vientiane"),
    ("Malaysia", "Kuala Lumpur"), ("Indonesia", "Jakarta"), ("the Philippines", "Manila"), ("South Korea", "Seoul"),
    ("North Korea", "Pyongyang"), ("Uzbekistan", "Tashkent"), ("Australia", "Canberra"), ("New Zealand", "Wellington"),
    ("Fiji", "Suva"), ("Canada", "Ottawa"), ("Cuba", "Havana"), ("Jamaica", "Kingston"),
    ("Honduras", "Tegucigalpa"), ("Nicaragua", "Managua"), ("Costa Rica", "San José"), ("Colombia", "Bogotá"),
    ("Venezuela", "Caracas"), ("Ecuador", "Quito"), ("Peru", "Lima"), ("Chile", "Santiago"),
    ("Argentina", "Buenos Aires"), ("Uruguay", "Montevideo"), ("Paraguay", "Asunción"), ("Brazil", "Brasília"),
    ("Morocco", "Rabat"), ("Algeria", "Algiers"), ("Tunisia", "Tunis"), ("Libya", "Tripoli"),
    ("Sudan", "Khartoum"), ("Ethiopia", "Addis Ababa"), ("Kenya", "Nairobi"), ("Uganda", "Kampala"),
    ("Rwanda", "Kigali"), ("Nigeria", "Abuja"), ("Ghana", "Accra"), ("Senegal", "Dakar"),
    ("Mali", "Bamako"), ("Niger", "Niamey"), ("Cameroon", "Yaoundé"), ("Angola", "Luanda"),
    ("Zambia", "Lusaka"), ("Zimbabwe", "Harare"), ("Mozambique", "Maputo"), ("Madagascar", "Antananarivo"),
    ("Namibia", "Windhoek"), ("Botswana", "Gaborone"), ("Somalia", "Mogadishu"), ("Liberia", "Monrovia"),
    ("Sierra Leone", "Freetown"), ("Guinea", "Conakry"), ("Gabon", "Libreville"), ("Malawi", "Lilongwe"),
    ("Switzerland", "Bern"), ("Georgia", "Tbilisi"), ("Armenia", "Yerevan"), ("Azerbaijan", "Baku"),
    ("Belarus", "Minsk"), ("Bosnia and Herzegovina", "Sarajevo"), ("Montenegro", "Podgorica"), ("North Macedonia", "Skopje"),
    ("Kyrgyzstan", "Bishkek"), ("Tajikistan", "Dushanbe"), ("Bhutan", "Thimphu"), ("Bahrain", "Manama"),
    ("the United Kingdom", "London"), ("Eritrea", "Asmara"),
)
# The first line's leading words (letters, spaces, hyphens, apostrophes), after an optional
# "The capital (of X) is".
CAPITALS_PATTERN = r"^\s*(?:(?i:the\s+capital\s+(?:of\s+[^\n]*?\s+)?is)\s+)?([^\W\d_]+(?:[ '\-][^\W\d_]+)*)"
_CAPITAL = re.compile(CAPITALS_PATTERN)


def capital_question(country: str) -> str:
    return f"What is the capital of {country}?"


def capitals_items(seeds: int) -> list[tuple[str, str, str, list[tuple[str, str]]]]:
    """(id, question, answer, shots) for every country × `seeds` few-shot sets of three others."""
    out = []
    for seed in range(seeds):
        rng = random.Random(2000 + seed)
        for country, capital in CAPITALS:
            others = rng.sample([c for c in CAPITALS if c[0] != country], 3)
            shots = [(capital_question(c), a) for c, a in others]
            out.append((f"capitals-s{seed}-{country}", capital_question(country), capital, shots))
    return out


def _normalized(text: str) -> str:
    plain = unicodedata.normalize("NFKD", text).encode("ascii", "ignore").decode()
    return " ".join(plain.lower().split())


def capitals_score(text: str, capital: str) -> float:
    found = _CAPITAL.match(text)
    return float(found is not None and _normalized(found.group(1)) == _normalized(capital))


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


# --- self-check ----------------------------------------------------------------------------


def self_check(tasks: Sequence[str], size: int) -> list[tuple[str, int, int, int]]:
    """(task, items, gold answers scored right, wrong answers scored right) per task: the scorers
    the benchmarks rely on, checked against each item's own answer and a wrong one."""
    rows = []
    for spec in tasks:
        task = load_task(spec, size, seed=0)
        right = sum(task.score(f"The answer is {item.answer}.", item) == 1.0 for item in task.items)
        wrong = sum(task.score("The answer is 123456789.", item) == 1.0 for item in task.items)
        rows.append((task.name, len(task.items), right, wrong))
    pairs = capitals_items(1)
    right = sum(capitals_score(f"{a}.", a) == 1.0 for _, _, a, _ in pairs)
    wrong = sum(capitals_score("Atlantis", a) == 1.0 for _, _, a, _ in pairs)
    rows.append(("capitals", len(pairs), right, wrong))
    return rows


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Check the tasks' scorers against their own gold answers.")
    # Defaults written out: this module runs without the checkout on sys.path, so without
    # bench.common's HelpFormatter.
    parser.add_argument("--tasks", default="arith1,rg:leg_counting,rg:gcd",
                        help="comma-separated task specs (default: %(default)s)")
    parser.add_argument("--size", type=int, default=200, help="items per task (default: %(default)s)")
    parser.add_argument("--smoke", action="store_true", help="arith1 only, 10 items (no reasoning-gym needed)")
    args = parser.parse_args(argv)
    tasks, size = (["arith1"], 10) if args.smoke else (args.tasks.split(","), args.size)
    rows = self_check(tasks, size)
    print("| task | items | gold scored right | wrong scored right |\n|---|---:|---:|---:|")
    for name, n, right, wrong in rows:
        print(f"| {name} | {n} | {right} | {wrong} |")
    return 0 if all(right == n and wrong == 0 for _, n, right, wrong in rows) else 1


if __name__ == "__main__":
    raise SystemExit(main())
