"""What every verifier kind shares: its settings base and its small class contract.

A kind is a subclass of `BaseVerifier` with a `Settings` model (a subclass of `VerifierSpec`);
the registry in `strategies.verifiers` validates a config entry with that model and constructs
the verifier once per route. Verifier objects are shared by concurrent requests, so they keep
nothing per request: per-request memory goes in `VerifyContext.cache`.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import ClassVar

from pydantic import BaseModel, ConfigDict, Field, model_validator

from strategies.contract import Candidate, Scored, VerifyContext

LABEL_PATTERN = r"^[A-Za-z0-9_.-]{1,64}$"


class VerifierSpec(BaseModel):
    """Fields every kind accepts. Unknown fields are errors: a typo must not pass silently."""

    model_config = ConfigDict(extra="forbid")

    type: str
    # The name is a Prometheus label value, so it comes from config and is label-safe.
    name: str = Field(default="", pattern=r"^$|" + LABEL_PATTERN)
    weight: float = Field(1.0, ge=0.0)

    @model_validator(mode="after")
    def _name_defaults_to_type(self) -> VerifierSpec:
        if not self.name:
            self.name = self.type
        return self


class BaseVerifier:
    kind: ClassVar[str]
    Settings: ClassVar[type[VerifierSpec]]
    needs_logprobs: ClassVar[bool] = False
    hard: ClassVar[bool] = False

    def __init__(self, settings: VerifierSpec) -> None:
        self.settings = settings
        self.name: str = settings.name
        self.weight: float = settings.weight
        # Upstream names this verifier calls through `services.chat`, so the proxy can check
        # them against its config at start-up.
        self.upstreams: tuple[str, ...] = ()

    def view(self, local: str | None = None) -> str:
        """A view's name, qualified by the verifier's name so views of different verifiers
        never collide in `Outcome.view_scores`."""
        return self.name if local is None else f"{self.name}:{local}"

    async def score(self, ctx: VerifyContext, candidates: Sequence[Candidate]) -> Scored:
        raise NotImplementedError

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
