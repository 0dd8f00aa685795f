"""Candidate pools from the embedded Gemma 3 270M, scored by each task's own checker.

One pool per task item: `--per-variant` candidates from each prompt variant (default: original
and format_reminder), all sampled through the real proxy (a passthrough route over
the embedded model, so chats are rendered exactly as a route would render them). The gold
benchmarks replay these pools through the proxy's own strategies (bench/replay.py), so every
selector and every estimator sees the same candidates, and 200 gold/traffic splits cost nothing.

Tasks, the three where the model's wrong answers cluster (verifier-truth screen) plus a control:
- `add1`: 1-digit addition, all 100 ordered pairs × `--seeds` few-shot sets whose three shot
  answers are distinct (a shot answer the model copies then differs per seed);
- `legs`: reasoning-gym `leg_counting`, one animal, 1-2 of it;
- `gcd`: reasoning-gym `gcd`, values ≤ 20;
- `sum2`: reasoning-gym `basic_arithmetic`, 2 one-digit terms, + and − (meant as the control, but
  the model's votes are wrong here too: majority 0.145 against an oracle of 0.44);
- `capitals` (the control, majority vote works): the capital of each of 118 countries
  (bench/real_tasks.py) × `--seeds` few-shot sets of three other countries.

    python bench/gold_pools.py --tasks add1,legs,gcd --items 200     # writes bench/results/pools/<task>.jsonl

On 2 busy cores a sample took 1-4 s; `--variants original --per-variant 8` keeps a run near an hour.

Token logprobs for pooled samples, by teacher forcing (`--logprobs`): what DeepConf's signals
need. Sampling with `logprobs` through llama-cpp-python's server costs about 0.5 s per token here
(it sorts the 262k-token vocabulary in Python for every token), so the pools are sampled without
them. `--logprobs` scores each stored sample instead: the embedded Gemma 3 270M reads the prompt
the proxy sent for that variant (proxy.upstream.chat_prompt's transcript, the same rendering as
serving), then the sample's text, and each answer token's log-probability is read from the
logits, as the server would have reported it (log-softmax of the raw logits, before
temperature). The prompt's KV cache is reused across a variant's samples, so a 200-item pool
takes minutes. It writes copies of the pools with `token_logprobs` on every sample;
bench/replay.py hands them to the candidates, so bench/select_bench.py's clusters get
`conf_mean` and `conf_low`:

    python bench/gold_pools.py --logprobs --tasks add1    # bench/results/pools -> bench/results/pools-logprobs

These are the data steps of bench/select_bench.py and bench/validate_calibration.py, whose
`--smoke` runs build small pools with `make_pools` and so exercise both steps.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import shutil
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the checkout: bench.*, proxy, strategies

from bench.common import RESULTS, HelpFormatter, start_proxy
from bench.real_tasks import capitals_items, capitals_score, extract_answer, few_shot

POOLS = RESULTS / "pools"
LOGPROB_POOLS = RESULTS / "pools-logprobs"
VARIANTS = ("original", "format_reminder")
RG_TASKS: dict[str, tuple[str, dict[str, Any]]] = {
    "legs": ("leg_counting", {"min_animals": 1, "max_animals": 1, "min_instances": 1, "max_instances": 2}),
    "gcd": ("gcd", {"min_value": 1, "max_value": 20}),
    "sum2": ("basic_arithmetic", {
        "min_terms": 2, "max_terms": 2, "min_digits": 1, "max_digits": 1, "operators": ["+", "-"],
        "allow_parentheses": False, "allow_negation": False,
    }),
}


@dataclass
class PoolItem:
    task: str
    id: str
    answer: str
    raw: dict[str, Any]
    messages: list[dict[str, str]]
    shot_answers: list[str]


def add1_items(seeds: int) -> list[PoolItem]:
    items = []
    for seed in range(seeds):
        rng = random.Random(1000 + seed)
        while True:  # three shots with distinct answers
            shots = [(rng.randint(0, 9), rng.randint(0, 9)) for _ in range(3)]
            if len({a + b for a, b in shots}) == 3:
                break
        pairs = [(f"What is {a} plus {b}?", str(a + b)) for a, b in shots]
        for a in range(10):
            for b in range(10):
                question = f"What is {a} plus {b}?"
                items.append(PoolItem("add1", f"add1-s{seed}-{a}+{b}", str(a + b), {}, few_shot(pairs, question),
                                      [answer for _, answer in pairs]))
    return items


def capital_items(seeds: int) -> list[PoolItem]:
    return [
        PoolItem("capitals", id_, answer, {}, few_shot(shots, question), [a for _, a in shots])
        for id_, question, answer, shots in capitals_items(seeds)
    ]


def rg_items(task: str, size: int) -> list[PoolItem]:
    import reasoning_gym as rg

    name, config = RG_TASKS[task]
    data = rg.create_dataset(name, size=size, seed=7, **config)
    shots = [(str(e["question"]), str(e["answer"])) for e in rg.create_dataset(name, size=3, seed=10_007, **config)]
    return [
        PoolItem(task, f"{task}-{i}", str(e["answer"]), {k: v for k, v in dict(e).items() if k != "metadata"} | {
            "metadata": e.get("metadata", {})}, few_shot(shots, str(e["question"])), [a for _, a in shots])
        for i, e in enumerate(data)
    ]


def checker_for(task: str) -> Callable[[str, PoolItem], float]:
    """The task's own scorer; an item counts as right only at full credit."""
    if task == "add1":
        return lambda text, item: float(extract_answer(text) == item.answer)
    if task == "capitals":
        return lambda text, item: capitals_score(text, item.answer)
    import reasoning_gym as rg

    name, config = RG_TASKS[task]
    score_answer = rg.create_dataset(name, size=1, seed=0, **config).score_answer
    return lambda text, item: float(score_answer(extract_answer(text), {**item.raw, "answer": item.answer}) == 1.0)


def load_items(task: str, size: int, seeds: int) -> list[PoolItem]:
    if task in ("add1", "capitals"):
        items = add1_items(seeds) if task == "add1" else capital_items(seeds)
        random.Random(5).shuffle(items)
        return items[:size]
    return rg_items(task, size)


async def sample(client: Any, messages: list[dict[str, str]], n: int, args: argparse.Namespace) -> list[str]:
    texts: list[str] = []
    while len(texts) < n:
        reply = await client.chat.completions.create(
            model="gemma", messages=messages, n=min(8, n - len(texts)),
            temperature=args.temperature, top_p=0.95, max_tokens=args.max_tokens,
        )
        texts += [c.message.content or "" for c in reply.choices]
    return texts


async def build(args: argparse.Namespace) -> None:
    import openai
    from tqdm import tqdm

    from proxy.local.model import EmbeddedModel
    from strategies.best_of_n.variants import build_variants

    variants = build_variants(args.variants, None)
    model = EmbeddedModel(logits_all=False, n_threads=args.threads)
    workdir = Path(tempfile.mkdtemp(prefix="rvr-pools-"))
    await model.start()
    upstream = {
        "name": "gemma",
        "litellm_params": {"model": "text-completion-openai/gemma", "api_base": model.api_base, "api_key": "none"},
        "mode": "completion", "supports_n": False, "max_concurrency": 1, "timeout_s": 120, "retries": 1,
    }
    config = {"upstreams": [upstream], "routes": [{"model": "gemma", "upstream": "gemma", "limits": {"max_n": 8}}]}
    proxy, base = await asyncio.to_thread(start_proxy, workdir, config)
    client = openai.AsyncOpenAI(base_url=f"{base}/v1", api_key="unused", max_retries=2, timeout=600)
    try:
        args.out.mkdir(parents=True, exist_ok=True)
        for task in args.tasks:
            path = args.out / f"{task}.jsonl"
            done = {json.loads(line)["id"] for line in path.open()} if path.exists() else set()
            items = [i for i in load_items(task, args.items, args.seeds) if i.id not in done]
            check = checker_for(task)
            with path.open("a") as out, tqdm(total=len(items), desc=task, dynamic_ncols=True) as bar:
                for item in items:
                    pool: dict[str, Any] = {}
                    for variant in variants:
                        messages, _ = await variant.render(item.messages, None)  # type: ignore[arg-type]
                        texts = await sample(client, messages, args.per_variant, args)
                        pool[variant.name] = [{"text": t, "utility": check(t, item)} for t in texts]
                    out.write(json.dumps({
                        "task": task, "id": item.id, "answer": item.answer, "raw": item.raw,
                        "messages": item.messages, "shot_answers": item.shot_answers, "pool": pool,
                        "time": time.time(),
                    }) + "\n")
                    out.flush()
                    bar.update(1)
    finally:
        await client.close()
        proxy.stop()
        await model.stop()


# ---- token logprobs by teacher forcing (--logprobs) ----------------------------------------------


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

    from bench.replay import render_variants
    from proxy.upstream.chat_prompt import render_chat

    out = []
    for item in tqdm(items, desc=items[0]["task"] if items else "", dynamic_ncols=True):
        pool = {}
        for name, messages in (await render_variants(item["messages"], list(item["pool"]))).items():
            prompt = render_chat(messages).prompt
            pool[name] = [{**s, "token_logprobs": scorer.token_logprobs(prompt, s["text"])} for s in item["pool"][name]]
        out.append({**item, "pool": pool})
    return out


async def add_logprobs(args: argparse.Namespace) -> None:
    from bench.replay import load_pools
    from proxy.local.model import EmbeddedModel

    model = await asyncio.to_thread(EmbeddedModel().model_path)
    scorer = Scorer(model, args.n_ctx, args.threads)
    args.out.mkdir(parents=True, exist_ok=True)
    for task in args.tasks:
        items = load_pools(args.pools / f"{task}.jsonl")
        annotated = await annotate(items, scorer)
        with (args.out / f"{task}.jsonl").open("w", encoding="utf-8") as handle:
            for item in annotated:
                handle.write(json.dumps(item) + "\n")


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=HelpFormatter)
    p.add_argument("--tasks", default="add1,legs,gcd,sum2", type=lambda s: s.split(","))
    p.add_argument("--items", type=int, default=200, help="items per task")
    p.add_argument("--seeds", type=int, default=3, help="few-shot sets for add1 (100 items each) and capitals (118 each)")
    p.add_argument("--per-variant", type=int, default=8, help="candidates per prompt variant")
    p.add_argument("--variants", default=",".join(VARIANTS), type=lambda s: s.split(","))
    p.add_argument("--temperature", type=float, default=0.8)
    p.add_argument("--max-tokens", type=int, default=16)
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--out", type=Path, default=None,
                   help="directory of the pool files (default bench/results/pools; with --logprobs "
                        "bench/results/pools-logprobs)")
    p.add_argument("--logprobs", action="store_true",
                   help="instead of sampling, add token logprobs to the pools in --pools and write them to --out")
    p.add_argument("--pools", type=Path, default=POOLS, help="with --logprobs: the pools to read")
    p.add_argument("--n-ctx", type=int, default=1024, help="with --logprobs: the scorer's context")
    args = p.parse_args(argv)
    if args.out is None:
        args.out = LOGPROB_POOLS if args.logprobs else POOLS
    return args


async def make_pools(out: Path, tasks: Sequence[str], items: int, logprobs: bool = False) -> Path:
    """Small pools for the --smoke runs of the benchmarks that replay pools: `items` items of each
    task, 8 samples each from the original prompt, and, with `logprobs`, their token logprobs.
    Returns the directory holding them. Whatever `out` held is removed first: a smoke run samples anew."""
    shutil.rmtree(out, ignore_errors=True)
    sampled = out / "pools"
    await build(parse_args(["--tasks", ",".join(tasks), "--items", str(items), "--seeds", "1", "--variants",
                            "original", "--per-variant", "8", "--out", str(sampled)]))
    if not logprobs:
        return sampled
    await add_logprobs(parse_args(["--logprobs", "--tasks", ",".join(tasks), "--pools", str(sampled),
                                   "--out", str(out / "pools-logprobs")]))
    return out / "pools-logprobs"


def main(argv: Sequence[str] | None = None) -> None:
    args = parse_args(argv)
    asyncio.run(add_logprobs(args) if args.logprobs else build(args))


if __name__ == "__main__":
    main()
