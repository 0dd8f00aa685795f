"""litellm as the proxy's `Transport`, imported only by a process with an upstream it serves.

Importing litellm costs seconds of CPU per process (3.3 s measured in issue 24), which was most
of a proxy's start. Upstreams that speak OpenAI's protocol go through the native client
(proxy/upstream/native.py), so a proxy made only of those never pays it. An upstream that needs
litellm imports it when its `UpstreamClient` is built, at start-up, never on a first request
(an import inside the event loop would stall every request in flight for seconds).

The worker's httpx pool (`proxy.upstream.client.litellm_pool`) is handed to litellm here, when
the pool opens or when litellm is imported, whichever comes second.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from types import ModuleType

import httpx

__all__ = ["litellm_module", "litellm_session"]

_session: httpx.AsyncClient | None = None  # the open pool, handed to litellm when it is imported


def litellm_module() -> ModuleType:
    """litellm, imported (once) and set up: quiet, offline, sending through the worker's pool."""
    loaded = sys.modules.get("litellm")
    if loaded is not None and getattr(loaded, "_rvr_ready", False):
        return loaded
    # Otherwise its import fetches the model cost map from the internet, warns, and retries in a thread.
    os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")
    import litellm

    litellm.suppress_debug_info = True  # else it prints a multi-line banner to stdout on every error
    litellm.aclient_session = _session
    litellm._rvr_ready = True  # type: ignore[attr-defined]
    return litellm


@contextmanager
def litellm_session(http: httpx.AsyncClient) -> Iterator[None]:
    """litellm sends every upstream call through `http` while this is open (it reads the
    module-level `aclient_session`), if it is loaded now or gets loaded meanwhile."""
    global _session
    previous, _session = _session, http
    _hand_over(http)
    try:
        yield
    finally:
        _session = previous
        _hand_over(previous)


def _hand_over(http: httpx.AsyncClient | None) -> None:
    loaded = sys.modules.get("litellm")
    if loaded is not None:
        loaded.aclient_session = http
