"""When adaptive best-of-N stops sampling (method §4).

Each rule is a small pure function; `decide` applies them in the documented order, so the
first rule that fires names the stop reason. Rule 4 (verifier first) never stops: it tells the
loop to spend on verifier views before more candidates. Hard caps come last and always apply.
The vote rule (§4.1) also stops where the route's learned prior (§4.6, `prior.VotePrior`) is
confident, which only ever adds stops.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from fractions import Fraction
from math import comb

from strategies.best_of_n.prior import Tally, tally
from strategies.best_of_n.settings import StopSettings
from strategies.contract import StopReason
from strategies.risk.estimators import binary_candidate_term, doubling, is_binary


def regularized_beta_half(a: int, b: int) -> Fraction:
    """I_0.5(a, b) exactly, for positive integers.

    For integer arguments the incomplete beta is a binomial tail:
    I_x(a, b) = P(Binomial(a + b − 1, x) ≥ a), which at x = 1/2 is a ratio of integers.
    """
    if a < 1 or b < 1:
        raise ValueError(f"I_0.5(a, b) needs positive integers, got a={a}, b={b}")
    trials = a + b - 1
    return Fraction(sum(comb(trials, j) for j in range(a, trials + 1)), 2**trials)


def vote_posterior(a: int, b: int) -> float:
    """P(the leading answer is truly more likely than the runner-up) = 1 − I_0.5(a+1, b+1)."""
    return float(1 - regularized_beta_half(a + 1, b + 1))


def top_two_counts(answers: Sequence[str | None]) -> tuple[int, int]:
    """Counts of the two most common extracted answers; unextractable ones do not vote."""
    counts = sorted(Counter(a for a in answers if a is not None).values(), reverse=True)
    return (counts + [0, 0])[0], (counts + [0, 0])[1]


def vote_confident(answers: Sequence[str | None], confidence: float) -> bool:
    a, b = top_two_counts(answers)
    return a > 0 and vote_posterior(a, b) >= confidence


Posterior = Callable[[Tally], "float | None"]  # P(leader is the mode | counts); None: nothing learned


def prior_confident(answers: Sequence[str | None], posterior: Posterior | None, confidence: float) -> bool:
    """§4.6: the leader is the mode with posterior ≥ `confidence` under the route's learned
    prior. Never on one vote: a single answer is a sample, not agreement."""
    if posterior is None:
        return False
    counts = tally(answers)
    if counts is None or counts[0] < 2:
        return False
    value = posterior(counts)
    return value is not None and value >= confidence


def voting(answers: Sequence[str | None] | None) -> bool:
    """Whether the vote rule governs: most candidates have an extractable answer."""
    if not answers:
        return False
    return 2 * sum(a is not None for a in answers) > len(answers)


def next_doubling_gain(utilities: Sequence[float]) -> float | None:
    """Predicted gain of doubling n (§4.2: D_n·ρ), None below four candidates.

    For right/wrong scores the same posterior as risk.binary_candidate_term: D_n·ρ is 0 when
    every candidate so far is wrong, which would stop exactly where more samples pay most.
    """
    n = len(utilities)
    if n >= 4 and is_binary(utilities):
        return binary_candidate_term(int(sum(utilities)), n, 2 * n)
    trend = doubling(utilities)
    return None if trend is None else trend.predicted_gain


def no_gain(predicted_gain: float | None, min_gain: float) -> bool:
    return predicted_gain is not None and predicted_gain <= min_gain


def good_enough(selected_utility: float | None, tau: float | None) -> bool:
    return tau is not None and selected_utility is not None and selected_utility >= tau


def verifier_first(verifier_term: float | None, d_n: float | None) -> bool:
    return verifier_term is not None and d_n is not None and verifier_term > d_n


@dataclass(frozen=True)
class Caps:
    """Where the request stands against its hard limits."""

    n: int
    max_n: int
    tokens_used: int = 0
    token_budget: int | None = None
    tokens_per_candidate: float = 0.0  # what one more candidate is expected to cost
    elapsed_s: float = 0.0
    deadline_s: float | None = None


def cap_reached(caps: Caps) -> StopReason | None:
    if caps.n >= caps.max_n:
        return StopReason.MAX_N
    if caps.token_budget is not None and (
        caps.tokens_used + caps.tokens_per_candidate > caps.token_budget
        or caps.tokens_used >= caps.token_budget
    ):
        return StopReason.TOKEN_BUDGET
    if caps.deadline_s is not None and caps.elapsed_s >= caps.deadline_s:
        return StopReason.DEADLINE
    return None


@dataclass(frozen=True)
class Evidence:
    """What the last batch told us; `None` where it could not be measured."""

    answers: Sequence[str | None] | None = None  # extracted answers; None: not extractable
    utilities: Sequence[float] = ()  # s̄ of the scored candidates
    selected_utility: float | None = None
    verifier_term: float | None = None


@dataclass(frozen=True)
class Decision:
    stop: StopReason | None  # None: sample another batch
    verify_first: bool = False  # spend on verifier views before more candidates


def decide(
    stop: StopSettings, evidence: Evidence, caps: Caps, *, adaptive: bool = True, posterior: Posterior | None = None
) -> Decision:
    """`posterior` is the route's learned vote prior (§4.6); it only ever adds stops to the Beta
    rule's, so no route samples more than the uniform prior would have it."""
    cap = cap_reached(caps)
    if not adaptive:
        return Decision(cap)
    if evidence.answers is not None and (
        vote_confident(evidence.answers, stop.confidence)
        or (stop.prior is not None and prior_confident(evidence.answers, posterior, stop.prior.confidence))
    ):
        return Decision(StopReason.VOTE_CONFIDENT)
    trend = doubling(evidence.utilities)
    # Rule 2 is for scored candidates. While answers are extractable the vote decides: vote
    # shares of four different answers are all 0.25, a flat curve that says nothing about
    # whether a majority is about to form.
    if not voting(evidence.answers) and no_gain(next_doubling_gain(evidence.utilities), stop.min_gain):
        return Decision(StopReason.NO_GAIN)
    if good_enough(evidence.selected_utility, stop.good_enough):
        return Decision(StopReason.GOOD_ENOUGH)
    first = stop.verifier_first and verifier_first(
        evidence.verifier_term, None if trend is None else trend.d_n
    )
    return Decision(cap, verify_first=first and cap is None)
