"""Verifier kinds and the registry that builds them from route config.

A config entry is a dict with `type` (the kind), optional `name` (defaults to the type; a
Prometheus label, so `[A-Za-z0-9_.-]`), optional `weight` (>= 0, default 1) and the kind's own
fields; unknown fields are errors. Adding a kind is one module with a `BaseVerifier` subclass and
one line in `REGISTRY`.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import TYPE_CHECKING, Annotated, Any, Union

from pydantic import Field, ValidationError

from strategies.contract import Verifier
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

# Every kind's settings, told apart by `type`, so a route's config is checked in one parse.
# Built from REGISTRY: adding a kind stays one module plus one line above. Type checkers see
# the base class, whose interface every kind's settings share.
if TYPE_CHECKING:
    VerifierSettings = VerifierSpec
else:
    VerifierSettings = Annotated[
        Union[tuple(cls.Settings for cls in REGISTRY.values())],  # noqa: UP007 - built at run time
        Field(discriminator="type"),
    ]


class VerifierConfigError(ValueError):
    """A verifier entry in the config is wrong; the message names the entry and the field."""


def build_verifier(spec: Mapping[str, Any] | VerifierSpec, position: int) -> BaseVerifier:
    """A verifier from its parsed settings, or from a raw config entry (validated here)."""
    where = f"verifiers[{position}]"
    if isinstance(spec, VerifierSpec):
        return _construct(REGISTRY[spec.type], spec, where)
    if not isinstance(spec, Mapping):
        raise VerifierConfigError(f"{where}: expected a mapping with a `type`, got {spec!r}")
    kind = spec.get("type")
    if kind not in REGISTRY:
        known = ", ".join(sorted(REGISTRY))
        raise VerifierConfigError(f"{where}.type: unknown verifier type {kind!r}; known: {known}")
    cls = REGISTRY[kind]
    try:
        settings = cls.Settings.model_validate(dict(spec))
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in err['loc']) or 'type'}: {err['msg']}"
            for err in exc.errors()
        )
        raise VerifierConfigError(f"{where} ({kind}): {problems}") from exc
    return _construct(cls, settings, where)


def _construct(cls: type[BaseVerifier], settings: VerifierSpec, where: str) -> BaseVerifier:
    try:
        return cls(settings)
    except ValueError as exc:
        raise VerifierConfigError(f"{where} ({settings.type}): {exc}") from exc


def build_verifiers(specs: Sequence[Mapping[str, Any] | VerifierSpec]) -> list[BaseVerifier]:
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


def needs_logprobs(verifiers: Iterable[Verifier]) -> bool:
    """Whether candidates must be sampled with logprobs for these verifiers."""
    return any(v.needs_logprobs for v in verifiers)


def referenced_upstreams(verifiers: Iterable[Verifier]) -> tuple[str, ...]:
    """Upstream names the verifiers call, in first-use order, for a start-up config check."""
    names: dict[str, None] = {}
    for verifier in verifiers:
        for name in verifier.upstreams:
            names.setdefault(name, None)
    return tuple(names)


__all__ = [
    "REGISTRY",
    "BaseVerifier",
    "VerifierConfigError",
    "VerifierSettings",
    "VerifierSpec",
    "build_verifier",
    "build_verifiers",
    "needs_logprobs",
    "referenced_upstreams",
]
