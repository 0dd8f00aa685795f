"""Is `rvr.confidence` P(the served answer is right)? A simulated route (issue 20, item 3; run by
bench/select_bench.py, or alone: `python bench/confidence_case.py [--smoke]`).

Each request has 2-5 answer clusters; one of them is right in 80% of requests, none in the rest
(the candidates never hold the answer). The right cluster tends to have the larger vote share,
a judge's higher raw score (N(0.65, 0.15) against N(0.45, 0.15)) and a copied few-shot answer
less often (10% against 40%). The selector is fitted on `probe_items` probe items by the proxy's
own `fit_selector` and then serves fresh requests through `choose`, as a route does. Reported per
probe-set size: the served accuracy, the mean confidence, the expected calibration error (10
bins) of the confidence before issue 20 (the chosen cluster's own P(correct)) and now (its share
of the distribution over clusters and "none"), how often the old per-cluster P summed above 1,
and the largest departure of the new distribution's sum from 1.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the checkout: bench.*, proxy, strategies

from bench.common import HelpFormatter, add_smoke, apply_smoke  # noqa: E402
from strategies.selection.confidence import reliability  # noqa: E402
from strategies.selection.learned import ClusterRow, LearnedSelector, fit_selector, rank_clusters  # noqa: E402


def request(rng: np.random.Generator) -> tuple[list[dict[str, float]], int | None]:
    """The clusters' features and the right one (None: no cluster is right)."""
    k = int(rng.integers(2, 6))
    right = int(rng.integers(k)) if rng.random() < 0.8 else None
    weights = np.ones(k)
    if right is not None:
        weights[right] += 1.5
    shares = rng.dirichlet(weights * 2)
    features = [
        {"vote_share": float(shares[j]),
         "v:judge": float(np.clip(rng.normal(0.65 if j == right else 0.45, 0.15), 0, 1)),
         "copied_shot": float(rng.random() < (0.1 if j == right else 0.4))}
        for j in range(k)
    ]
    return features, right


def probe_rows(items: int, rng: np.random.Generator) -> list[ClusterRow]:
    rows = []
    for i in range(items):
        features, right = request(rng)
        rows += [ClusterRow(f"i{i}", f, j == right) for j, f in enumerate(features)]
    return rows


def serve(model: LearnedSelector, requests: int, rng: np.random.Generator) -> dict[str, Any]:
    new, old, right, sums_above, departure = [], [], [], 0, 0.0
    for _ in range(requests):
        features, truth = request(rng)
        best, own = rank_clusters(features, [True] * len(features), model)
        probabilities, p_none = model.distribution(features)
        new.append(probabilities[best])
        old.append(own[best])
        right.append(best == truth)
        sums_above += sum(own) > 1
        departure = max(departure, abs(sum(probabilities) + (p_none or 0.0) - 1))
    now, before = reliability(new, right), reliability(old, right)
    return {"accuracy": float(np.mean(right)), "confidence": float(np.mean(new)),
            "confidence_before": float(np.mean(old)),
            "ece": now.ece, "ece_before": before.ece, "sums_above_1_before": sums_above / requests,
            "sum_departure": departure, "reliability": now.as_dict()}


def run(probe_items: tuple[int, ...], requests: int, seed: int) -> list[dict[str, Any]]:
    results = []
    for items in probe_items:
        rng = np.random.default_rng(seed + items)
        model = fit_selector(probe_rows(items, rng))
        results.append({"probe_items": items, "cv_ece": model.reliability.ece if model.reliability else None,
                        **serve(model, requests, np.random.default_rng(seed + 1))})
    return results


def report(results: list[dict[str, Any]], requests: int) -> str:
    lines = [
        "", "## Confidence on a simulated route (bench/confidence_case.py)", "",
        f"Served on {requests} fresh requests; ECE over 10 bins; before: the chosen cluster's own P(correct).", "",
        "| probe items | served accuracy | mean confidence (before) | ECE (before) | cross-fitted ECE at the fit "
        "| P summed > 1 before | largest |Σ P + P(none) − 1| |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in results:
        lines.append(
            f"| {r['probe_items']} | {r['accuracy']:.3f} | {r['confidence']:.3f} ({r['confidence_before']:.3f}) "
            f"| {r['ece']:.3f} ({r['ece_before']:.3f}) | {r['cv_ece']:.3f} | {r['sums_above_1_before']:.2f} "
            f"| {r['sum_departure']:.1e} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0], formatter_class=HelpFormatter)
    parser.add_argument("--probe-items", type=lambda s: [int(v) for v in s.split(",")], default=[50, 100, 400],
                        help="probe-set sizes to fit on")
    parser.add_argument("--requests", type=int, default=2000, help="fresh requests served per probe-set size")
    parser.add_argument("--seed", type=int, default=12)
    add_smoke(parser, "50 probe items, 50 requests")
    args = apply_smoke(parser.parse_args(argv), {"probe_items": [50], "requests": 50})
    print(report(run(tuple(args.probe_items), args.requests, args.seed), args.requests))
    return 0


if __name__ == "__main__":
    sys.exit(main())
