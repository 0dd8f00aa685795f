"""Self-consistency: a candidate is as good as the share of candidates that reach its answer.

This is MBR with exact-match utility over *extracted* answers (strategies.answers), never over
raw text similarity. The share is of every candidate, so a cluster's support always counts: one
candidate with an extractable answer scores 1/8 beside seven that agree on something else, never
1/1 among the one that voted.

Answers are extracted knowing the request's question (its last user message): to "is 36
even?" a candidate says yes or no, and "36 is a prime number" only restates the question's
number, so it is a non-answer rather than a vote for "36" (`strategies.answers`).

A candidate whose answer cannot be extracted (longer prose without a final answer) is grouped
with the other such candidates it resembles (token F1 at least `SIMILAR`, as consensus/MBR
measures it) and scores that group's share, so a majority that says the same thing in words is
seen as a majority. Only a non-answer (an empty text, a hedge, a restated expression such as
"2 + 3" or a restated question) has no vote and a missing score (None), not 0: it says nothing
about whether it is right. When every candidate is a non-answer, no score is given at all and
the selection's consensus rule picks among them.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Sequence
from typing import Literal

from pydantic import Field, field_validator

from strategies.answers import Extraction, compile_patterns, extract, question_of, tool_calls_key
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

    def answer_of(self, candidate: Candidate, question: str | None = None) -> str | None:
        """The key this verifier votes with, knowing the request's `question` where given; the
        stop rule and the answer clusters count the same keys."""
        return self.extraction(candidate, question).key

    def extraction(self, candidate: Candidate, question: str | None = None) -> Extraction:
        if candidate.tool_calls:
            return Extraction(tool_calls_key(candidate.tool_calls), False)
        return extract(candidate, self._patterns, defaults=self._defaults, question=question)

    def votes(self, candidates: Sequence[Candidate], question: str | None = None) -> Counter[str]:
        return Counter(a for a in (self.answer_of(c, question) for c in candidates) if a is not None)

    async def score(self, ctx: VerifyContext, candidates: Sequence[Candidate]) -> Scored:
        keys = self.cluster_keys(candidates, question_of(ctx.messages))
        counts = Counter(k for k in keys if k is not None)
        total = len(candidates)
        scores: list[float | None] = [None if k is None else counts[k] / total for k in keys]
        return Scored(views={self.view(): scores})

    def cluster_keys(self, candidates: Sequence[Candidate], question: str | None = None) -> list[str | None]:
        """Each candidate's answer; unextractable prose takes the key of the first earlier such
        candidate it resembles (or its own); non-answers get None."""
        found = [self.extraction(c, question) for c in candidates]
        keys = [f.key for f in found]
        prose = [i for i, f in enumerate(found) if f.key is None and not f.non_answer]
        if prose:
            similar = token_f1_matrix([candidates[i].text for i in prose])
            for a, i in enumerate(prose):
                first = next(b for b in range(a + 1) if b == a or similar[a, b] >= SIMILAR)
                keys[i] = f"prose:{prose[first]}"
        return keys
