"""The probes' fits: the calibration snapshot and the learned-selection refit, as jobs.

Both are pure functions of a route's gold and traffic windows. A serving worker runs them in
its helper process (`proxy.probes.offload`), which keeps a copy of every window (`WINDOWS`)
that the worker updates as records and requests arrive; `rvr-proxy probe` and the windows'
own `fresh` reads call the same functions in the caller. Nothing here touches metrics: a job's
result is exported by the worker that asked for it.
"""

from __future__ import annotations

import json
import math
from collections import deque
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from proxy.state.files import atomic_write_text
from strategies.risk.calibration import COMPONENTS, GoldRecord, calibrate
from strategies.selection.knockout import JudgeGate, gate
from strategies.selection.learned import ClusterRow, LearnedSelector, NotFittable, fit_selector
from strategies.selection.safety import SafetyGate, safety_gate

TrafficRow = tuple[float, ...]  # one request's online terms in `COMPONENTS` order, NaN where none


def traffic_row(risk: Any) -> TrafficRow:
    """A request's `rvr.risk` terms as a `TrafficRow`."""
    return tuple(math.nan if risk.get(c) is None else float(risk.get(c)) for c in COMPONENTS)


def traffic_array(rows: Iterable[TrafficRow]) -> np.ndarray:
    return np.array(list(rows), dtype=float).reshape(-1, len(COMPONENTS))


# ---- the two computations ---------------------------------------------------------------------


def calibration_of(gold: Sequence[GoldRecord], traffic: np.ndarray, min_gold: int, tolerance: float) -> dict[str, Any]:
    return calibrate(gold, traffic, min_gold=min_gold, tolerance=tolerance)


@dataclass(frozen=True)
class FitRequest:
    """What a refit needs besides the gold window: the route's selection settings."""

    min_items: int
    max_rows: int  # the newest records whose clusters fit in this many rows
    margin: float  # the safety gate's `gate_margin`
    knockout: tuple[int, float] | None = None  # (min_pairs, min_accuracy) of the judge gate
    path: Path | None = None  # where a fitted model is kept (server.state_dir/selection/<route>.json)
    has_probes: bool = True


@dataclass(frozen=True)
class FitResult:
    model: LearnedSelector | None
    reason: str | None  # why there is no model, in words for `rvr`
    items: int  # probe items with cluster data in the window
    judge_gate: JudgeGate | None = None
    safety: SafetyGate | None = None
    saved: bool = False  # written to `FitRequest.path`


def short_reason(items: int, request: FitRequest) -> str:
    if not request.has_probes:
        return "the route has no probes: learned selection needs gold probe items"
    return f"{items} of {request.min_items} probe items with cluster data so far"


def fit_of(gold: Sequence[GoldRecord], request: FitRequest) -> FitResult:
    """The route's model from its gold window, its judge gate and its safety gate; the model is
    written to `request.path` (atomically: readers never see half a model)."""
    records = [r for r in gold if r.clusters]
    judge = None
    if request.knockout is not None:
        judge = gate([p for r in gold for p in r.pairs], *request.knockout)
    if len(records) < request.min_items:
        return FitResult(None, short_reason(len(records), request), len(records), judge)
    rows = [row for k, r in enumerate(newest_within(records, request.max_rows)) for row in cluster_rows(r, str(k))]
    try:
        model = fit_selector(rows)
    except NotFittable as exc:
        return FitResult(None, str(exc), len(records), judge)
    if request.path is not None:
        atomic_write_text(request.path, json.dumps(model.as_dict()))
    return FitResult(model, None, len(records), judge, safety_gate(model.held_out, request.margin),
                     saved=request.path is not None)


def newest_within(records: list[GoldRecord], max_rows: int) -> list[GoldRecord]:
    """The newest `records` (oldest first) whose clusters add up to at most `max_rows`."""
    taken, rows = 0, 0
    for record in reversed(records):
        if rows + len(record.clusters) > max_rows:
            break
        rows += len(record.clusters)
        taken += 1
    return records[len(records) - taken:]


def cluster_rows(record: GoldRecord, run: str | None = None) -> list[ClusterRow]:
    """The record's clusters as training rows; `run` tells this run of the item from its others."""
    return [
        ClusterRow(record.item, {k: math.nan if v is None else float(v) for k, v in c["features"].items()},
                   bool(c["correct"]), bool(c.get("weighted", False)), run)
        for c in record.clusters
    ]


# ---- the helper process's copies of the windows ----------------------------------------------


@dataclass
class Window:
    gold: deque[GoldRecord]
    traffic: deque[TrafficRow]


WINDOWS: dict[str, Window] = {}


class UnknownWindow(KeyError):
    """A job named a window this process does not hold (it was restarted): send it again."""


def _window(key: str) -> Window:
    try:
        return WINDOWS[key]
    except KeyError:
        raise UnknownWindow(key) from None


def open_window(key: str, gold_max: int, traffic_max: int, gold: list[GoldRecord], traffic: list[TrafficRow]) -> None:
    WINDOWS[key] = Window(deque(gold, maxlen=gold_max), deque(traffic, maxlen=traffic_max))


def add_gold(key: str, records: list[GoldRecord]) -> None:
    window = WINDOWS.get(key)
    if window is not None:  # else the helper was restarted: the next job asks for the whole window
        window.gold.extend(records)


def close_window(key: str) -> None:
    WINDOWS.pop(key, None)


def calibrate_window(key: str, traffic: list[TrafficRow], min_gold: int, tolerance: float) -> dict[str, Any]:
    """The calibration of a window, after adding the requests observed since the last one."""
    window = _window(key)
    window.traffic.extend(traffic)
    return calibration_of(list(window.gold), traffic_array(window.traffic), min_gold, tolerance)


def fit_window(key: str, request: FitRequest) -> FitResult:
    return fit_of(list(_window(key).gold), request)


JOBS = {
    "open": open_window, "gold": add_gold, "close": close_window,
    "calibrate": calibrate_window, "fit": fit_window,
}
