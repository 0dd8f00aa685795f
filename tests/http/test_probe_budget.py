"""A route's probe budget holds across `rvr-proxy probe` runs, and a run says what it spent
(issue 21, item 8: three back-to-back runs with a budget of 1,000 spent 758 tokens each, and a run
whose last item the budget cut short left that item's tokens out of its summary).

The upstream is the loopback stub; it counts the tokens it reports, so what the runs spent is
measured where it is billed, not taken from the proxy's own word.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

import yaml

from tests.conftest import UPSTREAM_KEY, upstream
from tests.proxy_process import ROOT
from tests.stub_upstream import Handler, StubServer

ENV = {"UPSTREAM_KEY": UPSTREAM_KEY, "LITELLM_LOCAL_MODEL_COST_MAP": "True"}
BUDGET = 1000
SUMMARY = re.compile(r"route \S+: (\d+) items probed, (\d+) recorded, errors: (.*); (\d+) upstream tokens")


class CountingHandler(Handler):
    """The stub's handler, adding up the `usage.total_tokens` of every answer it sends."""

    server: CountingStub  # type: ignore[assignment]

    def _json(self, status: int, data: dict[str, Any]) -> None:
        usage = data.get("usage") if status == 200 else None
        if isinstance(usage, dict):
            with self.server.counted_lock:
                self.server.tokens += int(usage.get("total_tokens") or 0)
        super()._json(status, data)


class CountingStub(StubServer):
    def __init__(self) -> None:
        super().__init__()
        self.RequestHandlerClass = CountingHandler
        self.tokens = 0
        self.counted_lock = threading.Lock()


def write_config(directory: Path, api_base: str, state_dir: Path, **state: Any) -> Path:
    items = [
        {"id": f"q{i}", "messages": [{"role": "user", "content": f"Question {i}: what is 6*7? p=0.5"}], "answer": "42"}
        for i in range(40)
    ]
    (directory / "items.jsonl").write_text("".join(json.dumps(item) + "\n" for item in items))
    route = {
        "model": "probed",
        "upstream": "math",
        # A completion cap keeps each call's reservation small, so items start until the hour is spent.
        "limits": {"max_tokens": 16},
        "strategy": {
            "name": "best_of_n", "max_n": 4, "adaptive": False, "k_ref": 4,
            "verifiers": [{"type": "plugin", "function": "tests.plugin_verifier:knows_42"}],
        },
        "probes": {"file": "items.jsonl", "every_s": 0, "checker": "numeric", "max_tokens_per_hour": BUDGET},
    }
    server: dict[str, Any] = {"state_dir": str(state_dir), **state}
    config = {"server": server, "upstreams": [upstream("math", api_base, retries=0)], "routes": [route]}
    path = directory / "config.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def probe(config: Path, out: Path, env: dict[str, str] | None = None) -> tuple[int, list[int]]:
    """One `rvr-proxy probe` run: the tokens its summary line reports, and its items' tokens."""
    done = subprocess.run(
        [sys.executable, "-m", "proxy.cli", "probe", "--config", str(config), "--route", "probed",
         "--items", "40", "--out", str(out)],
        cwd=config.parent, capture_output=True, text=True, timeout=180,
        env={**ENV, **(env or {}), "PATH": "/usr/bin:/bin", "PYTHONPATH": str(ROOT)},
    )
    found = SUMMARY.search(done.stdout)
    assert found is not None, f"no summary line:\n{done.stdout}\n{done.stderr}"
    records = [json.loads(line) for line in out.read_text().splitlines()] if out.exists() else []
    return int(found.group(4)), [int(r["tokens"]) for r in records]


def test_three_runs_share_one_hourly_budget_and_each_summary_counts_every_token(tmp_path: Path) -> None:
    with CountingStub() as stub:
        config = write_config(tmp_path, stub.api_base, tmp_path / "state")
        runs = []
        for run in range(3):
            before = stub.tokens
            summary_tokens, item_tokens = probe(config, tmp_path / f"gold-{run}.jsonl")
            runs.append((stub.tokens - before, summary_tokens, item_tokens))
    spent = [billed for billed, _, _ in runs]
    one_item = max(t for _, _, items in runs for t in items)
    assert runs[0][2], "the first run recorded no item: the test's budget is too small to say anything"
    # The hour's budget holds over all three runs: at most one item's overshoot past it.
    assert sum(spent) <= BUDGET + one_item, f"billed per run: {spent}"
    assert spent[1] + spent[2] <= one_item, f"later runs spent again: {spent}"
    # Each run's summary says what the upstream billed for it, the item the budget cut included.
    assert [summary for _, summary, _ in runs] == spent
