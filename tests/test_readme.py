"""The README's config examples are configs: each YAML block passes `rvr-proxy check-config`."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

from tests.proxy_process import ROOT

BLOCKS = re.findall(r"```yaml\n(.*?)```", (ROOT / "README.md").read_text(encoding="utf-8"), flags=re.S)


def test_the_readme_has_config_examples() -> None:
    assert BLOCKS


@pytest.mark.parametrize("block", BLOCKS, ids=[f"block{i}" for i in range(len(BLOCKS))])
def test_each_readme_config_passes_check_config(block: str, tmp_path: Path) -> None:
    file = tmp_path / "config.yaml"
    file.write_text(block, encoding="utf-8")
    (tmp_path / "examples").symlink_to(ROOT / "examples")  # as if the config sat in the repository root
    # Only the variables the README itself tells the reader to set.
    env = {
        "PATH": "/usr/bin:/bin", "UPSTREAM_KEY": "sk-readme-example", "LITELLM_LOCAL_MODEL_COST_MAP": "True",
        # "Scale out"
        "REDIS_URL": "redis://127.0.0.1:6379/0", "TEAM_A_KEY": "sk-readme-team-a", "TEAM_B_KEY": "sk-readme-team-b",
    }
    result = subprocess.run(
        [sys.executable, "-m", "proxy.cli", "check-config", str(file)],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=120,
    )
    assert result.returncode == 0, result.stderr
