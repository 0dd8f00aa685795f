"""The hour's probe spend, kept where every prober of a route sees it (issue 21, item 8: the
budget was per process, so each `rvr-proxy probe` run and each restart had a fresh hour).

The runs themselves, through the CLI against a loopback upstream, are in
`tests/http/test_probe_budget.py` (one state_dir) and `tests/system/test_probe_budget.py` (Redis).
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
import threading
from pathlib import Path

import pytest

from proxy.probes.budget import BudgetFile, ProbeBudget, SharedSpend, SpendLedger
from proxy.state.memory import MemoryState

T0 = 1_700_000_000.0  # a wall-clock time on a minute's start


class Clock:
    def __init__(self, now: float = T0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def test_the_ledger_counts_the_last_hour_and_merges_a_minute_late_not_early() -> None:
    ledger = SpendLedger()
    ledger.add(T0, 100)
    ledger.add(T0 + 30, 50)  # the same minute: one entry, dated at the later charge
    ledger.add(T0 + 600, 7)
    assert ledger.entries == [(T0 + 30, 150), (T0 + 600, 7)]
    assert ledger.spent(T0 + 3600) == 157  # the first charge is an hour old, its merged entry not
    assert ledger.spent(T0 + 3630) == 7
    assert ledger.spent(T0 + 4200) == 0
    ledger.add(T0 + 4300, 1)  # adding drops what no longer counts
    assert ledger.entries == [(T0 + 4300, 1)]


def test_a_clock_set_back_still_counts_what_was_spent() -> None:
    ledger = SpendLedger([(T0, 40)])
    assert ledger.spent(T0 - 600) == 40  # ten minutes "before" it was spent: still this hour's


@pytest.mark.parametrize(
    "data",
    [{"spent": [[math.nan, 5]]}, {"spent": [[T0, -5]]}, {"spent": [[T0, 1.5]]}, {"spent": [[T0]]}, {"spent": 3}, []],
    ids=["nan-time", "negative", "fraction", "not-a-pair", "not-a-list", "not-an-object"],
)
def test_a_ledger_with_a_bad_entry_is_refused(data: object) -> None:
    with pytest.raises((ValueError, TypeError)):
        SpendLedger.from_json(data)


def test_two_processes_on_one_directory_see_each_others_spend(tmp_path: Path) -> None:
    clock = Clock()
    first = ProbeBudget("r/1", 1000, BudgetFile(tmp_path, "r/1"), None, clock)
    second = ProbeBudget("r/1", 1000, BudgetFile(tmp_path, "r/1"), None, clock)  # a restart, another run
    asyncio.run(first.charge(300))
    asyncio.run(second.charge(200))
    assert asyncio.run(first.left()) == asyncio.run(second.left()) == 500
    assert (tmp_path / "budget" / "r%2F1.json").is_file()  # the route name stays one file name
    clock.now += 3601
    assert asyncio.run(second.left()) == 1000


def test_concurrent_charges_to_one_file_all_count(tmp_path: Path) -> None:
    file = BudgetFile(tmp_path, "r")

    def charge_many() -> None:
        for _ in range(50):
            file.add(T0, 3)

    threads = [threading.Thread(target=charge_many) for _ in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert file.read().spent(T0) == 6 * 50 * 3


def test_an_unreadable_ledger_is_named_in_the_log_and_rewritten(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    file = BudgetFile(tmp_path, "r")
    file.path.parent.mkdir(parents=True)
    file.path.write_bytes(b'{"spent": [[1.0, \xff')
    with caplog.at_level(logging.WARNING, logger="rvr_proxy"):
        assert file.read().spent(T0) == 0
    event = json.loads(caplog.records[-1].message)
    assert event["event"] == "probe_budget_unreadable" and event["file"] == str(file.path)
    file.add(T0, 9)
    assert file.read().spent(T0) == 9


def test_a_ledger_that_cannot_be_written_leaves_the_process_counting(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    (tmp_path / "budget").write_text("a file where the folder should be")
    budget = ProbeBudget("r", 100, BudgetFile(tmp_path, "r"), None, Clock())
    with caplog.at_level(logging.WARNING, logger="rvr_proxy"):
        asyncio.run(budget.charge(60))
    assert asyncio.run(budget.left()) == 40
    assert "probe_budget_unsaved" in caplog.text


def test_the_shared_spend_is_the_total_since_the_newest_mark_an_hour_old() -> None:
    state, clock = MemoryState(), Clock()
    shared = SharedSpend(state, "r", clock)
    asyncio.run(shared.add(100))
    clock.now += 1800
    asyncio.run(shared.add(50))
    assert asyncio.run(shared.spent(clock.now)) == 150
    assert asyncio.run(shared.spent(T0 + 3600)) == 50  # the first mark is an hour old: its total is the base
    assert asyncio.run(shared.spent(T0 + 1800 + 3600)) == 0
    assert asyncio.run(state.get_json("probe_budget/r/marks")) == [[T0, 100.0], [T0 + 1800, 150.0]]


def test_a_lost_mark_only_makes_the_shared_spend_larger() -> None:
    state, clock = MemoryState(), Clock()
    shared = SharedSpend(state, "r", clock)
    asyncio.run(shared.add(100))
    clock.now += 1800
    asyncio.run(shared.add(50))
    asyncio.run(state.put_json("probe_budget/r/marks", [[T0 + 1800, 150.0]]))  # another writer won
    assert asyncio.run(shared.spent(T0 + 3600)) == 150  # no base an hour old: everything counts
    asyncio.run(state.put_json("probe_budget/r/marks", "garbage"))
    assert asyncio.run(shared.spent(T0 + 3600)) == 150


def test_marks_keep_one_base_and_one_a_minute() -> None:
    state, clock = MemoryState(), Clock()
    shared = SharedSpend(state, "r", clock)
    for step in range(0, 7200, 20):  # a charge every 20 s for two hours
        clock.now = T0 + step
        asyncio.run(shared.add(1))
    marks = asyncio.run(state.get_json("probe_budget/r/marks"))
    assert len(marks) <= 62
    assert sum(1 for when, _ in marks if when <= clock.now - 3600) == 1
    assert asyncio.run(shared.spent(clock.now)) in range(180, 184)  # 180 charges this hour, up to a minute more


def test_the_budget_left_is_the_limit_less_the_largest_spend_anyone_saw(tmp_path: Path) -> None:
    state, clock = MemoryState(), Clock()
    here = ProbeBudget("r", 1000, BudgetFile(tmp_path / "a", "r"), SharedSpend(state, "r", clock), clock)
    elsewhere = ProbeBudget("r", 1000, BudgetFile(tmp_path / "b", "r"), SharedSpend(state, "r", clock), clock)
    asyncio.run(here.charge(400))  # another instance: its own state_dir, the same Redis
    asyncio.run(elsewhere.charge(100))
    assert asyncio.run(here.left()) == asyncio.run(elsewhere.left()) == 500
    alone = ProbeBudget("r", 1000, BudgetFile(tmp_path / "a", "r"), None, clock)  # the file only
    assert asyncio.run(alone.left()) == 600
