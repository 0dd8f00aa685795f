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

The hour's spend (`ProbeBudget`) is kept where every prober of the route sees it, so the budget
holds across `rvr-proxy probe` runs, restarts, workers and instances: a JSON ledger in the probe
directory (`server.state_dir/probes/budget/`, else the instance's multi-worker directory), and
with a shared state backend (Redis) a running total every instance adds to. The spend is the
largest that any of them (or this process's own ledger) shows.
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
import random
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import quote

from proxy.config.probe_set import ProbeItem, ProbeSettings, load_probe_set
from proxy.errors import ProxyError, TokenBudgetExceeded
from proxy.pipeline.endpoints import CHAT, TEXT
from proxy.pipeline.pipeline import Pipeline
from proxy.probes.calibration import RouteCalibration
from proxy.routing import Route
from proxy.state.base import SharedState
from proxy.state.files import FileLock, atomic_write_text
from proxy.telemetry import metrics
from proxy.upstream.allowance import CURRENT as CURRENT_ALLOWANCE
from strategies.contract import BudgetExhausted, Candidate, Outcome
from strategies.risk.calibration import COMPONENTS, GoldRecord
from strategies.risk.checkers import Checker, CheckerError, build_checker, score

log = logging.getLogger("rvr_proxy")
HOUR_S = 3600.0
MINUTE_S = 60.0
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


# ---- the hour's spend ----------------------------------------------------------------------
# Times are wall-clock seconds (`time.time()`): a ledger outlives the process that wrote it.


class SpendLedger:
    """Tokens spent as (time, tokens) entries, none older than an hour; at most one a minute.

    Charges of one minute share an entry dated at the latest of them: the entry then counts a
    little longer than its first charge would, never shorter, so merging only errs on the safe side.
    """

    def __init__(self, entries: Iterable[tuple[float, int]] = ()) -> None:
        self.entries: list[tuple[float, int]] = sorted(entries)

    def spent(self, now: float) -> int:
        # A clock set back leaves entries in the future: they still count, up to an hour away.
        return sum(tokens for when, tokens in self.entries if abs(now - when) < HOUR_S)

    def add(self, now: float, tokens: int) -> None:
        self.entries = [(when, spent) for when, spent in self.entries if abs(now - when) < HOUR_S]
        if self.entries and self.entries[-1][0] // MINUTE_S == now // MINUTE_S:
            tokens += self.entries.pop()[1]
        self.entries.append((now, tokens))
        self.entries.sort()

    def as_json(self) -> dict[str, Any]:
        return {"spent": [[when, tokens] for when, tokens in self.entries]}

    @classmethod
    def from_json(cls, data: Any) -> SpendLedger:
        """The ledger a file held; raises ValueError for anything but finite times and counts."""
        if not isinstance(data, dict) or not isinstance(data.get("spent"), list):
            raise ValueError("not a probe spend ledger")
        entries = []
        for entry in data["spent"]:
            when, tokens = entry  # ValueError/TypeError unless a pair
            if not isinstance(when, int | float) or not math.isfinite(when):
                raise ValueError(f"not a time: {when!r}")
            if not isinstance(tokens, int) or tokens < 0:
                raise ValueError(f"not a token count: {tokens!r}")
            entries.append((float(when), tokens))
        return cls(entries)


class BudgetFile:
    """A route's ledger in the probe directory, shared by every process that uses the directory.

    Readers take it without a lock (it is replaced whole, `atomic_write_text`); a charge reads,
    adds and writes under a file lock, so two processes charging at once both count.
    """

    def __init__(self, directory: Path, route: str) -> None:
        # A folder of its own: `<route>.lock` beside the gold file is the probe leader's lock.
        folder = directory / "budget"
        name = quote(route, safe="")  # route names may hold `/`
        self.path = folder / f"{name}.json"
        self.lock_path = folder / f"{name}.lock"

    def read(self) -> SpendLedger:
        try:
            return SpendLedger.from_json(json.loads(self.path.read_text(encoding="utf-8")))
        except FileNotFoundError:
            return SpendLedger()
        except (OSError, ValueError, TypeError) as exc:  # UnicodeDecodeError, JSONDecodeError too
            # The next charge writes it afresh; until then the other ledgers still count.
            log.warning(json.dumps({"event": "probe_budget_unreadable", "file": str(self.path),
                                    "error": type(exc).__name__}))
            return SpendLedger()

    def add(self, now: float, tokens: int) -> None:
        with FileLock(self.lock_path):
            ledger = self.read()
            ledger.add(now, tokens)
            atomic_write_text(self.path, json.dumps(ledger.as_json()))


class SharedSpend:
    """A route's spend in the shared state, for every instance: a running total, and marks.

    `add_totals` keeps the total exact however many instances add at once; a put of JSON keeps
    only its last writer, so only the marks, (time, total then) pairs, go there. The hour's spend
    is the total now less the total at the newest mark an hour old or older. A mark lost to a
    concurrent writer only makes that base older and the spend larger, never smaller.
    """

    def __init__(self, state: SharedState, route: str, clock: Callable[[], float] = time.time) -> None:
        self.state = state
        self.total_key = f"probe_budget/{route}"
        self.marks_key = f"probe_budget/{route}/marks"
        self._clock = clock

    async def spent(self, now: float) -> int:
        total = (await self.state.add_totals(self.total_key, {})).get("tokens", 0.0)
        return max(0, round(total - _base(await self._marks(), now)))

    async def add(self, tokens: int) -> None:
        total = (await self.state.add_totals(self.total_key, {"tokens": float(tokens)}))["tokens"]
        now = self._clock()  # after the add: the total cannot hold charges made after its mark
        await self.state.put_json(self.marks_key, _with_mark(await self._marks(), now, total))

    async def _marks(self) -> list[tuple[float, float]]:
        data = await self.state.get_json(self.marks_key)
        if not isinstance(data, list):
            return []
        marks = [
            (float(m[0]), float(m[1])) for m in data
            if isinstance(m, list) and len(m) == 2 and all(isinstance(v, int | float) and math.isfinite(v) for v in m)
        ]
        return sorted(marks)


def _base(marks: list[tuple[float, float]], now: float) -> float:
    """The total at the newest mark at least an hour old; 0 (everything counts) without one."""
    old = [total for when, total in marks if when <= now - HOUR_S]
    return old[-1] if old else 0.0


def _with_mark(marks: list[tuple[float, float]], now: float, total: float) -> list[list[float]]:
    """`marks` plus (now, total), less what no later query needs: of the marks an hour old
    only the newest, and of one minute's marks only the latest."""
    old = [m for m in marks if m[0] <= now - HOUR_S][-1:]
    recent = [m for m in marks if m[0] > now - HOUR_S and m[0] // MINUTE_S != now // MINUTE_S]
    return [[when, value] for when, value in sorted([*old, *recent, (now, total)])]


class ProbeBudget:
    """A route's `max_tokens_per_hour`: what its probes spent in the last hour, everywhere."""

    def __init__(
        self, route: str, limit: int, file: BudgetFile | None, shared: SharedSpend | None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.route = route
        self.limit = limit
        self.file = file
        self.shared = shared
        self._clock = clock
        self._memory = SpendLedger()  # this process's own charges: all there is without a file

    async def left(self) -> int:
        now = self._clock()
        spent = self._memory.spent(now)
        if self.file is not None:
            spent = max(spent, self.file.read().spent(now))
        if self.shared is not None:
            spent = max(spent, await self.shared.spent(now))
        return self.limit - spent

    async def charge(self, tokens: int) -> None:
        """Record `tokens` spent now. The local records come first and never wait: a charge runs
        while its item unwinds, perhaps cancelled, and must not be lost."""
        if tokens <= 0:
            return
        now = self._clock()
        self._memory.add(now, tokens)
        metrics.PROBE_TOKENS.labels(self.route).inc(tokens)
        if self.file is not None:
            try:
                self.file.add(now, tokens)
            except OSError as exc:
                log.warning(json.dumps({"event": "probe_budget_unsaved", "file": str(self.file.path),
                                        "error": type(exc).__name__}))
        if self.shared is not None:
            await self.shared.add(tokens)


def build_budget(
    pipeline: Pipeline, route: str, limit: int, calibration: RouteCalibration, clock: Callable[[], float]
) -> ProbeBudget:
    """The route's budget, kept beside its gold records and in the shared state where they exist."""
    gold = calibration.file
    file = BudgetFile(gold.directory, route) if gold is not None else None
    state = pipeline.learning.state
    shared = SharedSpend(state, route, clock) if state.shared else None
    return ProbeBudget(route, limit, file, shared, clock)


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
            clusters.append({"features": row["features"], "size": row["size"], "correct": right >= 1.0})
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
