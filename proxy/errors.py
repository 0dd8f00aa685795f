"""Errors a client can see, each with its HTTP status and an OpenAI-shaped body.

The whole tree; the status is the one the client gets:

* ProxyError ............. 500  a bug or anything unforeseen; `internal_error()` keeps the detail in the log
  + InvalidRequest ....... 400  the client's request is malformed or exceeds the route's limits
    - TokenBudgetExceeded  400  the request cannot fit its route's token budget (a prompt too long)
  + AuthenticationFailed . 401  the proxy's own API key is missing or wrong
  + ModelNotFound ........ 404  no route serves the requested model
  + RequestTimedOut ...... 408  the request body did not arrive within the read timeout
  + PayloadTooLarge ...... 413  the request body exceeds the server's size limit
  + RateLimited .......... 429  the client key is over one of its limits (`server.keys`); see Retry-After
  + HeadersTooLarge ...... 431  the request line and headers exceed the server's size limit
  + ClientDisconnected ... 499  the client hung up; its work was cancelled (only the log sees it)
  + UpstreamError ........ (base, never raised itself) an upstream gave no usable answer
    - UpstreamFailed ..... 502  a model upstream errored, was unreachable, rate-limited us past
                                our retries or cut a stream; a reward endpoint failed; or no
                                candidate of a strategy survived
      · CallCeilingReached 502  the request used every upstream call its route allows
    - UpstreamTimedOut ... 504  the upstream, or the whole request, ran past its timeout
    - UpstreamRejected ... 400  the upstream refused the request as invalid (context window
                                exceeded included): the client's to fix, so not a 5xx

`proxy.upstream.client` is the one place that turns a litellm exception into an `UpstreamError`;
every other module raises these classes directly (the app's 404 and 405 for unknown endpoints
are small subclasses of ModelNotFound and InvalidRequest).
"""

from __future__ import annotations

from typing import Any

from strategies.contract import BudgetExhausted


class ProxyError(Exception):
    status: int = 500
    type: str = "server_error"
    code: str | None = None

    def __init__(self, message: str, *, param: str | None = None, code: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.param = param
        if code is not None:
            self.code = code

    def body(self) -> dict[str, Any]:
        return {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}


class InvalidRequest(ProxyError):
    status = 400
    type = "invalid_request_error"


class AuthenticationFailed(ProxyError):
    status = 401
    type = "authentication_error"
    code = "invalid_api_key"


class ModelNotFound(ProxyError):
    status = 404
    type = "invalid_request_error"
    code = "model_not_found"


class RequestTimedOut(ProxyError):
    status = 408
    type = "invalid_request_error"
    code = "request_timeout"


class PayloadTooLarge(ProxyError):
    status = 413
    type = "invalid_request_error"
    code = "payload_too_large"


class TokenBudgetExceeded(InvalidRequest, BudgetExhausted):
    """A strategy sees it as `BudgetExhausted` (stop sampling); a client, as a 400."""

    code = "token_budget_exceeded"


class ClientDisconnected(ProxyError):
    """Nobody reads this response: it exists so a hang-up ends the request like any other error,
    instead of as a cancellation the server would log with a traceback."""

    status = 499
    type = "client_closed_request"
    code = "client_disconnected"


class RateLimited(ProxyError):
    """As OpenAI answers a limit: `type` says which kind (`requests` or `tokens`)."""

    status = 429
    type = "requests"
    code = "rate_limit_exceeded"

    def __init__(self, message: str, *, retry_after_s: int, kind: str = "requests") -> None:
        super().__init__(message)
        self.retry_after_s = retry_after_s
        self.type = kind


class HeadersTooLarge(ProxyError):
    status = 431
    type = "invalid_request_error"
    code = "headers_too_large"


class ServerDraining(ProxyError):
    """The server is shutting down and a request outlasted `server.drain_s`: retry elsewhere."""

    status = 503
    type = "server_error"
    code = "server_shutting_down"


class UpstreamError(ProxyError):
    """Base of the upstream errors, so callers can catch 'the upstream did not answer' in one clause.

    `summary` is the message without the upstream's own words, which may echo the prompt back:
    it is what a log line can carry when prompts are not to be logged.
    """

    status = 502
    type = "upstream_error"
    code = "upstream_error"

    def __init__(
        self, message: str, *, param: str | None = None, code: str | None = None, summary: str | None = None
    ) -> None:
        super().__init__(message, param=param, code=code)
        self.summary = message if summary is None else summary


class UpstreamFailed(UpstreamError):
    status = 502
    type = "upstream_error"
    code = "upstream_error"


class CallCeilingReached(UpstreamFailed):
    """Candidates, judges, paraphrases and retries share one ceiling per request; it is spent."""

    code = "upstream_call_ceiling"


class UpstreamTimedOut(UpstreamError):
    status = 504
    type = "upstream_error"
    code = "upstream_timeout"


class UpstreamRejected(UpstreamError):
    """The upstream refused the request as invalid: the client's to fix, so 400."""

    status = 400
    type = "invalid_request_error"
    code = "upstream_rejected"


def internal_error() -> ProxyError:
    return ProxyError("internal error; the request id identifies it in the proxy's log", code="internal_error")
