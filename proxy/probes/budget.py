"""A route's probe budget (`probes.max_tokens_per_hour`), held across runs, restarts and instances.

The hour's spend (`ProbeBudget`) is kept where every prober of the route sees it, so the budget
holds across `rvr-proxy probe` runs, restarts, workers and instances: a JSON ledger in the probe
directory (`server.state_dir/probes/budget/`, else the instance's multi-worker directory), and
with a shared state backend (Redis) a running total every instance adds to. The spend is the
largest that any of them (or this process's own ledger) shows.
"""

from __future__ import annotations

import json
import logging
import math
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any
from urllib.parse import quote

from proxy.pipeline.pipeline import Pipeline
from proxy.probes.calibration import RouteCalibration
from proxy.state.base import SharedState
from proxy.state.files import FileLock, atomic_write_text
from proxy.telemetry import metrics

log = logging.getLogger("rvr_proxy")
HOUR_S = 3600.0
MINUTE_S = 60.0
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
