"""Self-consistency: a candidate is as good as the share of candidates that reach its answer.

This is MBR with exact-match utility over *extracted* answers (strategies.answers), never over
raw text similarity. The share is of every candidate, so a cluster's support always counts: one
candidate with an extractable answer scores 1/8 beside seven that agree on something else, never
1/1 among the one that voted.

A candidate whose answer cannot be extracted (longer prose without a final answer) is grouped
with the other such candidates it resembles (token F1 at least `SIMILAR`, as consensus/MBR
measures it) and scores that group's share, so a majority that says the same thing in words is
seen as a majority. Only a non-answer (an empty text, a restated expression such as "2 + 3")
has no vote and a missing score (None), not 0: it says nothing about whether it is right.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Sequence
from typing import Literal

from pydantic import Field, field_validator

from strategies.answers import answer_key, compile_patterns, is_non_answer
from strategies.contract import Candidate, Scored, VerifyContext
from strategies.selection.similarity import token_f1_matrix
from strategies.verifiers.base import BaseVerifier, VerifierSpec

SIMILAR = 0.6  # token F1 at which two unextractable answers count as the same answer


class SelfConsistencySettings(VerifierSpec):
    type: Literal["self_consistency"] = "self_consistency"
    patterns: list[str] = Field(default_factory=list)  # tried before the defaults; group 1 wins
    default_patterns: bool = True  # False: only `patterns` count as an answer

    @field_validator("patterns")
    @classmethod
    def _compiles(cls, patterns: list[str]) -> list[str]:
        compile_patterns(patterns)
        return patterns


class SelfConsistencyVerifier(BaseVerifier):
    kind = "self_consistency"
    Settings = SelfConsistencySettings
    extracts_answers = True

    def __init__(self, settings: SelfConsistencySettings) -> None:
        super().__init__(settings)
        self._patterns: tuple[re.Pattern[str], ...] = compile_patterns(settings.patterns)
        self._defaults = settings.default_patterns

    def answer_of(self, candidate: Candidate) -> str | None:
        """The key this verifier votes with; the stop rule counts the same keys."""
        return answer_key(candidate, self._patterns, defaults=self._defaults)

    def votes(self, candidates: Sequence[Candidate]) -> Counter[str]:
        return Counter(a for a in map(self.answer_of, candidates) if a is not None)

    async def score(self, ctx: VerifyContext, candidates: Sequence[Candidate]) -> Scored:
        keys = self.cluster_keys(candidates)
        counts = Counter(k for k in keys if k is not None)
        total = len(candidates)
        scores: list[float | None] = [None if k is None else counts[k] / total for k in keys]
        return Scored(views={self.view(): scores})

    def cluster_keys(self, candidates: Sequence[Candidate]) -> list[str | None]:
        """Each candidate's answer; unextractable prose takes the key of the first earlier such
        candidate it resembles (or its own); non-answers get None."""
        keys = [self.answer_of(c) for c in candidates]
        prose = [i for i, (c, k) in enumerate(zip(candidates, keys, strict=True)) if k is None and _prose(c)]
        if prose:
            similar = token_f1_matrix([candidates[i].text for i in prose])
            for a, i in enumerate(prose):
                first = next(b for b in range(a + 1) if b == a or similar[a, b] >= SIMILAR)
                keys[i] = f"prose:{prose[first]}"
        return keys


def _prose(candidate: Candidate) -> bool:
    return not candidate.tool_calls and not is_non_answer(candidate.text)
