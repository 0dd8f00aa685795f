"""The strategy a route's config builds: one builder per `strategy.name`.

Adding a strategy is one module with a `Strategy` subclass and one line in `BUILDERS`.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from strategies.contract import Strategy
from strategies.passthrough import Passthrough
from strategies.risk import RouteRiskState
from strategies.sampling import BestOfN
from strategies.settings import BestOfNSettings, StrategySettings
from strategies.variants import build_variants
from strategies.verifiers import build_verifiers


def _best_of_n(settings: BestOfNSettings) -> BestOfN:
    verifiers = build_verifiers(settings.verifiers)
    try:
        variants = build_variants(settings.variants, settings.paraphrase_upstream)
    except ValueError as exc:
        raise ValueError(f"variants: {exc}") from None
    return BestOfN(settings, verifiers, variants, state=RouteRiskState())


BUILDERS: dict[str, Callable[[Any], Strategy]] = {
    "passthrough": lambda settings: Passthrough(),
    "best_of_n": _best_of_n,
}


def build_strategy(settings: StrategySettings) -> Strategy:
    """The route's strategy, built once at start-up; raises ValueError naming the bad field."""
    return BUILDERS[settings.name](settings)
