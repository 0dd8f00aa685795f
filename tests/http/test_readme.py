"""The docs' config examples are configs: each YAML block of README.md and docs/operations.md
passes `rvr-proxy check-config`, so a reader can copy any of them and start from it."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

from tests.proxy_process import ROOT

DOCS = (ROOT / "README.md", ROOT / "docs" / "operations.md")


def yaml_blocks(doc: Path) -> list[str]:
    return re.findall(r"```yaml\n(.*?)```", doc.read_text(encoding="utf-8"), flags=re.S)


BLOCKS = [(doc, i, block) for doc in DOCS for i, block in enumerate(yaml_blocks(doc))]


@pytest.mark.parametrize("doc", DOCS, ids=[doc.name for doc in DOCS])
def test_each_doc_has_config_examples(doc: Path) -> None:
    assert yaml_blocks(doc)


@pytest.mark.parametrize(
    "block", [block for _, _, block in BLOCKS], ids=[f"{doc.name}-block{i}" for doc, i, _ in BLOCKS]
)
def test_each_doc_config_passes_check_config(block: str, tmp_path: Path) -> None:
    file = tmp_path / "config.yaml"
    file.write_text(block, encoding="utf-8")
    (tmp_path / "examples").symlink_to(ROOT / "examples")  # as if the config sat in the repository root
    # Only the variables the docs themselves tell the reader to set.
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
