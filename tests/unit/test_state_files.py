"""State files survive what crashes and hands write into them: each bad record is skipped alone,
named in the log, and nothing non-finite reaches a response (issue: one NaN, 1e308, bad UTF-8
byte or torn line made a route answer 500 for good, or stopped the proxy from starting)."""

from __future__ import annotations

import json
import logging
import math
from pathlib import Path
from typing import Any

import pytest

from proxy.probes.calibration import GoldFile
from proxy.server.responses import finite_json
from strategies.risk.calibration import GoldRecord
from strategies.selection.learned import LearnedSelector


def record(item: str, served: Any = 1.0) -> dict[str, Any]:
    return {
        "item": item, "served": served, "best_served": 1.0, "best_one_prompt": 1.0, "best_all": 1.0,
        "mean_one_prompt": 0.5, "online": {"residual": 0.1}, "tokens": 12, "time": 1.0,
    }


def lines(*values: Any) -> bytes:
    return b"".join(v if isinstance(v, bytes) else (json.dumps(v) + "\n").encode() for v in values)


def test_bad_lines_are_skipped_one_by_one_and_named(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    gold = GoldFile(tmp_path, "route/a")
    gold.path.write_bytes(lines(
        record("ok-1"),
        b'{"item": "bad-utf8 \xff\xfe"}\n',
        b'{"item": "nan", "served": NaN}\n',
        record("huge", 1e308),
        record("negative", -0.5),
        b"not json at all\n",
        record("ok-2"),
    ))
    with caplog.at_level(logging.WARNING, logger="rvr_proxy"):
        read = gold.read_new()
    assert [r.item for r in read] == ["ok-1", "ok-2"]
    skipped = [json.loads(r.message) for r in caplog.records if "gold_record_skipped" in r.message]
    assert [s["line"] for s in skipped] == [2, 3, 4, 5, 6]
    assert all(s["file"] == str(gold.path) for s in skipped)


def test_line_numbers_run_on_across_incremental_reads(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    gold = GoldFile(tmp_path, "r")
    gold.path.write_bytes(lines(record("a"), record("b")))
    assert len(gold.read_new()) == 2
    with gold.path.open("ab") as out:
        out.write(b"\xff\n")
    with caplog.at_level(logging.WARNING, logger="rvr_proxy"):
        assert gold.read_new() == []
    assert json.loads(caplog.records[-1].message)["line"] == 3


def test_a_record_after_a_torn_line_starts_a_line_of_its_own(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    gold = GoldFile(tmp_path, "r")
    gold.path.write_bytes(lines(record("before")) + b'{"item": "torn by kill -9", "ser')
    gold.append(GoldRecord.from_dict(record("after")))
    with caplog.at_level(logging.WARNING, logger="rvr_proxy"):
        read = GoldFile(tmp_path, "r").read_new()
    # The record appended after the kill is read back; the torn one is skipped, named once.
    assert [r.item for r in read] == ["before", "after"]
    skipped = [json.loads(r.message) for r in caplog.records if "gold_record_skipped" in r.message]
    assert skipped == [{"event": "gold_record_skipped", "file": str(gold.path), "line": 2, "error": "JSONDecodeError"}]


def test_a_non_finite_record_is_never_written(tmp_path: Path) -> None:
    gold = GoldFile(tmp_path, "r")
    bad = GoldRecord.from_dict(record("x"))
    object.__setattr__(bad, "time", math.inf)
    with pytest.raises(ValueError):
        gold.append(bad)
    assert not gold.path.exists() or gold.path.read_bytes() == b""


def test_a_saved_model_with_an_extreme_weight_is_refused() -> None:
    model = {
        "signals": ["vote"], "center": [0.0], "scale": [1.0], "weights": [1e308], "bias": 0.0, "l2": 1.0,
        "auroc": {"vote": 0.7}, "n_items": 60, "n_clusters": 120, "cv_log_loss": 0.5,
    }
    with pytest.raises(ValueError):
        LearnedSelector.from_dict(model)
    assert LearnedSelector.from_dict({**model, "weights": [2.5]}).weights == (2.5,)
    with pytest.raises(ValueError):
        LearnedSelector.from_dict({**model, "weights": [2.5], "auroc": {"vote": math.nan}})


def test_responses_carry_no_non_finite_number() -> None:
    body = {"risk": {"baseline": math.nan, "intervals": {"residual": [0.1, math.inf]}}, "scores": [0.5, -math.inf]}
    expected = {"risk": {"baseline": None, "intervals": {"residual": [0.1, None]}}, "scores": [0.5, None]}
    assert finite_json(body) == expected
    json.dumps(finite_json(body), allow_nan=False)  # what the response writer demands
