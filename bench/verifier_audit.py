"""Verifier audits on real parts: the embedded Gemma 3 270M as a judge, and two flawed reward models.

    python bench/verifier_audit.py                     # Gemma on 120 pairs + both RMs on all pairs
    python bench/verifier_audit.py --max-pairs 40 --threads 1
    python bench/verifier_audit.py --skip-gemma        # only the reward models (seconds)
    python bench/verifier_audit.py --smoke             # both, on 22 and 11 pairs: a check of the whole path

1. Serves the two reward models of bench/audit_reward_models.py (`longer`, `stereotype`) on
   loopback and audits them on every built-in pair (`rvr-proxy audit`, a subprocess).
2. Starts the embedded model (llama.cpp on loopback) and audits it as two judges on a fixed
   sample of `--max-pairs` pairs spread over the domains: pointwise with the `rubric_10` and
   `correctness_yesno` templates, and pairwise with the `verdict` and `hhh` templates (both
   orders each). Its replies are capped at `--judge-max-tokens`: a 270M base model never writes
   the closing "Score: N" line, but its first tokens often are a bare number, A/B or yes/no.

Writes bench/results/verifier_audit/{rms,gemma}/ (report.md, report.json, pairs.jsonl, PNGs) and
prints both reports; `--smoke` writes to bench/results/smoke/verifier_audit/.
Needs the built-in pairs (`rvr-proxy fetch-audit-data`) and, for Gemma, the `local` extra.
"""

from __future__ import annotations

import argparse
import asyncio
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the checkout: bench.*, proxy, strategies

from bench.audit_reward_models import RewardModels
from bench.common import RESULTS, ROOT, SMOKE_RESULTS, HelpFormatter, add_smoke, apply_smoke

SMOKE = {"max_pairs": 11, "rm_max_pairs": 22, "out": SMOKE_RESULTS / "verifier_audit"}


def judge_upstream(api_base: str, max_tokens: int) -> dict[str, Any]:
    return {
        "name": "gemma",
        "litellm_params": {
            "model": "text-completion-openai/gemma",
            "api_base": api_base,
            "api_key": "none",
            "max_tokens": max_tokens,
        },
        "mode": "completion",  # a base model: chats are rendered to a Question/Answer transcript
        "supports_n": False,
        "max_concurrency": 1,  # llama.cpp's server runs one request at a time
        "timeout_s": 120,
        "retries": 1,
    }


def audit(config: dict[str, Any], out: Path, extra: list[str]) -> float:
    out.mkdir(parents=True, exist_ok=True)
    path = out / "config.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    started = time.monotonic()
    command = [sys.executable, "-m", "proxy.cli", "audit", "--config", str(path), "--out", str(out), *extra]
    print("$ " + " ".join(command), file=sys.stderr)
    subprocess.run(command, cwd=ROOT, check=True)
    seconds = time.monotonic() - started
    report = out / "report.md"
    if report.exists():
        print(report.read_text(), flush=True)
    return seconds


def reward_models(args: argparse.Namespace) -> None:
    with RewardModels() as rms:
        config = {
            "upstreams": [{"name": "unused", "litellm_params": {"model": "openai/unused", "api_base": "http://127.0.0.1:9"}}],
            "routes": [
                {
                    "model": "audit-rms",
                    "upstream": "unused",
                    "strategy": {
                        "name": "best_of_n",
                        "verifiers": [
                            {"type": "reward_model", "name": "rm_longer", "endpoint": {"url": rms.url("longer")}},
                            {"type": "reward_model", "name": "rm_stereotype", "endpoint": {"url": rms.url("stereotype")}},
                        ],
                    },
                }
            ],
        }
        limit = ["--max-pairs", str(args.rm_max_pairs)] if args.rm_max_pairs else []
        seconds = audit(config, args.out / "rms", ["--concurrency", "8", *limit])
    print(f"reward models: {seconds:.0f} s", file=sys.stderr)


async def gemma(args: argparse.Namespace) -> None:
    from proxy.local.model import EmbeddedModel

    model = EmbeddedModel(logits_all=False, n_threads=args.threads)
    print("starting the embedded model ...", file=sys.stderr)
    await model.start()
    try:
        config = {
            "upstreams": [judge_upstream(model.api_base, args.judge_max_tokens)],
            "routes": [
                {
                    "model": "audit-gemma",
                    "upstream": "gemma",
                    "strategy": {
                        "name": "best_of_n",
                        "verifiers": [
                            {
                                "type": "llm_judge",
                                "name": "gemma_pointwise",
                                "upstream": "gemma",
                                "templates": ["rubric_10", "correctness_yesno"],
                            },
                            {
                                "type": "llm_judge",
                                "name": "gemma_pairwise",
                                "upstream": "gemma",
                                "mode": "pairwise",
                                "templates": [],
                                "pairwise_templates": ["verdict", "hhh"],
                            },
                        ],
                    },
                }
            ],
        }
        extra = ["--max-pairs", str(args.max_pairs), "--concurrency", "1"]
        seconds = await asyncio.to_thread(audit, config, args.out / "gemma", extra)
        print(f"gemma judges: {seconds:.0f} s for {args.max_pairs} pairs", file=sys.stderr)
    finally:
        await model.stop()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0], formatter_class=HelpFormatter)
    parser.add_argument("--max-pairs", type=int, default=120)
    parser.add_argument("--judge-max-tokens", type=int, default=8)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--skip-gemma", action="store_true")
    parser.add_argument("--skip-rms", action="store_true")
    parser.add_argument("--rm-max-pairs", type=int, default=0, help="pairs for the reward models (default 0: all)")
    parser.add_argument("--out", type=Path, default=RESULTS / "verifier_audit")
    add_smoke(parser, "the reward models on 22 pairs, Gemma on 11")
    args = apply_smoke(parser.parse_args(argv), SMOKE)
    if not args.skip_rms:
        reward_models(args)
    if not args.skip_gemma:
        asyncio.run(gemma(args))
    return 0


if __name__ == "__main__":
    sys.exit(main())
