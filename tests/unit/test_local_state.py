"""The workers of one instance share state without Redis (proxy/state/local.py): two `LocalState`s
on one file stand for two workers, and must agree as one process would."""

from __future__ import annotations

import asyncio
import multiprocessing
from pathlib import Path

import pytest

from proxy.config.scale import StateSettings
from proxy.state.backends import build_state
from proxy.state.base import Counter
from proxy.state.local import LOCAL_STATE_ENV, LocalState
from proxy.state.memory import MemoryState


def two(tmp_path: Path) -> tuple[LocalState, LocalState]:
    path = tmp_path / "state.sqlite3"
    return LocalState(path), LocalState(path)


def test_json_and_totals_are_one_store(tmp_path: Path) -> None:
    a, b = two(tmp_path)

    async def scenario() -> None:
        await a.put_json("probe/x", {"n": 1})
        assert await b.get_json("probe/x") == {"n": 1} and await b.get_json("nothing") is None
        assert await a.add_totals("risk/r", {"c.sum": 0.5, "c.count": 1.0}) == {"c.sum": 0.5, "c.count": 1.0}
        assert await b.add_totals("risk/r", {"c.sum": 0.25, "c.count": 1.0}) == {"c.sum": 0.75, "c.count": 2.0}
        assert await a.add_totals("risk/r", {}) == {"c.sum": 0.75, "c.count": 2.0}

    asyncio.run(scenario())


def test_a_limit_holds_across_workers_and_windows_end(tmp_path: Path) -> None:
    a, b = two(tmp_path)

    async def scenario() -> None:
        admitted = 0
        for i in range(20):
            state = a if i % 2 else b
            if await state.admit([Counter("rl:k:rpm:1", 1, 10, 60)]) is None:
                admitted += 1
        assert admitted == 10  # one limit for both, as for one process; memory states admit 20
        await a.add([Counter("rl:k:rpm:1", -3, 10, 60)])  # a settled reservation gives back
        assert await b.admit([Counter("rl:k:rpm:1", 3, 10, 60)]) is None
        assert await b.admit([Counter("rl:k:rpm:1", 1, 10, 60)]) is not None
        assert await a.admit([Counter("rl:k:gone", 5, 5, 0)]) is None  # ttl 0: the window has ended
        assert await b.admit([Counter("rl:k:gone", 5, 5, 0)]) is None

    asyncio.run(scenario())


def _admit_many(path: str, tries: int, out: multiprocessing.Queue) -> None:  # type: ignore[type-arg]
    async def run() -> int:
        state = LocalState(Path(path))
        await state.start()
        return sum([await state.admit([Counter("rl:k:tpm:9", 7, 700, 60)]) is None for _ in range(tries)])

    out.put(asyncio.run(run()))


def test_processes_admitting_at_once_never_pass_the_limit(tmp_path: Path) -> None:
    path = str(tmp_path / "state.sqlite3")
    out: multiprocessing.Queue = multiprocessing.Queue()  # type: ignore[type-arg]
    workers = [multiprocessing.Process(target=_admit_many, args=(path, 60, out)) for _ in range(4)]
    for worker in workers:
        worker.start()
    admitted = sum(out.get(timeout=60) for _ in workers)
    for worker in workers:
        worker.join(timeout=10)
    assert admitted == 100  # 700 / 7, of 240 tries in four processes racing


@pytest.mark.parametrize(("environ", "kind"), [({}, MemoryState), ({LOCAL_STATE_ENV: "/tmp/x.sqlite3"}, LocalState)])
def test_the_memory_backend_is_the_instances_file_when_serve_starts_workers(environ: dict[str, str], kind: type) -> None:
    assert isinstance(build_state(StateSettings(), environ), kind)
