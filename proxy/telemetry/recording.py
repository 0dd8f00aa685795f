"""The one place an Outcome becomes metrics and a log line."""

from __future__ import annotations

import json
import logging
import math
import os
import time
from dataclasses import dataclass, field
from typing import Any

from proxy.telemetry import metrics
from strategies.contract import Outcome, StopReason, Usage

log = logging.getLogger("rvr_proxy.requests")


@dataclass
class RequestRecord:
    request_id: str
    endpoint: str
    route: str = "-"  # a config name, or "-" before a route was resolved
    strategy: str = "-"
    started: float = field(default_factory=time.perf_counter)
    status: int = 200
    outcome: Outcome | None = None
    usage: Usage = field(default_factory=Usage)  # streaming passthrough fills this itself
    error: str | None = None
    prompt: Any = None  # only logged when the config says so
    streamed_choices: int = 0  # choices of a relayed stream, which has no Outcome


def finish(record: RequestRecord, log_prompts: bool) -> None:
    duration = time.perf_counter() - record.started
    outcome = record.outcome
    usage = outcome.usage if outcome is not None else record.usage
    if record.route != "-":
        _observe(record, duration, usage)
    line: dict[str, Any] = {
        "request_id": record.request_id,
        "endpoint": record.endpoint,
        "route": record.route,
        "strategy": record.strategy,
        "status": record.status,
        "latency_ms": round(duration * 1000, 2),
        "pid": os.getpid(),  # the worker that served it, with `serve --workers N`
        "prompt_tokens": usage.prompt_tokens,
        "completion_tokens": usage.completion_tokens,
    }
    if outcome is not None:
        line["candidates"] = outcome.sampled
        line["stop_reason"] = outcome.stop_reason.value
        if outcome.risk is not None:
            line["residual"] = outcome.risk.residual
        if outcome.verifier_causes:  # judge and reward failures, named, so the log says why
            line["verifier_errors"] = dict(outcome.verifier_causes)
    if record.error:
        line["error"] = record.error
    if log_prompts and record.prompt is not None:
        line["prompt"] = record.prompt
    log.info(json.dumps(line, default=str))


def _observe(record: RequestRecord, duration: float, usage: Usage) -> None:
    route = record.route
    status = "success" if record.status < 400 else ("client_error" if record.status < 500 else "error")
    metrics.REQUESTS.labels(route, record.strategy, status).inc()
    metrics.REQUEST_DURATION.labels(route, record.strategy).observe(duration)
    metrics.TOKENS.labels(route, "prompt").inc(usage.prompt_tokens)
    metrics.TOKENS.labels(route, "completion").inc(usage.completion_tokens)
    outcome = record.outcome
    if outcome is None:
        if record.streamed_choices and record.status < 400:
            _observe_relayed_stream(record, usage)
        return
    metrics.CANDIDATES.labels(route).observe(outcome.sampled)
    metrics.STOPS.labels(route, outcome.stop_reason.value).inc()
    _observe_plain_cost(route, outcome)
    _observe_gain(route, outcome)
    _observe_panel(route, outcome)
    _observe_fusion(route, outcome)
    if outcome.audit:
        metrics.AUDITS.labels(route).inc()
        metrics.AUDIT_TOKENS.labels(route).inc(usage.total_tokens)
    for verifier, tally in outcome.verifier_outcomes.items():
        for result, count in tally.items():
            metrics.VERIFIER_RUNS.labels(route, verifier, result).inc(count)
    selected = outcome.scores[outcome.selected] if outcome.selected < len(outcome.scores) else None
    if selected is not None:
        metrics.SELECTED_SCORE.labels(route).observe(selected)
    if outcome.verifier_disagreement is not None:
        metrics.VERIFIER_DISAGREEMENT.labels(route).observe(outcome.verifier_disagreement)
    risk = outcome.risk
    if risk is None:
        return
    recovered = None
    if risk.baseline is not None and risk.residual is not None:
        recovered = risk.baseline - risk.residual
    values = {**{component: getattr(risk, component) for component in metrics.RISK_TERMS}, "recovered": recovered}
    for component in metrics.RISK_COMPONENTS:
        value = values[component]
        if value is not None:  # unknown stays unobserved: never recorded as 0
            metrics.RISK.labels(route, component).observe(value)


def _observe_relayed_stream(record: RequestRecord, usage: Usage) -> None:
    """A relayed (passthrough) stream makes no Outcome, but is the same request as a passthrough
    answered whole: the same candidates, stop reason and plain cost, so both count alike (they did
    not: 44 requests against 42 candidates, issue 25). A failed one counts as little as a failed
    whole answer, which has no Outcome either."""
    route = record.route
    metrics.CANDIDATES.labels(route).observe(record.streamed_choices)
    metrics.STOPS.labels(route, StopReason.PASSTHROUGH.value).inc()
    metrics.PASSTHROUGH_TOKENS.labels(route, "prompt").inc(usage.prompt_tokens)  # it was the plain call
    metrics.PASSTHROUGH_TOKENS.labels(route, "completion").inc(usage.completion_tokens)


# A route's upstream tokens per request beyond one plain call: a running mean over about the last
# EXTRA_TOKENS_SPAN requests of this process, so tokens per point follows what the route spends now.
EXTRA_TOKENS_SPAN = 100
_extra_tokens: dict[str, float] = {}


def _observe_gain(route: str, outcome: Outcome) -> None:
    """What the route's candidate cap buys on its gold probes (method §4.8), and at what price."""
    plain = outcome.plain_usage
    if plain is not None:
        extra = float(outcome.usage.total_tokens - plain.total_tokens)
        previous = _extra_tokens.get(route)
        _extra_tokens[route] = extra if previous is None else previous + (extra - previous) / EXTRA_TOKENS_SPAN
    gain = outcome.gain
    if gain is None:
        return
    low, high = gain["ci90"]
    for bound, value in (("estimate", gain["estimate"]), ("lower", low), ("upper", high)):
        metrics.ROUTE_GAIN.labels(route, bound).set(value)
    spent = _extra_tokens.get(route)
    if spent is not None:
        points = 100.0 * gain["estimate"]
        metrics.TOKENS_PER_POINT.labels(route).set(spent / points if points > 0 else math.inf)


def _observe_panel(route: str, outcome: Outcome) -> None:
    panel = outcome.panel
    if panel is None:
        return
    for upstream, count in panel["candidates"].items():
        metrics.PANEL_CANDIDATES.labels(route, upstream).inc(count)
    if panel["selected_upstream"] is not None:
        metrics.PANEL_SELECTED.labels(route, panel["selected_upstream"]).inc()
    for upstream, reason in panel["dropped"].items():
        metrics.PANEL_DROPPED.labels(route, upstream, reason).inc()


def _observe_fusion(route: str, outcome: Outcome) -> None:
    fusion = outcome.fusion
    if fusion is None:
        return
    result = "fused" if fusion["fused"] else ("failed" if "error" in fusion else "skipped")
    metrics.FUSIONS.labels(route, result).inc()
    gain = fusion["gain"]
    if gain is not None:
        low, high = gain["ci90"]
        for bound, value in (("estimate", gain["estimate"]), ("lower", low), ("upper", high)):
            metrics.FUSION_GAIN.labels(route, bound).set(value)


def _observe_plain_cost(route: str, outcome: Outcome) -> None:
    """What one plain call would have cost: the denominator of the cost multiplier."""
    plain = outcome.plain_usage
    if plain is not None:
        metrics.PASSTHROUGH_TOKENS.labels(route, "prompt").inc(plain.prompt_tokens)
        metrics.PASSTHROUGH_TOKENS.labels(route, "completion").inc(plain.completion_tokens)
