"""The embedded server's log files: one per proxy run, and only the last few runs' are kept."""

from __future__ import annotations

import os
from pathlib import Path

from proxy.local.logs import KEEP_LOGS, OutputSink, log_path, prune_logs


def _ended_pids(n: int) -> list[int]:
    """Pids no process has: above the kernel's maximum, so never alive."""
    pid_max = int(Path("/proc/sys/kernel/pid_max").read_text())
    return [pid_max + 1 + i for i in range(n)]


def _write(path: Path, mtime: float) -> Path:
    path.write_text("llama.cpp output\n")
    os.utime(path, (mtime, mtime))
    return path


def test_only_the_newest_logs_of_ended_runs_are_kept(tmp_path: Path) -> None:
    ended = _ended_pids(KEEP_LOGS + 3)
    for age, pid in enumerate(ended):  # ended[0] is the newest
        _write(log_path(tmp_path, pid), 1_000_000 - age)
    _write(tmp_path / f"llama-server.{ended[-1]}.log.1", 1_000_000 - len(ended))  # a rotated half
    live = [_write(log_path(tmp_path, pid), 1.0) for pid in (os.getpid(), os.getppid())]  # old, but running
    unrelated = _write(tmp_path / "notes.log", 1.0)

    deleted = prune_logs(tmp_path)

    kept = {p.name for p in tmp_path.iterdir()}
    assert kept == {log_path(tmp_path, pid).name for pid in ended[:KEEP_LOGS]} | {p.name for p in live} | {unrelated.name}
    assert tmp_path / f"llama-server.{ended[-1]}.log.1" in deleted  # goes with its run


def test_a_new_sink_prunes_and_writes_its_own_file(tmp_path: Path) -> None:
    logs = tmp_path / "logs"
    logs.mkdir()
    for age, pid in enumerate(_ended_pids(KEEP_LOGS + 2)):
        _write(log_path(logs, pid), 1_000_000 - age)
    sink = OutputSink(log_path(logs))
    sink.open()
    try:
        sink.write("model loaded\n")
    finally:
        sink.close()
    names = sorted(p.name for p in logs.iterdir())
    assert len(names) == KEEP_LOGS + 1 and log_path(logs).name in names
    assert log_path(logs).read_text() == "model loaded\n"
    assert sink.tail(1) == ["model loaded"]


def test_pruning_a_missing_directory_does_nothing(tmp_path: Path) -> None:
    assert prune_logs(tmp_path / "absent") == []
