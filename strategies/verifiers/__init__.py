"""Verifier kinds and the registry that builds them from route config.

A config entry is a dict with `type` (the kind), optional `name` (defaults to the type; a
Prometheus label, so `[A-Za-z0-9_.-]`), optional `weight` (>= 0, default 1) and the kind's own
fields; unknown fields are errors. Adding a kind is one module with a `BaseVerifier` subclass and
one line in `REGISTRY`.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from pydantic import ValidationError

from strategies.verifiers.base import BaseVerifier, VerifierSpec
from strategies.verifiers.json_schema import JsonSchemaVerifier
from strategies.verifiers.llm_judge import LlmJudgeVerifier
from strategies.verifiers.logprob import LogprobVerifier
from strategies.verifiers.mbr import MbrVerifier
from strategies.verifiers.plugin import PluginVerifier
from strategies.verifiers.regex import RegexVerifier
from strategies.verifiers.reward_model import RewardModelVerifier
from strategies.verifiers.self_consistency import SelfConsistencyVerifier

REGISTRY: dict[str, type[BaseVerifier]] = {
    "self_consistency": SelfConsistencyVerifier,
    "mbr": MbrVerifier,
    "llm_judge": LlmJudgeVerifier,
    "reward_model": RewardModelVerifier,
    "logprob": LogprobVerifier,
    "regex": RegexVerifier,
    "json_schema": JsonSchemaVerifier,
    "plugin": PluginVerifier,
}


class VerifierConfigError(ValueError):
    """A verifier entry in the config is wrong; the message names the entry and the field."""


def build_verifier(spec: Mapping[str, Any], position: int) -> BaseVerifier:
    where = f"verifiers[{position}]"
    if not isinstance(spec, Mapping):
        raise VerifierConfigError(f"{where}: expected a mapping with a `type`, got {spec!r}")
    kind = spec.get("type")
    if kind not in REGISTRY:
        known = ", ".join(sorted(REGISTRY))
        raise VerifierConfigError(f"{where}.type: unknown verifier type {kind!r}; known: {known}")
    cls = REGISTRY[kind]
    try:
        settings = cls.Settings.model_validate(dict(spec))
        return cls(settings)
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in err['loc']) or 'type'}: {err['msg']}"
            for err in exc.errors()
        )
        raise VerifierConfigError(f"{where} ({kind}): {problems}") from exc
    except ValueError as exc:
        raise VerifierConfigError(f"{where} ({kind}): {exc}") from exc


def build_verifiers(specs: Sequence[Mapping[str, Any]]) -> list[BaseVerifier]:
    """All of a route's verifiers; names must be unique (they key views and metric labels)."""
    verifiers = [build_verifier(spec, i) for i, spec in enumerate(specs)]
    seen: dict[str, int] = {}
    for i, verifier in enumerate(verifiers):
        if verifier.name in seen:
            raise VerifierConfigError(
                f"verifiers[{i}].name: {verifier.name!r} is already used by "
                f"verifiers[{seen[verifier.name]}]; give each verifier of a route a distinct `name`"
            )
        seen[verifier.name] = i
    return verifiers


def needs_logprobs(verifiers: Iterable[Any]) -> bool:
    """Whether candidates must be sampled with logprobs for these verifiers."""
    return any(getattr(v, "needs_logprobs", False) for v in verifiers)


def referenced_upstreams(verifiers: Iterable[Any]) -> tuple[str, ...]:
    """Upstream names the verifiers call, in first-use order, for a start-up config check."""
    names: dict[str, None] = {}
    for verifier in verifiers:
        for name in getattr(verifier, "upstreams", ()):
            names.setdefault(name, None)
    return tuple(names)


__all__ = [
    "REGISTRY",
    "BaseVerifier",
    "VerifierConfigError",
    "VerifierSpec",
    "build_verifier",
    "build_verifiers",
    "needs_logprobs",
    "referenced_upstreams",
]
