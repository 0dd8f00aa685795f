"""Self-consistency: a candidate is as good as the share of candidates that reach its answer.

This is MBR with exact-match utility over *extracted* answers (strategies.answers), never over
raw text similarity. A candidate whose answer cannot be extracted has no vote and a missing
score (None), not 0: "no answer found" says nothing about whether it is right.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Sequence
from typing import Literal

from pydantic import Field, field_validator

from strategies.answers import answer_key, compile_patterns
from strategies.contract import Candidate, Scored, VerifyContext
from strategies.verifiers.base import BaseVerifier, VerifierSpec


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
        answers = [self.answer_of(c) for c in candidates]
        counts = Counter(a for a in answers if a is not None)
        voters = sum(counts.values())
        # The share is among candidates that voted: missing answers abstain.
        scores: list[float | None] = [None if a is None else counts[a] / voters for a in answers]
        return Scored(views={self.view(): scores})
