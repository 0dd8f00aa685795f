"""A constructed route where learned selection is worse than weighted: does it serve weighted?
(issue 20, item 4; run by bench/select_bench.py, or alone: `python bench/gate_case.py [--smoke]`).

Each request has 8 candidates spread over 4 answers, one of them right. The operator knows
which verifier to trust: `good` (weight 10), a reward model whose scale drifts from request to
request: it scores every candidate of a request from the same offset, uniform in [0, 0.9],
adding 0.03 for a right one. Within a request it ranks perfectly, so weighted selection, which
min-max normalizes each verifier per request (method §2.3), follows it. Across requests its raw
score is mostly the offset, and the learned model reads raw scores (§10.1): on the probe set its
AUROC sits near 0.5, the screen drops it, and the model is left with the vote and ten `noise`
verifiers (weight 0.1 each, uniform scores): on fresh requests it is far worse than weighted.

Everything goes through the proxy's own code: `choose` (strategies/selection/choice.py) makes the
training rows with weighted selection's mark, `fit_of` (proxy/probes/jobs.py) fits the model and
its safety gate as a route's refit does, and the fresh requests are served by `choose` three
ways: weighted, learned without the gate, and the route as configured (learned behind the gate).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the checkout: bench.*, proxy, strategies

from bench.common import HelpFormatter, add_smoke, apply_smoke  # noqa: E402
from proxy.probes.jobs import FitRequest, fit_of  # noqa: E402
from strategies.answers import answer_key  # noqa: E402
from strategies.contract import Candidate, Scored  # noqa: E402
from strategies.risk.calibration import GoldRecord  # noqa: E402
from strategies.selection.choice import choose  # noqa: E402
from strategies.selection.learned import SelectorState  # noqa: E402
from strategies.selection.settings import SelectionSettings  # noqa: E402
from strategies.selection.weighted import Selection, VerifierResult, select  # noqa: E402

NOISE_VERIFIERS = 10
CANDIDATES = 8
ANSWERS = 4


def request(rng: np.random.Generator) -> tuple[list[Candidate], Selection, str]:
    right = str(int(rng.integers(ANSWERS)))
    texts = [str(int(a)) for a in rng.integers(ANSWERS, size=CANDIDATES)]
    candidates = [Candidate(i, "original", {"role": "assistant", "content": t}) for i, t in enumerate(texts)]
    offset = float(rng.uniform(0, 0.9))
    good = [offset + (0.03 if t == right else 0.0) + float(rng.uniform(0, 0.005)) for t in texts]
    results = [VerifierResult("good", 10.0, Scored(views={"good": good}))] + [
        VerifierResult(f"noise{k}", 0.1, Scored(views={f"noise{k}": [float(v) for v in rng.random(CANDIDATES)]}))
        for k in range(NOISE_VERIFIERS)
    ]
    return candidates, select(candidates, results), right


def probe_record(item: int, rng: np.random.Generator) -> GoldRecord:
    """One probe item as the runner records it: the answered clusters, labelled, weighted's marked."""
    candidates, selection, right = request(rng)
    _, choice = choose(candidates, selection, [], answer_key, SelectionSettings(), None)
    clusters = tuple(
        {"features": row["features"], "size": row["size"],
         "correct": candidates[row["representative"]].text == right,
         **({"weighted": True} if row.get("weighted") else {})}
        for row in choice.training_rows()
    )
    return GoldRecord(f"i{item}", 1.0, 1.0, 1.0, 1.0, 0.5, {}, time=float(item), clusters=clusters)


def served_right(state: SelectorState | None, rng: np.random.Generator) -> bool:
    candidates, selection, right = request(rng)
    settings = SelectionSettings(mode="weighted" if state is None else "learned")
    chosen, _ = choose(candidates, selection, [], answer_key, settings, None if state is None else lambda: state)
    return candidates[chosen.index].text == right


def run(probe_items: int, test_requests: int, seed: int, margin: float = 0.02) -> dict[str, Any]:
    rng = np.random.default_rng(seed)
    gold = [probe_record(i, rng) for i in range(probe_items)]
    fitted = fit_of(gold, FitRequest(min_items=min(20, probe_items), max_rows=6000, margin=margin))
    if fitted.model is None or fitted.safety is None:
        return {"probe_items": probe_items, "fitted": False, "reason": fitted.reason}
    gate = fitted.safety
    served = {
        "weighted": None,
        "learned, no gate": SelectorState(fitted.model),
        "the route (learned behind the gate)": SelectorState(fitted.model, safety=gate),
    }
    accuracy = {}
    for name, state in served.items():
        fresh = np.random.default_rng(seed + 1)  # the same fresh requests for every way of serving
        accuracy[name] = float(np.mean([served_right(state, fresh) for _ in range(test_requests)]))
    return {
        "probe_items": probe_items, "test_requests": test_requests, "fitted": True,
        "signals": list(fitted.model.signals), "gate": gate.as_dict(), "accuracy": accuracy,
    }


def report(result: dict[str, Any]) -> str:
    if not result["fitted"]:
        return f"Gate case: no model on {result['probe_items']} probe items ({result['reason']})."
    gate = result["gate"]
    lines = [
        "", "## The safety gate on a constructed route (bench/gate_case.py)", "",
        f"{result['probe_items']} probe items; the model kept {len(result['signals'])} signals "
        f"({', '.join(result['signals'])}).",
        f"Held out: learned {gate['learned']:.3f}, weighted {gate['weighted']:.3f}, difference "
        f"{gate['difference']:+.3f} [{gate['ci90'][0]:+.3f}, {gate['ci90'][1]:+.3f}] (90%), margin {gate['margin']}: "
        f"the gate is **{'open' if gate['serves'] else 'closed'}**.", "",
        f"| served on {result['test_requests']} fresh requests | accuracy |", "|---|---|",
    ]
    lines += [f"| {name} | {value:.3f} |" for name, value in result["accuracy"].items()]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0], formatter_class=HelpFormatter)
    parser.add_argument("--probe-items", type=int, default=100, help="probe items the model is fitted on")
    parser.add_argument("--requests", type=int, default=2000, help="fresh requests served each way")
    parser.add_argument("--seed", type=int, default=12)
    add_smoke(parser, "30 probe items, 50 requests")
    args = apply_smoke(parser.parse_args(argv), {"probe_items": 30, "requests": 50})
    print(report(run(args.probe_items, args.requests, args.seed)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
