"""Connections that cannot pin the server: bounded header size and header read time.

uvicorn closes kept-alive connections that sit idle, but it waits without limit for the
request line and headers of a connection that has sent some bytes, and its default parser
(httptools) buffers headers of any size: 20 unfinished 8 MB header blocks grew the proxy by
167 MB, and 200 slow-header connections were never closed, all before authentication.

`BoundedH11Protocol` is uvicorn's h11 protocol (whose buffer uvicorn caps with
`h11_max_incomplete_event_size`) with a deadline: from the moment a connection opens, or a
finished response leaves it waiting for the next request, its next request line and headers
must arrive within `RVR_HEADER_TIMEOUT_S` seconds, or the connection is closed. Bodies have
their own deadline where they are read (`proxy.server.body.read_json`).
"""

from __future__ import annotations

import asyncio
import os

from uvicorn.protocols.http.h11_impl import H11Protocol

HEADER_TIMEOUT_ENV = "RVR_HEADER_TIMEOUT_S"  # set by the CLI, read in every worker process
DEFAULT_HEADER_TIMEOUT_S = 30.0


def header_timeout() -> float:
    try:
        return float(os.environ.get(HEADER_TIMEOUT_ENV, DEFAULT_HEADER_TIMEOUT_S))
    except ValueError:
        return DEFAULT_HEADER_TIMEOUT_S


class BoundedH11Protocol(H11Protocol):
    _headers_due: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._watch_headers()

    def data_received(self, data: bytes) -> None:
        super().data_received(data)
        self._watch_headers()

    def connection_lost(self, exc: Exception | None) -> None:
        self._stop_watching()
        super().connection_lost(exc)

    def on_response_complete(self) -> None:
        super().on_response_complete()
        self._watch_headers()

    def _awaiting_request(self) -> bool:
        return self.cycle is None or self.cycle.response_complete

    def _watch_headers(self) -> None:
        if not self._awaiting_request():
            self._stop_watching()  # a request is in progress: its headers are all here
        elif self._headers_due is None:
            self._headers_due = self.loop.call_later(header_timeout(), self._headers_late)

    def _stop_watching(self) -> None:
        if self._headers_due is not None:
            self._headers_due.cancel()
            self._headers_due = None

    def _headers_late(self) -> None:
        self._headers_due = None
        if self._awaiting_request() and not self.transport.is_closing():
            self.transport.close()
