"""Fits off the request path (issue 20, item 5): the calibration snapshot and the selection
refit run in the worker's fit helper process; a request gets the last one finished."""

from __future__ import annotations

import os
import signal
import sys
import time
from concurrent.futures import Future
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from proxy.config.probe_set import ProbeSettings
from proxy.probes import jobs
from proxy.probes import offload as offload_module
from proxy.probes.calibration import RouteCalibration
from proxy.probes.offload import Offload
from proxy.probes.selection import RouteSelection
from strategies.risk.calibration import GoldRecord
from strategies.selection.settings import SelectionSettings


def record(i: int, right: bool = True, clusters: int = 0, seed: int = 0) -> GoldRecord:
    rng = np.random.default_rng(seed * 1000 + i)
    rows = tuple(
        {"features": {"good": float(rng.normal(1.5 if c == 0 else 0.0)), "vote_share": 0.25}, "size": 1,
         "correct": c == 0 and rng.random() < 0.7, **({"weighted": True} if c == 0 else {})}
        for c in range(clusters)
    )
    served = 1.0 if right else 0.0
    return GoldRecord(f"i{i}", served, 1.0, 1.0, 1.0, 0.5, {"residual": 0.01}, time=float(i), clusters=rows)


class HeldBack(Offload):
    """The real helper, with each job's answer held until the test releases it."""

    def __init__(self) -> None:
        super().__init__()
        self.held: list[tuple[Future[Any], Future[Any]]] = []

    def submit(self, job: str, *args: Any) -> Future[Any]:
        real, shown = super().submit(job, *args), Future()
        self.held.append((real, shown))
        return shown

    def release(self) -> None:
        while self.held:
            real, shown = self.held.pop(0)
            exc = real.exception(timeout=60)
            shown.set_exception(exc) if exc is not None else shown.set_result(real.result())


@pytest.fixture
def held_back() -> Any:
    helper = HeldBack()
    yield helper
    helper.close()


def test_a_request_gets_the_last_finished_model_while_a_refit_runs(tmp_path: Path, held_back: HeldBack) -> None:
    calibration = RouteCalibration("r", ProbeSettings(file=tmp_path / "p.jsonl"), None, held_back)
    selection = RouteSelection("r", SelectionSettings(mode="learned", min_items=20), calibration, None)
    for i in range(40):
        calibration.add_gold(record(i, clusters=4))
    started = time.perf_counter()
    before = selection.state()  # starts the refit, does not wait for it
    assert time.perf_counter() - started < 0.05
    assert before.model is None and held_back.held
    assert selection.state() is before  # still the last finished state while the fit runs
    held_back.release()
    after = selection.state()
    assert after.model is not None and "good" in after.model.signals
    assert after.safety is not None  # the gate comes with the model


def test_a_calibration_snapshot_is_never_waited_for(tmp_path: Path, held_back: HeldBack) -> None:
    calibration = RouteCalibration("r", ProbeSettings(file=tmp_path / "p.jsonl"), None, held_back)
    first = calibration.snapshot()
    assert first["n_items"] == 0  # computed at start, not on a request
    for i in range(10):
        calibration.add_gold(record(i))
    calibration.observe({"residual": 0.02})
    assert calibration.snapshot() is first and held_back.held
    held_back.release()
    latest = calibration.snapshot()
    assert latest["n_items"] == 10 and latest["window_requests"] == 1
    assert calibration.snapshot(fresh=True)["n_items"] == 10  # `rvr-proxy probe` computes in place


def test_the_fits_run_in_the_helper_process(tmp_path: Path) -> None:
    calibration = RouteCalibration("r", ProbeSettings(file=tmp_path / "p.jsonl"), tmp_path / "probes")
    selection = RouteSelection("r", SelectionSettings(mode="learned", min_items=20), calibration, tmp_path)
    for i in range(30):
        calibration.add_gold(record(i, clusters=4))
    state = selection.wait()
    assert state.model is not None
    assert calibration.wait()["n_items"] == 30
    assert not jobs.WINDOWS  # the windows this process fitted on live in its helper, not here
    helper = offload_module.shared()._process
    assert helper is not None and helper.pid != os.getpid()
    assert (tmp_path / "selection" / "r.json").exists()  # the helper keeps the model


def test_a_helper_that_dies_is_started_again_and_given_the_window_again(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(offload_module, "RESTART_PAUSE_S", 0.0)
    helper = Offload()
    try:
        calibration = RouteCalibration("r", ProbeSettings(file=tmp_path / "p.jsonl"), None, helper)
        for i in range(12):
            calibration.add_gold(record(i))
        assert calibration.wait()["n_items"] == 12
        assert helper._process is not None
        os.kill(helper._process.pid, signal.SIGKILL)
        helper._process.wait()
        for i in range(12, 20):
            calibration.add_gold(record(i))
        deadline = time.monotonic() + 60
        while calibration.wait()["n_items"] != 20:  # a job or two fail, then the window goes whole
            assert time.monotonic() < deadline
    finally:
        helper.close()


def test_without_a_helper_the_fits_run_on_a_thread_not_the_request(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(sys, "executable", str(tmp_path / "no-python"))
    helper = Offload()
    try:
        calibration = RouteCalibration("r", ProbeSettings(file=tmp_path / "p.jsonl"), None, helper)
        selection = RouteSelection("r", SelectionSettings(mode="learned", min_items=20), calibration, None)
        for i in range(30):
            calibration.add_gold(record(i, clusters=4))
        assert calibration.wait()["n_items"] == 30
        assert selection.wait().model is not None
    finally:
        helper.close()


def test_a_worker_started_on_records_serves_its_model_from_the_first_request(
    tmp_path: Path, held_back: HeldBack
) -> None:
    calibration = RouteCalibration("r", ProbeSettings(file=tmp_path / "p.jsonl"), None, held_back)
    for i in range(40):
        calibration.add_gold(record(i, clusters=4))
    selection = RouteSelection("r", SelectionSettings(mode="learned", min_items=20), calibration, None)
    state = selection.state()
    assert state.model is not None and state.safety is not None  # fitted at start, not on a request
    assert not held_back.held  # and nothing left to fit until new records arrive
