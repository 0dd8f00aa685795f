"""A user verifier loaded by import path in the strategy tests (`tests.plugin_verifier:prefers_short`)."""

from __future__ import annotations

from collections.abc import Sequence

from strategies.contract import Candidate, VerifyContext


def prefers_short(ctx: VerifyContext, candidates: Sequence[Candidate]) -> list[float | None]:
    return [1.0 / (1.0 + len(c.text)) for c in candidates]
