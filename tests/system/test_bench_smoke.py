"""Every benchmark keeps running: each `bench/` script with a `--smoke` mode runs it here (issue 24:
the overhead benchmark once broke and nobody noticed until the README's figures were months old).

A smoke run is seconds on tiny sizes; its numbers are not checked (timings and accuracies belong
to the benchmark), only that it runs through and exits 0. `overhead.py` has its own test
(`test_bench_overhead.py`), which also checks every target answered.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
OWN_TEST = {"overhead.py"}
SMOKED = sorted(
    path.name for path in (ROOT / "bench").glob("*.py")
    if path.name != "common.py" and path.name not in OWN_TEST and "add_smoke(" in path.read_text(encoding="utf-8")
)


def test_the_benchmarks_with_a_smoke_mode_are_found() -> None:
    assert {"compare_strategies.py", "first_run.py", "limits.py", "validate_risk.py"} <= set(SMOKED)


@pytest.mark.parametrize("script", SMOKED)
def test_the_benchmark_runs_through_its_smoke_mode(script: str, tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("RVR_")}
    done = subprocess.run(
        [sys.executable, f"bench/{script}", "--smoke"],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=600, check=False,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
