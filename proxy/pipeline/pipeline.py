"""One request's way from a JSON body to an `Outcome`: parse, prepare, run.

Client requests (`proxy.server.app`) and gold probes (`proxy.probes.runner`) both come through
here, so a probe is checked, capped and charged exactly as a client's request is.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import httpx

from proxy.config.settings import Config
from proxy.errors import InvalidRequest, ProxyError, UpstreamFailed
from proxy.pipeline.confidence_fallback import confident
from proxy.pipeline.endpoints import Endpoint
from proxy.pipeline.requests import RequestBody, parse_body
from proxy.pipeline.services import RequestServices
from proxy.routing import Route, Router
from proxy.state.learning import SharedLearning
from proxy.telemetry import metrics
from proxy.upstream.allowance import CURRENT as CURRENT_ALLOWANCE
from proxy.upstream.allowance import Estimate, RequestAllowance, request_estimate
from strategies.contract import NoCandidatesError, Outcome, RequestNotServed, StrategyRequest


@dataclass(frozen=True)
class Prepared:
    services: RequestServices
    work: StrategyRequest
    allowance: RequestAllowance
    estimate: Estimate  # what it may cost, for its key's limits


class Pipeline:
    """Parse, prepare and run requests against the routes; per-process, built once."""

    def __init__(self, config: Config, router: Router, learning: SharedLearning) -> None:
        self.config = config
        self.router = router
        self.learning = learning
        self.http: httpx.AsyncClient | None = None  # set while the server (or a probe run) is up

    def parse(self, data: Any, endpoint: Endpoint) -> tuple[RequestBody, Route]:
        """The validated body and the route it names."""
        self._check_size(data)
        body = parse_body(endpoint.request_model, data)
        return body, self.router.resolve(body.model)

    def prepare(self, body: RequestBody, route: Route, endpoint: Endpoint, token_budget: int | None = None) -> Prepared:
        """A request checked against its route's caps, with its allowance, ready to run.

        Client requests and gold probes both come through here. `token_budget` can only lower
        the route's own budget (probes pass what their hourly budget has left).
        """
        params = self._params(body, route, endpoint)
        assert self.http is not None
        budget = route.token_budget
        if token_budget is not None:
            budget = token_budget if budget is None else min(budget, token_budget)
        allowance = RequestAllowance(route.call_ceiling, budget)
        CURRENT_ALLOWANCE.set(allowance)  # this request's task and every task it starts
        services = RequestServices(
            route.upstream, self.router.clients, params, endpoint, self.http, endpoint.client_input(body), allowance
        )
        work = StrategyRequest(
            endpoint.messages(body), body.n, body.rvr, params.get("response_format"), stream=bool(body.stream)
        )
        asked_max_n = body.rvr.max_n if body.rvr is not None else None
        strategy = route.settings.strategy
        candidates = strategy.candidate_ceiling(endpoint.input_count(body) * body.n, asked_max_n)
        estimate = request_estimate(endpoint.client_input(body), params, candidates, budget, strategy.answers_rewritten())
        return Prepared(services, work, allowance, estimate)

    def _check_size(self, data: Any) -> None:
        """Caps checked on the raw JSON, before validation spends time on every element."""
        messages = data.get("messages") if isinstance(data, dict) else None
        cap = self.config.server.max_messages
        if isinstance(messages, list) and len(messages) > cap:
            raise InvalidRequest(f"{len(messages)} messages exceed this server's limit of {cap}", param="messages")

    def _params(self, body: RequestBody, route: Route, endpoint: Endpoint) -> dict[str, Any]:
        limits = route.settings.limits
        if body.n > limits.max_n:
            raise InvalidRequest(f"n={body.n} exceeds this route's limit of {limits.max_n}", param="n")
        inputs = endpoint.input_count(body)  # a prompt array is that many requests, each with `n`
        if inputs * body.n > limits.max_n:
            raise InvalidRequest(
                f"{inputs} prompts × n={body.n} exceeds this route's limit of {limits.max_n} choices", param="prompt"
            )
        best_of = (body.model_extra or {}).get("best_of")  # server-side sampling multiplies cost like n
        if best_of is not None and (not isinstance(best_of, int) or inputs * best_of > limits.max_n):
            raise InvalidRequest(f"best_of × prompts must be an integer no larger than {limits.max_n}", param="best_of")
        params = body.upstream_params(endpoint.params)
        cap = limits.token_cap
        for field in ("max_tokens", "max_completion_tokens"):  # either one reaches the upstream
            asked = getattr(body, field)
            if asked is not None and asked > cap:
                raise InvalidRequest(f"{field}={asked} exceeds this route's limit of {cap}", param=field)
        if limits.max_tokens is not None and body.token_limit is None:
            params["max_tokens"] = limits.max_tokens  # the operator's cap, not one the proxy invents
        strategy = route.strategy
        if not strategy.takes_prompt_batches and not endpoint.single_input(body):
            raise InvalidRequest(f"{strategy.name} routes take one prompt string", param="prompt")
        if strategy.needs_logprobs and "logprobs" not in params:
            params["logprobs"] = endpoint.logprobs_on
        return params

    async def run(self, route: Route, work: StrategyRequest, services: RequestServices, probe: bool = False) -> Outcome:
        """The route's answer; a client's (not a probe's) may fall back on low confidence."""
        outcome = await self._run_strategy(route, work, services)
        if probe or outcome.selection is None:
            return outcome
        mode = outcome.selection["mode"]
        metrics.SELECTIONS.labels(route.name, "fallback" if outcome.selection.get("fallback_reason") else mode).inc()
        return await confident(self.router, route, work, services, outcome, self._run_strategy)

    async def _run_strategy(self, route: Route, work: StrategyRequest, services: RequestServices) -> Outcome:
        await self.learning.before(route)
        try:
            outcome = await route.strategy.run(work, services)
        except RequestNotServed as exc:
            raise InvalidRequest(str(exc), param=exc.param) from None
        except NoCandidatesError as exc:
            cause = exc.__cause__
            if isinstance(cause, ProxyError):  # keep the upstream's own status: 502, 504, 400
                raise cause from None
            raise UpstreamFailed(str(exc)) from None
        if outcome.plain_usage is None:  # a strategy that made the plain call itself says so
            outcome.plain_usage = services.plain_usage
        outcome.usage_by_upstream = services.spent  # the live tally: a streamed fusion adds to it later
        await self.learning.after(route)
        return outcome
