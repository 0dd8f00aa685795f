"""The plain route: the client's request goes upstream as sent, and every choice comes back."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any, Literal

from strategies.contract import (
    ORIGINAL_VARIANT,
    Candidate,
    Outcome,
    Services,
    StopReason,
    Strategy,
    StrategyRequest,
)
from strategies.settings import StrategySpec

STRATEGY = "passthrough"


class PassthroughSettings(StrategySpec):
    name: Literal["passthrough"] = STRATEGY


class Passthrough(Strategy):
    name = STRATEGY
    Settings = PassthroughSettings
    reports = False  # nothing was chosen, so there is no risk to report and nothing to tune
    relays_stream = True
    takes_prompt_batches = True

    async def run(self, request: StrategyRequest, services: Services) -> Outcome:
        batch = await services.forward(request.n)
        candidates = [
            Candidate(i, ORIGINAL_VARIANT, s.message, s.finish_reason, s.token_logprobs, s.logprobs, s.response_fields)
            for i, s in enumerate(batch.samples)
        ]
        return Outcome(
            candidates, 0, StopReason.PASSTHROUGH, batch.usage, STRATEGY,
            upstream_errors=batch.errors, plain_usage=batch.usage,  # it was the plain call
        )

    def stream(self, request: StrategyRequest, services: Services) -> AsyncIterator[dict[str, Any]]:
        return services.forward_stream(request.n)
