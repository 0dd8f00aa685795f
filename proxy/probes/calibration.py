"""Per-route windows of gold probe records and client traffic, and the calibration they give.

Gold records go to a JSONL file when the proxy has somewhere to keep them: `server.state_dir`
(kept across restarts), else the instance's private multi-worker directory (shared by its
workers while it runs). Every worker reads new lines from that file before it computes, so one
worker probes and all of them report the same gold. Traffic windows stay per worker: each
worker's recent requests stand for the route's.
"""

from __future__ import annotations

import json
import logging
import os
import time
from collections import deque
from collections.abc import Mapping
from pathlib import Path
from typing import Any, BinaryIO
from urllib.parse import quote

from proxy.config.probe_set import ProbeSettings
from proxy.state.files import FileLock
from proxy.telemetry import metrics
from strategies.risk.calibration import COMPONENTS, GoldRecord, Status, calibrate

log = logging.getLogger("rvr_proxy")
STATUSES: tuple[Status, ...] = ("calibrated", "uncalibrated", "no_gold")
WINDOW_WITHOUT_PROBES = 10_000
RECOMPUTE_EVERY_S = 1.0  # a response reuses the last calibration computed within this long


def probe_dir(state_dir: Path | None) -> Path | None:
    """Where gold records and the probe lock live, or None for memory only (one process)."""
    if state_dir is not None:
        return state_dir / "probes"
    shared = os.environ.get("PROMETHEUS_MULTIPROC_DIR")  # set by the CLI for several workers
    return Path(shared) / "probes" if shared else None


class GoldFile:
    """Append-only JSONL of a route's gold records, read incrementally by every worker.

    With `keep`, the first read starts at the last `keep` lines: older records would only fall
    out of the window, and parsing a file that grew for weeks took seconds at every start.
    """

    def __init__(self, directory: Path, route: str, keep: int | None = None) -> None:
        directory.mkdir(parents=True, exist_ok=True)
        name = quote(route, safe="")  # route names may hold `/`
        self.directory = directory
        self.path = directory / f"{name}.jsonl"
        self.lock = FileLock(directory / f"{name}.lock")
        self._keep = keep
        self._offset = 0  # bytes read so far
        self._lines = 0  # lines read so far, for the log

    def append(self, record: GoldRecord) -> None:
        line = json.dumps(record.as_dict(), allow_nan=False) + "\n"
        with self.path.open("ab") as out:
            # A process killed mid-write leaves a torn last line; start on a line of our own, or
            # this record would be glued to the torn one and lost with it.
            if out.tell() > 0 and not self._ends_with_newline():
                line = "\n" + line
            out.write(line.encode("utf-8"))

    def _ends_with_newline(self) -> bool:
        with self.path.open("rb") as src:
            src.seek(-1, os.SEEK_END)
            return src.read(1) == b"\n"

    def read_new(self) -> list[GoldRecord]:
        """Records written since the last call (by any worker); a torn last line waits.

        A line that is not a record (bad UTF-8, not JSON, a non-finite or out-of-range number,
        a torn line that a later write completed) is skipped alone, with one log event naming
        the file and the line; the route keeps serving on the rest.
        """
        try:
            with self.path.open("rb") as src:
                if self._offset == 0 and self._keep is not None:
                    self._skip_to_tail(src, self._keep)
                src.seek(self._offset)
                chunk = src.read()
        except FileNotFoundError:
            return []
        complete = chunk[: chunk.rfind(b"\n") + 1]
        self._offset += len(complete)
        records = []
        for raw in complete.splitlines():
            self._lines += 1
            try:
                records.append(GoldRecord.from_dict(json.loads(raw.decode("utf-8"))))
            except (ValueError, KeyError, TypeError, AttributeError) as exc:
                # UnicodeDecodeError and JSONDecodeError are ValueErrors too.
                log.warning(json.dumps({
                    "event": "gold_record_skipped", "file": str(self.path), "line": self._lines,
                    "error": type(exc).__name__,
                }))
        return records

    def _skip_to_tail(self, src: BinaryIO, keep: int) -> None:
        """Move the read offset to the start of the last `keep` complete lines, counting the
        lines passed so that log events still name the right line."""
        starts: deque[int] = deque(maxlen=keep + 1)  # where each of the newest lines starts
        position, lines = 0, 0
        while block := src.read(1 << 20):  # a block at a time: the file may be large
            start = 0
            while (end := block.find(b"\n", start)) >= 0:
                starts.append(position + end + 1)
                lines += 1
                start = end + 1
            position += len(block)
        if lines > keep:
            self._offset = starts[0]
            self._lines = lines - keep

    def try_lead(self) -> bool:
        """Whether this process holds the route's probe lock (one prober per instance and state_dir)."""
        return self.lock.acquire(blocking=False)


class RouteCalibration:
    """A route's gold and traffic windows and its cached `rvr.risk.calibration` object."""

    def __init__(self, route: str, settings: ProbeSettings | None, directory: Path | None) -> None:
        self.route = route
        self.settings = settings
        self.gold: deque[GoldRecord] = deque(maxlen=settings.window_items if settings else 1)
        window = settings.window_requests if settings else WINDOW_WITHOUT_PROBES
        self.traffic: deque[dict[str, float | None]] = deque(maxlen=window)
        self.file = None
        if settings is not None and directory is not None:
            self.file = GoldFile(directory, route, keep=settings.window_items)
        self._cached: dict[str, Any] | None = None
        self._computed_at = 0.0
        self.refresh()

    def observe(self, risk: Mapping[str, Any] | None) -> None:
        """One client request's online estimates (never a probe's)."""
        if risk is not None:
            self.traffic.append({c: risk.get(c) for c in COMPONENTS})

    def add_gold(self, record: GoldRecord) -> None:
        if self.file is not None:
            self.file.append(record)  # read back by `refresh`, in this worker as in the others
        else:
            self.gold.append(record)
        self._cached = None
        self.refresh()

    def refresh(self) -> None:
        if self.file is not None:
            new = self.file.read_new()
            if new:
                self.gold.extend(new)
                self._cached = None

    def snapshot(self) -> dict[str, Any]:
        """The calibration object for a response; recomputed at most once a second."""
        now = time.monotonic()
        if self._cached is None or now - self._computed_at >= RECOMPUTE_EVERY_S:
            self.refresh()
            min_gold = self.settings.min_gold_for_ppi if self.settings else 30
            self._cached = calibrate(list(self.gold), list(self.traffic), min_gold=min_gold)
            self._computed_at = now
            self._export(self._cached)
        return self._cached

    def _export(self, body: Mapping[str, Any]) -> None:
        for status in STATUSES:
            metrics.CALIBRATION_STATUS.labels(self.route, status).set(1.0 if body["status"] == status else 0.0)
        metrics.GOLD_ITEMS.labels(self.route).set(body["n_gold"])
        for component in COMPONENTS:
            value = body.get(component)
            if value is None:
                continue
            low, high = value["ci90"]
            for bound, number in (("estimate", value["estimate"]), ("lower", low), ("upper", high)):
                metrics.CALIBRATED_RISK.labels(self.route, component, bound).set(number)
