"""What an upstream failure means: the client's error, the metric label, whether to retry.

litellm raises its own exception classes with messages that chain provider, SDK and litellm
text. `classify` maps an exception once (like httpx's `map_httpcore_exceptions`), and
`translate` words it as the proxy's own error, keeping only the upstream's message.
"""

from __future__ import annotations

import ast
import asyncio
import json
import os
import re
import socket
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import httpx
import litellm
from litellm import exceptions as litellm_exceptions

from proxy.config.secrets import Redactor
from proxy.errors import ProxyError, UpstreamError, UpstreamFailed, UpstreamRejected, UpstreamTimedOut

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


TIMEOUTS: tuple[type[BaseException], ...] = (litellm.Timeout, asyncio.TimeoutError)

# First match wins, so subclasses come before their bases (context window before bad request).
# Timeouts are not retried: the client already waited `timeout_s` once.
FAILURES: tuple[tuple[tuple[type[BaseException], ...], Failure], ...] = (
    (
        TIMEOUTS,
        Failure(UpstreamTimedOut, "timeout", retryable=False, verb="timed out", has_status=False),
    ),
    (
        (litellm.ContextWindowExceededError,),
        Failure(
            UpstreamRejected,
            "rejected",
            retryable=False,
            verb="rejected the request (context window exceeded)",
            code="context_length_exceeded",
        ),
    ),
    (
        (litellm.BadRequestError, litellm.UnprocessableEntityError),
        Failure(UpstreamRejected, "rejected", retryable=False, verb="rejected the request"),
    ),
    (
        (litellm.RateLimitError,),
        Failure(UpstreamFailed, "rate_limited", retryable=True, verb="rate-limited the request"),
    ),
    (
        (litellm.InternalServerError, litellm.ServiceUnavailableError, litellm.BadGatewayError),
        Failure(UpstreamFailed, "error", retryable=True, verb="failed"),
    ),
    (
        (litellm.APIConnectionError,),  # litellm says 500 here, but no HTTP answer came back
        Failure(UpstreamFailed, "error", retryable=True, verb="failed", has_status=False),
    ),
)
OTHER_FAILURE = Failure(UpstreamFailed, "error", retryable=False, verb="failed")  # auth, not found, unknown
# No connection was made, so no HTTP status exists, whatever litellm says: it reports a refused
# connection as an InternalServerError with status 500 ("Connection error."). Retried, as a
# restarting upstream refuses connections for a moment.
UNREACHABLE = Failure(UpstreamFailed, "error", retryable=True, verb="could not be reached", has_status=False)


def classify(exc: BaseException) -> Failure:
    if not isinstance(exc, TIMEOUTS) and unreachable_reason(exc) is not None:
        return UNREACHABLE
    for types, failure in FAILURES:
        if isinstance(exc, types):
            return failure
    return OTHER_FAILURE


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
    aiohttp one both raise, or the socket error beneath it): a stream cut after it started is an
    `APIConnectionError` too, but the upstream was reached.
    """
    chain = _chain(exc)
    if not any(isinstance(e, (httpx.ConnectError, ConnectionRefusedError, socket.gaierror)) for e in chain):
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
# "Original exception:". The client gets the upstream's words only.
_LITELLM_NAMES = sorted(
    (name for name, obj in vars(litellm_exceptions).items() if isinstance(obj, type) and issubclass(obj, Exception)),
    key=len,
    reverse=True,
)
_WRAPPING = re.compile(
    rf"(?:\b(?:litellm\.(?:\w+\.)*)?(?:{'|'.join(_LITELLM_NAMES)})\b|\b\w+Exception)\s*(?::|\s-)\s*"
    r"|\blitellm\.(?:\w+\.)*[A-Z]\w*\s*"  # a class name left alone, not litellm.ai in a link
)
_STATUS_PREFIX = re.compile(r"^\s*Error code:\s*\d+\s*-\s*")  # the openai SDK's, before the body
_REPEATED = re.compile(r"\s*Original exception:.*", re.DOTALL)


def upstream_detail(exc: BaseException) -> str:
    """The upstream's own error message, without litellm's wrapping; "" when there is none."""
    from_body = _error_message(getattr(exc, "body", None))  # openai's exceptions keep the JSON body
    if from_body:
        return _one_line(from_body)
    text = str(getattr(exc, "message", None) or exc)
    text = _WRAPPING.sub("", _REPEATED.sub("", text))
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
