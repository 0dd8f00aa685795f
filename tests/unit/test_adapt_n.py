"""N from measured gain (method §4.8): the gold curve, the choice of n, and the loop serving it."""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import Sequence

import pytest

from strategies.best_of_n.adapt import GainCurve, accuracy_by_n, choose, groups, measured_ns, paired
from strategies.best_of_n.loop import BestOfN
from strategies.best_of_n.settings import AdaptNSettings, BestOfNSettings
from strategies.contract import Batch, Candidate, Message, Sample, StopReason, StrategyRequest, Usage

QUESTION: list[Message] = [{"role": "user", "content": "What is 6*7?"}]
RIGHT = "The answer is 42."


def said(text: str, index: int = 0, variant: str = "original") -> Candidate:
    return Candidate(index, variant, {"role": "assistant", "content": text})


def right(candidate: Candidate) -> float:
    return 1.0 if "42" in candidate.text else 0.0


class Scripted:
    """A `Services` whose samples are always right: what a route with nothing to gain sees."""

    def __init__(self) -> None:
        self.sampled = 0

    async def generate(self, messages: Sequence[Message], n: int, upstream: str | None = None) -> Batch:
        self.sampled += n
        return Batch([Sample({"role": "assistant", "content": RIGHT}, "stop") for _ in range(n)], Usage(3 * n, 5 * n))


def all_right(k: int = 8) -> list[Candidate]:
    return [said(RIGHT, i) for i in range(k)]


def plurality_right(k: int = 8) -> list[Candidate]:
    """Half right, the other half four different wrong answers: one sample is right half the
    time, a majority of four or more always."""
    wrong = itertools.cycle(["13", "17", "19", "23"])
    return [said(RIGHT if i % 2 == 0 else f"The answer is {next(wrong)}.", i) for i in range(k)]


def route(**adapt: float) -> BestOfN:
    return BestOfN.build(BestOfNSettings(max_n=8, k_ref=8, adapt_n=AdaptNSettings(**adapt)))  # type: ignore[arg-type]


def teach(strategy: BestOfN, reference: list[Candidate], items: Sequence[str]) -> None:
    async def all_items() -> None:
        for item in items:
            await strategy.learn_from_gold(StrategyRequest(QUESTION), Scripted(), reference, right, item)  # type: ignore[arg-type]

    asyncio.run(all_items())


def serve(strategy: BestOfN, audit: bool = False) -> tuple[int, StopReason, dict | None]:
    outcome = asyncio.run(strategy.run(StrategyRequest(QUESTION, audit=audit), Scripted()))  # type: ignore[arg-type]
    return len(outcome.candidates), outcome.stop_reason, outcome.gain


def test_probes_measure_powers_of_two_up_to_max_n() -> None:
    assert measured_ns(1) == [1]
    assert measured_ns(8) == [1, 2, 4, 8]
    assert measured_ns(12) == [1, 2, 4, 8, 12]


def test_groups_are_disjoint_and_round_robin_over_the_variants() -> None:
    reference = [said(f"a{i}", i, "original") for i in range(4)] + [said(f"b{i}", 4 + i, "expert") for i in range(4)]
    three = groups(reference, ["original", "expert"], 3)
    assert [[c.text for c in g] for g in three] == [["a0", "b0", "a1"], ["a2", "b1", "a3"]]
    assert [c.index for c in three[0]] == [0, 1, 2]  # as the loop numbers its own candidates
    assert len(groups(reference, ["original", "expert"], 1)) == 4  # one sample: the first prompt only
    assert groups(reference, ["original", "expert"], 16) == []


def test_accuracy_of_n_is_the_mean_over_groups_of_what_selection_picks() -> None:
    async def majority(group: list[Candidate]) -> int:
        texts = [c.text for c in group]
        return texts.index(max(texts, key=texts.count))

    reference = plurality_right()
    measured = asyncio.run(accuracy_by_n(reference, ["original"], [1, 4, 8], majority, right, every_group=True))
    assert measured == {1: 0.5, 4: 1.0, 8: 1.0}
    one_group = asyncio.run(accuracy_by_n(reference, ["original"], [1], majority, right, every_group=False))
    assert one_group == {1: 1.0}  # the first sample only
    unscored = asyncio.run(accuracy_by_n(reference, ["original"], [1], majority, lambda c: None, every_group=True))
    assert unscored == {}  # a candidate the checker cannot score is left out, never 0


def table(gains: dict[int, list[float]], base: list[float]) -> dict[int, dict[str, float]]:
    items = [f"q{i}" for i in range(len(base))]
    out = {1: dict(zip(items, base, strict=True))}
    for n, values in gains.items():
        out[n] = {item: b + g for item, b, g in zip(items, base, values, strict=True)}
    return out


def test_no_gain_serves_one_sample() -> None:
    flat = table({2: [0.0] * 40, 4: [0.0] * 40}, [0.5] * 40)
    gain = choose(flat, 8, min_gain=0.01, min_items=30)
    assert gain is not None and gain.n == 1 and gain.versus_one.estimate == 0


def test_noise_around_no_gain_still_serves_one_sample() -> None:
    noisy = table({4: [0.1, -0.1] * 20}, [0.5] * 40)  # +0.0 ± 0.1 by item: not shown to pay
    gain = choose(noisy, 8, min_gain=0.01, min_items=30)
    assert gain is not None and gain.n == 1


def test_the_smallest_n_within_min_gain_of_the_best_is_served() -> None:
    # 2 buys 0.2, 4 buys 0.3, 8 buys 0.305: 4 is within 0.01 of 8, 2 is not.
    curve = table({2: [0.2] * 40, 4: [0.3] * 40, 8: [0.305] * 40}, [0.4, 0.5] * 20)
    gain = choose(curve, 8, min_gain=0.01, min_items=30)
    assert gain is not None and (gain.n, gain.best_n) == (4, 8)
    assert gain.versus_one.estimate == pytest.approx(0.3)
    assert choose(curve, 2, min_gain=0.01, min_items=30).n == 2  # type: ignore[union-attr]  # the cap bounds it


def test_without_enough_gold_items_the_route_keeps_its_cap() -> None:
    few = table({4: [0.0] * 10}, [0.5] * 10)
    assert choose(few, 8, min_gain=0.01, min_items=30) is None


def test_the_interval_pairs_by_item() -> None:
    # Items differ a lot in difficulty, the gain is the same on each: paired, the interval is tight.
    curve = table({4: [0.1] * 40}, [i / 40 for i in range(40)])
    interval = paired(curve, 4, 1, set(curve[1]))
    assert interval.estimate == pytest.approx(0.1) and interval.high - interval.low == pytest.approx(0.0, abs=1e-12)


def test_gain_curve_reads_back_item_means_across_records() -> None:
    curve = GainCurve(AdaptNSettings(min_items=2))
    curve.add("q|1", {1: 0.0, 4: 1.0})  # item names may hold the separator
    curve.add("q|1", {1: 1.0, 4: 1.0})
    curve.add("q2", {1: 0.0, 4: 1.0})
    assert curve.table() == {1: {"q|1": 0.5, "q2": 0.0}, 4: {"q|1": 1.0, "q2": 1.0}}
    first = curve.gain(8)
    assert first is not None and first.n == 4
    assert curve.gain(8) is first  # cached until new gold arrives


def test_a_route_without_gold_serves_as_configured() -> None:
    n, stop, gain = serve(route(min_items=5))
    assert n == 4 and stop is StopReason.VOTE_CONFIDENT and gain is None


def test_adapt_n_falls_to_one_sample_without_gain_and_climbs_back_when_gain_appears() -> None:
    strategy = route(min_items=5)
    teach(strategy, all_right(), [f"easy{i}" for i in range(6)])  # every n is always right
    n, stop, gain = serve(strategy)
    assert (n, stop) == (1, StopReason.NO_MEASURED_GAIN)
    assert gain is not None and gain["n"] == 1 and gain["adapted"] and gain["estimate"] == 0

    teach(strategy, plurality_right(), [f"hard{i}" for i in range(20)])  # probes keep measuring larger n
    n, stop, gain = serve(strategy)
    assert gain is not None and gain["n"] > 1 and gain["ci90"][0] > 0
    assert n == gain["n"] and stop is StopReason.MAX_N  # the cap it climbed back to


def test_audits_still_sample_their_whole_budget() -> None:
    strategy = route(min_items=5)
    teach(strategy, all_right(), [f"easy{i}" for i in range(6)])
    n, stop, _ = serve(strategy, audit=True)
    assert n == 16 and stop is StopReason.MAX_N


def test_routes_without_adapt_n_report_what_their_cap_buys() -> None:
    strategy = BestOfN.build(BestOfNSettings(max_n=8, k_ref=8))
    teach(strategy, plurality_right(), [f"hard{i}" for i in range(30)])
    n, _, gain = serve(strategy)
    assert n == 4  # the cap is the route's own
    assert gain is not None and gain["n"] == 8 and not gain["adapted"] and gain["estimate"] == pytest.approx(0.5)
