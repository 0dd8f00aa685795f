"""Errors a client can see, each with its HTTP status and an OpenAI-shaped body."""

from __future__ import annotations

from typing import Any


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


class PayloadTooLarge(ProxyError):
    status = 413
    type = "invalid_request_error"
    code = "payload_too_large"


class UpstreamFailed(ProxyError):
    status = 502
    type = "upstream_error"
    code = "upstream_error"


class UpstreamTimedOut(ProxyError):
    status = 504
    type = "upstream_error"
    code = "upstream_timeout"


class UpstreamRejected(ProxyError):
    """The upstream refused the request as invalid: the client's to fix, so 400."""

    status = 400
    type = "invalid_request_error"
    code = "upstream_rejected"


def internal_error() -> ProxyError:
    return ProxyError("internal error; the request id identifies it in the proxy's log", code="internal_error")
