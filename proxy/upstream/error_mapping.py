"""What an upstream failure means: the client's error, the metric label, whether to retry.

litellm raises its own exception classes with messages that chain provider, SDK and litellm
text. `classify` maps an exception once (like httpx's `map_httpcore_exceptions`), and
`translate` words it as the proxy's own error, keeping only the upstream's message.
"""

from __future__ import annotations

import ast
import asyncio
import json
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import litellm
from litellm import exceptions as litellm_exceptions

from proxy.config.secrets import Redactor
from proxy.errors import UpstreamError, UpstreamFailed, UpstreamRejected, UpstreamTimedOut

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


# First match wins, so subclasses come before their bases (context window before bad request).
# Timeouts are not retried: the client already waited `timeout_s` once.
FAILURES: tuple[tuple[tuple[type[BaseException], ...], Failure], ...] = (
    (
        (litellm.Timeout, asyncio.TimeoutError),
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


def classify(exc: BaseException) -> Failure:
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
