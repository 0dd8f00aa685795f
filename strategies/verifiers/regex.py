"""A hard format constraint: the candidate must (or must not) contain a match of a regex.

The regex is searched in the candidate's text; a candidate that only makes tool calls is
searched as its canonical call key (`tool:name({...})`), so a pattern can constrain calls too.

The pattern runs in RE2 (`strategies.safe_regex`): the text it is searched in is model output,
which a client can steer, and a backtracking engine lets a careless pattern hang the event loop
on it. RE2 has no backreferences or lookaround, so a config using them fails to load, naming the
construct; and `\\d`, `\\w`, `\\s` match ASCII only (use `\\pN`, `\\pL` for Unicode classes).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

from pydantic import Field, field_validator

from strategies import safe_regex
from strategies.answers import tool_calls_key
from strategies.contract import Candidate, Scored, VerifyContext
from strategies.verifiers.base import BaseVerifier, VerifierSpec


class RegexSettings(VerifierSpec):
    type: Literal["regex"] = "regex"
    pattern: str = Field(min_length=1)
    must_match: bool = True  # False: a match disqualifies

    @field_validator("pattern")
    @classmethod
    def _compiles(cls, pattern: str) -> str:
        try:
            safe_regex.check_pattern(pattern)
        except safe_regex.UnsupportedPattern as exc:
            raise ValueError(f"not a valid regex: {exc}") from exc
        return pattern


class RegexVerifier(BaseVerifier):
    kind = "regex"
    Settings = RegexSettings
    hard = True

    def __init__(self, settings: RegexSettings) -> None:
        super().__init__(settings)
        # Held here, not only in the shared cache, which client patterns could churn.
        self.pattern = safe_regex.compile_pattern(settings.pattern)
        self.must_match = settings.must_match

    def _subject(self, candidate: Candidate) -> str:
        if not candidate.text and candidate.tool_calls:
            return tool_calls_key(candidate.tool_calls)
        return candidate.text

    async def score(self, ctx: VerifyContext, candidates: Sequence[Candidate]) -> Scored:
        scores: list[float | None] = [
            1.0 if safe_regex.search(self.pattern, self._subject(c)) == self.must_match else 0.0 for c in candidates
        ]
        return Scored(views={self.view(): scores}, hard=True)
