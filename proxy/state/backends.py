"""The state backend a config names: one per worker, started and closed by the app's lifespan."""

from __future__ import annotations

from proxy.config.scale import StateSettings
from proxy.state.base import SharedState
from proxy.state.memory import MemoryState


def build_state(settings: StateSettings) -> SharedState:
    if settings.backend == "redis":
        from proxy.state.redis import RedisState  # redis-py is imported only when configured

        return RedisState(settings)
    return MemoryState()
