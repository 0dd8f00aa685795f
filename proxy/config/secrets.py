"""`os.environ/NAME` references (LiteLLM's convention) and keeping their values out of output."""

from __future__ import annotations

import os
import re
from collections.abc import Iterable, Mapping
from typing import Any
from urllib.parse import urlsplit

PREFIX = "os.environ/"


class MissingSecret(ValueError):
    pass


def resolve(
    value: Any, path: str, environ: Mapping[str, str] | None = None, resolved: list[str] | None = None
) -> Any:
    """Replace every `os.environ/NAME` string inside `value` by the variable's value.

    Each value substituted is appended to `resolved`: whatever an operator keeps in the
    environment is treated as a secret and scrubbed from output, wherever it sits in the config.
    """
    env = os.environ if environ is None else environ
    if isinstance(value, str) and value.startswith(PREFIX):
        name = value[len(PREFIX) :]
        if name not in env:
            raise MissingSecret(f"{path}: environment variable {name} is not set")
        if not env[name]:
            raise MissingSecret(f"{path}: environment variable {name} is empty")
        if resolved is not None:
            resolved.append(env[name])
        return env[name]
    if isinstance(value, dict):
        return {k: resolve(v, f"{path}.{k}", env, resolved) for k, v in value.items()}
    if isinstance(value, list):
        return [resolve(v, f"{path}.{i}", env, resolved) for i, v in enumerate(value)]
    return value


# Header names whose values are credentials; plain text there is a secret in a config file.
_CREDENTIAL_HEADER = re.compile(r"(?i)authori[sz]ation|cookie|key|token|secret|password|credential")
PLACEHOLDER_KEY = "none"  # for local servers that take no key but whose client insists on one


def plain_text_secrets(raw: Mapping[str, Any]) -> list[str]:
    """Key paths where a config file holds a secret in plain text instead of `os.environ/NAME`."""
    found: list[str] = []

    def check(value: Any, path: str, placeholder_ok: bool = False) -> None:
        if not isinstance(value, str) or value.startswith(PREFIX):
            return
        if placeholder_ok and value.lower() == PLACEHOLDER_KEY:
            return
        found.append(path)

    server = raw.get("server")
    if not isinstance(server, Mapping):
        server = {}
    for i, key in enumerate(server.get("api_keys") or []):
        check(key, f"server.api_keys.{i}")
    for i, entry in enumerate(server.get("keys") or []):
        if isinstance(entry, Mapping):
            check(entry.get("key"), f"server.keys.{i}.key")
    state = server.get("state")
    if isinstance(state, Mapping) and url_password(state.get("url")):
        check(state.get("url"), "server.state.url")
    for i, upstream in enumerate(raw.get("upstreams") or []):
        params = upstream.get("litellm_params") if isinstance(upstream, Mapping) else None
        if not isinstance(params, Mapping):
            continue
        check(params.get("api_key"), f"upstreams.{i}.litellm_params.api_key", placeholder_ok=True)
        headers = params.get("extra_headers")
        for name, value in (headers.items() if isinstance(headers, Mapping) else []):
            if _CREDENTIAL_HEADER.search(str(name)):
                check(value, f"upstreams.{i}.litellm_params.extra_headers.{name}")
    for i, route in enumerate(raw.get("routes") or []):
        strategy = route.get("strategy") if isinstance(route, Mapping) else None
        verifiers = strategy.get("verifiers") if isinstance(strategy, Mapping) else None
        for j, verifier in enumerate(verifiers if isinstance(verifiers, list) else []):
            endpoint = verifier.get("endpoint") if isinstance(verifier, Mapping) else None
            if isinstance(endpoint, Mapping):
                check(endpoint.get("api_key"), f"routes.{i}.strategy.verifiers.{j}.endpoint.api_key")
    return found


def url_password(url: Any) -> str | None:
    """The password in `scheme://user:password@host`, which is a secret wherever the URL goes."""
    if not isinstance(url, str):
        return None
    return urlsplit(url).password


class Redactor:
    """Scrubs known secret values from text that may reach a client or a log line."""

    def __init__(self, secrets: Iterable[str]) -> None:
        # Short values would redact ordinary words; real keys are long.
        self._secrets = sorted({s for s in secrets if isinstance(s, str) and len(s) >= 6}, key=len, reverse=True)

    def __call__(self, text: str) -> str:
        for secret in self._secrets:
            text = text.replace(secret, "[redacted]")
        return text
