"""What a new user meets first: a fast config check, and the documented per-request behaviour."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import yaml

from tests.proxy_process import ROOT

CONFIG = {
    "upstreams": [{"name": "up", "litellm_params": {"model": "openai/m", "api_base": "http://127.0.0.1:9/v1"}}],
    "routes": [{"model": "best", "upstream": "up", "strategy": {"name": "best_of_n"}}],
}


def test_check_config_does_not_import_litellm(tmp_path: Path) -> None:
    # litellm's import alone made check-config take 8-13 s; it needs none of it
    file = tmp_path / "config.yaml"
    file.write_text(yaml.safe_dump(CONFIG))
    probe = (
        "import sys\n"
        "from proxy.cli import main\n"
        f"code = main(['check-config', {str(file)!r}])\n"
        "assert 'litellm' not in sys.modules, 'check-config imported litellm'\n"
        "sys.exit(code)\n"
    )
    result = subprocess.run([sys.executable, "-c", probe], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert "route best: at most" in result.stdout


def test_rvr_options_on_a_passthrough_route_are_ignored_openly(client: Any) -> None:
    raw = client.chat.completions.with_raw_response.create(
        model="echo", messages=[{"role": "user", "content": "hi"}], extra_body={"rvr": {"max_n": 2}}
    )
    assert raw.http_response.status_code == 200
    assert "rvr options do not apply to passthrough routes" in raw.headers["x-rvr-ignored"]
    assert "rvr" not in raw.parse().model_extra  # nothing was chosen, so there is nothing to report
    plain = client.chat.completions.with_raw_response.create(model="echo", messages=[{"role": "user", "content": "hi"}])
    assert "x-rvr-ignored" not in plain.headers
