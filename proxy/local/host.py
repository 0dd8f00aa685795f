"""Runs the embedded model's supervisor on its own event loop thread, beside uvicorn.

The model server belongs to the CLI process, not to a worker: with `--workers N` every worker
shares one model server instead of starting N of them.
"""

from __future__ import annotations

import asyncio
import threading
from concurrent.futures import Future

from proxy.local.model import EmbeddedModel


class EmbeddedHost:
    def __init__(self, model: EmbeddedModel | None = None) -> None:
        self.model = model or EmbeddedModel()
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="rvr-embedded", daemon=True)

    def start(self, timeout: float = 180.0) -> str:
        """Start the model server and return its api_base once it answers."""
        self._thread.start()
        future: Future[None] = asyncio.run_coroutine_threadsafe(self.model.start(), self._loop)
        future.result(timeout)
        return self.model.api_base

    def stop(self, timeout: float = 30.0) -> None:
        if not self._thread.is_alive():
            return
        try:
            asyncio.run_coroutine_threadsafe(self.model.stop(), self._loop).result(timeout)
        finally:
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(timeout)
