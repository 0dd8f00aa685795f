"""The native client: OpenAI's HTTP protocol spoken directly, for the upstreams litellm would
reach through that protocol anyway (`openai/`, `text-completion-openai/`, `hosted_vllm/`, and
so the embedded model).

Why: litellm held most of the proxy's CPU per request, its import most of a process start, and
it rebuilds every answer it relays, dropping fields a client must get (hence the tap of
proxy/upstream/stream_tap.py). Here a request is the client's JSON with the operator's
parameters, sent over one pooled aiohttp session per worker, and an answer is the upstream's JSON
as it came; a stream is its server-sent events, parsed by the tap's own parser (`Tap`, with its
event-size cap). aiohttp was chosen by measurement (issue 24): 0.11 to 0.22 ms of client CPU per
call on loopback, against 0.75 to 2.1 ms for an httpx client, at one and at 64 calls in flight.

`NativeTransport` offers litellm's three calls (`Transport` in proxy/upstream/client.py) with
litellm's keyword arguments, so `UpstreamClient` keeps retries, fallback, n-batching, limits,
the allowance and the metrics for both clients alike. What the request body is: every
argument but the transport's own (`TRANSPORT_KEYS`), `None` values left out (litellm sends none
either), `extra_body` merged in last (as OpenAI's SDK does), the model without its litellm
prefix. No parameter is rewritten, renamed or dropped: an upstream that needs litellm's
provider-specific rewrites takes `client: litellm`.

Failures leave as `proxy.upstream.native_errors` (mapped once, in `_mapped`), classified by
`proxy.upstream.error_mapping`. Timeouts are litellm's: `timeout` seconds to connect and for
every read, so a stream may run longer as long as it keeps sending.

Cancellation: a call cancelled while it waits, and a stream closed before its end, close their
connection instead of returning it to the pool, so the upstream sees the hang-up and stops
generating.
"""

from __future__ import annotations

import asyncio
import functools
import json
import os
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
from typing import Any

import aiohttp
from aiohttp.helpers import get_env_proxy_for_url
from yarl import URL

from proxy.config.settings import UpstreamSettings
from proxy.upstream import usage_estimate
from proxy.upstream.native_errors import ConnectFailed, ConnectionLost, InvalidAnswer, StatusError, StreamErrorEvent
from proxy.upstream.stream_tap import MAX_EVENT_BYTES, Tap

__all__ = ["NativeStream", "NativeTransport", "native_pool"]

# Arguments that steer the call rather than ride in the body.
TRANSPORT_KEYS = frozenset(
    {"model", "api_base", "base_url", "api_key", "timeout", "max_retries", "extra_headers", "extra_body"}
)
# Where each provider prefix sends by default, and where its key comes from when the config names
# none: litellm's environment variables and defaults for the same providers.
DEFAULT_BASES: dict[str, tuple[tuple[str, ...], str | None]] = {
    "openai": (("OPENAI_BASE_URL", "OPENAI_API_BASE"), "https://api.openai.com/v1"),
    "text-completion-openai": (("OPENAI_BASE_URL", "OPENAI_API_BASE"), "https://api.openai.com/v1"),
    "hosted_vllm": (("HOSTED_VLLM_API_BASE",), None),
}
DEFAULT_KEYS: dict[str, tuple[str, str | None]] = {
    "openai": ("OPENAI_API_KEY", None),
    "text-completion-openai": ("OPENAI_API_KEY", None),
    "hosted_vllm": ("HOSTED_VLLM_API_KEY", "fake-api-key"),
}
ERROR_BODY_BYTES = 64 * 1024  # of an error answer: its message is all the proxy keeps
# Below the 5 s keep-alive of uvicorn and llama.cpp's server: a connection the upstream is about
# to close is not picked for the next call.
KEEPALIVE_S = 4.0

_pool: aiohttp.ClientSession | None = None  # the worker's session while `native_pool` is open


def new_session() -> aiohttp.ClientSession:
    """One session for every native call of a worker: unbounded (each upstream's
    `max_concurrency` bounds its calls), no cookies (one client's must never reach another's
    request). Proxies from the environment are `_env_proxy`'s, not the session's `trust_env`."""
    return aiohttp.ClientSession(
        connector=aiohttp.TCPConnector(limit=0, keepalive_timeout=KEEPALIVE_S),
        cookie_jar=aiohttp.DummyCookieJar(),
        raise_for_status=False,
    )


@asynccontextmanager
async def native_pool() -> AsyncIterator[aiohttp.ClientSession]:
    """The worker's session for every native call while this is open; closed with it."""
    global _pool
    session = new_session()
    previous, _pool = _pool, session
    try:
        yield session
    finally:
        _pool = previous
        await session.close()


class NativeTransport:
    """One upstream's calls over OpenAI's protocol; litellm's call shapes, see the module docstring."""

    def __init__(self, settings: UpstreamSettings) -> None:
        self.name = settings.name

    async def acompletion(self, **kwargs: Any) -> Any:
        return await self._send("/chat/completions", kwargs)

    async def atext_completion(self, **kwargs: Any) -> Any:
        return await self._send("/completions", kwargs)

    async def aembedding(self, **kwargs: Any) -> Any:
        return await self._send("/embeddings", kwargs)

    async def _send(self, path: str, kwargs: dict[str, Any]) -> Any:
        """The answer as a dict, or for `stream=True` a `NativeStream` whose answer has begun
        (its status and headers are in, so an HTTP error is raised here, inside the attempt)."""
        provider, _, model = str(kwargs["model"]).partition("/")
        body: dict[str, Any] = {"model": model}
        body.update((k, v) for k, v in kwargs.items() if k not in TRANSPORT_KEYS and v is not None)
        extra = kwargs.get("extra_body")
        if isinstance(extra, dict):
            body.update(extra)
        data = json.dumps(body, ensure_ascii=False, separators=(",", ":"), allow_nan=False).encode()
        base = _base(provider, kwargs)
        url = base.rstrip("/") + path
        headers = _headers(provider, kwargs)
        proxy, proxy_auth = _env_proxy(base)
        streamed = body.get("stream") is True
        own = None if _pool is not None else new_session()  # no pool open (a script): one for this call
        session = _pool if own is None else own
        try:
            with _mapped():
                response = await session.post(
                    url,
                    data=data,
                    headers=headers,
                    timeout=_timeout(kwargs.get("timeout")),
                    allow_redirects=False,
                    proxy=proxy,
                    proxy_auth=proxy_auth,
                )
            if not 200 <= response.status < 300:
                raise await _status_error(response)
            if streamed:
                stream, own = NativeStream(response, body, own), None  # the stream closes it now
                return stream
            return await _answer(response, body)
        finally:
            if own is not None:
                await own.close()


class NativeStream:
    """One upstream event stream as it arrives: the upstream's own events, never rebuilt.

    Iterating yields each event (a dict) in order; the stream ends at the body's end, events
    after `data: [DONE]` ignored. `aclose` (or an iteration abandoned by an error or a
    cancellation) closes the connection, so the upstream stops; a stream read to its end leaves
    its connection to the pool.
    """

    def __init__(
        self, response: aiohttp.ClientResponse, request: dict[str, Any], session: aiohttp.ClientSession | None = None
    ) -> None:
        self.tap = Tap(MAX_EVENT_BYTES)  # the parser, with the cap every relayed stream has
        self.tap.attached = True
        self._response = response
        self._request = request
        self._session = session  # closed with the stream when it was opened for this call alone
        self._answer_chars = 0
        self._events = self._read()

    def __aiter__(self) -> AsyncIterator[dict[str, Any]]:
        return self._events

    async def aclose(self) -> None:
        await self._events.aclose()

    def usage_estimate(self) -> dict[str, int]:
        """Token counts for a stream whose upstream sent no usage (proxy/upstream/usage_estimate.py)."""
        prompt = usage_estimate.prompt_tokens(self._request)
        completion = usage_estimate.tokens(self._answer_chars)
        return {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion}

    async def _read(self) -> AsyncIterator[dict[str, Any]]:
        finished = False
        try:
            with _mapped():
                async for raw in self._response.content.iter_any():
                    past_done = self.tap.done
                    self.tap.feed(raw)
                    events = self.tap.take()
                    if past_done:
                        continue  # read on to the body's end, so that its connection can be reused
                    if self.tap.malformed:  # relaying on would hand the client a gap in its answer
                        raise InvalidAnswer("the upstream's stream carried an event that is not a JSON object")
                    for event in events:
                        if "error" in event and not isinstance(event.get("choices"), list):
                            raise StreamErrorEvent(event)
                        self._answer_chars += usage_estimate.completion_chars(event.get("choices") or [])
                        yield event
            finished = True
        finally:
            if finished:
                self._response.release()
            else:
                self._response.close()  # the upstream sees its client go and stops generating
            if self._session is not None:
                await self._session.close()


async def _answer(response: aiohttp.ClientResponse, request: dict[str, Any]) -> dict[str, Any]:
    try:
        with _mapped():
            raw = await response.read()
    except BaseException:
        response.close()
        raise
    response.release()
    try:
        data = json.loads(raw)
    except ValueError:
        data = None
    if not isinstance(data, dict):
        raise InvalidAnswer(f"the upstream answered with a body that is not a JSON object ({len(raw)} bytes)")
    if not isinstance(data.get("usage"), dict) and isinstance(data.get("choices"), list):
        prompt = usage_estimate.prompt_tokens(request)
        completion = usage_estimate.tokens(usage_estimate.completion_chars(data["choices"]))
        data["usage"] = {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion}
    return data


async def _status_error(response: aiohttp.ClientResponse) -> StatusError:
    """The error answer as `StatusError`, its body read up to `ERROR_BODY_BYTES`."""
    chunks: list[bytes] = []
    size = 0
    complete = False
    try:
        with _mapped():
            while size < ERROR_BODY_BYTES:
                chunk = await response.content.read(ERROR_BODY_BYTES - size)
                if not chunk:
                    complete = True
                    break
                chunks.append(chunk)
                size += len(chunk)
    except ConnectionLost:
        pass  # the status is what matters; the body is only its words
    finally:
        if complete:
            response.release()
        else:
            response.close()
    text = b"".join(chunks).decode("utf-8", "replace")
    try:
        body = json.loads(text)
    except ValueError:
        body = None
    return StatusError(response.status, body, text.strip() or f"HTTP {response.status}")


@contextmanager
def _mapped() -> Iterator[None]:
    """aiohttp's exceptions as the native client's own (proxy/upstream/native_errors.py), once."""
    try:
        yield
    except asyncio.TimeoutError:
        raise  # aiohttp's connect and read timeouts are TimeoutErrors: litellm's Timeout, for the mapping
    except aiohttp.ClientSSLError:
        raise  # the upstream was reached, and the reason is in the TLS error's own words
    except aiohttp.ClientConnectorError as exc:
        raise ConnectFailed(str(exc)) from exc
    except (aiohttp.ClientError, ConnectionError) as exc:
        raise ConnectionLost(str(exc) or type(exc).__name__) from exc


def _base(provider: str, kwargs: dict[str, Any]) -> str:
    base = kwargs.get("api_base") or kwargs.get("base_url")
    if base:
        return str(base)
    names, default = DEFAULT_BASES.get(provider, ((), None))
    for name in names:
        if os.environ.get(name):
            return os.environ[name]
    if default is None:  # the config check (`UpstreamSettings.native_problem`) makes this rare
        raise ValueError(f"no api_base for {provider}/: set litellm_params.api_base or {' or '.join(names)}")
    return default


def _headers(provider: str, kwargs: dict[str, Any]) -> dict[str, str]:
    headers = {"Content-Type": "application/json"}
    key = kwargs.get("api_key")
    if key is None:
        name, default = DEFAULT_KEYS.get(provider, ("", None))
        key = (os.environ.get(name) or default) if name else default
    if key:
        headers["Authorization"] = f"Bearer {key}"
    extra = kwargs.get("extra_headers")
    if isinstance(extra, dict):
        headers.update({str(k): str(v) for k, v in extra.items()})
    return headers


@functools.lru_cache(maxsize=256)
def _env_proxy(base: str) -> tuple[str | None, aiohttp.BasicAuth | None]:
    """The proxy the environment names for an upstream (`HTTP_PROXY`, `HTTPS_PROXY`, `NO_PROXY`,
    netrc for its credentials), read once per api_base as httpx reads it once per client (and so
    litellm). aiohttp's `trust_env` would read it in a worker thread on every call: two thread
    hand-offs per request, the largest cost of a call in the profile (issue 24)."""
    try:
        proxy, auth = get_env_proxy_for_url(URL(base))
    except LookupError:  # none set, or NO_PROXY names the host
        return None, None
    return str(proxy), auth


@functools.lru_cache(maxsize=64)
def _client_timeout(seconds: float | None) -> aiohttp.ClientTimeout:
    return aiohttp.ClientTimeout(total=None, sock_connect=seconds, sock_read=seconds)


def _timeout(value: Any) -> aiohttp.ClientTimeout:
    """litellm's `timeout` (seconds to connect and for each read) as aiohttp's; none: no limit."""
    if isinstance(value, (int, float)) and value > 0:
        return _client_timeout(float(value))
    return _client_timeout(None)
