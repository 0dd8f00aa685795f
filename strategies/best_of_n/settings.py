"""A best_of_n route's settings: caps, batches, variants, verifiers, stop rules and selection."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Literal

from pydantic import Field, model_validator

from strategies.best_of_n.panel import PanelistSettings
from strategies.contract import NAME_PATTERN, StrictModel
from strategies.selection.settings import SelectionSettings
from strategies.settings import StrategySpec
from strategies.verifiers import VerifierSettings
from strategies.verifiers.base import VerifierSpec
from strategies.verifiers.self_consistency import SelfConsistencySettings

MAX_VIEW_ROUNDS = 4  # how often one request may answer "verifier first" before sampling again


class PriorSettings(StrictModel):
    """§4.6: the vote rule under a prior learned from the route's recent answers."""

    # A posterior under a learned prior is meant to be read at face value, unlike the uniform
    # prior's 0.95, which is conservative by construction. Where the model repeats one wrong
    # answer a tenth of the time, 0.98 lost 1.2 points against fixed best-of-16 and 0.99 at most
    # 0.17 (method §4.9); 0.98 stops sooner where wrong answers are spread.
    confidence: float = Field(0.99, gt=0.5, lt=1.0)
    min_requests: int = Field(10, ge=1)  # counts learned from before the prior is used
    window_s: float = Field(21600.0, gt=0)  # counts from the last one to two windows are used


class StopSettings(StrictModel):
    confidence: float = Field(0.95, gt=0.5, lt=1.0)  # vote posterior needed to stop (§4.1)
    min_gain: float = Field(0.01, ge=0.0)  # epsilon for the predicted gain of a doubling (§4.2)
    good_enough: float | None = Field(None, ge=0.0, le=1.0)  # tau (§4.3); None disables
    verifier_first: bool = True  # §4.4
    prior: PriorSettings | None = Field(default_factory=PriorSettings)  # §4.6; None: the Beta rule alone


class AdaptNSettings(StrictModel):
    """§4.8: serve the smallest cap whose gold accuracy is within `min_gain` of the best n."""

    min_gain: float = Field(0.01, ge=0.0, le=1.0)
    min_items: int = Field(30, ge=2)  # probe items measured at n = 1 and at n before it acts
    window_s: float = Field(604800.0, gt=0)  # gold from the last one to two windows is used


class VariantTemplate(StrictModel):
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


class BestOfNSettings(StrategySpec):
    name: Literal["best_of_n"] = "best_of_n"
    max_n: int = Field(8, ge=1, le=512)  # hard cap on candidates per request
    initial_batch: int = Field(2, ge=1, le=512)
    # Candidates added by each batch after the first (§4.7); None doubles the total (2 → 4 → 8).
    # Smaller steps stop closer to where the rules are satisfied, at one upstream round each.
    later_batch: int | None = Field(None, ge=1, le=512)
    adapt_n: AdaptNSettings | None = None  # §4.8; None: max_n, whatever the gold says
    adaptive: bool = True  # False samples exactly max_n (fixed best-of-N)
    # Candidates from several upstreams, split by weight (strategies/best_of_n/panel.py); a route
    # with a panel names no `upstream` of its own. A panelist that fails is dropped for the
    # request, which answers while `min_panel` panelists produced candidates.
    panel: list[PanelistSettings] | None = Field(None, min_length=1, max_length=16)
    min_panel: int = Field(1, ge=1)
    panel_min_items: int = Field(30, ge=2)  # gold draws per panelist before `weight: auto` acts
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
        if self.panel is not None:
            names = [p.upstream for p in self.panel]
            if len(set(names)) != len(names):
                raise ValueError("panel: each upstream may appear once; give it a larger `weight` instead")
            if self.min_panel > len(self.panel):
                raise ValueError(f"min_panel: {self.min_panel} is more than the panel's {len(self.panel)} upstreams")
        elif self.min_panel != 1:
            raise ValueError("min_panel needs a `panel`")
        knockout = self.selection.knockout
        if knockout is not None and not any(
            v.name == knockout.judge and v.judges_pairs for v in self.verifiers
        ):
            raise ValueError(f"selection.knockout.judge: {knockout.judge!r} is not an llm_judge verifier of this route")
        return self

    def upstream_references(self) -> list[tuple[str, str]]:
        """(key path, upstream name) of every configured upstream this strategy calls."""
        refs = [(f"panel.{j}.upstream", p.upstream) for j, p in enumerate(self.panel or ())]
        refs += [("paraphrase_upstream", self.paraphrase_upstream)] if self.paraphrase_upstream else []
        fusion = self.selection.fusion
        refs += [("selection.fusion.fuser", fusion.fuser)] if fusion is not None else []
        refs += [(f"verifiers.{j}", name) for j, v in enumerate(self.verifiers) for name in v.upstreams()]
        return refs

    def panel_upstreams(self) -> tuple[str, ...]:
        return tuple(p.upstream for p in self.panel or ())

    def route_references(self) -> list[tuple[str, str]]:
        fallback = self.selection.fallback_route
        return [("selection.fallback_route", fallback)] if fallback is not None else []

    def verifier_specs(self) -> Sequence[VerifierSpec]:
        return self.verifiers

    def audited_specs(self) -> Sequence[VerifierSpec]:
        fusion = self.selection.fusion
        return [*self.verifiers, *([fusion.audit_spec()] if fusion is not None else [])]

    def selection_settings(self) -> SelectionSettings:
        return self.selection

    def secrets(self) -> tuple[str, ...]:
        return tuple(secret for verifier in self.verifiers for secret in verifier.secrets())

    def reference_k(self) -> int | None:
        return self.k_ref

    def token_budget(self) -> int | None:
        return self.max_tokens_budget

    def candidate_ceiling(self, choices: int, asked_max_n: int | None = None) -> int:
        # Audit requests are drawn at random and sample their own budget, so a request that may be
        # one is reserved at that budget (strategies.best_of_n.loop.plan_request).
        ceiling = max(self.max_n, self.audit_max_n) if self.audit_rate > 0 else self.max_n
        return ceiling if asked_max_n is None else min(ceiling, asked_max_n)

    def answers_rewritten(self) -> int:
        fusion = self.selection.fusion
        return fusion.top_k if fusion is not None else 0

    def upstream_calls(self, choices: int) -> int:
        """Calls one request needs at most, before retries, if every candidate is its own call.

        Batches double, so a request verifies at most log2(candidates) + 1 times (with
        `later_batch`, once per batch), plus the verifier-first rounds, plus one verification per
        n that a gold probe measures (§4.8); each verifier says what one request costs it.
        """
        candidates = max(self.max_n, self.audit_max_n)
        if self.later_batch is None:
            batches = candidates.bit_length() + 1
        else:
            batches = 1 + math.ceil(max(candidates - self.initial_batch, 0) / self.later_batch)
        rounds = batches + MAX_VIEW_ROUNDS + candidates.bit_length() + 1
        # Variants render once per request; a paraphrase is asked once, not per panelist.
        paraphrases = sum(1 for variant in self.variants if variant == "paraphrase")
        # The fused answer is one more candidate for the verifiers, verified once more; a gold
        # probe fuses its reference candidates once more.
        fused = 1 if self.selection.fusion is not None else 0
        fusing = 2 * fused
        verifying = sum(
            verifier.upstream_calls(candidates + fused, rounds + fusing) for verifier in self.verifiers
        )
        return candidates + paraphrases + fusing + verifying
