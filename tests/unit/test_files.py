"""One home for files that processes share: whole-or-nothing writes and cross-process locks."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest

from proxy.state.files import FileLock, atomic_file, atomic_write_text


def test_a_write_replaces_the_whole_file(tmp_path: Path) -> None:
    target = tmp_path / "deep" / "model.json"  # the folder is made on first write
    atomic_write_text(target, "old")
    atomic_write_text(target, "new ✓")
    assert target.read_text(encoding="utf-8") == "new ✓"
    assert [p.name for p in target.parent.iterdir()] == ["model.json"]  # no temporary left behind


def test_a_failed_write_keeps_the_old_file_and_leaves_no_temporary(tmp_path: Path) -> None:
    target = tmp_path / "audit.json"
    atomic_write_text(target, "old")
    with pytest.raises(RuntimeError), atomic_file(target) as temporary:
        temporary.write_text("half of a new fi", encoding="utf-8")
        raise RuntimeError("the writer died")
    assert target.read_text(encoding="utf-8") == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["audit.json"]


def test_writers_in_parallel_never_share_a_temporary(tmp_path: Path) -> None:
    target = tmp_path / "state.json"
    texts = [str(i) * 10_000 for i in range(8)]
    threads = [threading.Thread(target=atomic_write_text, args=(target, text)) for text in texts]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert target.read_text(encoding="utf-8") in texts  # one writer's whole text, never a mix
    assert [p.name for p in tmp_path.iterdir()] == ["state.json"]


def test_a_held_lock_refuses_a_second_holder_until_released(tmp_path: Path) -> None:
    path = tmp_path / "route.lock"
    first, second = FileLock(path), FileLock(path)  # two open files, as two processes would have
    assert first.acquire(blocking=False) and first.held
    assert not second.acquire(blocking=False) and not second.held
    assert first.acquire(blocking=False)  # taking it again is a no-op for its holder
    first.release()
    assert second.acquire(blocking=False)
    second.release()


def test_a_lock_as_a_context_waits_and_releases(tmp_path: Path) -> None:
    path = tmp_path / "model.lock"
    with FileLock(path) as lock:
        assert lock.held and not FileLock(path).acquire(blocking=False)
    assert not lock.held and FileLock(path).acquire(blocking=False)
