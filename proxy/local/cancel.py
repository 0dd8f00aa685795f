"""Runs inside the embedded model's server process: generation stops when its client hangs up.

Why: llama-cpp-python's server runs a non-streamed completion to the end in a worker thread,
whatever happens to the connection, and serves one request at a time. A request the proxy
abandoned (client gone, timeout, shutdown) kept the model busy for up to `max_tokens` tokens
while the next request queued behind it. Its streamed path checks for a disconnect only between
chunks, and its `interrupt_requests` option cuts a stream short whenever *another* request
arrives, which would silently truncate the proxy's concurrent candidates; so it stays off.

What this adds, for every POST:

- an ASGI middleware that, once the request body has been read, keeps reading the connection
  for `http.disconnect` and sets a per-request `threading.Event` when it comes;
- a wrapper on `Llama.create_completion` (which chat completions also end in) that adds a
  stopping criterion checking that event. llama.cpp checks stopping criteria after every
  sampled token, so a hung-up request stops within one token and frees the model.

The event travels in a context variable: Starlette and sse-starlette run the generation in a
worker thread or task that copies the request's context, so each generation sees only its own
request's event, never a queued one's.

Loaded by file path (not imported as `proxy.…`) by the bootstrap in `proxy.local.model`, so it
must import nothing from this project.
"""

from __future__ import annotations

import asyncio
import contextvars
import functools
import inspect
import threading
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

# What the server's log says when a generation is cut short; tests and people grep for it.
STOPPED_MARK = "rvr-proxy: client closed the connection; generation stopped after"
# What it says when this llama-cpp-python cannot be patched; the proxy repeats it in its log.
UNPATCHED_MARK = "rvr-proxy: generation will not stop on disconnect"

_GONE: contextvars.ContextVar[threading.Event | None] = contextvars.ContextVar("rvr_client_gone", default=None)


class StopOnDisconnect:
    """ASGI middleware: `_GONE` holds an event set when this request's client disconnects."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope.get("type") != "http" or scope.get("method") != "POST":
            await self.app(scope, receive, send)
            return
        gone = threading.Event()
        watcher: asyncio.Task[Message] | None = None

        async def watch() -> Message:
            # The app has read the whole body; from here on only a disconnect can arrive.
            while True:
                message = await receive()
                if message.get("type") == "http.disconnect":
                    gone.set()
                    return message

        async def guarded_receive() -> Message:
            nonlocal watcher
            if watcher is None:
                message = await receive()
                if message.get("type") == "http.disconnect":
                    gone.set()
                elif not message.get("more_body", False):
                    watcher = asyncio.ensure_future(watch())
                return message
            if watcher.done():
                # Without suspending: Starlette's `is_disconnected()` polls in a cancelled scope.
                return watcher.result()
            # Shielded: a cancelled poll must not cancel the one reader of the connection.
            return await asyncio.shield(watcher)

        token = _GONE.set(gone)
        try:
            await self.app(scope, guarded_receive, send)
        finally:
            _GONE.reset(token)
            if watcher is not None and not watcher.done():
                watcher.cancel()


class _StopWhenGone:
    """A llama.cpp stopping criterion: true once the request's client has gone."""

    def __init__(self, gone: threading.Event) -> None:
        self.gone = gone
        self.tokens = 0
        self.reported = False

    def __call__(self, input_ids: Any, logits: Any) -> bool:
        if not self.gone.is_set():
            self.tokens += 1
            return False
        if not self.reported:  # llama.cpp asks once more after the loop ends
            self.reported = True
            print(f"{STOPPED_MARK} {self.tokens} tokens", flush=True)
        return True


def _wrap_create_completion(original: Callable[..., Any]) -> Callable[..., Any]:
    from llama_cpp import StoppingCriteriaList

    signature = inspect.signature(original)

    @functools.wraps(original)
    def create_completion(*args: Any, **kwargs: Any) -> Any:
        gone = _GONE.get()
        if gone is None:  # not called for a request (or from a thread without its context)
            return original(*args, **kwargs)
        bound = signature.bind(*args, **kwargs)
        existing = bound.arguments.get("stopping_criteria")
        bound.arguments["stopping_criteria"] = StoppingCriteriaList([*(existing or []), _StopWhenGone(gone)])
        return original(*bound.args, **bound.kwargs)

    return create_completion


def install() -> bool:
    """Patch llama_cpp's server before it starts. False (and a line on stdout) if this
    llama-cpp-python is shaped differently: the server then runs as it comes."""
    try:
        import llama_cpp
        import llama_cpp.server.app as server_app

        original_completion = llama_cpp.Llama.create_completion
        if "stopping_criteria" not in inspect.signature(original_completion).parameters:
            raise AttributeError("Llama.create_completion takes no stopping_criteria")
        original_create_app = server_app.create_app
    except (ImportError, AttributeError, ValueError, TypeError) as exc:
        print(f"{UNPATCHED_MARK} ({exc})", flush=True)
        return False

    llama_cpp.Llama.create_completion = _wrap_create_completion(original_completion)  # type: ignore[method-assign]

    @functools.wraps(original_create_app)
    def create_app(*args: Any, **kwargs: Any) -> Any:
        app = original_create_app(*args, **kwargs)
        app.add_middleware(StopOnDisconnect)
        return app

    server_app.create_app = create_app
    return True
