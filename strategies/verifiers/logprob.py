"""The model's own confidence: the geometric-mean token probability, exp(mean token logprob).

It maps to [0, 1] without tuning and does not penalize length the way a summed logprob would.
It is a weak verifier (fluent and wrong can be confident), best weighted low next to others.
Needs the upstream to return logprobs; a candidate without them scores None (missing).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Literal

from strategies.contract import Candidate, Scored, VerifyContext
from strategies.verifiers.base import BaseVerifier, VerifierSpec


class LogprobSettings(VerifierSpec):
    type: Literal["logprob"] = "logprob"


def mean_token_probability(token_logprobs: Sequence[float] | None) -> float | None:
    if not token_logprobs:
        return None
    values = [float(x) for x in token_logprobs if x is not None and math.isfinite(float(x))]
    if not values:
        return None
    return min(1.0, math.exp(sum(values) / len(values)))


class LogprobVerifier(BaseVerifier):
    kind = "logprob"
    Settings = LogprobSettings
    needs_logprobs = True

    async def score(self, ctx: VerifyContext, candidates: Sequence[Candidate]) -> Scored:
        scores = [mean_token_probability(c.token_logprobs) for c in candidates]
        return Scored(views={self.view(): scores})
