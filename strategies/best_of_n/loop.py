"""The adaptive best-of-N loop (method §4): sample in doublings, verify, select, stop, assess.

The number of candidates doubles from batch to batch (2 → 4 → 8 …: each batch after the first
is as large as everything so far), because the no-gain rule predicts the gain of exactly that
step, `D_n · ρ`. Every call of a batch runs concurrently; candidates are spread round-robin
over the prompt variants.

Hard caps bind between batches: the first batch is never cut by the deadline (it is the
answer), later ones keep whatever arrived in time; the next batch is shrunk to what the token
budget can still pay for at the cost per candidate seen so far. Fixed-N requests (`adaptive`
off, and every audit request) sample their whole budget as one batch, so only missing samples
are refilled.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from typing import Any

import numpy as np

from strategies.answers import answer_key, answer_type, question_of
from strategies.best_of_n import adapt, stopping
from strategies.best_of_n.adapt import GainCurve
from strategies.best_of_n.fusing import Fuser
from strategies.best_of_n.panel import PanelRecord, PanelStats, numeric_weight, split
from strategies.best_of_n.prior import VotePrior
from strategies.best_of_n.run import AnswerOf, Clock, Plan, Run, plan_request, sample_batch, verify, view_scores
from strategies.best_of_n.settings import MAX_VIEW_ROUNDS, BestOfNSettings
from strategies.best_of_n.variants import Variant, build_variants
from strategies.contract import (
    Candidate,
    Message,
    NoCandidatesError,
    Outcome,
    Services,
    StopReason,
    Strategy,
    StrategyRequest,
    Verifier,
    VerifyContext,
    sample_variant,
)
from strategies.risk import estimators as risk
from strategies.risk.estimators import RouteRiskState
from strategies.selection.choice import Choice, StateSource, choose, ranked_clusters
from strategies.selection.explain import explain
from strategies.selection.fusion import FuserJudge
from strategies.selection.knockout import measure_pairs, tournament
from strategies.selection.weighted import Selection, VerifierResult, select
from strategies.verifiers import build_verifiers

STRATEGY = "best_of_n"

async def _expand_views(plan: Plan, ctx: VerifyContext) -> bool:
    grown = await asyncio.gather(*(v.add_views(ctx) for v in plan.verifiers))
    return any(grown)


def _next_size(run: Run, plan: Plan, settings: BestOfNSettings) -> int:
    n = len(run.candidates)
    if not plan.adaptive:
        size = plan.max_n - n
    else:
        later = n if settings.later_batch is None else settings.later_batch  # §4.7
        size = min(settings.initial_batch if n == 0 else later, plan.max_n - n)
    if settings.max_tokens_budget is not None and n:
        per_candidate = run.usage.total_tokens / n
        if per_candidate > 0:
            affordable = math.floor((settings.max_tokens_budget - run.usage.total_tokens) / per_candidate)
            size = min(size, affordable)
    return size


def _caps(run: Run, plan: Plan, settings: BestOfNSettings) -> stopping.Caps:
    n = len(run.candidates)
    return stopping.Caps(
        n=n,
        max_n=plan.max_n,
        tokens_used=run.usage.total_tokens,
        token_budget=settings.max_tokens_budget,
        tokens_per_candidate=run.usage.total_tokens / n if n else 0.0,
        elapsed_s=run.elapsed,
        deadline_s=settings.deadline_s,
    )


def _evidence(
    run: Run, selection: Selection, answer_of: AnswerOf | None, verifier_term: float | None
) -> stopping.Evidence:
    scored = [u for u in selection.utility_list() if u is not None]
    answers = [answer_of(c) for c in run.candidates] if answer_of else None
    return stopping.Evidence(answers, scored, selection.selected_utility, verifier_term)


def _verifier_term(selection: Selection, rng: np.random.Generator, resamples: int) -> float | None:
    m = selection.matrix
    return risk.verifier_term(m.scores, m.weights, m.eligible, selection.index, rng, resamples)


@dataclass(frozen=True)
class _Round:
    """The verdict on all candidates so far."""

    results: list[VerifierResult]
    selection: Selection
    decision: stopping.Decision
    choice: Choice
    knockout: dict[str, Any] | None = None  # the tournament's report, when one is configured


Chooser = Callable[[Run, Selection], "tuple[Selection, Choice]"]


async def _judge(
    run: Run, plan: Plan, settings: BestOfNSettings, ctx: VerifyContext,
    rng: np.random.Generator, answer_of: AnswerOf | None, chooser: Chooser,
    posterior: stopping.Posterior | None = None,
) -> _Round:
    """Verify, select and decide; verify better first while the views disagree most (§4.4)."""
    while True:
        results = await verify(run, plan, ctx)
        since = run.clock()
        selection, choice = chooser(run, select(run.candidates, results))
        v_term = _verifier_term(selection, rng, settings.bootstrap)
        decision = stopping.decide(
            settings.stop, _evidence(run, selection, answer_of, v_term),
            _caps(run, plan, settings), adaptive=plan.adaptive, posterior=posterior,
        )
        run.time("select", since)
        if not decision.verify_first or run.view_rounds >= MAX_VIEW_ROUNDS:
            return _Round(results, selection, decision, choice)
        run.view_rounds += 1
        if not await _expand_views(plan, ctx):
            return _Round(results, selection, decision, choice)


def _deadline_left(run: Run, settings: BestOfNSettings) -> float | None:
    """Seconds left for the next batch; the first batch is never cut (it is the answer)."""
    if not run.candidates or settings.deadline_s is None:
        return None
    return settings.deadline_s - run.elapsed


class BestOfN(Strategy):
    """Adaptive best-of-N over the route's variants, reranked by its verifiers (method §4).

    Built once per route; `run` keeps all per-request state in the call. `rng` makes a fresh
    generator per request, `clock` measures deadlines; both are seams for tests.
    """

    name = STRATEGY
    Settings = BestOfNSettings

    def __init__(
        self,
        settings: BestOfNSettings,
        verifiers: Sequence[Verifier],
        variants: Sequence[Variant],
        *,
        state: RouteRiskState | None = None,
        answer_of: AnswerOf | None = None,
        rng: Callable[[], np.random.Generator] = np.random.default_rng,
        clock: Clock = time.monotonic,
        prior: VotePrior | None = None,
        gain: GainCurve | None = None,
    ) -> None:
        self.settings = settings
        self.verifiers = list(verifiers)
        self.variants = list(variants)
        self.state = state
        # What the route learns from its answers and its gold (§4.6, §4.8), shared by processes.
        learned = settings.stop.prior
        if prior is None and learned is not None:
            prior = VotePrior(learned.min_requests, learned.window_s)
        self.prior = prior
        self.gain = gain if gain is not None else GainCurve(settings.adapt_n)
        fusion = settings.selection.fusion
        self.fuser = Fuser(
            fusion, key_of=lambda messages: self._answers_to(messages) or self.cluster_key, choose=self._choose,
            plan=lambda: plan_request(settings, None, self.variants, self.verifiers, audit=False),
            variants=[v.name for v in self.variants], max_n=settings.max_n, clock=clock,
        ) if fusion is not None else None
        self.fusion_gain = self.fuser.gain if self.fuser is not None else None
        self.audited = [*self.verifiers, *([FuserJudge(fusion.audit_spec())] if fusion is not None else [])]
        self.panel_stats = PanelStats(settings.panel_min_items) if settings.panel else None
        self.shared_counts = (
            {"gain": self.gain.counts}
            | ({"vote_prior": prior.counts} if prior is not None else {})
            | ({"fusion": self.fusion_gain.counts} if self.fusion_gain is not None else {})
            | ({"panel": self.panel_stats.counts} if self.panel_stats is not None else {})
        )
        # The vote stop rule counts the answers of the first verifier that extracts them.
        voters = [v for v in self.verifiers if v.extracts_answers]
        self._voter = voters[0] if answer_of is None and voters else None
        self.answer_of = answer_of if answer_of is not None else (voters[0].answer_of if voters else None)
        self.needs_logprobs = any(v.needs_logprobs for v in self.verifiers)
        # Clusters group by the voters' answers, else by the default extraction.
        self.cluster_key: AnswerOf = self.answer_of if self.answer_of is not None else answer_key
        # The route's learned model, kept by the proxy with the probe data; None: weighted.
        self.selector_state: StateSource | None = None
        self.upstreams = settings.upstreams()
        self._rng = rng
        self._clock = clock

    @classmethod
    def build(cls, settings: BestOfNSettings) -> BestOfN:
        verifiers = build_verifiers(settings.verifiers)
        try:
            variants = build_variants(settings.variants, settings.paraphrase_upstream)
        except ValueError as exc:
            raise ValueError(f"variants: {exc}") from None
        return cls(settings, verifiers, variants, state=RouteRiskState())

    def use_selector(self, state: StateSource) -> None:
        self.selector_state = state

    async def run(self, request: StrategyRequest, services: Services) -> Outcome:
        """Sample until a stop rule fires, return the selected candidate with its risk report.

        Raises `OverrideError` for overrides naming what the route lacks and `NoCandidatesError`
        when no upstream call produced a single candidate.
        """
        settings = self.settings
        rng = self._rng()
        audit = request.audit
        if audit is None:  # drawn only when auditing is on, so seeded runs stay comparable
            audit = settings.audit_rate > 0 and bool(rng.random() < settings.audit_rate)
        plan = plan_request(settings, request.overrides, self.variants, self.verifiers, audit)
        if self.panel_stats is not None:
            plan = replace(plan, panel=self.panel_stats.resolve(plan.panel))
        gain = self.gain.gain(plan.max_n)
        no_gain_cap = False
        if gain is not None and gain.adapted and not audit and gain.n < plan.max_n:  # §4.8
            plan = replace(plan, max_n=gain.n)
            no_gain_cap = gain.n == 1
        ctx = VerifyContext(request.messages, services, response_format=request.response_format)
        run = Run(request.messages, services, self._clock, started=self._clock())
        if plan.panel:
            run.panel = PanelRecord([p.upstream for p in plan.panel], settings.min_panel,
                                    weights={p.upstream: numeric_weight(p) for p in plan.panel})
        answers_to = self._answers_to(run.messages)
        posterior = self.prior.posterior if self.prior is not None and plan.adaptive else None
        verdict: _Round | None = None
        stop: StopReason | None = None
        while stop is None:
            remaining = _deadline_left(run, settings)
            if remaining is not None and remaining <= 0:
                stop = StopReason.DEADLINE
                break
            added = await sample_batch(run, plan, _next_size(run, plan, settings), remaining)
            if not run.candidates and run.over_budget is not None:
                raise run.over_budget  # not even the first answer fits the budget
            if not run.candidates:
                raise NoCandidatesError(
                    f"all {run.errors} upstream call(s) failed; none produced a candidate"
                ) from run.last_error
            verdict = await _judge(run, plan, settings, ctx, rng, answers_to, self._choose, posterior)
            stop = verdict.decision.stop
            if stop in _EARLY_STOPS and len(run.candidates) < min(request.n, plan.max_n):
                stop = None  # the client asked for n answers: an early stop waits until there are n
            if stop is None and run.over_budget is not None:
                stop = StopReason.TOKEN_BUDGET
            if stop is None and added == 0:
                stop = StopReason.UPSTREAM_ERRORS  # a whole batch failed: do not hammer it again
            if stop is None and _next_size(run, plan, settings) <= 0:
                stop = StopReason.TOKEN_BUDGET  # the next candidate would not fit the budget
        assert verdict is not None  # the first batch always produces a verdict or raises
        if run.panel is not None and len(run.panel.producing) < run.panel.min_panel:
            dropped = ", ".join(f"{name}: {why}" for name, why in run.panel.dropped.items())
            raise NoCandidatesError(  # the panel's own words: one panelist's error would not say why
                f"{len(run.panel.producing)} of the panel's {len(run.panel.upstreams)} upstreams produced"
                f" candidates; the route needs {run.panel.min_panel}" + (f" (dropped {dropped})" if dropped else "")
            )
        if no_gain_cap and stop is StopReason.MAX_N:
            stop = StopReason.NO_MEASURED_GAIN
        if self.prior is not None and answers_to is not None:
            self.prior.observe([answers_to(c) for c in run.candidates])
        if self.panel_stats is not None and run.panel is not None:
            for upstream, drawn in run.panel.drawn.items():
                self.panel_stats.observe_tokens(upstream, run.panel.tokens.get(upstream, 0), drawn)
        verdict = await self._knockout(run, plan, verdict, ctx)
        outcome = _outcome(run, plan, settings, verdict, stop, rng, audit, self.state)
        outcome.gain = gain.as_dict() if gain is not None else None
        if run.panel is not None:
            outcome.panel = run.panel.report(outcome.candidates, outcome.selected)
        if self.fuser is None:
            return outcome
        return await self.fuser.fuse(request, run, plan, verdict.choice, verdict.selection, ctx, outcome)

    def _judge_of(self, plan: Plan | None = None) -> Verifier | None:
        knockout = self.settings.selection.knockout
        verifiers = plan.verifiers if plan is not None else self.verifiers
        if knockout is None:
            return None
        return next((v for v in verifiers if v.name == knockout.judge and v.judges_pairs), None)

    async def _knockout(self, run: Run, plan: Plan, verdict: _Round, ctx: VerifyContext) -> _Round:
        """The top clusters' tournament, where the probes found the judge good enough in both orders."""
        knockout = self.settings.selection.knockout
        if knockout is None:
            return verdict
        state = self.selector_state() if self.selector_state is not None else None
        gate = state.judge_gate if state is not None else None
        judge = self._judge_of(plan)
        report: dict[str, Any] = {"gate": gate.as_dict() if gate is not None else None, "matches": []}
        if gate is None or not gate.enabled or judge is None:
            report["played"] = False
            return replace(verdict, knockout=report)
        choice, selection = verdict.choice, verdict.selection
        seeds = ranked_clusters(choice, selection)[: knockout.top]
        if len(seeds) < 2:
            report["played"] = False
            return replace(verdict, knockout=report)
        since = run.clock()
        winner, matches, usage = await tournament(judge, ctx, [run.candidates[choice.clusters[j].representative] for j in seeds])
        run.usage += usage
        run.time("knockout", since)
        report.update(played=True, matches=matches, seeds=seeds, winner_cluster=seeds[winner])
        best = choice.clusters[seeds[winner]]
        confidence = choice.probabilities[seeds[winner]] if choice.probabilities is not None else None
        return replace(
            verdict, selection=replace(selection, index=best.representative),
            choice=replace(choice, confidence=confidence), knockout=report,
        )

    async def judge_pairs(
        self, request: StrategyRequest, services: Services, outcome: Outcome, utility: Callable[[Candidate], float | None]
    ) -> list[dict[str, bool]]:
        """The knockout judge on the served outcome's right cluster against up to two wrong ones."""
        judge = self._judge_of()
        if judge is None:
            return []
        reps = [outcome.candidates[row["representative"]] for row in outcome.clusters]
        scored = [(c, utility(c)) for c in reps]
        right = [c for c, u in scored if u is not None and u >= 1.0]
        wrong = [c for c, u in scored if u is not None and u < 1.0]
        if not right or not wrong:
            return []
        ctx = VerifyContext(request.messages, services, response_format=request.response_format)
        pairs, _ = await measure_pairs(judge, ctx, right[0], wrong[:2])  # what they cost is charged where every call is
        return pairs

    async def learn_from_gold(
        self, request: StrategyRequest, services: Services, reference: Sequence[Candidate],
        utility: Callable[[Candidate], float | None], item: str,
    ) -> None:
        """A probe item's reference draws, unstopped, teach the vote prior (§4.6) and measure the
        gold accuracy of every n up to `max_n` (§4.8)."""
        answer_of = self._answers_to(request.messages)
        first = reference[0].variant if reference else None
        if self.prior is not None and answer_of is not None:
            self.prior.observe([answer_of(c) for c in reference if c.variant == first])
        # Verifiers that call nothing are free to run on every group; the others on one per n.
        free = all(not v.upstreams for v in self.verifiers)
        accuracy = await adapt.accuracy_by_n(
            reference, [v.name for v in self.variants], adapt.measured_ns(self.settings.max_n),
            lambda group: self._select_among(request, services, group), utility, every_group=free,
        )
        self.gain.add(item, accuracy)
        if self.panel_stats is not None:
            for candidate in reference:
                value = utility(candidate) if candidate.upstream is not None else None
                if value is not None:
                    self.panel_stats.observe_gold(candidate.upstream, value)  # type: ignore[arg-type]
        if self.fuser is not None:
            await self.fuser.measure(request, services, reference, utility, item)

    async def _select_among(self, request: StrategyRequest, services: Services, candidates: list[Candidate]) -> int:
        """The candidate the route's verifiers and selection would choose among `candidates`."""
        plan = plan_request(self.settings, None, self.variants, self.verifiers, audit=False)
        run = Run(request.messages, services, self._clock, started=self._clock(), candidates=list(candidates))
        ctx = VerifyContext(request.messages, services, response_format=request.response_format)
        results = await verify(run, plan, ctx)
        selection, _ = self._choose(run, select(run.candidates, results))
        return selection.index

    def _answers_to(self, messages: Sequence[Message]) -> AnswerOf | None:
        """`answer_of` for this request: the voter's keys know its question (what only restates
        the question is no answer, strategies/answers.py)."""
        voter = self._voter
        if voter is None:
            return self.answer_of
        question = question_of(messages)
        return lambda candidate: voter.answer_of(candidate, question)

    def _choose(self, run: Run, selection: Selection) -> tuple[Selection, Choice]:
        cluster_key = self._answers_to(run.messages) or self.cluster_key
        return choose(run.candidates, selection, run.messages, cluster_key, self.settings.selection,
                      self.selector_state)

    async def reference(
        self, request: StrategyRequest, services: Services, k: int, served: Sequence[Candidate] = ()
    ) -> list[Candidate]:
        """`k` candidates from every variant of the route, the first variant first (see `Strategy`)."""

        async def one(variant: Variant) -> list[Candidate]:
            messages, _ = await variant.render(request.messages, services)
            mine = [c for c in served if c.variant == variant.name][:k]
            if len(mine) >= k:
                return mine
            # a panel's reference draws are split by weight, as its requests' candidates are
            panel = self.panel_stats.resolve(self.settings.panel or ()) if self.panel_stats is not None else ()
            shares = split(len(mine), k - len(mine), [variant.name], panel, set())
            drawn = await asyncio.gather(
                *(sample_variant(services, messages, variant.name, count, upstream)
                  for (_, upstream), count in shares.items())
            )
            return mine + [c for batch in drawn for c in batch]

        batches = await asyncio.gather(*(one(v) for v in self.variants))
        ordered = [c for batch in batches for c in batch]
        return [replace(c, index=i) for i, c in enumerate(ordered)]


def _vote_answers(plan: Plan, choice: Choice, n: int) -> list[str | None] | None:
    """Each candidate's answer, where the utilities are vote shares (every verifier that scores
    is a vote: the disagreement floor is the vote's own model, method §3.10); else None."""
    if not all(v.extracts_answers for v in plan.verifiers if not v.hard):
        return None
    answers: list[str | None] = [None] * n
    for cluster in choice.clusters:
        for member in cluster.members:
            answers[member] = cluster.key if cluster.answered else None
    return answers


def _outcome(
    run: Run,
    plan: Plan,
    settings: BestOfNSettings,
    verdict: _Round,
    stop: StopReason,
    rng: np.random.Generator,
    audit: bool,
    route_state: RouteRiskState | None,
) -> Outcome:
    since = run.clock()
    selection = verdict.selection
    m = selection.matrix
    report = risk.assess(
        selection.utility_list(), [c.variant for c in run.candidates], selection.index,
        m.scores, m.weights, m.eligible, rng,
        k_ref=settings.k_ref, resamples=settings.bootstrap, route=route_state,
        answers=_vote_answers(plan, verdict.choice, len(run.candidates)),
    )
    if route_state is not None:
        route_state.observe(report)
    run.time("risk", since)
    voters = [v.name for v in plan.verifiers if v.extracts_answers and not v.hard]
    return Outcome(
        candidates=run.candidates,
        selected=selection.index,
        stop_reason=stop,
        usage=run.usage,
        strategy=STRATEGY,
        scores=selection.utility_list(),
        view_scores=view_scores(verdict.results, len(run.candidates)),
        variants=[v.name for v in plan.variants],
        risk=report,
        verifier_disagreement=report.verifier if report.sources.get("verifier") == "request" else None,
        upstream_errors=run.errors,
        verifier_outcomes=run.verifier_outcomes,
        verifier_causes=run.verifier_causes,
        audit=audit,
        timings=dict(run.timings),
        # The rule that chose and the numbers it compared, beside the clusters, so the response
        # explains its own choice (strategies/selection/explain.py).
        selection=verdict.choice.report(selection.index) | (
            {"knockout": verdict.knockout} if verdict.knockout is not None else {}
        ) | explain(selection, verdict.choice, verdict.knockout, voters).as_dict(),
        confidence=verdict.choice.confidence,
        clusters=verdict.choice.training_rows(),
        answer_types=_answer_types(verdict.choice, len(run.candidates)),
    )


def _answer_types(choice: Choice, n: int) -> list[str]:
    """Each candidate's kind of answer, read off the answer clusters the selection used."""
    types = ["none"] * n
    for cluster in choice.clusters:
        for member in cluster.members:
            types[member] = answer_type(cluster.key)
    return types


# Stops that say "more samples would not pay"; hard caps (max_n, budget, deadline) still end a
# request that has fewer candidates than the answers it asked for.
_EARLY_STOPS = frozenset({StopReason.VOTE_CONFIDENT, StopReason.NO_GAIN, StopReason.GOOD_ENOUGH})
