"""Graceful drain: on SIGTERM, stop taking work, finish what is in flight, then exit.

In each worker, SIGTERM turns /readyz to 503 at once (`Drain.draining`). The worker goes on
accepting and serving for `server.drain_delay_s`, so a balancer that health-checks /readyz marks
it down while it still answers; then uvicorn stops accepting, closes idle kept-alive
connections, lets in-flight requests finish (their responses close their connections) for up to
`server.drain_s`. Just before that time is up (`CUT_MARGIN_S`), the proxy ends what is left itself
(`Drain.cut`): a request gets its own 503 body (`server_shutting_down`) and a stream an error
event, each logged as `drain`, where uvicorn would send a bare 500 or drop the stream, and the
request log would read "client disconnected". Without the delay, a connection the kernel accepted
just before the listener closed, or a request on a kept-alive connection that uvicorn had not
read yet, is reset: a balancer cannot always tell that from a failure after the request ran.
SIGINT (Ctrl-C) skips the delay.

With `--workers N` the supervisor process holds the listening socket too: while it is open the
kernel keeps completing handshakes that no worker will accept, and those connections are reset
when the supervisor exits. `Supervisor` closes its copy and signals the workers the moment
SIGTERM arrives, so once the workers close theirs new connections are refused (a load balancer
retries them elsewhere) instead of queued and dropped.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import signal
import socket
import sys
import threading
from types import FrameType
from typing import Any

import uvicorn
from uvicorn.supervisors import Multiprocess

log = logging.getLogger("rvr_proxy")
STARTUP_FAILURE = 3  # uvicorn's exit status when a server could not start
CUT_MARGIN_S = 0.5  # the proxy ends leftover requests this long before uvicorn would cancel them


class Drain:
    def __init__(self, delay_s: float = 0.0, drain_s: float = 30.0) -> None:
        self.delay_s = delay_s
        self.drain_s = drain_s
        self.draining = False
        self.cut = asyncio.Event()  # set when in-flight requests must end now
        self._delayed: threading.Timer | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    def install(self) -> None:
        """Chain onto uvicorn's SIGTERM/SIGINT handlers; call, from the worker's event loop, once
        the worker's server has set them."""
        if threading.current_thread() is not threading.main_thread():
            return  # an in-process test client: no signals to catch
        try:
            self._loop = asyncio.get_running_loop()
        except RuntimeError:  # installed outside the server's loop: nothing to cut
            self._loop = None
        for sig in (signal.SIGTERM, signal.SIGINT):
            previous = signal.getsignal(sig)

            def handler(signum: int, frame: FrameType | None, previous: Any = previous) -> None:
                if not self.draining:
                    self.draining = True
                    log.info(json.dumps({"event": "draining", "signal": signal.Signals(signum).name}))
                    self._schedule_cut(self.delay_s if signum == signal.SIGTERM else 0.0)
                if not callable(previous):
                    return
                if signum == signal.SIGTERM and self.delay_s > 0:
                    # A repeated SIGTERM (the supervisor forwards its own) waits for the same timer.
                    if self._delayed is None:
                        self._delayed = threading.Timer(self.delay_s, previous, (signum, None))
                        self._delayed.daemon = True
                        self._delayed.start()
                    return
                previous(signum, frame)  # uvicorn's handler only sets flags: safe from the timer too

            signal.signal(sig, handler)

    def _schedule_cut(self, delay_s: float) -> None:
        """uvicorn starts its `drain_s` wait once the delay is over; end what is left just before
        that wait runs out. call_soon_threadsafe is the loop's one call safe from a signal handler."""
        if self._loop is None:
            return
        after_s = delay_s + max(self.drain_s - CUT_MARGIN_S, self.drain_s / 2)
        self._loop.call_soon_threadsafe(self._loop.call_later, after_s, self.cut.set)


class Supervisor(Multiprocess):
    def __init__(self, config: uvicorn.Config, sockets: list[socket.socket]) -> None:
        super().__init__(config, sockets)
        signal.signal(signal.SIGTERM, self._on_term)

    def _on_term(self, signum: int, frame: FrameType | None) -> None:
        for sock in self.sockets:
            sock.close()
        # Tell the workers now rather than at the supervisor loop's next tick (up to 0.5 s). Not
        # through `terminate_all`, which also closes the health-check pipes the loop still reads.
        for process in self.processes:
            if process.pid is not None and process.exitcode is None:
                os.kill(process.pid, signal.SIGTERM)
        self.signal_queue.append(signum)  # then the loop's own handling: stop, wait for the workers


def run(config: uvicorn.Config) -> None:
    """`uvicorn.run` for an import-string app, with the draining supervisor for several workers."""
    if config.workers > 1:
        Supervisor(config, sockets=[config.bind_socket()]).run()
        return
    server = uvicorn.Server(config)
    server.run()
    if not server.started:
        sys.exit(STARTUP_FAILURE)
