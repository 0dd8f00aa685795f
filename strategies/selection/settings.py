"""How a best_of_n route picks its answer among the candidates' answer clusters."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from strategies.contract import MODEL_NAME_PATTERN, NAME_PATTERN, StrictModel
from strategies.verifiers.base import AuditPolicy, VerifierSpec


class KnockoutSettings(StrictModel):
    """A knockout tournament among the top answer clusters, judged pairwise in both orders
    (Chen et al., arXiv 2411.19477). It runs only while the route's gold probes measure the
    judge picking the right answer of a (right, wrong) pair with at least `min_accuracy` in
    each order, over at least `min_pairs` pairs; a judge at chance only adds noise."""

    judge: str = Field(pattern=NAME_PATTERN)  # the `name` of one of the route's llm_judge verifiers
    top: int = Field(4, ge=2, le=8)  # clusters that enter
    min_pairs: int = Field(20, ge=4)
    min_accuracy: float = Field(0.6, gt=0.5, lt=1.0)


FUSION_PLACEHOLDER = "{answers}"
FUSER_AUDIT_NAME = "fusion"  # what `rvr-proxy audit --verifier` and the stored audit call a route's fuser


class FuserSpec(VerifierSpec):
    """A route's fuser as `rvr-proxy audit` sees it: a judge of gold pairs, shown both answers
    (in both orders) as it would be shown clusters, preferring the one its answer agrees with
    (strategies/selection/fusion.py `FuserJudge`). Built from `FusionSettings`, never configured."""

    type: Literal["fuser"] = "fuser"
    fuser: str = Field(pattern=MODEL_NAME_PATTERN)
    template: str | None = None

    def upstreams(self) -> tuple[str, ...]:
        return (self.fuser,)


class FusionSettings(StrictModel):
    """A fuser model writes the answer from the top answer clusters' representatives, shown
    anonymized and shuffled (strategies/selection/fusion.py). Tool-call answers are never fused.

    `when: measured_better` (the default) fuses only while the route's gold probes measure fused
    answers above selected ones on the same items (the paired interval's lower bound above 0,
    over at least `min_items` items): a fuser that can only copy picks among the top clusters at
    random and throws the vote away (bench/panel.py: −66 points where the vote was at 92%), so
    fusion must earn its place. `always` fuses every request whose candidates fall in at least
    `min_clusters` answer clusters (1: also when they agree), gold or not.
    """

    fuser: str = Field(pattern=MODEL_NAME_PATTERN)  # a configured upstream
    top_k: int = Field(4, ge=1, le=16)
    min_clusters: int = Field(2, ge=1, le=16)
    template: str | None = Field(None, min_length=1, max_length=20_000)  # must contain {answers}
    when: Literal["always", "measured_better"] = "measured_better"
    min_items: int = Field(30, ge=4)
    window_s: float = Field(604800.0, gt=0)  # gold from the last one to two windows is used
    # What the fuser must have shown in `rvr-proxy audit --verifier fusion` before the route serves.
    audit: AuditPolicy = Field(default_factory=AuditPolicy)

    @model_validator(mode="after")
    def _template_has_answers(self) -> FusionSettings:
        if self.template is not None and FUSION_PLACEHOLDER not in self.template:
            raise ValueError(f"template must contain {FUSION_PLACEHOLDER}")
        return self

    def audit_spec(self) -> FuserSpec:
        return FuserSpec(name=FUSER_AUDIT_NAME, fuser=self.fuser, template=self.template, audit=self.audit)


class SelectionSettings(StrictModel):
    """How a best_of_n route picks its answer among the candidates' answer clusters.

    `weighted`: the weighted mean of the verifiers' normalized scores (strategies/selection/weighted.py).
    `learned`: the cluster with the highest P(correct) under a model fitted on the route's gold
    probe clusters (strategies/selection/learned.py); `weighted` until `min_items` probe items
    exist, and while the safety gate (strategies/selection/safety.py) cannot rule out that the
    model's held-out accuracy is below weighted selection's by more than `gate_margin`.
    `min_confidence` (learned only): below it the proxy answers with `fallback_route`'s
    answer or with `abstain_message`, exactly one of which must be set.
    """

    mode: Literal["weighted", "learned"] = "weighted"
    min_items: int = Field(50, ge=4)
    gate_margin: float = Field(0.02, ge=0.0, le=1.0)
    min_confidence: float | None = Field(None, gt=0.0, lt=1.0)
    fallback_route: str | None = None
    abstain_message: str | None = Field(None, min_length=1, max_length=4000)
    knockout: KnockoutSettings | None = None
    fusion: FusionSettings | None = None  # write the answer from the top clusters, after choosing

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
