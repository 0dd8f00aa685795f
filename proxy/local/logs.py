"""Where the embedded model server's output goes: a ring buffer and a bounded set of log files.

Each proxy process writes its child's output to `llama-server.<proxy pid>.log` in the cache's
`logs/` dir, capped at `LOG_FILE_MAX_BYTES` by rotating once to `.1`. A file per process keeps
concurrent proxies on one cache from interleaving; without pruning those files pile up, one per
run, so each new sink deletes all but the newest `KEEP_LOGS` files of processes that have ended.
A live process's file is never deleted, whatever its age: its owner still writes to it.
"""

from __future__ import annotations

import contextlib
import os
import re
import time
from collections import deque
from pathlib import Path
from typing import IO

__all__ = ["KEEP_LOGS", "LOG_FILE_MAX_BYTES", "RING_LINES", "OutputSink", "log_path", "prune_logs"]

# Cap on one log file; past it the file is rotated once to `.1`, so one run's disk use is bounded.
LOG_FILE_MAX_BYTES = 5 * 1024 * 1024
# Logs of ended runs kept beside the live ones: enough to compare the last few runs.
KEEP_LOGS = 5
# Lines of child output kept in memory to explain a failed start or a crash.
RING_LINES = 200

_NAME = re.compile(r"^llama-server\.(\d+)\.log(\.1)?$")


def log_path(directory: Path, pid: int | None = None) -> Path:
    return directory / f"llama-server.{os.getpid() if pid is None else pid}.log"


def prune_logs(directory: Path, keep: int = KEEP_LOGS) -> list[Path]:
    """Delete the logs of ended processes but the newest `keep`; returns what was deleted."""
    try:
        entries = list(directory.iterdir())
    except OSError:
        return []
    runs: dict[int, list[Path]] = {}
    for path in entries:
        match = _NAME.match(path.name)
        if match:
            runs.setdefault(int(match.group(1)), []).append(path)
    ended = [(pid, files) for pid, files in runs.items() if not _alive(pid)]
    ended.sort(key=lambda run: max(_mtime(p) for p in run[1]), reverse=True)
    deleted: list[Path] = []
    for _, files in ended[keep:]:
        for path in files:
            with contextlib.suppress(OSError):
                path.unlink()
                deleted.append(path)
    return deleted


def _alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except (ProcessLookupError, OverflowError):
        return False
    except OSError:  # exists, owned by someone else
        return True
    return True


def _mtime(path: Path) -> float:
    try:
        return path.stat().st_mtime
    except OSError:
        return 0.0


class OutputSink:
    """Child output: the last `RING_LINES` lines in memory, everything in a size-capped file."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.lines: deque[str] = deque(maxlen=RING_LINES)
        self._fh: IO[str] | None = None

    def open(self) -> None:
        if self._fh is None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            prune_logs(self.path.parent)
            self._fh = open(self.path, "a", encoding="utf-8", errors="replace")  # noqa: SIM115 (held open)

    def write(self, line: str) -> None:
        line = line.rstrip("\r\n")
        self.lines.append(line)
        if self._fh is None:
            return
        try:
            self._fh.write(line + "\n")
            self._fh.flush()
            if self._fh.tell() > LOG_FILE_MAX_BYTES:
                self._fh.close()
                os.replace(self.path, self.path.with_name(self.path.name + ".1"))
                self._fh = open(self.path, "a", encoding="utf-8", errors="replace")  # noqa: SIM115 (held open)
        except OSError:
            # A full disk must not take the model down; the ring buffer still works.
            pass

    def mark(self, text: str) -> None:
        self.write(f"--- rvr-proxy {time.strftime('%Y-%m-%d %H:%M:%S')}: {text}")

    def tail(self, n: int = 20) -> list[str]:
        return list(self.lines)[-n:]

    def close(self) -> None:
        if self._fh is not None:
            self._fh.close()
            self._fh = None
