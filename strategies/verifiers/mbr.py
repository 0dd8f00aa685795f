"""Minimum Bayes risk selection over free text: a candidate scores its mean similarity to the rest.

Similarity is bag-of-tokens F1 (strategies.similarity), which needs no model and suits answers
that cannot be extracted as a short label (Universal Self-Consistency territory). Embedding
similarity is a possible future extra; it would need an embedding callable in `Services`, which
does not exist yet, so it is deliberately not offered here.

Tool-call candidates are compared by their canonical call key, so two identical calls with
different call ids agree fully.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

from strategies.answers import tool_calls_key
from strategies.contract import Candidate, Scored, VerifyContext
from strategies.similarity import consensus
from strategies.verifiers.base import BaseVerifier, VerifierSpec


class MbrSettings(VerifierSpec):
    type: Literal["mbr"] = "mbr"
    similarity: Literal["token_f1"] = "token_f1"


def comparable_text(candidate: Candidate) -> str:
    """What a text comparison should see: tool calls as name + canonical JSON, else the text."""
    if candidate.tool_calls:
        return tool_calls_key(candidate.tool_calls)
    return candidate.text


class MbrVerifier(BaseVerifier):
    kind = "mbr"
    Settings = MbrSettings

    async def score(self, ctx: VerifyContext, candidates: Sequence[Candidate]) -> Scored:
        texts = [comparable_text(c) for c in candidates]
        scores: list[float | None] = [float(x) for x in consensus(texts)]
        return Scored(views={self.view(): scores})
