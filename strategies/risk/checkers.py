"""Gold checkers for probe items: a candidate's text and the item's answer → utility in [0, 1].

- `exact`: the text, or the answer extracted from it, equals the gold answer once both are
  normalized (case, whitespace, a trailing period, number formatting);
- `numeric`: the extracted answer is the gold number (fractions and thousands separators
  understood, relative tolerance 1e-9);
- `regex`: the gold answer is a pattern (RE2, linear time) found in the text;
- `choice`: the extracted option letter equals the gold letter;
- `plugin:package.module:function`: `function(text, item) -> float` in [0, 1].

A checker that raises or returns something outside [0, 1] is a probe error, never utility 0:
a broken checker must not look like a bad model.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from fractions import Fraction
from typing import Any

from strategies.answers import extract_answer, normalize_answer
from strategies.safe_regex import compile_pattern, search

Checker = Callable[[str, Mapping[str, Any]], float]
BUILT_IN = ("exact", "numeric", "regex", "choice")


class CheckerError(ValueError):
    """The checker could not score a candidate; the probe counts an error, not a 0."""


def _norm(text: str) -> str:
    return " ".join(text.strip().rstrip(".").split()).casefold()


def exact(text: str, item: Mapping[str, Any]) -> float:
    gold = _norm(str(item["answer"]))
    extracted = extract_answer(text)
    return float(_norm(text) == gold or (extracted is not None and _norm(extracted) == _norm(normalize_answer(gold))))


def _number(value: str) -> Fraction | None:
    try:
        return Fraction(value.replace(",", ""))
    except (ValueError, ZeroDivisionError):
        return None


def numeric(text: str, item: Mapping[str, Any]) -> float:
    gold = _number(str(item["answer"]).strip())
    if gold is None:
        raise CheckerError(f"the gold answer {str(item['answer'])[:40]!r} is not a number")
    extracted = extract_answer(text)
    got = _number(extracted) if extracted is not None else None
    if got is None:
        return 0.0
    return float(math.isclose(float(got), float(gold), rel_tol=1e-9, abs_tol=1e-12))


def regex(text: str, item: Mapping[str, Any]) -> float:
    try:
        pattern = compile_pattern(str(item["answer"]))
    except ValueError as exc:
        raise CheckerError(f"the gold pattern does not compile: {exc}") from None
    return float(search(pattern, text))


def choice(text: str, item: Mapping[str, Any]) -> float:
    gold = str(item["answer"]).strip().strip("()").casefold()
    extracted = extract_answer(text)
    return float(extracted is not None and extracted.strip("()").casefold() == gold)


def build_checker(spec: str) -> Checker:
    """The checker a probe config names; a `plugin:` path is imported here, once."""
    if spec in BUILT_IN:
        return {"exact": exact, "numeric": numeric, "regex": regex, "choice": choice}[spec]
    if spec.startswith("plugin:"):
        from strategies.verifiers.plugin import load_function

        return load_function(spec.removeprefix("plugin:"))
    raise ValueError(f"unknown checker {spec!r}; use one of {', '.join(BUILT_IN)} or plugin:package.module:function")


def score(checker: Checker, text: str, item: Mapping[str, Any]) -> float:
    """The checker's utility, validated; raises `CheckerError` for anything but a number in [0, 1]."""
    try:
        value = checker(text, item)
    except CheckerError:
        raise
    except Exception as exc:  # noqa: BLE001 - a plugin may raise anything
        raise CheckerError(f"the checker raised {type(exc).__name__}: {str(exc)[:200]}") from None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0.0 <= float(value) <= 1.0:
        raise CheckerError(f"the checker returned {value!r}, not a utility in [0, 1]")
    return float(value)
