"""Replay pooled candidates through the proxy's own strategies, with no model in the loop.

`PoolServices` is a `Services` whose `generate` hands out a pool's stored samples in order, per
prompt variant (it recognises a variant by the messages the strategy renders). So `BestOfN.run`
and `BestOfN.reference` run exactly as they do for a client request or a gold probe, on
candidates every selector and estimator shares (bench/gold_pools.py makes the pools).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from strategies.contract import Batch, Message, Sample, Usage


class PoolExhausted(RuntimeError):
    pass


class PoolServices:
    """Serves `pool[variant]` texts in order; `rendered[variant]` are that variant's messages."""

    def __init__(self, pool: dict[str, list[dict[str, Any]]], rendered: dict[str, list[Message]]) -> None:
        self._queues = {name: list(samples) for name, samples in pool.items()}
        self._by_messages = {json.dumps(messages, sort_keys=True): name for name, messages in rendered.items()}
        self.plain_usage: Usage | None = None

    def variant_of(self, messages: Sequence[Message]) -> str:
        key = json.dumps(list(messages), sort_keys=True)
        if key not in self._by_messages:
            raise KeyError("messages of no pooled variant")
        return self._by_messages[key]

    async def generate(self, messages: Sequence[Message], n: int) -> Batch:
        queue = self._queues[self.variant_of(messages)]
        if len(queue) < n:
            raise PoolExhausted(f"the pool has {len(queue)} samples left, {n} wanted")
        taken, queue[:] = queue[:n], queue[n:]
        samples = [
            Sample({"role": "assistant", "content": s["text"]}, "stop", s.get("token_logprobs"))
            for s in taken
        ]
        return Batch(samples, Usage())

    async def chat(self, upstream: str, messages: Sequence[Message], **params: Any) -> Any:
        raise NotImplementedError("replay serves no judge: use verifiers that read the candidates only")

    async def embed(self, upstream: str, texts: Sequence[str]) -> Any:
        raise NotImplementedError("replay serves no embeddings")

    async def reward(self, endpoint: Any, messages: Sequence[Message], answers: Sequence[str]) -> Any:
        raise NotImplementedError("replay serves no reward model")


async def render_variants(messages: Sequence[Message], variants: Sequence[str]) -> dict[str, list[Message]]:
    """The messages each of the proxy's prompt `variants` sends for `messages` (what PoolServices
    recognises a variant by)."""
    from strategies.best_of_n.variants import build_variants

    out = {}
    for variant in build_variants(list(variants), None):
        rendered, _ = await variant.render(list(messages), None)  # type: ignore[arg-type]
        out[variant.name] = rendered
    return out


def load_pools(path: Path) -> list[dict[str, Any]]:
    with path.open(encoding="utf-8") as handle:
        return [json.loads(line) for line in handle if line.strip()]
