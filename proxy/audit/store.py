"""Where verifier audit results live between `rvr-proxy audit` and `rvr-proxy serve`.

A result is stored under `server.state_dir/verifier_audit/`, keyed by a fingerprint of what
decides the verifier's scores: its own settings (less `name`, `weight` and `audit`, which change
no score) and the settings of every upstream it calls (the judge model and where it is served).
Change any of them and the old audit no longer applies, so a required audit is missing again.
Secret values never reach the fingerprint or the file.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

from proxy.config.settings import Config
from proxy.state.files import atomic_write_text
from strategies.verifiers.base import VerifierSpec

SUBDIR = "verifier_audit"
FORMAT = 1  # bump when the stored shape changes; older files then read as missing


def fingerprint(config: Config, spec: VerifierSpec) -> str:
    secrets = {s for s in config.secrets() if s}
    secrets.update(s for s in spec.secrets() if s)
    settings = spec.model_dump(mode="json", exclude={"name", "weight", "audit"})
    upstreams = {name: config.upstream(name).model_dump(mode="json") for name in spec.upstreams()}
    payload = json.dumps({"verifier": settings, "upstreams": upstreams}, sort_keys=True, default=str)
    for secret in sorted(secrets, key=len, reverse=True):
        payload = payload.replace(json.dumps(secret)[1:-1], "<secret>")
    return hashlib.sha256(payload.encode()).hexdigest()


def result_path(state_dir: Path, verifier: str, print_: str) -> Path:
    return Path(state_dir) / SUBDIR / f"{verifier}-{print_[:16]}.json"


def save(state_dir: Path, verifier: str, print_: str, result: dict[str, Any]) -> Path:
    """Write atomically, so a proxy starting meanwhile reads the old result or the new one."""
    path = result_path(state_dir, verifier, print_)
    document = {"format": FORMAT, "verifier": verifier, "fingerprint": print_, **result}
    atomic_write_text(path, json.dumps(document, indent=2, sort_keys=True) + "\n")
    return path


def load(state_dir: Path, verifier: str, print_: str) -> dict[str, Any] | None:
    """The stored result for exactly this configuration, or None."""
    path = result_path(state_dir, verifier, print_)
    try:
        document = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if not isinstance(document, dict) or document.get("format") != FORMAT or document.get("fingerprint") != print_:
        return None
    return document
