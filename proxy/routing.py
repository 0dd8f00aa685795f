"""Routes built once from config: each alias with its upstream, verifiers, variants and state."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from proxy.config import Config, ConfigError, RouteSettings
from proxy.errors import ModelNotFound
from proxy.secrets import Redactor
from proxy.upstream import UpstreamClient
from strategies.contract import Candidate, Verifier
from strategies.risk import RouteRiskState
from strategies.settings import BestOfNSettings, PassthroughSettings
from strategies.variants import Variant, build_variants
from strategies.verifiers import build_verifier

DEFAULT_ROUTE = "default"  # the label for unknown models served by `server.default_upstream`


@dataclass
class Route:
    name: str
    settings: RouteSettings
    upstream: UpstreamClient
    verifiers: list[Verifier] = field(default_factory=list)
    variants: list[Variant] = field(default_factory=list)
    risk_state: RouteRiskState = field(default_factory=RouteRiskState)

    @property
    def strategy(self) -> str:
        return self.settings.strategy.name

    @property
    def answer_of(self) -> Callable[[Candidate], str | None] | None:
        """The extractor of the first self-consistency verifier, for the vote stop rule."""
        for verifier in self.verifiers:
            extractor = getattr(verifier, "answer_of", None)
            if callable(extractor):
                return extractor
        return None

    @property
    def wants_logprobs(self) -> bool:
        return any(getattr(v, "needs_logprobs", False) for v in self.verifiers)


class Router:
    def __init__(self, config: Config) -> None:
        self.redact = Redactor(config.secrets())
        self.clients: dict[str, UpstreamClient] = {}
        for upstream in config.upstreams:
            self.clients[upstream.name] = UpstreamClient(upstream, self.redact)
        for upstream in config.upstreams:
            if upstream.fallback is not None:
                self.clients[upstream.name].fallback = self.clients[upstream.fallback]
        self.routes = {r.model: build_route(r, self.clients, f"routes.{i}") for i, r in enumerate(config.routes)}
        self._default: Route | None = None
        if config.server.default_upstream is not None:
            settings = RouteSettings(model=DEFAULT_ROUTE, upstream=config.server.default_upstream)
            self._default = Route(DEFAULT_ROUTE, settings, self.clients[settings.upstream])

    def resolve(self, model: str) -> Route:
        route = self.routes.get(model)
        if route is not None:
            return route
        if self._default is not None:
            return self._default
        raise ModelNotFound(
            f"The model `{model[:200]}` does not exist on this proxy; GET /v1/models lists the routes.", param="model"
        )


def build_route(settings: RouteSettings, clients: dict[str, UpstreamClient], path: str) -> Route:
    route = Route(settings.model, settings, clients[settings.upstream])
    strategy = settings.strategy
    if isinstance(strategy, PassthroughSettings):
        return route
    assert isinstance(strategy, BestOfNSettings)
    for j, spec in enumerate(strategy.verifiers):
        try:
            route.verifiers.append(build_verifier(spec, j))
        except (ValueError, ImportError) as exc:
            raise ConfigError(f"{path}.strategy.verifiers.{j}: {exc}") from None
    names = [v.name for v in route.verifiers]
    if len(set(names)) != len(names):
        raise ConfigError(f"{path}.strategy.verifiers: verifier names must be unique; give duplicates a `name`")
    try:
        route.variants = list(build_variants(strategy.variants, strategy.paraphrase_upstream))
    except ValueError as exc:
        raise ConfigError(f"{path}.strategy.variants: {exc}") from None
    return route
