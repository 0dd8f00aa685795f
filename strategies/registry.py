"""Every strategy kind a route's config can name, and the settings each one parses.

Adding a strategy is one module with a `Strategy` subclass (its `Settings`, a
`strategies.settings.StrategySpec` with a `Literal` `name`, and its `build`) and one line in
`STRATEGIES`; config discovers the settings type here.
"""

from __future__ import annotations

from typing import Annotated, Any, Union

from pydantic import Field, TypeAdapter

from strategies.best_of_n.loop import BestOfN
from strategies.contract import Strategy
from strategies.passthrough import Passthrough
from strategies.settings import StrategySpec

STRATEGIES: dict[str, type[Strategy]] = {
    Passthrough.name: Passthrough,
    BestOfN.name: BestOfN,
}

_adapters: dict[tuple[type[Strategy], ...], TypeAdapter[Any]] = {}


def parse_settings(data: Any) -> StrategySpec:
    """A route's `strategy` block as the settings of the kind its `name` picks.

    Raises pydantic's ValidationError, located by kind (`best_of_n.max_n`) as a discriminated
    union locates it, and naming the known kinds when `name` is none of them.
    """
    kinds = tuple(STRATEGIES.values())
    adapter = _adapters.get(kinds)
    if adapter is None:
        members = tuple(kind.Settings for kind in kinds)
        union = members[0] if len(members) == 1 else Union[members]  # noqa: UP007 - built at run time
        adapter = _adapters[kinds] = TypeAdapter(Annotated[union, Field(discriminator="name")])
    settings: StrategySpec = adapter.validate_python(data)
    return settings


def build_strategy(settings: StrategySpec) -> Strategy:
    """The route's strategy, built once at start-up; raises ValueError naming the bad field."""
    return STRATEGIES[settings.name].build(settings)
