"""One best-of-N request's plan, running state, sampling and verification (method §4).

`plan_request` narrows the route's settings by the client's overrides; `Run` holds everything a
request accumulates (candidates, usage, errors, timings, the panel record) and lives in the call;
`sample_batch` draws one batch, spread over the variants and the panel (strategies/best_of_n/
panel.py), keeping what arrives in time; `verify` has every verifier score every candidate.
The loop (strategies/best_of_n/loop.py) and fusion (strategies/best_of_n/fusing.py) build on these.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TypeVar

from strategies.best_of_n.panel import PanelistSettings, PanelRecord, drop_reason, split
from strategies.best_of_n.settings import BestOfNSettings
from strategies.best_of_n.variants import Variant
from strategies.contract import (
    Batch,
    BudgetExhausted,
    Candidate,
    Message,
    OverrideError,
    RequestOverrides,
    Scored,
    Services,
    Usage,
    Verifier,
    VerifyContext,
    as_candidate,
    failure_cause,
)
from strategies.selection.weighted import VerifierResult, view_key

Clock = Callable[[], float]
AnswerOf = Callable[[Candidate], "str | None"]


@dataclass(frozen=True)
class Plan:
    """The request's effective settings: the route's, narrowed by the client's overrides."""

    max_n: int
    adaptive: bool
    variants: list[Variant]
    verifiers: list[Verifier]
    panel: tuple[PanelistSettings, ...] = ()


_Named = TypeVar("_Named", Variant, Verifier)


def _subset(available: Sequence[_Named], wanted: list[str] | None, kind: str) -> list[_Named]:
    if wanted is None:
        return list(available)
    names = [item.name for item in available]
    unknown = sorted(set(wanted) - set(names))
    if unknown:
        raise OverrideError(f"unknown {kind} {unknown}; this route has {names}")
    return [item for item in available if item.name in set(wanted)]


def plan_request(
    settings: BestOfNSettings,
    overrides: RequestOverrides | None,
    variants: Sequence[Variant],
    verifiers: Sequence[Verifier],
    audit: bool,
) -> Plan:
    """Overrides can only lower caps and narrow the route's variants and verifiers."""
    overrides = overrides or RequestOverrides.model_validate({})
    chosen_variants = _subset(variants, overrides.variants, "variants")
    if not chosen_variants:
        raise OverrideError("at least one variant is needed")
    chosen_verifiers = _subset(verifiers, overrides.verifiers, "verifiers")
    cap = settings.audit_max_n if audit else settings.max_n
    if overrides.max_n is not None:
        cap = min(cap, overrides.max_n)
    # audit requests measure the route, so they sample the whole budget, never stop early
    adaptive = False if audit else (settings.adaptive if overrides.adaptive is None else overrides.adaptive)
    return Plan(cap, adaptive, chosen_variants, chosen_verifiers, tuple(settings.panel or ()))


@dataclass
class Run:
    """Per-request state; lives in the call, never in the module."""

    messages: Sequence[Message]
    services: Services
    clock: Clock
    started: float
    candidates: list[Candidate] = field(default_factory=list)
    usage: Usage = field(default_factory=Usage)
    errors: int = 0
    timings: dict[str, float] = field(default_factory=dict)
    rendered: dict[str, asyncio.Future[list[Message]]] = field(default_factory=dict)  # per variant, once
    last_error: BaseException | None = None
    over_budget: BudgetExhausted | None = None  # a call the token budget could not pay for
    view_rounds: int = 0  # times the verifier-first rule added views
    verifier_outcomes: dict[str, dict[str, int]] = field(default_factory=dict)
    verifier_causes: dict[str, str] = field(default_factory=dict)
    panel: PanelRecord | None = None  # panel routes: who drew what, who was dropped

    def time(self, step: str, since: float) -> None:
        self.timings[step] = self.timings.get(step, 0.0) + (self.clock() - since)

    @property
    def elapsed(self) -> float:
        return self.clock() - self.started


async def _render(run: Run, variant: Variant) -> list[Message]:
    """The variant's messages, rendered once per request (a paraphrase is asked once, whichever
    panelists then answer it). The first caller awaits the rendering itself, so cancelling the
    request cancels it; the others wait on it shielded."""
    task = run.rendered.get(variant.name)
    if task is None:
        task = run.rendered[variant.name] = asyncio.ensure_future(_rendered(run, variant))
        return await task
    return await asyncio.shield(task)


async def _rendered(run: Run, variant: Variant) -> list[Message]:
    messages, usage = await variant.render(run.messages, run.services)
    run.usage += usage
    return messages


async def _generate_for(
    run: Run, variant: Variant, share: int, upstream: str | None
) -> tuple[str, str | None, Batch | None]:
    """One (variant, panelist) share of a batch; a failure becomes an error count (and, on a
    panel, drops the panelist for the request), not an exception."""
    try:
        messages = await _render(run, variant)
        batch = await run.services.generate(messages, share, upstream)
    except BudgetExhausted as refused:  # never sent: not an upstream error
        run.over_budget = refused
        return variant.name, upstream, None
    except Exception as error:  # noqa: BLE001 - any upstream failure only costs its share
        run.errors += 1
        run.last_error = error
        if run.panel is not None and upstream is not None:
            run.panel.drop(upstream, drop_reason(error))
        return variant.name, upstream, None
    run.usage += batch.usage
    run.errors += batch.errors
    if run.panel is not None and upstream is not None:
        run.panel.tokens[upstream] = run.panel.tokens.get(upstream, 0) + batch.usage.total_tokens
        if not batch.samples:
            run.panel.drop(upstream, "no_candidates")
    return variant.name, upstream, batch


async def sample_batch(run: Run, plan: Plan, size: int, timeout: float | None) -> int:
    """Run one batch; keeps what finished in time and returns how many candidates it added."""
    since = run.clock()
    dropped = set(run.panel.dropped) if run.panel is not None else set()
    shares = split(len(run.candidates), size, [v.name for v in plan.variants], plan.panel, dropped)
    by_name = {v.name: v for v in plan.variants}
    tasks = [
        asyncio.ensure_future(_generate_for(run, by_name[name], k, upstream))
        for (name, upstream), k in shares.items()
    ]
    try:
        done, pending = await asyncio.wait(tasks, timeout=timeout)
    except asyncio.CancelledError:  # asyncio.wait never cancels what it waits for: the client left
        for task in tasks:
            task.cancel()
        raise
    for task in pending:  # past the deadline: what did not arrive is not waited for
        task.cancel()
    added = 0
    for task in tasks:
        if task not in done:
            continue
        name, upstream, batch = task.result()
        for sample in batch.samples if batch else []:
            run.candidates.append(as_candidate(len(run.candidates), name, sample, upstream))
            added += 1
            if run.panel is not None and upstream is not None:
                run.panel.drawn[upstream] = run.panel.drawn.get(upstream, 0) + 1
    run.time("generate", since)
    return added


async def _score_one(verifier: Verifier, ctx: VerifyContext, candidates: Sequence[Candidate]) -> Scored | str:
    """The verifier's verdict, or why it could not give one."""
    try:
        return await verifier.score(ctx, candidates)
    except Exception as exc:  # noqa: BLE001 - a broken verifier leaves its views missing, never 0
        return failure_cause(exc)


async def verify(run: Run, plan: Plan, ctx: VerifyContext) -> list[VerifierResult]:
    since = run.clock()
    verdicts = await asyncio.gather(*(_score_one(v, ctx, run.candidates) for v in plan.verifiers))
    results = []
    for verifier, scored in zip(plan.verifiers, verdicts, strict=True):
        tally = run.verifier_outcomes.setdefault(verifier.name, {})
        if isinstance(scored, str):
            tally["failed"] = tally.get("failed", 0) + 1
            run.verifier_causes[verifier.name] = scored
            continue
        tally["ok"] = tally.get("ok", 0) + 1
        if scored.errors:  # calls inside it that failed or did not parse: missing views
            tally["missing"] = tally.get("missing", 0) + scored.errors
            if scored.cause is not None:
                run.verifier_causes[verifier.name] = scored.cause
        run.usage += scored.usage
        results.append(VerifierResult(verifier.name, verifier.weight, scored))
    run.time("verify", since)
    return results


def view_scores(results: Sequence[VerifierResult], n: int) -> dict[str, list[float | None]]:
    return {
        view_key(r.name, view): (list(values) + [None] * n)[:n]
        for r in results
        for view, values in r.scored.views.items()
    }
