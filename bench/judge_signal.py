"""How well does the embedded model judge its own answers? P(yes) per answer cluster, as AUROC.

For each of a pool's first `--items` items (shuffled with `--seed`), every distinct extracted
answer is put to the embedded Gemma 3 270M as a yes/no question, rendered as the proxy renders a
chat for a completion upstream (proxy.chat_prompt):

    Question: What is 1 plus 7?
    Proposed answer: 9
    Is the proposed answer correct? Reply yes or no.
    Answer:

P(yes) = P(yes or Yes) / P(yes, Yes, no or No), read by teacher forcing (bench/pool_logprobs.py).
Prints the AUROC of P(yes) for right against wrong clusters, next to the vote share's on the same
clusters: a judge signal is worth a learned weight only where it ranks answers better than votes.

    python bench/judge_signal.py --pool bench/results/pools/add1.jsonl --items 60
"""

from __future__ import annotations

import argparse
import math
import random
import sys
from collections import Counter
from collections.abc import Sequence
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from bench.pool_logprobs import Scorer  # noqa: E402
from bench.replay import load_pools  # noqa: E402
from proxy.chat_prompt import render_chat  # noqa: E402
from proxy.embedded import EmbeddedModel  # noqa: E402
from strategies.answers import answer_key  # noqa: E402
from strategies.contract import Candidate  # noqa: E402
from strategies.learned_selection import auroc  # noqa: E402


def p_yes(scorer: Scorer, question: str, answer: str) -> float:
    prompt = render_chat([{"role": "user", "content": (
        f"{question}\nProposed answer: {answer}\nIs the proposed answer correct? Reply yes or no."
    )}]).prompt

    def mass(*words: str) -> float:
        return float(np.logaddexp.reduce([sum(scorer.token_logprobs(prompt, w)) for w in words]))

    return 1.0 / (1.0 + math.exp(mass("no", "No") - mass("yes", "Yes")))


def main(argv: Sequence[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--pool", type=Path, default=ROOT / "bench" / "results" / "pools" / "add1.jsonl")
    p.add_argument("--items", type=int, default=60)
    p.add_argument("--seed", type=int, default=3)
    p.add_argument("--threads", type=int, default=None)
    args = p.parse_args(argv)

    items = load_pools(args.pool)
    random.Random(args.seed).shuffle(items)
    scorer = Scorer(EmbeddedModel().model_path(), 1024, args.threads)
    judged, shares, right = [], [], []
    for item in items[: args.items]:
        texts = [s["text"] for samples in item["pool"].values() for s in samples]
        votes = Counter(answer_key(Candidate(0, "pool", {"role": "assistant", "content": t})) for t in texts)
        for answer, count in votes.items():
            if answer is None:
                continue
            judged.append(p_yes(scorer, item["messages"][-1]["content"], answer))
            shares.append(count / len(texts))
            right.append(answer == item["answer"])
    y = np.array(right, dtype=bool)
    print(f"{args.pool.stem}: {min(args.items, len(items))} items, {len(y)} answer clusters, {int(y.sum())} right")
    print(f"AUROC  judge P(yes) {auroc(np.array(judged), y):.3f}   vote share {auroc(np.array(shares), y):.3f}")


if __name__ == "__main__":
    main()
