"""The HTTP service: OpenAI-compatible endpoints over routes."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any, TypeVar

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response, StreamingResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from proxy.access.auth import KeyCheck
from proxy.access.limits import Bill, KeyLimits
from proxy.audit import policy as verifier_audit_policy
from proxy.config.settings import Config
from proxy.errors import (
    ClientDisconnected,
    ServerDraining,
    InvalidRequest,
    ModelNotFound,
    ProxyError,
    RateLimited,
    UpstreamError,
    UpstreamTimedOut,
    internal_error,
)
from proxy.pipeline.endpoints import ENDPOINTS, Endpoint
from proxy.pipeline.pipeline import Pipeline
from proxy.pipeline.requests import RequestBody
from proxy.pipeline.services import RequestServices
from proxy.probes.calibration import RouteCalibration, probe_dir
from proxy.probes.runner import ProbeRunner
from proxy.probes.selection import RouteSelection
from proxy.routing import Route, Router
from proxy.server.body import read_json
from proxy.server.drain import Drain
from proxy.server.header_limit import HeaderLimitMiddleware
from proxy.server.openapi import document_for, serve_openapi
from proxy.server.request_id import RequestIdMiddleware, request_id
from proxy.server.responses import completion, new_id, rvr_body
from proxy.server.streaming import END, error_event, relay, replay, resumed
from proxy.state.backends import build_state
from proxy.state.learning import SharedLearning
from proxy.telemetry import metrics
from proxy.telemetry.logs import install_redaction
from proxy.telemetry.recording import RequestRecord, finish
from proxy.upstream.client import litellm_pool
from strategies.contract import Outcome, RequestNotServed, StrategyRequest

log = logging.getLogger("rvr_proxy")
T = TypeVar("T")
KEEPALIVE_S = 2.0
UNWIND_S = 1.0  # how long a cut stream's work may take to unwind before its cost is charged


class Proxy:
    """Per-process state built once from config; requests only read it."""

    def __init__(self, config: Config) -> None:
        self.config = config
        self.router = Router(config)
        verifier_audit_policy.enforce(config)  # a required audit missing or failed: no serving
        self.check_key = KeyCheck(config.server.api_keys, config.server.keys)
        self.in_flight = 0  # client requests this worker is serving, streams until their end
        gold_dir = probe_dir(config.server.state_dir)
        self.calibration = {
            name: RouteCalibration(name, route.settings.probes, gold_dir)
            for name, route in self.router.routes.items()
            if route.strategy.reports
        }
        self.selection = selection_states(self.router, self.calibration, config.server.state_dir)
        # Shared by every worker and instance with `server.state.backend: redis`; other modules
        # keep what all processes must agree on here (get_json/put_json, proxy/state/base.py).
        self.state = build_state(config.server.state)
        self.limits = KeyLimits(self.state)
        self.learning = SharedLearning(self.router, self.state)
        self.pipeline = Pipeline(config, self.router, self.learning)
        self._settling: set[asyncio.Future[None]] = set()  # requests being logged and charged
        self.drain = Drain(config.server.drain_delay_s, config.server.drain_s)

    async def handle(self, request: Request, endpoint: Endpoint) -> Response:
        record = RequestRecord(request_id(request), endpoint.name)
        self.in_flight += 1
        streaming = False
        bill = Bill(None)  # who pays, and (once prepared) what the request spent and reserved
        try:
            bill.key = self.check_key(request.headers.get("authorization"))
            await self.limits.admit(bill.key)
            server = self.config.server
            data = await read_json(request, server.max_body_bytes, server.read_timeout_s)
            body, route = self.pipeline.parse(data, endpoint)
            record.route, record.strategy = route.name, route.strategy.name
            record.prompt = endpoint.client_input(body)
            prepared = self.pipeline.prepare(body, route, endpoint)
            services, work, bill.allowance = prepared.services, prepared.work, prepared.allowance
            bill.reservation = await self.limits.reserve(bill.key, prepared.estimate)
            headers = {"x-rvr-route": route.name}
            if body.rvr is not None and not route.strategy.reports:
                # One body for every route: options a strategy has no use for are ignored, openly.
                headers["x-rvr-ignored"] = f"rvr options do not apply to {route.strategy.name} routes"
            if body.stream:
                response = await self._stream(
                    request, work, services, body, route, endpoint, record, headers, bill
                )
                streaming = True  # from here the stream's own end writes the record
                return response
            outcome = await self._guarded(request, self.pipeline.run(route, work, services))
            record.outcome = outcome
            headers["x-rvr-candidates"] = str(outcome.sampled)
            rvr = self._rvr(outcome, route, body)
            return JSONResponse(completion(outcome, route.name, body.n, rvr, endpoint), headers=headers)
        except ProxyError as exc:
            record.status, record.error = exc.status, self._loggable(exc)
            return error_response(exc)
        except asyncio.CancelledError:
            record.status, record.error = self._cancelled()
            raise
        except Exception as exc:  # never a stack trace to the client or the log
            record.status, record.error = 500, type(exc).__name__
            return error_response(internal_error())
        finally:
            if not streaming:
                await self._finish(record, bill)

    def _cancelled(self) -> tuple[int, str]:
        """Status and log text of a request whose task the server cancelled: a client that hung
        up, or (past the drain's cut) a shutdown that could not wait any longer."""
        return (ServerDraining.status, "drain") if self.drain.cut.is_set() else (499, "client disconnected")

    def _loggable(self, exc: Exception) -> str:
        """An error as the log may show it: an upstream's own words may echo the prompt back."""
        if isinstance(exc, ServerDraining):
            return "drain"
        if isinstance(exc, UpstreamError) and not self.config.server.log_prompts:
            return exc.summary
        return exc.message if isinstance(exc, ProxyError) else type(exc).__name__

    def _rvr(self, outcome: Outcome, route: Route, body: RequestBody) -> dict[str, Any] | None:
        if not route.strategy.reports:
            return None
        calibration = self.calibration.get(route.name)
        snapshot = None
        if calibration is not None:
            calibration.observe(outcome.risk.as_dict() if outcome.risk is not None else None)
            snapshot = calibration.snapshot()
        return rvr_body(outcome, route.name, bool(body.rvr and body.rvr.details), snapshot)

    async def _charge(self, record: RequestRecord, bill: Bill) -> None:
        """A request's cost to its client key, however it ended: metrics, then its reservation
        against the key's limits settled at what it cost (proxy/access/limits.py)."""
        if bill.key is None:
            return
        metrics.KEY_REQUESTS.labels(bill.key.name, str(record.status)).inc()
        outcome = record.outcome
        usage = outcome.usage if outcome is not None else record.usage
        if outcome is not None:
            candidates: int | None = outcome.sampled
        else:  # a relayed stream counts its choices; other work cut short is charged its estimate
            candidates = record.streamed_choices or None
        try:
            await self.limits.charge(bill, usage.total_tokens, candidates)
        except Exception as exc:  # the answer is already made; a charge that fails must not spoil it
            log.error('{"event": "key_charge_failed", "error": "%s"}', type(exc).__name__)

    async def _guarded(self, request: Request, work: Awaitable[T]) -> T:
        """Run `work`, cancelling it (and its upstream calls) if the client goes away."""
        task = asyncio.ensure_future(work)
        hung_up = asyncio.Event()

        async def watch_disconnect() -> None:
            while True:
                message = await request.receive()
                if message["type"] == "http.disconnect":
                    hung_up.set()
                    task.cancel()
                    return

        watcher = asyncio.ensure_future(watch_disconnect())
        cut = asyncio.ensure_future(self.drain.cut.wait())
        try:
            done, _ = await asyncio.wait(
                [task, cut], timeout=self.config.server.request_timeout_s, return_when=asyncio.FIRST_COMPLETED
            )
            if task in done:
                return task.result()
            task.cancel()
            await asyncio.wait([task])  # its calls settle what they spent as they unwind
            if cut in done:
                raise draining()
            raise UpstreamTimedOut("the request took longer than the proxy's request timeout")
        except asyncio.CancelledError:
            task.cancel()
            if hung_up.is_set():  # our own cancel, not the server's: end as a logged 499
                raise ClientDisconnected("client disconnected") from None
            raise
        finally:
            watcher.cancel()
            cut.cancel()

    async def _stream(
        self,
        request: Request,
        work: StrategyRequest,
        services: RequestServices,
        body: RequestBody,
        route: Route,
        endpoint: Endpoint,
        record: RequestRecord,
        headers: dict[str, str],
        bill: Bill,
    ) -> StreamingResponse:
        stream_id = new_id(endpoint.id_prefix)

        def failed(exc: Exception) -> None:
            record.status = exc.status if isinstance(exc, ProxyError) else 500
            record.error = self._loggable(exc)

        if not route.strategy.relays_stream:  # the strategy decides first, then the answer streams

            async def work_done() -> Outcome:
                record.outcome = await self.pipeline.run(route, work, services)
                return record.outcome

            # Nothing is due before the first keep-alive, so the headers wait until then: a
            # failure that early keeps its own HTTP status (502, 504) instead of a 200 that
            # carries an error event, as for a relayed stream.
            working = asyncio.ensure_future(work_done())
            try:
                await self._guarded(request, asyncio.wait([working], timeout=KEEPALIVE_S))
            except BaseException:  # the client hung up (or the server stops): so does the work
                working.cancel()
                with contextlib.suppress(BaseException):
                    await asyncio.wait([working], timeout=UNWIND_S)  # its calls settle what they spent
                raise
            if working.done() and working.exception() is not None:
                raise working.exception()  # type: ignore[misc]
            events = replay(
                working, route=route.name, stream_id=stream_id, endpoint=endpoint, n=body.n,
                include_usage=body.include_usage, rvr=lambda o: self._rvr(o, route, body),
                keepalive_s=KEEPALIVE_S, on_error=failed, due=True,
            )
        else:
            record.streamed_choices = body.n  # a relayed stream makes no Outcome to count them in
            await self.learning.before(route)
            try:
                chunks = route.strategy.stream(work, services)
            except RequestNotServed as exc:
                raise InvalidRequest(str(exc), param=exc.param) from None
            # Until the first chunk arrives nothing is sent, so a failure still gets its own
            # HTTP status (502, 504) instead of a 200 that carries an error event.
            first = await self._guarded(request, anext(chunks, END))
            events = relay(
                resumed(first, chunks), route=route.name, stream_id=stream_id,
                include_usage=body.include_usage, record=record, on_error=failed,
            )
        return StreamingResponse(
            self._finishing(events, record, bill),
            media_type="text/event-stream",
            headers={**headers, "cache-control": "no-cache"},
        )

    async def _finishing(
        self,
        events: AsyncIterator[bytes],
        record: RequestRecord,
        bill: Bill,
    ) -> AsyncIterator[bytes]:
        """Relay `events` within the request timeout; past it the stream ends with an error event.

        One task pumps the events, so the stream's work (and its upstream calls) always runs in
        the same task, and cancelling that task stops all of it.
        """
        queue: asyncio.Queue[bytes | None] = asyncio.Queue(maxsize=1)

        async def pump() -> None:
            try:
                async for item in events:
                    await queue.put(item)
            except Exception:  # relay and replay turn failures into events; this is a bug
                await queue.put(error_event(internal_error()))
            await queue.put(None)

        loop = asyncio.get_running_loop()
        # From the request's start: the wait for the first chunk or keep-alive already counted.
        deadline = loop.time() + self.config.server.request_timeout_s - (time.perf_counter() - record.started)
        pumping = asyncio.ensure_future(pump())
        cut = asyncio.ensure_future(self.drain.cut.wait())
        try:
            while True:
                getting = asyncio.ensure_future(queue.get())
                await asyncio.wait(
                    [getting, cut], timeout=max(deadline - loop.time(), 0.0), return_when=asyncio.FIRST_COMPLETED
                )
                if not getting.done():
                    getting.cancel()
                    ended = draining() if cut.done() else UpstreamTimedOut(
                        "the request took longer than the proxy's request timeout"
                    )
                    record.status, record.error = ended.status, self._loggable(ended)
                    yield error_event(ended)
                    return
                item = getting.result()
                if item is None:
                    return
                yield item
        except asyncio.CancelledError:
            record.status, record.error = self._cancelled()
            raise
        finally:
            cut.cancel()
            pumping.cancel()
            await self._finish(record, bill, unwinding=pumping)

    async def _finish(
        self, record: RequestRecord, bill: Bill, unwinding: asyncio.Future[None] | None = None
    ) -> None:
        """Log the request and charge its key, in a task of its own that runs to its end.

        A client that hangs up cancels the request's task (Starlette cancels a stream's task
        group, and keeps cancelling it at every await), yet what it spent must still be logged
        and charged: the work is shielded, and the request only waits for it.
        """
        done = asyncio.ensure_future(self._settle(record, bill, unwinding))
        self._settling.add(done)
        done.add_done_callback(self._settling.discard)
        await asyncio.shield(done)

    async def _settle(self, record: RequestRecord, bill: Bill, unwinding: asyncio.Future[None] | None) -> None:
        if unwinding is not None:
            # Its upstream calls settle what they spent as they unwind: wait, so the key is
            # charged that rather than their whole reservations.
            await asyncio.wait([unwinding], timeout=UNWIND_S)
        self.in_flight -= 1
        finish(record, self.config.server.log_prompts)
        await self._charge(record, bill)

    def probe_runner(self, name: str) -> ProbeRunner:
        return ProbeRunner(self.pipeline, self.router.routes[name], self.calibration[name])

    def background_probes(self) -> list[ProbeRunner]:
        """Runners for the routes that probe on a cadence (`every_s` > 0)."""
        return [
            self.probe_runner(name)
            for name, route in self.router.routes.items()
            if route.settings.probes is not None and route.settings.probes.every_s > 0 and name in self.calibration
        ]

    def idle(self) -> bool:
        """No client request in flight in this worker: the only time gold probes may start."""
        return self.in_flight == 0


def selection_states(
    router: Router, calibration: Mapping[str, RouteCalibration], state_dir: Path | None
) -> dict[str, RouteSelection]:
    """Learned-selection state for every best_of_n route; `learned` routes select with it."""
    states = {}
    for name, route in router.routes.items():
        settings = route.settings.strategy.selection_settings()
        if settings is None or name not in calibration:
            continue
        states[name] = RouteSelection(name, settings, calibration[name], state_dir)
        if settings.mode == "learned" or settings.knockout is not None:
            route.strategy.use_selector(states[name].state)
    return states


def draining() -> ServerDraining:
    return ServerDraining("the server is shutting down and this request outlasted its drain time; send it again")


def error_response(exc: ProxyError, headers: Mapping[str, str] | None = None) -> JSONResponse:
    if isinstance(exc, RateLimited):
        headers = {**(headers or {}), "retry-after": str(exc.retry_after_s)}
    return JSONResponse(exc.body(), status_code=exc.status, headers=headers)


def create_app(config: Config) -> FastAPI:
    proxy = Proxy(config)
    install_redaction(proxy.router.redact)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        async with litellm_pool() as http:
            proxy.pipeline.http = http
            await proxy.state.start()  # never fails: an unreachable Redis means memory until it answers
            proxy.drain.install()
            probing = [asyncio.ensure_future(runner.loop(proxy.idle)) for runner in proxy.background_probes()]
            try:
                yield
            finally:
                for task in probing:
                    task.cancel()
                await asyncio.gather(*probing, return_exceptions=True)
                await proxy.state.close()

    # No slash redirects: a redirect is built from the client's Host header, before auth.
    app = FastAPI(
        title="rvr-proxy", lifespan=lifespan, docs_url=None, redoc_url=None, openapi_url=None, redirect_slashes=False
    )
    app.state.proxy = proxy
    app.add_middleware(RequestIdMiddleware)
    app.add_middleware(HeaderLimitMiddleware, max_bytes=config.server.max_header_bytes)  # outermost: first
    _add_error_handlers(app)
    _add_routes(app, proxy)
    routes = {name: route.settings for name, route in proxy.router.routes.items()}
    serve_openapi(app, document_for(config, routes), proxy.check_key)
    return app


def _add_error_handlers(app: FastAPI) -> None:
    """Whatever goes wrong outside `Proxy.handle` still answers with an OpenAI-shaped body."""

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        if exc.status_code == 404:
            return error_response(_NotFound(f"no such endpoint: {request.method} {request.url.path}"))
        if exc.status_code == 405:  # keeps Starlette's `Allow` header, as RFC 9110 asks
            problem = _MethodNotAllowed(f"method {request.method} is not allowed on {request.url.path}")
            return error_response(problem, exc.headers)
        return error_response(ProxyError(str(exc.detail)))

    @app.exception_handler(RequestValidationError)
    async def validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
        return error_response(InvalidRequest("invalid request"))

    @app.exception_handler(Exception)
    async def unexpected(request: Request, exc: Exception) -> JSONResponse:
        return error_response(internal_error())


def _add_routes(app: FastAPI, proxy: Proxy) -> None:
    for endpoint in ENDPOINTS:
        app.add_api_route(endpoint.path, _handler(proxy, endpoint), methods=["POST"])

    @app.get("/v1/models")
    async def models(request: Request) -> Response:
        try:
            proxy.check_key(request.headers.get("authorization"))
        except ProxyError as exc:
            return error_response(exc)
        return JSONResponse({"object": "list", "data": [_model(name) for name in proxy.router.routes]})

    @app.get("/v1/models/{model:path}")  # model names may hold `/` (`org/model`)
    async def model(request: Request, model: str) -> Response:
        try:
            proxy.check_key(request.headers.get("authorization"))
            if model not in proxy.router.routes:
                raise ModelNotFound(f"The model `{model[:200]}` does not exist on this proxy.", param="model")
        except ProxyError as exc:
            return error_response(exc)
        return JSONResponse(_model(model))

    @app.get("/healthz")
    async def healthz() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/readyz")
    async def readyz() -> Response:
        if proxy.drain.draining:  # SIGTERM: load balancers stop sending here while in-flight work ends
            return JSONResponse({"status": "draining"}, status_code=503)
        ready = proxy.pipeline.http is not None
        return JSONResponse({"status": "ready" if ready else "starting"}, status_code=200 if ready else 503)

    @app.get("/metrics")
    async def metrics_endpoint(request: Request) -> Response:
        if proxy.config.server.metrics_auth:
            try:
                proxy.check_key(request.headers.get("authorization"))
            except ProxyError as exc:
                return error_response(exc)
        payload, content_type = metrics.render()
        return Response(payload, media_type=content_type)


def _model(name: str) -> dict[str, Any]:
    return {"id": name, "object": "model", "created": 0, "owned_by": "rvr-proxy"}


def _handler(proxy: Proxy, endpoint: Endpoint) -> Callable[[Request], Awaitable[Response]]:
    async def generate(request: Request) -> Response:
        return await proxy.handle(request, endpoint)

    generate.__name__ = f"{endpoint.name}_completions"
    return generate


class _NotFound(ModelNotFound):
    code = "not_found"


class _MethodNotAllowed(InvalidRequest):
    status = 405
    code = "method_not_allowed"


def app_from_env() -> FastAPI:
    """Factory for `uvicorn --factory` and multi-worker serving: config comes from RVR_CONFIG."""
    from proxy.config.source import config_from_env

    return create_app(config_from_env(os.environ))
