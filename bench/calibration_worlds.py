"""Simulated gold windows with a known truth, for bench/validate_calibration.py (issue 20).

A route's traffic draws items from a population in which item i leaves a residual with its own
probability p_i ~ Beta(θκ, (1 − θ)κ): the population's mean residual is θ, and a small κ makes
items nearly always right or always wrong, as the embedded model's are. A probe set is a sample
of `items` of them; the gold window holds `records` runs of those items, cycled in shuffled
order as `ProbeRunner.next_items` cycles them, and every run draws its 0/1 residual afresh.

The online residual f of a run (and of a traffic request) is
`θ − bias + slope·(p_i − θ) + e_i + noise`: off by `bias` on average, following the item's
difficulty with `slope`, plus an item effect e_i ~ N(0, 0.05²) that has nothing to do with
whether the item is right (what the verifiers see in an item and the gold does not) and
run-to-run noise N(0, 0.02²). The default slope 0.1 makes f the weak, squashed surrogate the
online residual is (item-level correlation with Y about 0.4); slope 1 with `item_noise` 0 is a
surrogate right up to its offset.

Pure numpy, fast enough to run a thousand gold windows per cell. Alone, `python
bench/calibration_worlds.py [--smoke]` checks that the worlds hold the truth they claim: the mean
gold residual of a window against `rate`, and the mean gap between gold and online residual against
`bias`, over repeated windows.
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the checkout: bench.*, proxy, strategies

from bench.common import HelpFormatter, add_smoke, apply_smoke, markdown_table  # noqa: E402
from strategies.risk.calibration import COMPONENTS, GoldRecord  # noqa: E402

NOISE = 0.02  # the run-to-run noise of the online residual


@dataclass(frozen=True)
class World:
    rate: float  # θ, the population's mean residual: the truth the interval should cover
    bias: float = 0.0  # E[Y − f], the truth of the verifier bias
    slope: float = 0.1  # how far f follows an item's difficulty
    item_noise: float = 0.05  # the sd of the item effect e_i
    spread: float = 1.0  # κ of the Beta: small, items always right or always wrong

    def items(self, count: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        """Each item's residual rate p_i and its effect e_i on the online residual."""
        rates = rng.beta(self.rate * self.spread, (1 - self.rate) * self.spread, count)
        return rates, rng.normal(0, self.item_noise, count)

    def online(self, rates: np.ndarray, effects: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        centre = self.rate - self.bias + self.slope * (rates - self.rate) + effects
        return centre + rng.normal(0, NOISE, len(rates))


def cycled(items: int, records: int, rng: np.random.Generator) -> np.ndarray:
    """Which item each of `records` runs probes: shuffled passes through all items."""
    passes = -(-records // items)
    return np.concatenate([rng.permutation(items) for _ in range(passes)])[:records]


def gold_window(world: World, items: int, records: int, rng: np.random.Generator) -> list[GoldRecord]:
    """`records` gold records of `items` probe items; only the residual terms are simulated."""
    rates, effects = world.items(items, rng)
    which = cycled(items, records, rng)
    residual = (rng.random(records) < rates[which]).astype(float)
    online = world.online(rates[which], effects[which], rng)
    return [
        GoldRecord(f"i{i}", 1.0 - y, 1.0, 1.0, 1.0, 0.5, {"residual": float(f)})
        for i, y, f in zip(which, residual, online, strict=True)
    ]


def traffic(world: World, requests: int, rng: np.random.Generator) -> np.ndarray:
    """The online estimates of `requests` client requests, as `calibrate` takes them."""
    matrix = np.full((requests, len(COMPONENTS)), np.nan)
    matrix[:, COMPONENTS.index("residual")] = world.online(*world.items(requests, rng), rng)
    return matrix


def item_gaps(world: World, items: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Gold residuals and online residuals of `items` items run once each (for the status)."""
    rates, effects = world.items(items, rng)
    return (rng.random(items) < rates).astype(float), world.online(rates, effects, rng)


def check(world: World, items: int, records: int, repeats: int, seed: int) -> list[str]:
    """A table row: the world's truth next to what its gold windows hold, averaged over `repeats`."""
    rng = np.random.default_rng(seed)
    gold, gap = [], []
    for _ in range(repeats):
        window = gold_window(world, items, records, rng)
        residual = np.array([1.0 - r.served for r in window])
        online = np.array([r.online["residual"] for r in window])
        gold.append(residual.mean())
        gap.append((residual - online).mean())
    return [f"{world.rate:g}", f"{world.bias:+g}", str(items), str(records), f"{np.mean(gold):.3f}",
            f"{np.mean(gap):+.3f}"]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0], formatter_class=HelpFormatter)
    parser.add_argument("--items", type=int, default=100, help="probe items of a gold window")
    parser.add_argument("--records", type=int, default=2000, help="gold records of a window (cycled items)")
    parser.add_argument("--repeats", type=int, default=200, help="windows per world")
    parser.add_argument("--seed", type=int, default=0)
    add_smoke(parser, "20 items, 100 records, 5 windows")
    args = apply_smoke(parser.parse_args(argv), {"items": 20, "records": 100, "repeats": 5})
    worlds = [World(rate, bias) for rate in (0.05, 0.5) for bias in (0.0, 0.06)]
    rows = [check(world, args.items, args.records, args.repeats, args.seed) for world in worlds]
    print(markdown_table(["rate", "bias", "items", "records", "mean gold residual", "mean gold − online"],
                         rows, "rrrrrr"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
