"""A reward model as verifier: one scalar per candidate from a configured scoring endpoint.

Reward models emit unbounded logits (Bradley-Terry rewards), so scores are squashed to [0, 1]:

- `sigmoid` (default): 1 / (1 + exp(-(r - center) / scale)). For a Bradley-Terry model this is the
  probability that the candidate beats a reference response of reward `center`, so it keeps the
  scale meaningful across requests.
- `none`: the endpoint already returns probabilities; values are only clipped to [0, 1].
- `minmax`: (r - min) / (max - min) over this request's candidates (0.5 when all are equal). It
  ranks well but makes scores relative to the request, which inflates risk estimates; use it only
  when the reward scale is unknown.

Reward models can prefer socially undesirable answers and none is best everywhere (seeds/004):
weight them alongside other verifiers rather than alone. Raw rewards are memoized per candidate
in the request cache, so only new candidates are sent; a failed call is retried next round.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any, Literal

from pydantic import Field

from strategies.contract import Candidate, RewardEndpoint, Scored, Usage, VerifyContext, failure_cause
from strategies.verifiers.base import BaseVerifier, VerifierSpec, clip01
from strategies.verifiers.rendering import render_candidate


class RewardModelSettings(VerifierSpec):
    type: Literal["reward_model"] = "reward_model"
    endpoint: RewardEndpoint
    squash: Literal["sigmoid", "none", "minmax"] = "sigmoid"
    center: float = 0.0  # sigmoid only: the reward that maps to 0.5
    scale: float = Field(1.0, gt=0.0)  # sigmoid only: reward units per logit

    def secrets(self) -> tuple[str, ...]:
        return (self.endpoint.api_key,) if self.endpoint.api_key else ()

    def upstream_calls(self, candidates: int, rounds: int) -> int:
        return rounds  # one scoring call per round for the candidates not yet scored


def sigmoid(x: float) -> float:
    # Split by sign so that large |x| neither overflows nor loses precision.
    if x >= 0:
        return 1.0 / (1.0 + math.exp(-x))
    z = math.exp(x)
    return z / (1.0 + z)


class RewardModelVerifier(BaseVerifier):
    kind = "reward_model"
    auditable = True
    Settings = RewardModelSettings

    def __init__(self, settings: RewardModelSettings) -> None:
        super().__init__(settings)
        self.endpoint = settings.endpoint
        self.squash = settings.squash
        self.center = settings.center
        self.scale = settings.scale

    async def score(self, ctx: VerifyContext, candidates: Sequence[Candidate]) -> Scored:
        memo: dict[int, float | None] = ctx.cache.setdefault(("reward_model", self.name), {})
        new = [c for c in candidates if c.index not in memo]
        usage, errors, cause = Usage(), 0, None
        if new:
            usage, errors, cause = await self._reward(ctx, new, memo)
        raw = [memo.get(c.index) for c in candidates]
        return Scored(views={self.view(): self._squash(raw)}, usage=usage, errors=errors, cause=cause)

    async def _reward(
        self, ctx: VerifyContext, new: Sequence[Candidate], memo: dict[int, float | None]
    ) -> tuple[Usage, int, str | None]:
        try:
            reply = await ctx.services.reward(
                self.endpoint, ctx.messages, [render_candidate(c) for c in new]
            )
        except Exception as exc:  # noqa: BLE001 - an unreachable reward model is a missing view
            return Usage(), 1, failure_cause(exc)
        if len(reply.scores) != len(new):  # cannot tell which score is whose: trust none of them
            return reply.usage, 1, f"{len(reply.scores)} scores for {len(new)} answers"
        for candidate, value in zip(new, reply.scores, strict=True):
            memo[candidate.index] = _finite(value)
        return reply.usage, 0, None

    def _squash(self, raw: list[float | None]) -> list[float | None]:
        if self.squash == "none":
            return [clip01(r) for r in raw]
        if self.squash == "sigmoid":
            return [None if r is None else sigmoid((r - self.center) / self.scale) for r in raw]
        present = [r for r in raw if r is not None]
        if not present:
            return [None] * len(raw)
        low, high = min(present), max(present)
        if high == low:
            return [None if r is None else 0.5 for r in raw]
        return [None if r is None else (r - low) / (high - low) for r in raw]


def _finite(value: Any) -> float | None:
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return number if math.isfinite(number) else None
