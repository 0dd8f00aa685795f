"""`selection.min_confidence`: what a client gets when the learned P(correct) is below it.

Either another route answers the same request (one hop: that route's own threshold is not
applied again), with both routes' tokens in `usage`, or the proxy answers with the configured
abstention message instead of a candidate. Either way `rvr.low_confidence` says so, and
`rvr_low_confidence{route,action}` counts it. Gold probes never take this path: they measure
the route's own answer.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING

from proxy.pipeline.services import RequestServices
from proxy.routing import Route
from proxy.telemetry import metrics
from strategies.contract import Candidate, Outcome, StrategyRequest

if TYPE_CHECKING:
    from proxy.routing import Router

ABSTAIN_VARIANT = "abstain"
RunOne = Callable[[Route, StrategyRequest, RequestServices], Awaitable[Outcome]]


async def confident(
    router: Router, route: Route, work: StrategyRequest, services: RequestServices, outcome: Outcome, run: RunOne
) -> Outcome:
    settings = route.settings.strategy.selection_settings()
    if settings is None or settings.min_confidence is None:
        return outcome
    threshold = settings.min_confidence
    if outcome.confidence is None or outcome.confidence >= threshold:
        return outcome
    note = {"confidence": outcome.confidence, "min_confidence": threshold}
    if outcome.fusion_stream is not None:  # below the bar, nothing is fused: the stream never opens
        outcome.fusion_stream = None
        if outcome.fusion is not None:
            outcome.fusion["skipped"] = "the selection's confidence was below min_confidence"
    if settings.fallback_route is not None:
        other = router.routes[settings.fallback_route]
        answer = await run(other, work, services.for_upstream(other.upstream))
        answer.usage = outcome.usage + answer.usage  # the client's request spent both
        answer.low_confidence = {**note, "action": "route", "route": other.name}
        metrics.LOW_CONFIDENCE.labels(route.name, "route").inc()
        return answer
    content = {"role": "assistant", "content": settings.abstain_message}
    outcome.abstention = Candidate(len(outcome.candidates), ABSTAIN_VARIANT, content, "stop")
    outcome.low_confidence = {**note, "action": "abstain"}
    metrics.LOW_CONFIDENCE.labels(route.name, "abstain").inc()
    return outcome
