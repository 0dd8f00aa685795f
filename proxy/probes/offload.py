"""A low-priority helper process that runs the probes' fits off the request path (issue 20).

A learned-selection refit over 2,000 probe items takes about 0.2 s of numpy and Python, the
calibration snapshot 10-30 ms. Run on a worker's event loop they stall every request in flight;
run in a thread they still hold the GIL: on 2 cores, a background refit thread raised the p99
of a 5 ms request path by 23 ms, a helper process at nice 19 with one BLAS thread by nothing
measurable (bench/select_bench.py --latency). So each serving process starts one helper, on
first use, as `python -m proxy.probes.offload`:

* the helper keeps a copy of every window it is sent (`proxy.probes.jobs.WINDOWS`), so a job
  carries only what changed since the last one, never 5,000 records or 50,000 requests;
* `submit` and `send` only queue: a writer thread pickles and writes, a reader thread resolves
  the futures, so nothing on the event loop waits for the helper or for a full pipe;
* a helper that died is started again on the next message; a job on a window the new helper
  does not hold fails with `UnknownWindow`, and the window sends its data again before its next
  job (`proxy.probes.calibration.RouteCalibration`);
* the helper reads its messages from stdin and exits when that closes, so it never outlives
  the worker that started it.

Frames are a 4-byte big-endian length and a pickle, both ways; only this process's own helper
reads them.
"""

from __future__ import annotations

import atexit
import itertools
import json
import logging
import os
import pickle
import queue
import struct
import subprocess
import sys
import threading
import time
from concurrent.futures import Future
from pathlib import Path
from typing import IO, Any

log = logging.getLogger("rvr_proxy")
_HEADER = struct.Struct(">I")
NICE = 19  # the helper yields the CPU to the workers serving requests
RESTART_PAUSE_S = 5.0  # a helper that died sooner after its start is not started again before this
# One BLAS thread: a helper that spreads a matrix product over every core competes with the
# workers it is meant to spare.
_ONE_THREAD = {name: "1" for name in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS")}


class OffloadUnavailable(RuntimeError):
    """The helper could not be started (or keeps dying); the caller computes in place."""


def _write_frame(stream: IO[bytes], message: Any) -> None:
    data = pickle.dumps(message, protocol=pickle.HIGHEST_PROTOCOL)
    stream.write(_HEADER.pack(len(data)) + data)
    stream.flush()


def _read_frame(stream: IO[bytes]) -> Any:
    header = stream.read(_HEADER.size)
    if len(header) < _HEADER.size:
        raise EOFError
    (size,) = _HEADER.unpack(header)
    data = stream.read(size)
    if len(data) < size:
        raise EOFError
    return pickle.loads(data)  # noqa: S301 - frames come only from this process's own helper


class Offload:
    """One helper process and the futures of the jobs it runs."""

    def __init__(self) -> None:
        # Reentrant: a window's finalizer (`send`) may run inside any section that holds it,
        # wherever the garbage collector happens to run.
        self._lock = threading.RLock()
        self._queue: queue.SimpleQueue[tuple[int | None, str, tuple[Any, ...]] | None] = queue.SimpleQueue()
        self._futures: dict[int, Future[Any]] = {}
        self._ids = itertools.count()
        self._process: subprocess.Popen[bytes] | None = None
        self._writer: threading.Thread | None = None
        self._started_at = -float("inf")
        self._closed = False

    def submit(self, job: str, *args: Any) -> Future[Any]:
        """Run `job` in the helper; the future's callbacks run on the reader thread."""
        future: Future[Any] = Future()
        with self._lock:
            if self._closed:
                future.set_exception(OffloadUnavailable("the helper is closed"))
                return future
            ident = next(self._ids)
            self._futures[ident] = future
            self._ensure_writer()
        self._queue.put((ident, job, args))
        return future

    def send(self, job: str, *args: Any) -> None:
        """Run `job` in the helper, in order with every other message, without waiting for it."""
        with self._lock:
            if self._closed:
                return
            self._ensure_writer()
        self._queue.put((None, job, args))

    def close(self) -> None:
        with self._lock:
            self._closed = True
            process = self._process
        self._queue.put(None)
        if process is not None and process.stdin is not None:
            try:
                process.stdin.close()
                process.wait(timeout=2)
            except (OSError, subprocess.TimeoutExpired):
                process.kill()

    # ---- the worker side ----------------------------------------------------------------------

    def _ensure_writer(self) -> None:
        if self._writer is None or not self._writer.is_alive():
            self._writer = threading.Thread(target=self._write_loop, name="rvr-offload-writer", daemon=True)
            self._writer.start()

    def _write_loop(self) -> None:
        while (message := self._queue.get()) is not None:
            ident = message[0]
            try:
                process = self._running()
                assert process.stdin is not None
                _write_frame(process.stdin, message)
            except (OffloadUnavailable, OSError, pickle.PicklingError, ValueError) as exc:
                if ident is not None:
                    self._fail(ident, exc if isinstance(exc, OffloadUnavailable) else OffloadUnavailable(repr(exc)))

    def _running(self) -> subprocess.Popen[bytes]:
        """The helper, started (again) if it is not running."""
        process = self._process
        if process is not None and process.poll() is None:
            return process
        if time.monotonic() - self._started_at < RESTART_PAUSE_S and process is not None:
            raise OffloadUnavailable(f"the fit helper exited with {process.returncode} right after its start")
        self._started_at = time.monotonic()
        root = str(Path(__file__).resolve().parents[2])
        env = {k: v for k, v in os.environ.items() if k != "PROMETHEUS_MULTIPROC_DIR"} | _ONE_THREAD
        env["PYTHONPATH"] = os.pathsep.join(p for p in (root, env.get("PYTHONPATH")) if p)
        try:
            process = subprocess.Popen(
                [sys.executable, "-m", "proxy.probes.offload"], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                env=env, close_fds=True,
            )
        except OSError as exc:
            raise OffloadUnavailable(f"cannot start the fit helper: {exc}") from exc
        with self._lock:
            self._process = process
        threading.Thread(target=self._read_loop, args=(process,), name="rvr-offload-reader", daemon=True).start()
        log.info(json.dumps({"event": "fit_helper_started", "pid": process.pid}))
        return process

    def _read_loop(self, process: subprocess.Popen[bytes]) -> None:
        assert process.stdout is not None
        try:
            while True:
                ident, ok, value = _read_frame(process.stdout)
                with self._lock:
                    future = self._futures.pop(ident, None)
                if future is None:
                    continue
                if ok:
                    future.set_result(value)
                else:
                    future.set_exception(value)
        except (EOFError, OSError, pickle.UnpicklingError):
            pass
        process.wait()
        # Jobs the helper took with it fail; their windows resend before the next job.
        with self._lock:
            lost, self._futures = self._futures, {}
        for future in lost.values():
            future.set_exception(OffloadUnavailable("the fit helper exited"))

    def _fail(self, ident: int, exc: BaseException) -> None:
        with self._lock:
            future = self._futures.pop(ident, None)
        if future is not None:
            future.set_exception(exc)


_shared: Offload | None = None
_shared_lock = threading.Lock()


def shared() -> Offload:
    """This process's helper, closed at exit."""
    global _shared
    with _shared_lock:
        if _shared is None:
            _shared = Offload()
            atexit.register(_shared.close)
        return _shared


# ---- the helper side --------------------------------------------------------------------------


def serve(source: IO[bytes], sink: IO[bytes]) -> None:
    """Run jobs from `source` until it closes, answering those with an id on `sink`."""
    from proxy.probes.jobs import JOBS  # numpy is imported after the thread limits are set

    while True:
        try:
            ident, job, args = _read_frame(source)
        except EOFError:
            return
        try:
            result, ok = JOBS[job](*args), True
        except Exception as exc:  # noqa: BLE001 - the worker gets every failure as its future's
            result, ok = exc, False
        if ident is not None:
            _write_frame(sink, (ident, ok, result))
        elif not ok:
            print(f"fit helper: {job} failed: {result!r}", file=sys.stderr)


def main() -> None:
    try:
        os.nice(NICE)
    except OSError:
        pass  # a helper at the workers' priority is still off their event loops
    # The frames get stdout's pipe to themselves: anything a library prints goes to stderr.
    frames = os.fdopen(os.dup(sys.stdout.fileno()), "wb")
    os.dup2(sys.stderr.fileno(), sys.stdout.fileno())
    serve(sys.stdin.buffer, frames)


if __name__ == "__main__":
    main()
