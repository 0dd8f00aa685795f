"""A user verifier loaded by import path in the strategy tests (`tests.plugin_verifier:prefers_short`)."""

from __future__ import annotations

import random
from collections.abc import Sequence

from strategies.contract import Candidate, VerifyContext


def prefers_short(ctx: VerifyContext, candidates: Sequence[Candidate]) -> list[float | None]:
    return [1.0 / (1.0 + len(c.text)) for c in candidates]


def prefers_wrong(ctx: VerifyContext, candidates: Sequence[Candidate]) -> list[float | None]:
    """A verifier that likes every answer and the wrong ones (the stub's right one is 42) best:
    the shared bias that only gold probes can catch."""
    return [0.9 if "42" in c.text else 1.0 for c in candidates]


def knows_42(ctx: VerifyContext, candidates: Sequence[Candidate]) -> list[float | None]:
    """A verifier that is right: its risk numbers should agree with gold."""
    return [1.0 if "42" in c.text else 0.0 for c in candidates]


def broken_checker(text: str, item: dict[str, object]) -> float:
    raise RuntimeError("this checker is broken")


def noise(ctx: VerifyContext, candidates: Sequence[Candidate]) -> list[float | None]:
    """A verifier that knows nothing: its scores are independent of the answer."""
    return [random.random() for _ in candidates]
