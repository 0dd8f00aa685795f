"""The state backend a config names: one per worker, started and closed by the app's lifespan."""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path

from proxy.config.scale import StateSettings
from proxy.state.base import SharedState
from proxy.state.local import LOCAL_STATE_ENV, LocalState
from proxy.state.memory import MemoryState


def build_state(settings: StateSettings, environ: Mapping[str, str] = os.environ) -> SharedState:
    if settings.backend == "redis":
        from proxy.state.redis import RedisState  # redis-py is imported only when configured

        return RedisState(settings)
    local = environ.get(LOCAL_STATE_ENV)
    if local:  # `serve --workers N`: the instance's workers share one file (proxy/state/local.py)
        return LocalState(Path(local))
    return MemoryState()
