"""bench/overhead.py runs: its `--smoke` mode end to end (upstream, floor, rvr-proxy, streams).

The overhead benchmark once broke (its config wrote the client key in plain text, which the proxy
refuses) and nobody noticed until the README's figures were months old (issue 24). Its numbers
are not checked here (timings belong to the benchmark), only that every target answered every
request and the report came out. The LiteLLM proxy is left out: it lives in its own venv.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_the_overhead_benchmark_runs_through_every_target(tmp_path: Path) -> None:
    out = tmp_path / "overhead.json"
    env = {k: v for k, v in os.environ.items() if not k.startswith("RVR_")}
    done = subprocess.run(
        [sys.executable, "bench/overhead.py", "--smoke", "--no-litellm", "--json", str(out)],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=300, check=False,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    summary = json.loads(out.read_text())["summary"]
    for target in ("direct", "floor", "rvr-proxy"):
        for level in ("1", "64", "stream"):
            entry = summary[f"{target}@{level}"]
            assert entry["errors"] == 0, (target, level, entry)
    assert "Targets (issue 24):" in done.stdout and "LiteLLM proxy: skipped (--no-litellm)" in done.stdout
