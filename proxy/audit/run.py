"""Runs a route's verifiers on gold pairs through their serving code, and summarizes what they prefer.

Each verifier scores the two answers of a pair with its own `score`, its upstream calls going
through the proxy's upstream clients (litellm, retries, fallbacks, metrics) exactly as a request
would. Every pair is judged in both orders: a pairwise judge compares the answers both ways
itself (its `pairwise:ab` and `pairwise:ba` views, per pairwise template); every other verifier
scores the pair twice, desirable answer first and then second, each time with a fresh request
cache. A judge is given all its templates (`add_views`) so that each configured template is seen.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import httpx

from proxy.audit.data import Pair
from proxy.audit.store import fingerprint
from proxy.config.settings import Config
from proxy.pipeline.endpoints import CHAT
from proxy.pipeline.services import RequestServices
from proxy.routing import Router
from proxy.upstream.allowance import RequestAllowance
from strategies.contract import Candidate, Message, Reply, RewardEndpoint, RewardReply, VerifyContext, failure_cause
from strategies.risk.audit_stats import (
    Decision,
    accuracy,
    agreement_with_others,
    decide,
    flags,
    krippendorff_alpha_nominal,
    mean_decision,
    position_bias_rate,
    swap_agreement,
    template_disagreement,
)
from strategies.verifiers.base import BaseVerifier

_PAIRWISE_VIEW = re.compile(r"^(?P<template>.+:pairwise(?::[^:]+)?):(?P<order>ab|ba)$")
CHOSEN_FIRST, REJECTED_FIRST = "chosen_first", "rejected_first"


class AuditError(ValueError):
    """What to audit cannot be found in the config; the message says what exists."""


@dataclass
class Target:
    """One verifier configuration to audit, and the routes that use it."""

    verifier: BaseVerifier
    fingerprint: str
    routes: list[str] = field(default_factory=list)

    @property
    def name(self) -> str:
        return self.verifier.name

    @property
    def kind(self) -> str:
        return self.verifier.kind


def targets(config: Config, router: Router, route: str | None = None, verifier: str | None = None) -> list[Target]:
    """The auditable verifiers of the chosen route(s); one target per distinct configuration."""
    routes = [r for r in router.routes.values() if route is None or r.name == route]
    if route is not None and not routes:
        raise AuditError(f"--route {route!r}: no such route; routes: {', '.join(router.routes) or 'none'}")
    found: dict[str, Target] = {}
    names: set[str] = set()
    for r in routes:
        specs = r.settings.strategy.audited_specs()
        for spec, built_verifier in zip(specs, r.strategy.audited, strict=True):
            names.add(spec.name)
            if not built_verifier.auditable or (verifier is not None and spec.name != verifier):
                continue
            print_ = fingerprint(config, spec)
            target = found.setdefault(f"{spec.name}/{print_}", Target(built_verifier, print_))
            target.routes.append(r.name)
    if verifier is not None and not found:
        raise AuditError(
            f"--verifier {verifier!r}: no llm_judge, reward_model or plugin verifier or fuser of that name; "
            f"verifiers: {', '.join(sorted(names)) or 'none'}"
        )
    if not found:
        raise AuditError("no llm_judge, reward_model or plugin verifier or fuser to audit in the chosen route(s)")
    return list(found.values())


# ---- running ----------------------------------------------------------------------------


class _AuditServices(RequestServices):
    """The request services serving uses, counting calls that raised, so that a judge reply
    that did not parse can be told from a call that failed."""

    failures = 0

    async def chat(self, upstream: str, messages: Sequence[Message], **params: Any) -> Reply:
        try:
            return await super().chat(upstream, messages, **params)
        except Exception:
            self.failures += 1
            raise

    async def reward(self, endpoint: RewardEndpoint, messages: Sequence[Message], answers: Sequence[str]) -> RewardReply:
        try:
            return await super().reward(endpoint, messages, answers)
        except Exception:
            self.failures += 1
            raise


@dataclass
class Run:
    """One `score` of a pair: (desirable answer's score, undesirable answer's score) per view."""

    order: str  # CHOSEN_FIRST or REJECTED_FIRST: which answer was candidate 0
    views: dict[str, tuple[float | None, float | None]]


@dataclass
class PairRecord:
    pair: Pair
    runs: list[Run]
    call_failures: int = 0
    unparsed: int = 0  # judge replies or scores that came back unusable (never scored as 0)
    cause: str | None = None  # why a call failed, in words safe to show (`Scored.cause`)


def _candidate(index: int, text: str) -> Candidate:
    return Candidate(index=index, variant="audit", message={"role": "assistant", "content": text})


async def judge_pair(verifier: BaseVerifier, pair: Pair, services: Callable[[], _AuditServices]) -> PairRecord:
    orders = [CHOSEN_FIRST] if verifier.orders_itself else [CHOSEN_FIRST, REJECTED_FIRST]
    record = PairRecord(pair, [])
    for order in orders:
        texts = [pair.chosen, pair.rejected] if order == CHOSEN_FIRST else [pair.rejected, pair.chosen]
        service = services()
        ctx = VerifyContext(messages=pair.messages(), services=service)
        while await verifier.add_views(ctx):  # every configured template, not only the first few
            pass
        try:
            scored = await verifier.score(ctx, [_candidate(0, texts[0]), _candidate(1, texts[1])])
        except Exception as exc:  # noqa: BLE001 - a verifier that raises scored nothing; counted, not fatal
            record.call_failures += 1
            record.cause = failure_cause(exc)
            record.runs.append(Run(order, {}))
            continue
        chosen, rejected = (0, 1) if order == CHOSEN_FIRST else (1, 0)
        views = {name: (scores[chosen], scores[rejected]) for name, scores in scored.views.items()}
        record.runs.append(Run(order, views))
        record.call_failures += service.failures
        record.cause = scored.cause or record.cause
        unusable = max(0, scored.errors - service.failures)
        missing = any(s is None for d, u in views.values() for s in (d, u))
        if not unusable and not service.failures and missing:
            unusable = 1  # an endpoint or plugin that answered, but without a usable score
        record.unparsed += unusable
    return record


async def audit_verifier(
    router: Router,
    target: Target,
    pairs: Sequence[Pair],
    http: httpx.AsyncClient,
    concurrency: int = 4,
    progress: Callable[[int], None] | None = None,
) -> list[PairRecord]:
    """Every pair through `target`'s verifier, `concurrency` pairs at a time, calling `progress`
    with the number of pairs done. `http` is the one connection pool for all calls (see
    `proxy.upstream.client.litellm_pool`), as one serving worker has one."""
    first_route = router.routes[target.routes[0]]

    def services() -> _AuditServices:
        return _AuditServices(first_route.upstream, router.clients, {}, CHAT, http, None, RequestAllowance())

    gate = asyncio.Semaphore(concurrency)
    done = 0

    async def one(pair: Pair) -> PairRecord:
        nonlocal done
        async with gate:
            record = await judge_pair(target.verifier, pair, services)
        done += 1
        if progress is not None:
            progress(done)
        return record

    return list(await asyncio.gather(*(one(p) for p in pairs)))


# ---- summarizing ------------------------------------------------------------------------


@dataclass
class Observation:
    """One view's verdict on one pair in one order."""

    template: str
    order: str
    decision: Decision | None
    slot: str | None  # "a" when the answer shown first was preferred, "b" the second, None otherwise
    scores: tuple[float | None, float | None]


def observations(record: PairRecord, verifier_name: str) -> list[Observation]:
    result = []
    prefix = f"{verifier_name}:"
    for run in record.runs:
        for view, (d, u) in run.views.items():
            decision = decide(d, u)
            pairwise = _PAIRWISE_VIEW.match(view)
            if pairwise:
                template, order = pairwise.group("template"), pairwise.group("order")
                slot = _pairwise_slot(order, decision, d, u)
            else:
                template, order = view, run.order
                slot = None
                if decision in (Decision.DESIRABLE, Decision.UNDESIRABLE):
                    desirable_won = decision == Decision.DESIRABLE
                    slot = "a" if desirable_won == (run.order == CHOSEN_FIRST) else "b"
            local = "score" if template == verifier_name else template.removeprefix(prefix)
            result.append(Observation(local, order, decision, slot, (d, u)))
    return result


def _pairwise_slot(order: str, decision: Decision | None, d: float | None, u: float | None) -> str | None:
    """Which slot won a pairwise comparison. The judge compares a candidate with an anchor;
    the anchor always scores 0.5 in its own view, so the other answer is the one whose score is
    not 0.5 ("ab": it sat in slot A, "ba": in slot B)."""
    if decision not in (Decision.DESIRABLE, Decision.UNDESIRABLE) or d is None or u is None:
        return None
    challenger_is_desirable = abs(d - 0.5) > abs(u - 0.5)
    challenger_won = (decision == Decision.DESIRABLE) == challenger_is_desirable
    challenger_slot = "a" if order == "ab" else "b"
    return challenger_slot if challenger_won else ("b" if challenger_slot == "a" else "a")


def summarize(records: Sequence[PairRecord], verifier_name: str) -> dict[str, Any]:
    """Accuracy, ties, failures, order and template consistency, and flags, for these pairs."""
    per_pair = [observations(r, verifier_name) for r in records]
    templates = sorted({o.template for obs in per_pair for o in obs})
    overall = [mean_decision(o.scores for o in obs) for obs in per_pair]
    acc = accuracy(overall)
    high = acc.interval[1] if acc.scored else None

    by_template: dict[str, list[Decision | None]] = {
        t: [mean_decision(o.scores for o in obs if o.template == t) for obs in per_pair] for t in templates
    }
    swaps: dict[str, list[tuple[Decision | None, Decision | None]]] = {t: [] for t in templates}
    slots: dict[str, list[str | None]] = {t: [] for t in templates}
    for obs in per_pair:
        for t in templates:
            mine = [o for o in obs if o.template == t]
            by_order: dict[str, Decision | None] = {o.order: o.decision for o in mine}
            if len(by_order) == 2:
                first, second = by_order.values()
                swaps[t].append((first, second))
            slots[t] += [o.slot for o in mine]
    units = [[by_template[t][i] for t in templates] for i in range(len(per_pair))]
    agreement = agreement_with_others(units) if len(templates) >= 2 else [None] * len(templates)
    all_swaps = [s for t in templates for s in swaps[t]]
    swap = swap_agreement(all_swaps)
    disagreement = template_disagreement(units) if len(templates) >= 2 else None

    template_rows: dict[str, Any] = {}
    for t, agree in zip(templates, agreement, strict=True):
        t_acc = accuracy(by_template[t])
        template_rows[t] = {
            **_accuracy_row(t_acc),
            "swap_agreement": swap_agreement(swaps[t]),
            "position_bias_rate": position_bias_rate(slots[t]),
            "agreement_with_other_templates": agree,
        }
    ranked = sorted((a, t) for t, a in zip(templates, agreement, strict=True) if a is not None)
    most = least = None
    if ranked and ranked[0][0] != ranked[-1][0]:
        least, most = ranked[0][1], ranked[-1][1]
    return {
        "pairs": len(records),
        **_accuracy_row(acc),
        "parse_failures": sum(r.unparsed for r in records),
        "call_failures": sum(r.call_failures for r in records),
        "orders_run": sorted({o.order for obs in per_pair for o in obs}),
        "swap_agreement": swap,
        "position_bias_rate": position_bias_rate(s for t in templates for s in slots[t]),
        "templates": template_rows,
        "template_alpha": krippendorff_alpha_nominal(units) if len(templates) >= 2 else None,
        "template_disagreement": disagreement,
        "most_consistent_template": most,
        "least_consistent_template": least,
        "flags": flags(high, swap, disagreement),
    }


def _accuracy_row(acc: Any) -> dict[str, Any]:
    low, high = acc.interval
    return {
        "scored": acc.scored,
        "desirable": acc.desirable,
        "undesirable": acc.undesirable,
        "ties": acc.ties,
        "unscored": acc.missing,
        "accuracy": acc.value,
        "ci95": [low, high] if acc.scored else None,
    }


def summarize_by_domain(records: Sequence[PairRecord], verifier_name: str) -> dict[str, dict[str, Any]]:
    domains: dict[str, list[PairRecord]] = {}
    for record in records:
        domains.setdefault(record.pair.domain, []).append(record)
    return {domain: summarize(domains[domain], verifier_name) for domain in sorted(domains)}


def record_json(record: PairRecord, verifier_name: str) -> dict[str, Any]:
    """One pair's verdicts for `pairs.jsonl`: every view and order, so any number in the report
    can be recomputed."""
    return {
        "verifier": verifier_name,
        "domain": record.pair.domain,
        "source": record.pair.source,
        "call_failures": record.call_failures,
        "parse_failures": record.unparsed,
        "observations": [
            {
                "template": o.template,
                "order": o.order,
                "decision": o.decision.value if o.decision else None,
                "slot": o.slot,
                "desirable_score": o.scores[0],
                "undesirable_score": o.scores[1],
            }
            for o in observations(record, verifier_name)
        ],
    }


__all__ = ["AuditError", "PairRecord", "Target", "audit_verifier", "summarize"]
