"""What every strategy's settings declare, so the proxy asks them instead of reading their fields.

A strategy kind's settings subclass `StrategySpec`, name the kind in a `Literal` `name` field and
override what the kind offers; the defaults here describe a strategy that calls nothing but the
route's own upstream, reports no risk and selects nothing. `strategies.registry` finds a kind's
settings type through its `Strategy.Settings`, so config needs no edit for a new kind.
"""

from __future__ import annotations

from collections.abc import Sequence

from pydantic import Field

from strategies.contract import StrictModel
from strategies.selection.settings import SelectionSettings
from strategies.verifiers.base import VerifierSpec


class StrategySpec(StrictModel):
    name: str
    # Upstream calls per request, retries included; None derives it from this config (see
    # `upstream_calls`), and `rvr-proxy check-config` prints the number.
    max_upstream_calls: int | None = Field(None, ge=1)

    def upstream_references(self) -> list[tuple[str, str]]:
        """(key path, upstream name) of every configured upstream this strategy calls."""
        return []

    def upstreams(self) -> tuple[str, ...]:
        """Configured upstreams this strategy calls besides the route's own, in first-use order."""
        return tuple(dict.fromkeys(name for _, name in self.upstream_references()))

    def panel_upstreams(self) -> tuple[str, ...]:
        """The upstreams that draw its candidates in place of the route's `upstream`; () for none."""
        return ()

    def route_references(self) -> list[tuple[str, str]]:
        """(key path, route name) of every other route this strategy may answer with."""
        return []

    def verifier_specs(self) -> Sequence[VerifierSpec]:
        """The settings of the verifiers it builds, in config order (audits read them)."""
        return ()

    def audited_specs(self) -> Sequence[VerifierSpec]:
        """Everything `rvr-proxy audit` can measure and `audit.require` can hold back: the
        verifiers, and models that judge by writing (a fuser), in the order `Strategy.audited` has."""
        return self.verifier_specs()

    def selection_settings(self) -> SelectionSettings | None:
        """How it selects among answer clusters; None for a kind that selects nothing."""
        return None

    def secrets(self) -> tuple[str, ...]:
        """Secret values in these settings, so the proxy can scrub them from its output."""
        return ()

    def reference_k(self) -> int | None:
        """K of the risk terms' reference budget (method §3); None when the kind reports no risk."""
        return None

    def token_budget(self) -> int | None:
        """All upstream tokens one request may spend; None: no budget of its own."""
        return None

    def upstream_calls(self, choices: int) -> int:
        """Calls one request needs at most, before retries: one per choice where `n` is ignored."""
        return choices

    def candidate_ceiling(self, choices: int, asked_max_n: int | None = None) -> int:
        """Candidates one request may draw at most; `asked_max_n` is a client's lower cap, if any."""
        return choices

    def answers_rewritten(self) -> int:
        """How many candidates' worth of answers a request's final rewrite reads (a fuser reads the
        top clusters, then writes one more): its prompt is the client's plus that many
        completions, and it writes one; 0 when nothing rewrites the answer."""
        return 0
