"""The probe windows are bounded, so a refit or a start never scales with months of gold records
(issue 21, item 7: `window_items: 20000` made the first request take 6 s and stalled /healthz)."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest
import yaml
from pydantic import ValidationError

from proxy.cli import check_config
from proxy.config.probe_set import MAX_WINDOW_ITEMS, MAX_WINDOW_REQUESTS, ProbeSettings
from proxy.probes import selection as selection_module
from proxy.probes.calibration import GoldFile, RouteCalibration
from proxy.probes.selection import RouteSelection
from strategies.risk.calibration import GoldRecord
from strategies.selection.settings import SelectionSettings


def gold(item: str, clusters: int = 0) -> GoldRecord:
    rows = tuple({"features": {"vote_share": 0.5}, "size": 1, "correct": i == 0} for i in range(clusters))
    return GoldRecord(item, 1.0, 1.0, 1.0, 1.0, 0.5, {}, tokens=10, time=1.0, clusters=rows)


@pytest.mark.parametrize(
    ("field", "bound"), [("window_items", MAX_WINDOW_ITEMS), ("window_requests", MAX_WINDOW_REQUESTS)]
)
def test_each_window_has_an_upper_bound(field: str, bound: int) -> None:
    assert getattr(ProbeSettings(file=Path("p.jsonl"), **{field: bound}), field) == bound
    with pytest.raises(ValidationError, match=f"less than or equal to {bound}"):
        ProbeSettings(file=Path("p.jsonl"), **{field: bound + 1})


def test_check_config_names_a_window_too_large_in_one_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("UPSTREAM_KEY", "sk-upstream-secret-abcdef")
    (tmp_path / "probes.jsonl").write_text(json.dumps({"id": "a", "prompt": "1+1=", "answer": "2"}) + "\n")
    config = {
        "upstreams": [{"name": "u", "litellm_params": {
            "model": "openai/u", "api_base": "http://127.0.0.1:9/v1", "api_key": "os.environ/UPSTREAM_KEY"}}],
        "routes": [{"model": "r", "upstream": "u", "strategy": {"name": "best_of_n", "max_n": 4},
                    "probes": {"file": "probes.jsonl", "window_items": 20_000}}],
    }
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(config))
    assert check_config(str(path)) == 2
    err = capsys.readouterr().err
    errors = [line.strip() for line in err.splitlines()[1:]]  # after the "invalid config:" header
    assert errors == [f"routes.0.probes.window_items: Input should be less than or equal to {MAX_WINDOW_ITEMS}"]
    assert "Traceback" not in err


def test_a_refit_takes_the_newest_records_whose_clusters_fit_the_row_cap(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(selection_module, "MAX_FIT_ROWS", 10)
    calibration = RouteCalibration("r", ProbeSettings(file=Path("p.jsonl")), None)
    for i in range(6):
        calibration.add_gold(gold(f"i{i}", clusters=4))
    rows, items = RouteSelection("r", SelectionSettings(mode="learned"), calibration, tmp_path).rows()
    assert items == 6  # what `min_items` is compared with: every item of the window
    assert len(rows) == 8 and {r.item for r in rows} == {"i4", "i5"}  # 12 rows would not fit


def test_a_long_gold_file_is_read_from_its_last_window_of_lines(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    lines = [json.dumps(gold(f"i{i}").as_dict()) + "\n" for i in range(10)]
    lines[8] = "not json\n"
    calibration_file = GoldFile(tmp_path, "r", keep=3)
    calibration_file.path.write_text("".join(lines) + '{"torn')
    with caplog.at_level(logging.WARNING, logger="rvr_proxy"):
        read = calibration_file.read_new()
    assert [r.item for r in read] == ["i7", "i9"]
    assert json.loads(caplog.records[-1].message)["line"] == 9  # named as the line it is in the file
    with calibration_file.path.open("a") as out:  # the torn line, completed by its writer
        out.write('": 1}\n' + json.dumps(gold("i10").as_dict()) + "\n")
    assert [r.item for r in calibration_file.read_new()] == ["i10"]
    assert json.loads(caplog.records[-1].message)["line"] == 11


def test_the_window_of_a_route_keeps_its_newest_records_at_start(tmp_path: Path) -> None:
    (tmp_path / "r.jsonl").write_text("".join(json.dumps(gold(f"i{i}").as_dict()) + "\n" for i in range(50)))
    calibration = RouteCalibration("r", ProbeSettings(file=Path("p.jsonl"), window_items=20), tmp_path)
    assert [r.item for r in calibration.gold] == [f"i{i}" for i in range(30, 50)]
