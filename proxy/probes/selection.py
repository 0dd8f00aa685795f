"""A route's learned selection model: fitted on its gold probe clusters, refitted as they grow.

The training rows ride in the route's gold records (`GoldRecord.clusters`, written by the probe
runner), so every worker sees the same rows through `RouteCalibration` and fits the same model.
A refit runs in the worker's fit helper (`proxy.probes.offload`, issue 20), never on a request:
`state` returns the last model finished and starts the next fit when new records arrived. The
model is written to `server.state_dir/selection/<route>.json` after each fit and read back at
start, so a restarted proxy selects with what it learned before its first new probe. With each
model comes its safety gate (strategies/selection/safety.py): while it is closed the route
serves weighted selection and says why.
"""

from __future__ import annotations

import json
import logging
import math
import time
from concurrent.futures import Future
from pathlib import Path
from typing import Any
from urllib.parse import quote

from proxy.probes.calibration import RouteCalibration, in_thread, log_once, settle
from proxy.probes.jobs import FitRequest, FitResult, UnknownWindow, cluster_rows, fit_of, newest_within, short_reason
from proxy.probes.offload import OffloadUnavailable
from proxy.telemetry import metrics
from strategies.selection.learned import ClusterRow, LearnedSelector, SelectorState
from strategies.selection.safety import GATE_STATES, safety_gate
from strategies.selection.settings import SelectionSettings

log = logging.getLogger("rvr_proxy")
CHECK_EVERY_S = 1.0  # a request reuses the last state checked within this long
# A refit costs about 25 µs per cluster row (issue 21: 20,000 gold items took 6 s). It runs off
# the request path now, but `window_items` alone cannot bound it, since an item brings up to
# `max_n` clusters, so the fit takes the newest records whose clusters fit in this many rows:
# about 0.2 s, and still 1,500 items at 4 clusters an item, plenty for a few weights.
MAX_FIT_ROWS = 6_000


def model_path(state_dir: Path | None, route: str) -> Path | None:
    return state_dir / "selection" / f"{quote(route, safe='')}.json" if state_dir is not None else None


class RouteSelection:
    def __init__(
        self, route: str, settings: SelectionSettings, calibration: RouteCalibration, state_dir: Path | None
    ) -> None:
        self.route = route
        self.settings = settings
        self.calibration = calibration
        self.path = model_path(state_dir, route)
        self._fitted_on: tuple[int, float] | None = None  # (records, last record time) of the last fit started
        self._checked = -math.inf
        self._pending: Future[Any] | None = None
        self._state = SelectorState(None, short_reason(0, self._request()))
        self._load()
        if settings.mode == "learned" or settings.knockout is not None:
            # At start, not on a request: a worker (re)started on a window of records serves its
            # model and gates from its first request, not after a first background fit.
            gold = calibration.gold
            if gold:
                self._apply(fit_of(list(gold), self._request()))
                self._fitted_on = (len(gold), gold[-1].time)
        self._export_gate()

    def _request(self) -> FitRequest:
        knockout = self.settings.knockout
        return FitRequest(
            min_items=self.settings.min_items, max_rows=MAX_FIT_ROWS, margin=self.settings.gate_margin,
            knockout=None if knockout is None else (knockout.min_pairs, knockout.min_accuracy),
            path=self.path, has_probes=self.calibration.settings is not None,
        )

    def _load(self) -> None:
        if self.path is None or not self.path.exists():
            return
        try:
            model = LearnedSelector.from_dict(json.loads(self.path.read_text(encoding="utf-8")))
        except (OSError, ValueError, KeyError, TypeError) as exc:
            log.warning(json.dumps({"event": "selection_model_unreadable", "file": str(self.path),
                                    "error": type(exc).__name__}))
            return
        if model.n_items >= self.settings.min_items:
            self._state = SelectorState(model, safety=safety_gate(model.held_out, self.settings.gate_margin))
            self._export(model)

    def rows(self) -> tuple[list[ClusterRow], int]:
        """The training rows (the newest records' clusters, at most `MAX_FIT_ROWS`) and how
        many probe items with cluster data the window holds in all."""
        records = [r for r in self.calibration.gold if r.clusters]
        newest = newest_within(records, MAX_FIT_ROWS)
        return [row for k, r in enumerate(newest) for row in cluster_rows(r, str(k))], len(records)

    def state(self, fresh: bool = False) -> SelectorState:
        """The last model finished and its gates; a refit starts in the fit helper when new
        probe records arrived (checked once a second). Never waits for a fit.

        `fresh`: refitted now, in the caller (for `rvr-proxy probe`)."""
        if fresh:
            self.calibration.refresh()
            self._apply(fit_of(list(self.calibration.gold), self._request()))
            return self._state
        now = time.monotonic()
        if now - self._checked < CHECK_EVERY_S or self._pending is not None:
            return self._state
        self._checked = now
        self.calibration.refresh()
        gold = self.calibration.gold
        mark = (len(gold), gold[-1].time if gold else 0.0)
        if mark == self._fitted_on:
            return self._state
        self._fitted_on = mark
        self._pending = self.calibration.submit("fit", self._request())
        self._pending.add_done_callback(self._fitted)
        return self._state

    def wait(self, timeout: float = 60.0) -> SelectorState:
        """The state once a fit has covered every record in the window now (for tests and
        benchmarks: it waits, and skips the once-a-second check)."""
        deadline = time.monotonic() + timeout
        while True:
            settle(self, deadline)
            self._checked = -math.inf
            self.state()
            if self._pending is None:
                return self._state

    def _fitted(self, future: Future[Any]) -> None:
        """Runs on the helper's reader thread (or the writer's, for a failure); `_pending` is
        cleared last, once the result is in place."""
        exc = future.exception()
        if exc is None:
            self._apply(future.result())
        elif isinstance(exc, OffloadUnavailable):
            log_once("fit_helper_unavailable", str(exc))
            gold, request = list(self.calibration.gold), self._request()
            self._pending = in_thread(lambda: fit_of(gold, request))  # still not on a request
            self._pending.add_done_callback(self._fitted)
            return
        else:
            self._fitted_on = None  # a restarted helper: try again at the next check
            if not isinstance(exc, UnknownWindow):
                log.error(json.dumps({"event": "selection_fit_failed", "route": self.route, "error": repr(exc)}))
        self._pending = None

    def _apply(self, result: FitResult) -> None:
        if result.model is None and result.items < self.settings.min_items and self._state.model is not None:
            # a persisted model keeps serving until there is more
            self._state = SelectorState(self._state.model, None, result.judge_gate, self._state.safety)
        else:
            self._state = SelectorState(result.model, result.reason, result.judge_gate, result.safety)
        if result.model is not None:
            self._export(result.model)
        self._export_gate()

    def _export(self, model: LearnedSelector) -> None:
        weights = dict(zip(model.signals, model.weights, strict=True))
        for signal, value in model.auroc.items():
            if value is not None:
                metrics.SELECTION_SIGNAL_AUROC.labels(self.route, signal).set(value)
            metrics.SELECTION_SIGNAL_WEIGHT.labels(self.route, signal).set(weights.get(signal, 0.0))

    def _export_gate(self) -> None:
        state = self._state
        closed = state.safety is not None and not state.safety.serves
        current = "no_model" if state.model is None else ("closed" if closed else "open")
        for name in GATE_STATES:
            metrics.SELECTION_GATE.labels(self.route, name).set(1.0 if name == current else 0.0)
