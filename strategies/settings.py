"""Typed strategy settings, parsed once from the route config."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from strategies.contract import NAME_PATTERN
from strategies.verifiers import VerifierSettings
from strategies.verifiers.self_consistency import SelfConsistencySettings


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


MAX_VIEW_ROUNDS = 4  # how often one request may answer "verifier first" before sampling again


class StopSettings(_Strict):
    confidence: float = Field(0.95, gt=0.5, lt=1.0)  # vote posterior needed to stop (§4.1)
    min_gain: float = Field(0.01, ge=0.0)  # epsilon for the predicted gain of a doubling (§4.2)
    good_enough: float | None = Field(None, ge=0.0, le=1.0)  # tau (§4.3); None disables
    verifier_first: bool = True  # §4.4


class VariantTemplate(_Strict):
    """A user-defined way of asking; `{prompt}` is replaced by the last user message."""

    name: str = Field(pattern=NAME_PATTERN)
    template: str | None = None
    system: str | None = None

    @model_validator(mode="after")
    def _needs_something(self) -> VariantTemplate:
        if self.template is None and self.system is None:
            raise ValueError("a variant needs `template` and/or `system`")
        if self.template is not None and "{prompt}" not in self.template:
            raise ValueError("`template` must contain {prompt}")
        return self


class KnockoutSettings(_Strict):
    """A knockout tournament among the top answer clusters, judged pairwise in both orders
    (Chen et al., arXiv 2411.19477). It runs only while the route's gold probes measure the
    judge picking the right answer of a (right, wrong) pair with at least `min_accuracy` in
    each order, over at least `min_pairs` pairs; a judge at chance only adds noise."""

    judge: str = Field(pattern=NAME_PATTERN)  # the `name` of one of the route's llm_judge verifiers
    top: int = Field(4, ge=2, le=8)  # clusters that enter
    min_pairs: int = Field(20, ge=4)
    min_accuracy: float = Field(0.6, gt=0.5, lt=1.0)


class SelectionSettings(_Strict):
    """How a best_of_n route picks its answer among the candidates' answer clusters.

    `weighted`: the weighted mean of the verifiers' normalized scores (strategies/selection.py).
    `learned`: the cluster with the highest P(correct) under a model fitted on the route's gold
    probe clusters (strategies/learned_selection.py); `weighted` until `min_items` probe items
    exist. `min_confidence` (learned only): below it the proxy answers with `fallback_route`'s
    answer or with `abstain_message`, exactly one of which must be set.
    """

    mode: Literal["weighted", "learned"] = "weighted"
    min_items: int = Field(50, ge=4)
    min_confidence: float | None = Field(None, gt=0.0, lt=1.0)
    fallback_route: str | None = None
    abstain_message: str | None = Field(None, min_length=1, max_length=4000)
    knockout: KnockoutSettings | None = None

    @model_validator(mode="after")
    def _fallback_is_clear(self) -> SelectionSettings:
        if self.min_confidence is None:
            if self.fallback_route is not None or self.abstain_message is not None:
                raise ValueError("fallback_route/abstain_message need `min_confidence`")
            return self
        if self.mode != "learned":
            raise ValueError("min_confidence needs mode `learned`: only the learned model gives a calibrated confidence")
        if (self.fallback_route is None) == (self.abstain_message is None):
            raise ValueError("min_confidence needs exactly one of `fallback_route` and `abstain_message`")
        return self


class PassthroughSettings(_Strict):
    name: Literal["passthrough"] = "passthrough"
    max_upstream_calls: int | None = Field(None, ge=1)  # retries included; None: derived

    def upstream_references(self) -> list[tuple[str, str]]:
        return []

    def token_budget(self) -> int | None:
        return None

    def upstream_calls(self, choices: int) -> int:
        """Calls one request needs at most, before retries: one per choice where `n` is ignored."""
        return choices

    def reference_k(self) -> int | None:
        """K of the risk terms' reference budget (method §3); None when the kind reports no risk."""
        return None

    def secrets(self) -> tuple[str, ...]:
        return ()


class BestOfNSettings(_Strict):
    name: Literal["best_of_n"] = "best_of_n"
    max_n: int = Field(8, ge=1, le=512)  # hard cap on candidates per request
    initial_batch: int = Field(2, ge=1, le=512)
    adaptive: bool = True  # False samples exactly max_n (fixed best-of-N)
    variants: list[str | VariantTemplate] = Field(default_factory=lambda: list[str | VariantTemplate](["original"]))
    paraphrase_upstream: str | None = None  # needed by the `paraphrase` variant
    verifiers: list[VerifierSettings] = Field(
        default_factory=lambda: list[VerifierSettings]([SelfConsistencySettings()])
    )
    stop: StopSettings = Field(default_factory=StopSettings)
    selection: SelectionSettings = Field(default_factory=SelectionSettings)
    max_tokens_budget: int | None = Field(None, ge=1)  # all upstream tokens of one request
    deadline_s: float | None = Field(None, gt=0)
    k_ref: int = Field(64, ge=2, le=4096)
    bootstrap: int = Field(200, ge=10, le=5000)
    audit_rate: float = Field(0.0, ge=0.0, le=1.0)
    audit_max_n: int = Field(16, ge=2, le=512)  # budget of one audit request
    # Upstream calls per request, retries included; None derives it from this config (see
    # `upstream_calls`), and `rvr-proxy check-config` prints the number.
    max_upstream_calls: int | None = Field(None, ge=1)

    @model_validator(mode="after")
    def _batch_fits(self) -> BestOfNSettings:
        self.initial_batch = min(self.initial_batch, self.max_n)
        if not self.variants:
            raise ValueError("variants must not be empty")
        seen: set[str] = set()
        for j, verifier in enumerate(self.verifiers):
            if verifier.name in seen:  # names key views and metric labels
                raise ValueError(
                    f"verifiers.{j}.name: {verifier.name!r} is already used; give each verifier a distinct `name`"
                )
            seen.add(verifier.name)
        knockout = self.selection.knockout
        if knockout is not None and not any(
            v.name == knockout.judge and v.type == "llm_judge" for v in self.verifiers
        ):
            raise ValueError(f"selection.knockout.judge: {knockout.judge!r} is not an llm_judge verifier of this route")
        return self

    def upstream_references(self) -> list[tuple[str, str]]:
        """(key path, upstream name) of every configured upstream this strategy calls."""
        refs = [("paraphrase_upstream", self.paraphrase_upstream)] if self.paraphrase_upstream else []
        refs += [(f"verifiers.{j}", name) for j, v in enumerate(self.verifiers) for name in v.upstreams()]
        return refs

    def upstreams(self) -> tuple[str, ...]:
        """Configured upstreams this strategy calls besides the route's own, in first-use order."""
        return tuple(dict.fromkeys(name for _, name in self.upstream_references()))

    def secrets(self) -> tuple[str, ...]:
        return tuple(secret for verifier in self.verifiers for secret in verifier.secrets())

    def reference_k(self) -> int | None:
        return self.k_ref

    def token_budget(self) -> int | None:
        return self.max_tokens_budget

    def upstream_calls(self, choices: int) -> int:
        """Calls one request needs at most, before retries, if every candidate is its own call.

        Batches double, so a request verifies at most log2(candidates) + 1 times, plus the
        verifier-first rounds; each verifier says what one request costs it.
        """
        candidates = max(self.max_n, self.audit_max_n)
        rounds = candidates.bit_length() + 1 + MAX_VIEW_ROUNDS
        paraphrases = sum(1 for variant in self.variants if variant == "paraphrase")
        verifying = sum(verifier.upstream_calls(candidates, rounds) for verifier in self.verifiers)
        return candidates + paraphrases + verifying


StrategySettings = Annotated[PassthroughSettings | BestOfNSettings, Field(discriminator="name")]


class RequestOverrides(_Strict):
    """What a client may send as `"rvr": {...}`. It can only lower the route's caps."""

    max_n: int | None = Field(None, ge=1)
    variants: list[str] | None = None  # names among the route's variants
    verifiers: list[str] | None = None  # names among the route's verifiers
    adaptive: bool | None = None
    details: bool = False  # include per-candidate texts in the `rvr` object
