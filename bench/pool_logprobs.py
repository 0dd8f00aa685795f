"""Token logprobs for pooled candidates, by teacher forcing: what DeepConf's signals need.

Sampling with `logprobs` through llama-cpp-python's server costs about 0.5 s per token here (it
sorts the 262k-token vocabulary in Python for every token), so bench/gold_pools.py samples
without them. This scores each stored sample instead: the embedded Gemma 3 270M reads the prompt
the proxy sent for that variant (proxy.chat_prompt's transcript, the same rendering as serving),
then the sample's text, and each answer token's log-probability is read from the logits, as the
server would have reported it (log-softmax of the raw logits, before temperature). The prompt's
KV cache is reused across a variant's samples, so a 200-item pool takes minutes.

    python bench/pool_logprobs.py --pools bench/results/pools --tasks add1 --out bench/results/pools-logprobs

Writes copies of the pools with `token_logprobs` on every sample; bench/replay.py hands them to
the candidates, so bench/select_bench.py's clusters get `conf_mean` and `conf_low`.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from bench.replay import load_pools  # noqa: E402
from proxy.chat_prompt import render_chat  # noqa: E402
from proxy.embedded import EmbeddedModel  # noqa: E402
from strategies.variants import build_variants  # noqa: E402

RESULTS = ROOT / "bench" / "results"


class Scorer:
    def __init__(self, model_path: Path, n_ctx: int, threads: int | None) -> None:
        from llama_cpp import Llama

        self.llm = Llama(model_path=str(model_path), n_ctx=n_ctx, logits_all=True, verbose=False,
                         n_threads=threads)
        self._prompt: list[int] = []

    def token_logprobs(self, prompt: str, completion: str) -> list[float]:
        llm = self.llm
        head = llm.tokenize(prompt.encode(), add_bos=True, special=False)
        # The model continues "Answer:" with a space; the proxy hands out the text after it.
        full = llm.tokenize((prompt + " " + completion.lstrip()).encode(), add_bos=True, special=False)
        cut = len(head) if full[: len(head)] == head else len(head) - 1  # ":" may merge with " "
        context, answer = full[:cut], full[cut:]
        if not answer:
            return []
        if context == self._prompt:
            llm.n_tokens = cut  # keep the prompt's KV cache: eval drops everything after it
        else:
            llm.reset()
            llm.eval(context)
            self._prompt = context
        llm.eval(answer)
        logits = np.asarray(llm.scores[cut - 1 : cut - 1 + len(answer)], dtype=np.float64)
        peak = logits.max(axis=1, keepdims=True)
        log_z = peak[:, 0] + np.log(np.exp(logits - peak).sum(axis=1))
        return [float(x) for x in logits[np.arange(len(answer)), answer] - log_z]


async def annotate(items: list[dict[str, Any]], scorer: Scorer) -> list[dict[str, Any]]:
    from tqdm import tqdm

    out = []
    for item in tqdm(items, desc=items[0]["task"] if items else "", dynamic_ncols=True):
        pool = {}
        for variant in build_variants(list(item["pool"]), None):
            messages, _ = await variant.render(item["messages"], None)  # type: ignore[arg-type]
            prompt = render_chat(messages).prompt
            pool[variant.name] = [
                {**s, "token_logprobs": scorer.token_logprobs(prompt, s["text"])} for s in item["pool"][variant.name]
            ]
        out.append({**item, "pool": pool})
    return out


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--pools", type=Path, default=RESULTS / "pools")
    p.add_argument("--tasks", default="add1", type=lambda s: s.split(","))
    p.add_argument("--out", type=Path, default=RESULTS / "pools-logprobs")
    p.add_argument("--n-ctx", type=int, default=1024)
    p.add_argument("--threads", type=int, default=None)
    return p.parse_args(argv)


async def main(args: argparse.Namespace) -> None:
    model = await asyncio.to_thread(EmbeddedModel().model_path)
    scorer = Scorer(model, args.n_ctx, args.threads)
    args.out.mkdir(parents=True, exist_ok=True)
    for task in args.tasks:
        items = load_pools(args.pools / f"{task}.jsonl")
        annotated = await annotate(items, scorer)
        with (args.out / f"{task}.jsonl").open("w", encoding="utf-8") as handle:
            for item in annotated:
                handle.write(json.dumps(item) + "\n")


if __name__ == "__main__":
    asyncio.run(main(parse_args()))
