"""What an upstream failure means: the client's error, the metric label, whether to retry.

litellm raises its own exception classes with messages that chain provider, SDK and litellm
text; the native client (proxy/upstream/native.py) raises `proxy.upstream.native_errors`, whose
HTTP status means what litellm's mapping of the same status means. `classify` maps an exception
once (like httpx's `map_httpcore_exceptions`), and `translate` words it as the proxy's own
error, keeping only the upstream's message.

litellm is never imported here: its exception classes are read from the loaded module, since
none of them can exist before an upstream served by litellm loaded it, and a proxy whose
upstreams are all native never loads it.
"""

from __future__ import annotations

import ast
import asyncio
import json
import os
import re
import socket
import sys
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import httpx

from proxy.config.secrets import Redactor
from proxy.errors import ProxyError, UpstreamError, UpstreamFailed, UpstreamRejected, UpstreamTimedOut
from proxy.upstream.native_errors import ConnectFailed, ConnectionLost, StatusError

DETAIL_LIMIT = 500  # characters of the upstream's own message a client sees


@dataclass(frozen=True)
class Failure:
    """What one kind of upstream exception means to the client, the metrics and the retry loop."""

    error: type[UpstreamError]
    outcome: str  # metric label: bounded, so a fixed set
    retryable: bool
    verb: str  # completes "upstream 'x' ..."
    has_status: bool = True  # whether `status_code` is an HTTP status the upstream really sent
    code: str | None = None


# Timeouts are not retried: the client already waited `timeout_s` once.
TIMED_OUT = Failure(UpstreamTimedOut, "timeout", retryable=False, verb="timed out", has_status=False)
CONTEXT_WINDOW = Failure(
    UpstreamRejected,
    "rejected",
    retryable=False,
    verb="rejected the request (context window exceeded)",
    code="context_length_exceeded",
)
REJECTED = Failure(UpstreamRejected, "rejected", retryable=False, verb="rejected the request")
RATE_LIMITED = Failure(UpstreamFailed, "rate_limited", retryable=True, verb="rate-limited the request")
SERVER_ERROR = Failure(UpstreamFailed, "error", retryable=True, verb="failed")
# The connection broke after the request went out: no HTTP answer came back, whatever litellm
# says (500); retried, as litellm's APIConnectionError always was.
CONNECTION_LOST = Failure(UpstreamFailed, "error", retryable=True, verb="failed", has_status=False)
OTHER_FAILURE = Failure(UpstreamFailed, "error", retryable=False, verb="failed")  # auth, not found, unknown
# No connection was made, so no HTTP status exists, whatever litellm says: it reports a refused
# connection as an InternalServerError with status 500 ("Connection error."). Retried, as a
# restarting upstream refuses connections for a moment.
UNREACHABLE = Failure(UpstreamFailed, "error", retryable=True, verb="could not be reached", has_status=False)

# The native client's HTTP error statuses, mapped as litellm maps the same statuses of an
# OpenAI-compatible provider (litellm_core_utils/exception_mapping_utils.py): 408 and 504 are
# timeouts, 400, 413 and 422 rejections, 429 a rate limit, 500, 502 and 503 retryable failures,
# anything else a failure that is not retried.
STATUSES: dict[int, Failure] = {
    400: REJECTED, 413: REJECTED, 422: REJECTED, 408: TIMED_OUT, 504: TIMED_OUT, 429: RATE_LIMITED,
    500: SERVER_ERROR, 502: SERVER_ERROR, 503: SERVER_ERROR,
}
# How an upstream's rejection says the prompt did not fit: OpenAI's code, then the phrases of
# OpenAI, vLLM and llama.cpp's server that litellm also reads as ContextWindowExceededError.
CONTEXT_WINDOW_CODE = "context_length_exceeded"
CONTEXT_WINDOW_PHRASES = (
    "maximum context length",
    "context length",
    "exceeds the available context size",
    "exceed context limit",
    "maximum context limit",
)


def _timeouts() -> tuple[type[BaseException], ...]:
    litellm = sys.modules.get("litellm")
    return (asyncio.TimeoutError,) if litellm is None else (litellm.Timeout, asyncio.TimeoutError)


_LITELLM_FAILURES: tuple[tuple[tuple[type[BaseException], ...], Failure], ...] | None = None


def _litellm_failures() -> tuple[tuple[tuple[type[BaseException], ...], Failure], ...]:
    """litellm's exception classes and what each means, once litellm is loaded (else none); its
    `Timeout` is among `_timeouts()`.

    First match wins, so subclasses come before their bases (context window before bad request).
    """
    global _LITELLM_FAILURES
    litellm = sys.modules.get("litellm")
    if litellm is None:
        return ()
    if _LITELLM_FAILURES is None:
        _LITELLM_FAILURES = (
            ((litellm.ContextWindowExceededError,), CONTEXT_WINDOW),
            ((litellm.BadRequestError, litellm.UnprocessableEntityError), REJECTED),
            ((litellm.RateLimitError,), RATE_LIMITED),
            ((litellm.InternalServerError, litellm.ServiceUnavailableError, litellm.BadGatewayError), SERVER_ERROR),
            ((litellm.APIConnectionError,), CONNECTION_LOST),  # litellm says 500 here, but no HTTP answer came back
        )
    return _LITELLM_FAILURES


def classify(exc: BaseException) -> Failure:
    timeouts = _timeouts()
    if not isinstance(exc, timeouts) and unreachable_reason(exc) is not None:
        return UNREACHABLE
    if isinstance(exc, timeouts):
        return TIMED_OUT
    if isinstance(exc, StatusError):
        return _by_status(exc)
    if isinstance(exc, ConnectionLost):
        return CONNECTION_LOST
    for types, failure in _litellm_failures():
        if isinstance(exc, types):
            return failure
    return OTHER_FAILURE


def _by_status(exc: StatusError) -> Failure:
    failure = STATUSES.get(exc.status_code, OTHER_FAILURE)
    if failure is REJECTED:
        error = exc.body.get("error") if isinstance(exc.body, Mapping) else None
        if isinstance(error, Mapping) and error.get("code") == CONTEXT_WINDOW_CODE:
            return CONTEXT_WINDOW
        said = (_error_message(exc.body) or exc.message).lower()
        if any(phrase in said for phrase in CONTEXT_WINDOW_PHRASES):
            return CONTEXT_WINDOW
    return failure


def translate(exc: BaseException, upstream: str, redact: Redactor) -> tuple[UpstreamError, Failure]:
    """The client's error for `exc`, in the proxy's words, plus its classification."""
    exc = _unwrap(exc)
    failure = classify(exc)
    status = getattr(exc, "status_code", None) if failure.has_status else None
    summary = f"upstream {upstream!r} {failure.verb}"
    if failure is UNREACHABLE:
        # The reason is the operating system's ("connection refused"); the SDK's own words
        # ("Connection error.") add nothing, and its address text may carry the URL's password.
        summary += f" ({unreachable_reason(exc)})"
        return failure.error(summary, code=failure.code, summary=summary), failure
    if isinstance(status, int) and 400 <= status < 600:
        summary += f" with HTTP {status}"
    message = summary
    if failure.error is not UpstreamTimedOut:  # litellm's timeout text says no more than we do
        detail = redact(upstream_detail(exc))  # before the cut: half a secret must not survive it
        if detail:
            message += ": " + (detail if len(detail) <= DETAIL_LIMIT else detail[: DETAIL_LIMIT - 1] + "…")
    return failure.error(message, code=failure.code, summary=summary), failure


def _unwrap(exc: BaseException) -> BaseException:
    """The exception litellm wrapped, e.g. in `MidStreamFallbackError`, whose status it makes up."""
    for _ in range(4):  # a bound, in case a chain ever loops
        original = getattr(exc, "original_exception", None)
        if not isinstance(original, BaseException) or original is exc:
            break
        exc = original
    return exc


def unreachable_reason(exc: BaseException) -> str | None:
    """Why no connection to the upstream was made ("connection refused", "host name not
    resolved", ...), read from the exceptions `exc` was raised from; None when one was made.

    Only a failed connect counts (httpx's `ConnectError`, which its own transport and litellm's
    aiohttp one both raise, the native client's `ConnectFailed`, or the socket error beneath
    them): a stream cut after it started is an `APIConnectionError` too, but the upstream was reached.
    """
    chain = _chain(exc)
    connect_errors = (httpx.ConnectError, ConnectFailed, ConnectionRefusedError, socket.gaierror)
    if not any(isinstance(e, connect_errors) for e in chain):
        return None
    for error in reversed(chain):  # the deepest says it most precisely
        if isinstance(error, ConnectionRefusedError):
            return "connection refused"
        if isinstance(error, socket.gaierror):
            return "host name not resolved"
        if isinstance(error, OSError) and isinstance(error.errno, int) and error.errno > 0:
            return os.strerror(error.errno).lower()  # e.g. "no route to host"
    return "connection failed"


def _chain(exc: BaseException) -> list[BaseException]:
    """`exc` and the exceptions it was raised from or while handling, outermost first.

    Suppressed contexts count (httpcore raises its ConnectError with the socket error only as a
    suppressed context), but one of the proxy's own errors ends the chain: it closed another
    call's story. A fallback upstream's failure is raised while the primary's `UpstreamFailed` is
    handled, and the primary's refused connection is no reason of the fallback's.
    """
    chain: list[BaseException] = []
    current: BaseException | None = exc
    while current is not None and len(chain) < 16 and all(current is not seen for seen in chain):
        if chain and isinstance(current, ProxyError):
            break
        chain.append(current)
        current = current.__cause__ or current.__context__
    return chain


# litellm wraps the upstream's text in its own class names, sometimes twice ("litellm.BadRequestError:
# BadRequestError: OpenAIException - Error code: 400 - {...}"), and may repeat the chain after
# "Original exception:". The client gets the upstream's words only. Its class names are known
# once it is loaded; before that, no message of litellm's exists to unwrap.
_WRAPPINGS: dict[bool, re.Pattern[str]] = {}


def _wrapping() -> re.Pattern[str]:
    litellm = sys.modules.get("litellm")
    pattern = _WRAPPINGS.get(litellm is not None)
    if pattern is None:
        exceptions = vars(litellm.exceptions) if litellm is not None else {}
        names = sorted(
            (name for name, obj in exceptions.items() if isinstance(obj, type) and issubclass(obj, Exception)),
            key=len,
            reverse=True,
        )
        named = rf"(?:litellm\.(?:\w+\.)*)?(?:{'|'.join(names)})\b|" if names else ""
        pattern = re.compile(
            rf"(?:\b{named}\b\w+Exception)\s*(?::|\s-)\s*"
            r"|\blitellm\.(?:\w+\.)*[A-Z]\w*\s*"  # a class name left alone, not litellm.ai in a link
        )
        _WRAPPINGS[litellm is not None] = pattern
    return pattern
_STATUS_PREFIX = re.compile(r"^\s*Error code:\s*\d+\s*-\s*")  # the openai SDK's, before the body
_REPEATED = re.compile(r"\s*Original exception:.*", re.DOTALL)


def upstream_detail(exc: BaseException) -> str:
    """The upstream's own error message, without litellm's wrapping; "" when there is none."""
    from_body = _error_message(getattr(exc, "body", None))  # openai's exceptions keep the JSON body
    if from_body:
        return _one_line(from_body)
    text = str(getattr(exc, "message", None) or exc)
    text = _wrapping().sub("", _REPEATED.sub("", text))
    text = _STATUS_PREFIX.sub("", text)
    return _one_line(_error_message(_parse(text)) or text)


def _parse(text: str) -> Any:
    """The body as data: JSON, or the Python repr openai puts in "Error code: 400 - {...}"."""
    text = text.strip()
    if not text.startswith("{") or len(text) > 20_000:
        return None
    try:
        return json.loads(text)
    except ValueError:
        pass
    try:
        return ast.literal_eval(text)  # literals only: never evaluates code
    except (ValueError, SyntaxError, MemoryError, RecursionError):
        return None


def _error_message(body: Any) -> str | None:
    """`error.message` (OpenAI), a string `error`, or a top-level `message` or `detail`."""
    if not isinstance(body, Mapping):
        return None
    error = body.get("error")
    if isinstance(error, Mapping):
        error = error.get("message")
    for value in (error, body.get("message"), body.get("detail")):
        if isinstance(value, str) and value.strip():
            return value
    return None


def _one_line(text: str) -> str:
    return " ".join(text.split())
