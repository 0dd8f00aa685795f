"""`os.environ/NAME` references (LiteLLM's convention) and keeping their values out of output."""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping
from typing import Any

PREFIX = "os.environ/"


class MissingSecret(ValueError):
    pass


def resolve(value: Any, path: str, environ: Mapping[str, str] | None = None) -> Any:
    """Replace every `os.environ/NAME` string inside `value` by the variable's value."""
    env = os.environ if environ is None else environ
    if isinstance(value, str) and value.startswith(PREFIX):
        name = value[len(PREFIX) :]
        if name not in env:
            raise MissingSecret(f"{path}: environment variable {name} is not set")
        return env[name]
    if isinstance(value, dict):
        return {k: resolve(v, f"{path}.{k}", env) for k, v in value.items()}
    if isinstance(value, list):
        return [resolve(v, f"{path}.{i}", env) for i, v in enumerate(value)]
    return value


class Redactor:
    """Scrubs known secret values from text that may reach a client or a log line."""

    def __init__(self, secrets: Iterable[str]) -> None:
        # Short values would redact ordinary words; real keys are long.
        self._secrets = sorted({s for s in secrets if isinstance(s, str) and len(s) >= 6}, key=len, reverse=True)

    def __call__(self, text: str) -> str:
        for secret in self._secrets:
            text = text.replace(secret, "[redacted]")
        return text
