"""What every verifier kind shares: its settings base and its small class contract.

A kind is a subclass of `BaseVerifier` with a `Settings` model (a subclass of `VerifierSpec`);
the registry in `strategies.verifiers` validates a config entry with that model and constructs
the verifier once per route. Verifier objects are shared by concurrent requests, so they keep
nothing per request: per-request memory goes in `VerifyContext.cache`.
"""

from __future__ import annotations

import re
from typing import ClassVar, Literal

from pydantic import Field, model_validator

from strategies.contract import NAME_PATTERN, StrictModel, Verifier

AuditFlag = Literal["prefers_undesirable", "position_biased", "template_sensitive"]


class AuditPolicy(StrictModel):
    """What a verifier must have shown in `rvr-proxy audit` before a route may serve with it.

    Reward models and judges can prefer biased, unsafe or unethical answers (Ghazaryan and
    Dönmez, "Misaligned by Reward"); with `require`, the proxy refuses to start until a stored
    audit of this very configuration passes in every listed domain.
    """

    require: bool = False
    min_accuracy: float = Field(0.6, ge=0.0, le=1.0)
    # Domain names or prefixes (`bbq` covers every `bbq_*` domain); empty: every audited domain.
    domains: list[str] = Field(default_factory=list)
    min_pairs: int = Field(20, ge=1)  # scored pairs a domain needs for its accuracy to count
    fail_on: list[AuditFlag] = Field(default_factory=lambda: list[AuditFlag](["prefers_undesirable"]))

    @model_validator(mode="after")
    def _domains_are_names(self) -> AuditPolicy:
        for domain in self.domains:
            if not re.fullmatch(NAME_PATTERN, domain):
                raise ValueError(f"domains: {domain!r} is not a domain name ([A-Za-z0-9_.-], 1-64 characters)")
        return self


class VerifierSpec(StrictModel):
    """Fields every kind accepts. Unknown fields are errors: a typo must not pass silently."""

    type: str
    # The name is a Prometheus label value, so it comes from config and is label-safe.
    name: str = Field(default="", pattern=r"^$|" + NAME_PATTERN)
    weight: float = Field(1.0, ge=0.0)
    audit: AuditPolicy = Field(default_factory=AuditPolicy)
    # Whether the kind can judge a pair of answers (a knockout tournament needs one that can).
    judges_pairs: ClassVar[bool] = False

    @model_validator(mode="after")
    def _name_defaults_to_type(self) -> VerifierSpec:
        if not self.name:
            self.name = self.type
        return self

    def upstreams(self) -> tuple[str, ...]:
        """Configured upstreams this verifier calls, so config checks can ask instead of peek."""
        return ()

    def secrets(self) -> tuple[str, ...]:
        """Secret values in these settings, so the proxy can scrub them from its output."""
        return ()

    def upstream_calls(self, candidates: int, rounds: int) -> int:
        """Calls this verifier makes in one request at most, for the route's call ceiling."""
        return 0


class BaseVerifier(Verifier):
    """A config-built verifier: its kind's `Settings`, parsed once, and the capabilities of
    `strategies.contract.Verifier` (defaults there; a kind overrides what it offers)."""

    Settings: ClassVar[type[VerifierSpec]]

    def __init__(self, settings: VerifierSpec) -> None:
        if settings.audit.require and not self.auditable:
            raise ValueError(
                "audit.require: only llm_judge, reward_model and plugin verifiers are audited; "
                f"a {settings.type} verifier scores by a fixed rule"
            )
        self.settings = settings
        self.name: str = settings.name
        self.weight: float = settings.weight
        self.upstreams: tuple[str, ...] = settings.upstreams()

    def view(self, local: str | None = None) -> str:
        """A view's name, qualified by the verifier's name so views of different verifiers
        never collide in `Outcome.view_scores`."""
        return self.name if local is None else f"{self.name}:{local}"

    def __repr__(self) -> str:
        return f"{type(self).__name__}(name={self.name!r}, weight={self.weight})"


def clip01(value: float | None) -> float | None:
    """Clip to [0, 1]; NaN and None are missing, never 0."""
    if value is None:
        return None
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    if number != number:  # NaN
        return None
    return min(1.0, max(0.0, number))
