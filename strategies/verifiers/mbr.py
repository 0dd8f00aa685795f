"""Minimum Bayes risk selection over free text: a candidate scores its mean similarity to the rest.

Similarity is bag-of-tokens F1 (strategies.selection.similarity) by default, which needs no model and suits
answers that cannot be extracted as a short label (Universal Self-Consistency territory). With
`similarity: embedding` and an `upstream` serving embeddings, it is cosine similarity of embeddings,
which sees paraphrases as agreeing; each candidate is embedded once per request.

Tool-call candidates are compared by their canonical call key, so two identical calls with
different call ids agree fully.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Literal

import numpy as np
from pydantic import model_validator

from strategies.contract import Candidate, Scored, Usage, VerifyContext
from strategies.selection.similarity import consensus
from strategies.selection.weighted import canonical_answer
from strategies.verifiers.base import BaseVerifier, VerifierSpec


class MbrSettings(VerifierSpec):
    type: Literal["mbr"] = "mbr"
    similarity: Literal["token_f1", "embedding"] = "token_f1"
    upstream: str | None = None  # serves embeddings; required by `similarity: embedding`

    @model_validator(mode="after")
    def _embedding_needs_upstream(self) -> MbrSettings:
        if self.similarity == "embedding" and not self.upstream:
            raise ValueError("upstream: required when similarity is `embedding`")
        return self

    def upstreams(self) -> tuple[str, ...]:
        return (self.upstream,) if self.upstream else ()

    def upstream_calls(self, candidates: int, rounds: int) -> int:
        return rounds if self.similarity == "embedding" else 0  # one batched call for the new texts


def cosine_consensus(vectors: np.ndarray) -> np.ndarray:
    """Mean cosine similarity of each vector to the others, mapped from [-1, 1] to [0, 1]."""
    n = len(vectors)
    if n < 2:
        return np.ones(n)
    norms = np.linalg.norm(vectors, axis=1, keepdims=True)
    unit = vectors / np.where(norms == 0, 1.0, norms)
    sim = (unit @ unit.T + 1.0) / 2.0
    return (sim.sum(axis=1) - np.diag(sim)) / (n - 1)


class MbrVerifier(BaseVerifier):
    kind = "mbr"
    Settings = MbrSettings

    def __init__(self, settings: MbrSettings) -> None:
        super().__init__(settings)
        self.similarity = settings.similarity
        self.upstream = settings.upstream

    async def score(self, ctx: VerifyContext, candidates: Sequence[Candidate]) -> Scored:
        texts = [canonical_answer(c) for c in candidates]
        if self.similarity == "token_f1":
            return Scored(views={self.view(): [float(x) for x in consensus(texts)]})
        memo: dict[Any, Any] = ctx.cache.setdefault(("mbr", self.name), {})
        missing = [c.index for c in candidates if c.index not in memo]
        usage = Usage()
        if missing:
            assert self.upstream is not None
            by_index = {c.index: t for c, t in zip(candidates, texts, strict=True)}
            try:
                reply = await ctx.services.embed(self.upstream, [by_index[i] for i in missing])
            except Exception:  # noqa: BLE001 - no embeddings: the view is missing, never 0
                return Scored(views={self.view(): [None] * len(candidates)}, errors=1)
            if len(reply.vectors) != len(missing):
                return Scored(views={self.view(): [None] * len(candidates)}, usage=reply.usage, errors=1)
            memo.update(zip(missing, reply.vectors, strict=True))
            usage = reply.usage
        vectors = np.array([memo[c.index] for c in candidates], dtype=float)
        return Scored(views={self.view(): [float(x) for x in cosine_consensus(vectors)]}, usage=usage)
