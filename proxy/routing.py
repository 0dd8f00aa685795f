"""Routes built once from config: each alias with its upstream and its built strategy."""

from __future__ import annotations

from dataclasses import dataclass, field

from proxy.config.secrets import Redactor
from proxy.config.settings import Config, RouteSettings, build_strategy_of, call_ceiling
from proxy.errors import ModelNotFound
from proxy.upstream.client import UpstreamClient
from strategies.contract import Strategy
from strategies.passthrough import Passthrough

DEFAULT_ROUTE = "default"  # the label for unknown models served by `server.default_upstream`


@dataclass
class Route:
    name: str
    settings: RouteSettings
    upstream: UpstreamClient
    strategy: Strategy = field(default_factory=Passthrough)
    call_ceiling: int | None = None  # upstream calls per request, every retry and fallback included

    @property
    def token_budget(self) -> int | None:
        return self.settings.strategy.token_budget()


class Router:
    def __init__(self, config: Config) -> None:
        self.redact = Redactor(config.secrets())
        self.clients: dict[str, UpstreamClient] = {}
        for upstream in config.upstreams:
            self.clients[upstream.name] = UpstreamClient(upstream, self.redact)
        for upstream in config.upstreams:
            if upstream.fallback is not None:
                self.clients[upstream.name].fallback = self.clients[upstream.fallback]
        self.routes = {
            r.model: build_route(config, r, self.clients, f"routes.{i}") for i, r in enumerate(config.routes)
        }
        self._default: Route | None = None
        if config.server.default_upstream is not None:
            settings = RouteSettings(model=DEFAULT_ROUTE, upstream=config.server.default_upstream)
            client = self.clients[settings.primary_upstream]
            self._default = Route(DEFAULT_ROUTE, settings, client, call_ceiling=call_ceiling(config, settings))

    def resolve(self, model: str) -> Route:
        route = self.routes.get(model)
        if route is not None:
            return route
        if self._default is not None:
            return self._default
        raise ModelNotFound(
            f"The model `{model[:200]}` does not exist on this proxy; GET /v1/models lists the routes.", param="model"
        )


def build_route(config: Config, settings: RouteSettings, clients: dict[str, UpstreamClient], path: str) -> Route:
    strategy = build_strategy_of(settings, path)
    return Route(settings.model, settings, clients[settings.primary_upstream], strategy, call_ceiling(config, settings))
