"""Gold probes: run a route's probe items as a client would, and at the reference budget.

Per item the runner keeps the gold values of method §9.1 (A, O(n), O(K), O(K, M) and the mean
of one prompt) next to the online estimates the served run reported, in the route's
`RouteCalibration`. The background loop and `rvr-proxy probe` both call `ProbeRunner.run`.

Probe traffic is never client traffic: it goes through `Pipeline.prepare` and the route's
strategy but not through the request record, so `rvr_requests` and the risk histograms never
see it; `rvr_probe_*` count it instead. It runs at the lowest priority (an item starts only
while no client request is in flight) and within `max_tokens_per_hour`: each item's allowance
is what the hour has left, so an item overshoots by at most what its calls in flight spent past
their estimates, and a run stops when the hour is spent.
"""

from __future__ import annotations

import asyncio
import json
import logging
import random
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from proxy.config.probe_set import ProbeItem, ProbeSettings, load_probe_set
from proxy.errors import ProxyError, TokenBudgetExceeded
from proxy.pipeline.endpoints import CHAT, TEXT
from proxy.pipeline.pipeline import Pipeline
from proxy.probes.budget import build_budget
from proxy.probes.calibration import RouteCalibration
from proxy.routing import Route
from proxy.telemetry import metrics
from proxy.upstream.allowance import CURRENT as CURRENT_ALLOWANCE
from strategies.contract import BudgetExhausted, Candidate, Outcome
from strategies.risk.calibration import COMPONENTS, GoldRecord
from strategies.risk.checkers import Checker, CheckerError, build_checker, score

log = logging.getLogger("rvr_proxy")
IDLE_POLL_S = 0.2


class ProbeBudgetSpent(RuntimeError):
    """The route's probe budget for the last hour is spent; the run stops."""


@dataclass
class RunSummary:
    route: str
    attempted: int = 0
    recorded: int = 0
    errors: dict[str, int] = field(default_factory=dict)
    tokens: int = 0
    stopped: str | None = None  # why the run ended early, in words
    records: list[GoldRecord] = field(default_factory=list)


class ProbeRunner:
    def __init__(
        self,
        pipeline: Pipeline,
        route: Route,
        calibration: RouteCalibration,
        *,
        rng: random.Random | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        settings = route.settings.probes
        if settings is None:
            raise ValueError(f"route {route.name!r} has no probes")
        self.pipeline = pipeline
        self.route = route
        self.settings: ProbeSettings = settings
        self.calibration = calibration
        self.items = load_probe_set(settings.file)
        self.checker: Checker = build_checker(settings.checker)
        self.k_ref = settings.k_ref or route.settings.strategy.reference_k() or 1
        self._rng = rng or random.Random()
        self._order: list[ProbeItem] = []
        self.budget = build_budget(pipeline, route.name, settings.max_tokens_per_hour, calibration, clock)
        self.charged = 0  # tokens this runner's items spent, whatever became of them

    async def _charge(self, tokens: int) -> None:
        self.charged += tokens  # first: a run's summary counts the item even if the rest is cut
        await self.budget.charge(tokens)

    # ---- items --------------------------------------------------------------------------

    def next_items(self, count: int) -> list[ProbeItem]:
        """The next `count` items of a shuffled cycle through the set, so every item recurs."""
        chosen: list[ProbeItem] = []
        while len(chosen) < count:
            if not self._order:
                self._order = list(self.items)
                self._rng.shuffle(self._order)
            chosen.append(self._order.pop())
        return chosen

    async def run_item(self, item: ProbeItem) -> GoldRecord:
        """One item through the route as a client would send it, then at the reference budget.

        Raises `ProbeBudgetSpent`, `CheckerError` or the upstream's `ProxyError`; whatever the
        item spent is charged to the hour either way.
        """
        left = await self.budget.left()
        if left <= 0:
            raise ProbeBudgetSpent(self._spent_message())
        if item.messages is not None:
            endpoint, data = CHAT, {"messages": item.messages}
        else:
            endpoint, data = TEXT, {"prompt": item.prompt}
        body, route = self.pipeline.parse({"model": self.route.name, **data}, endpoint)
        prepared = self.pipeline.prepare(body, route, endpoint, token_budget=left)
        token = CURRENT_ALLOWANCE.set(prepared.allowance)
        try:
            outcome = await self.pipeline.run(route, prepared.work, prepared.services, probe=True)
            reference = await route.strategy.reference(prepared.work, prepared.services, self.k_ref, outcome.candidates)
            as_item = item.as_item()
            pairs = await route.strategy.judge_pairs(
                prepared.work, prepared.services, outcome, lambda c: self._utility(as_item, c)
            )
            # The reference draws teach the route its vote prior and the gold accuracy of each n
            # (method §4.6, §4.8); every worker and instance gets them at once.
            await route.strategy.learn_from_gold(
                prepared.work, prepared.services, reference, lambda c: self._utility(as_item, c), item.id
            )
            await self.pipeline.learning.share_counts(route)
        except (TokenBudgetExceeded, BudgetExhausted) as exc:
            raise ProbeBudgetSpent(self._spent_message()) from exc
        finally:
            CURRENT_ALLOWANCE.reset(token)
            # `charged` holds calls cut while the upstream worked at their estimates, as a key is charged.
            await self._charge(prepared.allowance.charged)
        return self._record(item, outcome, reference, prepared.allowance.charged, pairs)

    def _spent_message(self) -> str:
        return f"the probe budget of {self.settings.max_tokens_per_hour} tokens per hour is spent"

    def _utility(self, as_item: dict[str, Any], candidate: Candidate) -> float | None:
        try:
            return score(self.checker, candidate.text, as_item)
        except CheckerError:
            return None

    def _record(
        self, item: ProbeItem, outcome: Outcome, reference: list[Candidate], tokens: int,
        pairs: list[dict[str, bool]] | None = None,
    ) -> GoldRecord:
        as_item = item.as_item()
        served = score(self.checker, outcome.candidates[outcome.selected].text, as_item)  # raises CheckerError
        return measure(item.id, served, outcome, reference, lambda c: self._utility(as_item, c), tokens, pairs)

    # ---- runs ---------------------------------------------------------------------------

    async def run(
        self,
        count: int,
        *,
        idle: Callable[[], bool] | None = None,
        on_item: Callable[[RunSummary], None] | None = None,
    ) -> RunSummary:
        """Probe `count` items one at a time; each waits for `idle()` first, if given.

        The summary's tokens are what every item of the run spent: recorded, failed, or
        interrupted by the budget.
        """
        summary = RunSummary(self.route.name)
        charged_before = self.charged
        for item in self.next_items(count):
            while idle is not None and not idle():
                await asyncio.sleep(IDLE_POLL_S)
            summary.attempted += 1
            metrics.PROBE_REQUESTS.labels(self.route.name).inc()
            try:
                record = await self.run_item(item)
            except ProbeBudgetSpent as exc:
                self._error(summary, "budget", item)
                summary.stopped = str(exc)
            except CheckerError as exc:
                self._error(summary, "checker", item, str(exc))
            except ProxyError as exc:  # the proxy's own words: no prompt text, no secret
                self._error(summary, "upstream" if exc.status >= 500 else "rejected", item, exc.message[:200])
            else:
                self.calibration.add_gold(record)
                summary.recorded += 1
                summary.records.append(record)
            summary.tokens = self.charged - charged_before
            if on_item is not None:
                on_item(summary)
            if summary.stopped:
                break
        if summary.stopped:
            log.warning(json.dumps({"event": "probe_budget_spent", "route": self.route.name,
                                    "detail": summary.stopped}))
        return summary

    def _error(self, summary: RunSummary, reason: str, item: ProbeItem, detail: str = "") -> None:
        summary.errors[reason] = summary.errors.get(reason, 0) + 1
        metrics.PROBE_ERRORS.labels(self.route.name, reason).inc()
        log.warning(json.dumps({"event": "probe_error", "route": self.route.name, "item": item.id,
                                "reason": reason, "detail": detail}))

    async def loop(self, idle: Callable[[], bool]) -> None:
        """The background cadence: a run of `items_per_run` every `every_s`, by one process only."""
        every = self.settings.every_s
        while True:
            await asyncio.sleep(every)
            file = self.calibration.file
            if file is not None and not file.try_lead():
                continue  # another worker of this instance (or state_dir) probes this route
            try:
                await self.run(self.settings.items_per_run, idle=idle)
            except Exception as exc:  # noqa: BLE001 - the loop must outlive any one run's bug
                log.error(json.dumps({"event": "probe_run_failed", "route": self.route.name,
                                      "error": type(exc).__name__}))


def measure(
    item: str,
    served: float,
    outcome: Outcome,
    reference: list[Candidate],
    utility: Callable[[Candidate], float | None],
    tokens: int = 0,
    pairs: list[dict[str, bool]] | None = None,
) -> GoldRecord:
    """The gold values of one probe item (method §9.1) next to the online estimates it got.

    `utility` gives a candidate's gold utility, None where the checker failed: such a candidate
    is left out, never scored 0. Raises `CheckerError` when no reference candidate of the first
    prompt could be checked.
    """
    pool = [u for u in map(utility, outcome.candidates) if u is not None]
    first = reference[0].variant if reference else None
    ref = [(c.variant, utility(c)) for c in reference]
    one_prompt = [u for v, u in ref if u is not None and v == first]
    every = [u for _, u in ref if u is not None]
    if not one_prompt:
        raise CheckerError("no reference candidate could be checked")
    online = outcome.risk.as_dict() if outcome.risk is not None else {}
    clusters = []
    for row in outcome.clusters:  # learned selection's training rows: right only at full credit
        right = utility(outcome.candidates[row["representative"]])
        if right is not None:
            clusters.append({"features": row["features"], "size": row["size"], "correct": right >= 1.0,
                             **({"weighted": True} if row.get("weighted") else {})})  # the safety gate's comparison
    return GoldRecord(
        item=item,
        served=served,
        best_served=max(pool, default=served),
        best_one_prompt=max(one_prompt),
        best_all=max(every),
        mean_one_prompt=sum(one_prompt) / len(one_prompt),
        online={c: online.get(c) for c in COMPONENTS},
        tokens=tokens,
        time=time.time(),
        clusters=tuple(clusters),
        pairs=tuple(pairs or ()),
    )
