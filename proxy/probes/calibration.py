"""Per-route windows of gold probe records and client traffic, and the calibration they give.

Gold records go to a JSONL file when the proxy has somewhere to keep them: `server.state_dir`
(kept across restarts), else the instance's private multi-worker directory (shared by its
workers while it runs). Every worker reads new lines from that file before it computes, so one
worker probes and all of them report the same gold. Traffic windows stay per worker: each
worker's recent requests stand for the route's. The calibration itself is computed in the
worker's fit helper (`proxy.probes.offload`), never on a request.
"""

from __future__ import annotations

import itertools
import json
import logging
import math
import os
import threading
import time
import weakref
from collections import deque
from collections.abc import Callable, Mapping
from concurrent.futures import Future
from concurrent.futures import wait as wait_for
from pathlib import Path
from typing import Any, BinaryIO, Protocol, TypeVar
from urllib.parse import quote

from proxy.config.probe_set import ProbeSettings
from proxy.probes import offload as offload_module
from proxy.probes.jobs import TrafficRow, UnknownWindow, calibration_of, traffic_array, traffic_row
from proxy.probes.offload import Offload, OffloadUnavailable
from proxy.state.files import FileLock
from proxy.telemetry import metrics
from strategies.risk.calibration import COMPONENTS, DEFAULT_TOLERANCE, MIN_GOLD_FOR_PPI, STATUSES, GoldRecord

log = logging.getLogger("rvr_proxy")
WINDOW_WITHOUT_PROBES = 10_000
RECOMPUTE_EVERY_S = 1.0  # a response reuses the last calibration started within this long


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
    """A route's gold and traffic windows and its last `rvr.risk.calibration` object.

    The object is computed off the request path (issue 20): `snapshot` returns the last one
    finished and, at most once a second, asks this process's fit helper
    (`proxy.probes.offload`) for the next. The helper keeps its own copy of both windows,
    updated here as records and requests arrive, so a job carries only what changed. Where no
    helper can run, the job runs on a thread of its own instead, still never on the request.
    """

    def __init__(
        self, route: str, settings: ProbeSettings | None, directory: Path | None, offload: Offload | None = None
    ) -> None:
        self.route = route
        self.settings = settings
        self.gold: deque[GoldRecord] = deque(maxlen=settings.window_items if settings else 1)
        window = settings.window_requests if settings else WINDOW_WITHOUT_PROBES
        self.traffic: deque[TrafficRow] = deque(maxlen=window)
        self._unsent: deque[TrafficRow] = deque(maxlen=window)  # requests the helper has not seen yet
        self.file = None
        if settings is not None and directory is not None:
            self.file = GoldFile(directory, route, keep=settings.window_items)
        self._offload = offload or offload_module.shared()
        self._key = f"{route}#{os.getpid()}.{next(_KEYS)}"  # one window per object, however named
        self._window = _Held()
        self._pending: Future[Any] | None = None
        self._stale = False  # gold arrived since the last snapshot started
        self._computed_at = -math.inf
        self.refresh()
        # At start, not on a request: the first response already has its calibration.
        self._cached: dict[str, Any] = self._compute()
        self._computed_at = time.monotonic()
        self._export(self._cached)
        weakref.finalize(self, _forget, self._offload, self._key, self._window)

    @property
    def min_gold(self) -> int:
        return self.settings.min_gold_for_ppi if self.settings else MIN_GOLD_FOR_PPI

    @property
    def tolerance(self) -> float:
        return self.settings.tolerance if self.settings else DEFAULT_TOLERANCE

    def observe(self, risk: Mapping[str, Any] | None) -> None:
        """One client request's online estimates (never a probe's)."""
        if risk is not None:
            row = traffic_row(risk)
            self.traffic.append(row)
            self._unsent.append(row)

    def add_gold(self, record: GoldRecord) -> None:
        if self.file is not None:
            self.file.append(record)  # read back by `refresh`, in this worker as in the others
        else:
            self._take([record])
        self.refresh()

    def refresh(self) -> None:
        if self.file is not None:
            new = self.file.read_new()
            if new:
                self._take(new)

    def _take(self, records: list[GoldRecord]) -> None:
        self.gold.extend(records)
        self._stale = True
        with self._window.lock:
            if self._window.held:
                self._offload.send("gold", self._key, records)

    def snapshot(self, fresh: bool = False) -> dict[str, Any]:
        """The calibration object for a response: the last one finished, never waited for.

        `fresh`: computed now, in the caller, from every record (for `rvr-proxy probe`)."""
        if fresh:
            self.refresh()
            self._finish(self._compute())
            return self._cached
        now = time.monotonic()
        if self._pending is None and (self._stale or now - self._computed_at >= RECOMPUTE_EVERY_S):
            self._computed_at = now
            self.refresh()
            self._stale = False
            sent_whole = self.send_window()
            unsent = [] if sent_whole else list(self._unsent)  # else they went with the window
            self._unsent.clear()
            self._pending = self.submit("calibrate", unsent, self.min_gold, self.tolerance)
            self._pending.add_done_callback(self._calibrated)
        return self._cached

    def wait(self, timeout: float = 60.0) -> dict[str, Any]:
        """The calibration of every record and request in the windows now, once computed (for
        tests and benchmarks: it waits)."""
        deadline = time.monotonic() + timeout
        settle(self, deadline)  # whatever ran before may predate the records there now
        self._computed_at = -math.inf
        self.snapshot()
        settle(self, deadline)
        return self._cached

    def send_window(self) -> bool:
        """Send the whole window where the helper does not hold it (never had it, or was
        restarted); whether it was sent."""
        with self._window.lock:
            if self._window.held:
                return False
            self._offload.send("open", self._key, self.gold.maxlen, self.traffic.maxlen,
                               list(self.gold), list(self.traffic))
            self._window.held = True
            return True

    def submit(self, job: str, *args: Any) -> Future[Any]:
        """`job` of `proxy.probes.jobs` on this window, in the fit helper."""
        self.send_window()
        future = self._offload.submit(job, self._key, *args)
        future.add_done_callback(self._check_window)
        return future

    def _check_window(self, future: Future[Any]) -> None:
        if isinstance(future.exception(), (UnknownWindow, OffloadUnavailable)):
            with self._window.lock:
                self._window.held = False  # sent whole before the next job

    def _calibrated(self, future: Future[Any]) -> None:
        """Runs on the helper's reader thread (or the writer's, for a failure); `_pending` is
        cleared last, once the result is in place."""
        exc = future.exception()
        if exc is None:
            self._finish(future.result())
        elif isinstance(exc, OffloadUnavailable):
            log_once("fit_helper_unavailable", str(exc))
            self._pending = in_thread(self._compute)  # still not on a request
            self._pending.add_done_callback(self._calibrated)
            return
        elif not isinstance(exc, UnknownWindow):  # a restarted helper: the window goes again next time
            log.error(json.dumps({"event": "calibration_failed", "route": self.route, "error": repr(exc)}))
        self._pending = None

    def _compute(self) -> dict[str, Any]:
        return calibration_of(list(self.gold), traffic_array(list(self.traffic)), self.min_gold, self.tolerance)

    def _finish(self, body: dict[str, Any]) -> None:
        self._cached = body
        self._export(body)

    def _export(self, body: Mapping[str, Any]) -> None:
        for status in STATUSES:
            metrics.CALIBRATION_STATUS.labels(self.route, status).set(1.0 if body["status"] == status else 0.0)
        metrics.GOLD_ITEMS.labels(self.route).set(body["n_items"])
        for component in COMPONENTS:
            value = body.get(component)
            if value is None:
                continue
            low, high = value["ci90"]
            for bound, number in (("estimate", value["estimate"]), ("lower", low), ("upper", high)):
                metrics.CALIBRATED_RISK.labels(self.route, component, bound).set(number)


T = TypeVar("T")


def in_thread(compute: Callable[[], T]) -> Future[T]:
    """`compute` on a thread of its own: where no fit helper runs, the fits still stay off the
    request path (they hold the GIL while they run, which the helper would not)."""
    future: Future[T] = Future()

    def run() -> None:
        try:
            future.set_result(compute())
        except Exception as exc:  # noqa: BLE001 - the future carries it to its callback
            future.set_exception(exc)

    threading.Thread(target=run, name="rvr-fit-fallback", daemon=True).start()
    return future


class Pending(Protocol):
    _pending: Future[Any] | None
    route: str


def settle(window: Pending, deadline: float) -> None:
    """Wait until `window` has no job in flight and its last result is in place."""
    while (pending := window._pending) is not None:
        if time.monotonic() > deadline:
            raise TimeoutError(f"a fit of route {window.route} is still running")
        wait_for([pending], max(deadline - time.monotonic(), 0.0))
        time.sleep(0.005)  # the callbacks run after the future's waiters wake


class _Held:
    """Whether the fit helper holds a window; shared with the window's finalizer."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.held = False


def _forget(offload: Offload, key: str, window: _Held) -> None:
    """A window no longer used: the helper drops its copy (never started just for that)."""
    if window.held:
        offload.send("close", key)


_KEYS = itertools.count()
_logged: set[str] = set()


def log_once(event: str, detail: str) -> None:
    """A degraded mode is logged when it starts, not at every job."""
    if event not in _logged:
        _logged.add(event)
        log.warning(json.dumps({"event": event, "detail": detail}))
