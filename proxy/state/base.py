"""State every worker and every instance must agree on: one small async interface, two backends.

`server.state.backend: memory` (the default) keeps it in the process, as a single process needs,
or, under `serve --workers N`, in a SQLite file the instance's workers share (`proxy.state.local`);
`redis` shares it through Redis, so N workers and M instances behind a load balancer learn as one.
The proxy builds one per worker (`Proxy.state`, started and closed by the app's lifespan):

    state = build_state(settings)                 # `proxy.state.backends`: MemoryState or RedisState
    await state.put_json("probe/llm", {...})      # any JSON value; the last writer wins
    await state.get_json("probe/llm")             # the value, or None if never written
    await state.add_totals("risk/chat", {"candidate.sum": 0.25, "candidate.count": 1.0})
                                                  # adds atomically, returns every field's total
    await state.admit([Counter(...)])             # rate limits: None, or the first counter refused
    await state.add([Counter(...)])               # charge counters after the fact (or settle a
                                                  # reservation: amounts may be negative)

Keys are short paths made of config names (`probe/<upstream>`, `risk/<route>`); the backend adds
`<prefix>:`. Never put a client's key or request content in one: hash it (`proxy.access.limits`).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from proxy.telemetry import metrics


@dataclass(frozen=True)
class Counter:
    """A windowed counter: `key` names the window (e.g. `rl:{ab12}:rpm:29012345`)."""

    key: str
    amount: int  # added when admitted (`admit`) or charged (`add`, where it may be negative)
    limit: int  # `admit` refuses when value + max(amount, 1) > limit; a value at the limit refuses all
    ttl_s: int  # kept this long after its last change: at least to its window's end


class SharedState:
    """The interface; `shared` says whether other processes see what this one writes."""

    shared = False

    @property
    def up(self) -> bool:
        return True

    async def start(self) -> None:
        metrics.STATE_BACKEND_UP.set(1)

    async def close(self) -> None:
        pass

    async def get_json(self, key: str) -> Any:
        raise NotImplementedError

    async def put_json(self, key: str, value: Any) -> None:
        raise NotImplementedError

    async def add_totals(self, key: str, deltas: Mapping[str, float]) -> dict[str, float]:
        raise NotImplementedError

    async def admit(self, counters: Sequence[Counter]) -> Counter | None:
        raise NotImplementedError

    async def add(self, counters: Sequence[Counter]) -> None:
        raise NotImplementedError
