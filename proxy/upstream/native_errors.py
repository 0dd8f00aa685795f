"""How the native client (proxy/upstream/native.py) fails, in its own words.

The native client turns aiohttp's exceptions into these at its one boundary (as httpx's
transport turns httpcore's into its own), so `proxy.upstream.error_mapping` classifies them like
litellm's without knowing which HTTP library sits below. Each says what happened to the call:
no connection, an HTTP error answer, a connection lost after the request went out, an error
event inside a stream, or an answer that is not the protocol's.
"""

from __future__ import annotations

from typing import Any

__all__ = ["ConnectFailed", "ConnectionLost", "InvalidAnswer", "StatusError", "StreamErrorEvent"]


class ConnectFailed(Exception):
    """No connection to the upstream was made; raised from the operating system's error, which
    says why (refused, unresolved, unreachable)."""


class ConnectionLost(Exception):
    """The connection broke after the request went out: before the answer, or in the middle of it."""


class StatusError(Exception):
    """The upstream answered with an HTTP error status.

    `body` is the answer's JSON (OpenAI's `{"error": {"message": ...}}`) when it was JSON, for
    the upstream's own words; `message` is its text otherwise.
    """

    def __init__(self, status_code: int, body: Any, message: str) -> None:
        super().__init__(message)
        self.status_code = status_code
        self.body = body
        self.message = message


class StreamErrorEvent(Exception):
    """An `error` event inside a stream the upstream had answered with 200."""

    def __init__(self, body: dict[str, Any]) -> None:
        super().__init__("the upstream's stream carried an error event")
        self.body = body


class InvalidAnswer(Exception):
    """An answer that is not OpenAI's protocol (a body that is not a JSON object)."""
