"""A route's learned selection model: fitted on its gold probe clusters, refitted as they grow.

The training rows ride in the route's gold records (`GoldRecord.clusters`, written by the probe
runner), so every worker sees the same rows through `RouteCalibration` and fits the same model.
The model is written to `server.state_dir/selection/<route>.json` after each fit and read back
at start, so a restarted proxy selects with what it learned before its first new probe.
"""

from __future__ import annotations

import json
import logging
import math
import time
from pathlib import Path
from urllib.parse import quote

from proxy.probes.calibration import RouteCalibration
from proxy.state.files import atomic_write_text
from proxy.telemetry import metrics
from strategies.risk.calibration import GoldRecord
from strategies.selection.knockout import JudgeGate, gate
from strategies.selection.learned import ClusterRow, LearnedSelector, NotFittable, SelectorState, fit_selector
from strategies.selection.settings import SelectionSettings

log = logging.getLogger("rvr_proxy")
CHECK_EVERY_S = 1.0  # a request reuses the last state checked within this long
# A refit runs on the request path and costs about 25 µs per cluster row (issue 21: 20,000 gold
# items stalled a worker for 6 s). `window_items` alone cannot bound it, since an item brings up
# to `max_n` clusters, so the fit takes the newest records whose clusters fit in this many rows:
# at most about 0.2 s, and still 1,500 items at 4 clusters an item, plenty for a few weights.
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
        self._fitted_on: tuple[int, float] | None = None  # (records, last record time) of the fit
        self._checked = -math.inf
        self._state = SelectorState(None, self._short_reason(0))
        self._load()

    def _short_reason(self, items: int) -> str:
        if self.calibration.settings is None:
            return "the route has no probes: learned selection needs gold probe items"
        return f"{items} of {self.settings.min_items} probe items with cluster data so far"

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
            self._state = SelectorState(model)
            self._export(model)

    def rows(self) -> tuple[list[ClusterRow], int]:
        """The training rows (the newest records' clusters, at most `MAX_FIT_ROWS`) and how
        many probe items with cluster data the window holds in all."""
        records = [r for r in self.calibration.gold if r.clusters]
        return [row for r in _newest_within(records, MAX_FIT_ROWS) for row in _cluster_rows(r)], len(records)

    def state(self) -> SelectorState:
        """The current model and judge gate, refitted when new probe records arrived (checked
        once a second)."""
        now = time.monotonic()
        if now - self._checked < CHECK_EVERY_S:
            return self._state
        self._checked = now
        self.calibration.refresh()
        gold = self.calibration.gold
        mark = (len(gold), gold[-1].time if gold else 0.0)
        if mark == self._fitted_on:
            return self._state
        self._fitted_on = mark
        model, reason = self._fit()
        self._state = SelectorState(model, reason, self._gate())
        return self._state

    def _fit(self) -> tuple[LearnedSelector | None, str | None]:
        rows, items = self.rows()
        if items < self.settings.min_items:
            # a persisted model keeps serving until there is more
            return (self._state.model, None) if self._state.model is not None else (None, self._short_reason(items))
        try:
            model = fit_selector(rows)
        except NotFittable as exc:
            return None, str(exc)
        self._export(model)
        self._save(model)
        return model, None

    def _gate(self) -> JudgeGate | None:
        knockout = self.settings.knockout
        if knockout is None:
            return None
        pairs = [p for r in self.calibration.gold for p in r.pairs]
        return gate(pairs, knockout.min_pairs, knockout.min_accuracy)

    def _save(self, model: LearnedSelector) -> None:
        if self.path is None:
            return
        atomic_write_text(self.path, json.dumps(model.as_dict()))  # readers never see half a model

    def _export(self, model: LearnedSelector) -> None:
        weights = dict(zip(model.signals, model.weights, strict=True))
        for signal, value in model.auroc.items():
            if value is not None:
                metrics.SELECTION_SIGNAL_AUROC.labels(self.route, signal).set(value)
            metrics.SELECTION_SIGNAL_WEIGHT.labels(self.route, signal).set(weights.get(signal, 0.0))


def _newest_within(records: list[GoldRecord], max_rows: int) -> list[GoldRecord]:
    """The newest `records` (oldest first) whose clusters add up to at most `max_rows`."""
    taken, rows = 0, 0
    for record in reversed(records):
        if rows + len(record.clusters) > max_rows:
            break
        rows += len(record.clusters)
        taken += 1
    return records[len(records) - taken:]


def _cluster_rows(record: GoldRecord) -> list[ClusterRow]:
    return [
        ClusterRow(record.item, {k: math.nan if v is None else float(v) for k, v in c["features"].items()},
                   bool(c["correct"]))
        for c in record.clusters
    ]
