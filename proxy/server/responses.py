"""OpenAI response objects built from one Outcome."""

from __future__ import annotations

import math
import time
import uuid
from typing import Any

from proxy.pipeline.endpoints import Endpoint
from strategies.contract import Candidate, Outcome, Usage
from strategies.selection.explain import EXPLANATION_FIELDS, abstained


def new_id(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:24]}"


def usage_body(usage: Usage) -> dict[str, Any]:
    return {
        "prompt_tokens": usage.prompt_tokens,
        "completion_tokens": usage.completion_tokens,
        "total_tokens": usage.total_tokens,
        **{name: dict(counts) for name, counts in usage.details.items()},
    }


def returned(outcome: Outcome, n: int) -> list[Candidate]:
    """The candidates a client gets: the best `n`, the chosen one first, ties in sampling order.

    A passthrough outcome has no scores, so its `n` choices come back in the upstream's order.
    An abstention (`selection.min_confidence` not met) is the one choice.
    """
    if outcome.abstention is not None:
        return [outcome.abstention]
    order = sorted(
        range(len(outcome.candidates)),
        key=lambda i: (i != outcome.selected, -(_score(outcome, i))),
    )
    return [outcome.candidates[i] for i in order[:n]]


def _score(outcome: Outcome, i: int) -> float:
    value = outcome.scores[i] if i < len(outcome.scores) else None
    return value if value is not None else float("-inf")


def completion(
    outcome: Outcome, route: str, n: int, rvr: dict[str, Any] | None, endpoint: Endpoint
) -> dict[str, Any]:
    """The endpoint's response object (`chat.completion` or `text_completion`)."""
    chosen = returned(outcome, n)
    choices = [
        {
            "index": i,
            **endpoint.choice(candidate),
            "finish_reason": candidate.finish_reason or "stop",
            "logprobs": candidate.logprobs,
        }
        for i, candidate in enumerate(chosen)
    ]
    body: dict[str, Any] = {
        "id": new_id(endpoint.id_prefix),
        "object": endpoint.object,
        "created": int(time.time()),
        "model": route,
        "choices": choices,
        "usage": usage_body(outcome.usage),
        **(chosen[0].response_fields if chosen else {}),  # what the upstream said of the answer
    }
    if rvr is not None:
        body["rvr"] = rvr
    return body


def rvr_body(
    outcome: Outcome, route: str, details: bool, calibration: dict[str, Any] | None = None
) -> dict[str, Any]:
    """The `rvr` extension: what the strategy did, why it stopped, and what its numbers rest on."""
    risk = outcome.risk.as_dict() if outcome.risk is not None else None
    if risk is not None and calibration is not None:
        risk["calibration"] = calibration
    body: dict[str, Any] = {
        "summary": summary(outcome, calibration),
        "route": route,
        "strategy": outcome.strategy,
        "candidates": outcome.sampled,
        "selected": outcome.selected,
        "stop_reason": outcome.stop_reason.value,
        "variants": list(outcome.variants),
        "scores": list(outcome.scores),
        "views": {name: list(values) for name, values in outcome.view_scores.items()},
        "candidate_variants": [c.variant for c in outcome.candidates],
        "verifier_disagreement": outcome.verifier_disagreement,
        "upstream_errors": outcome.upstream_errors,
        "verifier_errors": verifier_errors(outcome),
        "audit": outcome.audit,
        "timings_ms": {k: round(v * 1000, 2) for k, v in outcome.timings.items()},
        "risk": risk,
        "cost": cost_body(outcome),
    }
    if outcome.selection is not None:
        body["confidence"] = outcome.confidence
        body["selection"] = selection_body(outcome, details)
    if outcome.panel is not None:
        body["panel"] = outcome.panel
        body["candidate_upstreams"] = [c.upstream for c in outcome.candidates]
    if outcome.fusion is not None:
        body["fusion"] = outcome.fusion
    if outcome.low_confidence is not None:
        body["low_confidence"] = outcome.low_confidence
    if details:
        body["candidate_texts"] = [c.text for c in outcome.candidates]
        if 0 <= outcome.selected < len(outcome.answer_types):
            body["answer_types"] = outcome.answer_types
            body["answer_type"] = outcome.answer_types[outcome.selected]
    return finite_json(body)


def cost_body(outcome: Outcome) -> dict[str, Any]:
    """`rvr.cost`: what the answer cost upstream, as a multiple of one plain call, beside what the
    route's candidate cap buys on its gold probes (method §4.8), so the price is never hidden."""
    tokens = outcome.usage.total_tokens
    plain = outcome.plain_usage.total_tokens if outcome.plain_usage is not None else 0
    return {
        "upstream_tokens": tokens,
        "candidates": outcome.sampled,
        "single_call_tokens": plain or None,
        "multiple": tokens / plain if plain else None,
        "gain": outcome.gain,
        "by_upstream": {name: usage_body(usage) for name, usage in outcome.usage_by_upstream.items()},
    }


# What `rvr.selection` shows without `details`: the mode, and how the answer was chosen, in numbers
# and candidate indices only. The clusters' answers and the model's internals come only with the
# candidate texts.
ALWAYS_SHOWN = ("mode", "fallback_reason", "confidence")
SHOWN_IF_SET = (*EXPLANATION_FIELDS, "knockout")


def selection_body(outcome: Outcome, details: bool) -> dict[str, Any]:
    """`rvr.selection`; under an abstention its rule is `abstain`: the client got no candidate."""
    selection = outcome.selection
    assert selection is not None
    shown = dict(selection) if details else {k: selection.get(k) for k in ALWAYS_SHOWN} | {
        k: selection[k] for k in SHOWN_IF_SET if k in selection
    }
    low = outcome.low_confidence
    if outcome.abstention is not None and low is not None and "rule" in shown:
        shown = abstained(shown, low["confidence"], low["min_confidence"])
    return shown


def finite_json(value: Any) -> Any:
    """`value` with every non-finite number made null: a response must be JSON, and one NaN from
    a state file or an estimate must not turn every answer of a route into a 500."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: finite_json(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [finite_json(v) for v in value]
    return value


def verifier_errors(outcome: Outcome) -> dict[str, dict[str, Any]]:
    """Per verifier with any: runs that failed whole, scores left missing, and the last cause."""
    errors: dict[str, dict[str, Any]] = {}
    for name, tally in outcome.verifier_outcomes.items():
        failed, missing = tally.get("failed", 0), tally.get("missing", 0)
        if failed or missing:
            errors[name] = {"failed": failed, "missing": missing, "cause": outcome.verifier_causes.get(name)}
    return errors


def summary(outcome: Outcome, calibration: dict[str, Any] | None = None) -> str:
    """One line a person can read: what was sampled, what was chosen, what the numbers rest on."""
    n = outcome.sampled
    scored = [s for s in outcome.scores if s is not None]
    parts = [f"{n} candidate{'s' if n != 1 else ''} from {len(outcome.variants)} prompt variant(s)"]
    if not scored:
        parts.append("no verifier scored any, so agreement among them chose")
    else:
        parts.append(f"{len(scored)} scored, #{outcome.selected} chosen{_by_rule(outcome)}")
        if len(set(scored)) == 1 and n > 1:
            parts.append("all scored alike, so the verifiers saw no difference to act on")
    if outcome.fusion is not None and outcome.fusion.get("fused"):
        parts.append(f"{outcome.fusion['fuser']} wrote the answer from {outcome.fusion['answers']} distinct answers")
    parts.append(f"stopped: {outcome.stop_reason.value.replace('_', ' ')}")
    missing = sum(e["missing"] + e["failed"] for e in verifier_errors(outcome).values())
    if missing:
        parts.append(f"{missing} verifier call(s) failed or unparsed")
    if outcome.upstream_errors:
        parts.append(f"{outcome.upstream_errors} upstream call(s) failed")
    risk = outcome.risk
    if risk is not None and risk.residual is not None and risk.baseline is not None:
        parts.append(f"risk {risk.residual:.2f} left of {risk.baseline:.2f} ({_anchoring(calibration)})")
    return "; ".join(parts)


def _by_rule(outcome: Outcome) -> str:
    """` by <rule>` (and the tie-break) from `rvr.selection`, so the summary names what chose."""
    selection = outcome.selection or {}
    rule = selection.get("rule")
    if rule is None:
        return ""
    tie = selection.get("tie_break")
    return f" by {rule}" + (f" (a tie broken by {tie['by'].replace('_', ' ')})" if tie else "")


def _anchoring(calibration: dict[str, Any] | None) -> str:
    """How far the online numbers can be trusted, in words."""
    status = calibration["status"] if calibration is not None else "no_gold"
    if status == "no_gold":
        return "the verifiers' own estimate, uncalibrated: not checked against gold answers"
    assert calibration is not None
    gold = f"{calibration['n_gold']} gold items"
    residual = calibration.get("residual")
    anchored = f"; gold-anchored residual {residual['estimate']:.2f}" if residual else ""
    if status == "uncalibrated":
        return f"the verifiers' own estimate, uncalibrated: {gold} disagree with it{anchored}"
    if status == "inconclusive":
        return (f"the verifiers' own estimate, inconclusive: {gold} cannot yet tell whether it is off by more "
                f"than {calibration['tolerance']:g}{anchored}")
    return f"the verifiers' own estimate, consistent with {gold}{anchored}"
