"""Replay pooled candidates through the proxy's own strategies, with no model in the loop.

`PoolServices` is a `Services` whose `generate` hands out a pool's stored samples in order, per
prompt variant (it recognises a variant by the messages the strategy renders). So `BestOfN.run`
and `BestOfN.reference` run exactly as they do for a client request or a gold probe, on
candidates every selector and estimator shares (bench/gold_pools.py makes the pools).
`serve_pools` sends a pool set through one route as its traffic; `stub_like_pools` makes pools of
a task with a known answer distribution (bench/compare_strategies.py compares routes on both).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from strategies.best_of_n.loop import BestOfN
from strategies.contract import Batch, Message, Sample, StrategyRequest, Usage


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

    async def generate(self, messages: Sequence[Message], n: int, upstream: str | None = None) -> Batch:
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


# ---- adaptive against fixed best-of-N on pools (method §4.6; bench/compare_strategies.py) ---------


@dataclass
class Served:
    item: str
    utility: float
    candidates: int
    stop: str


async def serve_pools(strategy: BestOfN, items: Sequence[dict[str, Any]]) -> list[Served]:
    """Every item through one route, in order, as its traffic: what the route learns from one item
    (its vote prior) it uses on the next. A candidate's utility is its pooled sample's; the pool's
    order is every route's order, so routes differ only in what they do with the samples."""
    served = []
    for item in items:
        variants = list(item["pool"])
        services = PoolServices(item["pool"], await render_variants(item["messages"], variants))
        outcome = await strategy.run(StrategyRequest(item["messages"]), services)  # type: ignore[arg-type]
        chosen = outcome.chosen
        order = sum(1 for c in outcome.candidates[: outcome.selected] if c.variant == chosen.variant)
        utility = float(item["pool"][chosen.variant][order]["utility"])
        served.append(Served(item["id"], utility, len(outcome.candidates), outcome.stop_reason.value))
    return served


def stub_like_pools(questions: int, p_right: float, samples: int, seed: int, wrong: int = 4,
                    prefix: str = "q") -> list[dict[str, Any]]:
    """Pools of a stub-like task: one sample is right ("42") with `p_right`, else one of `wrong`
    wrong answers uniformly (tests/stub_upstream.py's `math` model, at a fixed p)."""
    rng = np.random.default_rng(seed)
    wrong_answers = [str(n) for n in (41, 43, 24, 7, 13, 17, 19, 23)[:wrong]]
    pools = []
    for q in range(questions):
        answers = ["42" if rng.random() < p_right else str(rng.choice(wrong_answers)) for _ in range(samples)]
        pools.append({
            "id": f"{prefix}{q}",
            "messages": [{"role": "user", "content": f"Question {prefix}{q}: what is 6*7?"}],
            "pool": {"original": [{"text": f"The answer is {a}.", "utility": 1.0 if a == "42" else 0.0}
                                  for a in answers]},
        })
    return pools
