"""What one request may still spend upstream: calls (retries included) and tokens.

Best-of-N multiplies cost, so every upstream call a request makes (candidates, judges,
paraphrases, embeddings, reward scores, and each retry or fallback attempt of any of them)
draws from one allowance, and nothing a client sends can enlarge it:

- calls: the route's ceiling (`Route.call_ceiling`), taken one per attempt in
  `UpstreamClient`, which finds the request's allowance in a context variable because retries
  happen deep below the strategy;
- tokens: the strategy's `max_tokens_budget`. A call reserves its estimated cost before it
  starts and settles at the cost the upstream reports, so concurrent calls cannot together
  overspend: a call whose estimate does not fit is refused, never sent.

What the allowance counts is also what the client's key is charged (`charged`), however the
request ends: a call cut off (the client hung up, the request timed out) may have cost the
upstream everything it was allowed, and nobody will report what it did, so it is charged its
estimate; a call still holding its reservation when the request ends is charged the same way.
"""

from __future__ import annotations

import json
import math
from contextvars import ContextVar
from dataclasses import dataclass
from typing import Any

from proxy.errors import CallCeilingReached, TokenBudgetExceeded
from strategies.contract import Usage

BYTES_PER_TOKEN = 3  # below the usual 4 for English: an estimate that must not undershoot much
COMPLETION_GUESS = 256  # tokens a completion is assumed to cost when nothing caps it


def estimate_tokens(content: Any) -> int:
    """Prompt tokens of messages, a prompt, or a prompt array, from their UTF-8 size."""
    text = content if isinstance(content, str) else json.dumps(content, ensure_ascii=False, default=str)
    return math.ceil(len(text.encode("utf-8", "replace")) / BYTES_PER_TOKEN)


@dataclass(frozen=True)
class Estimate:
    """The most a request is expected to cost, reserved against its key's limits before it runs
    (`proxy.access.limits`) and settled at what it cost."""

    tokens: int
    candidates: int


def request_estimate(
    prompt: Any, params: dict[str, Any], candidates: int, token_budget: int | None, rewritten: int = 0
) -> Estimate:
    """Every candidate at its prompt plus its completion cap, and a fuser's call (`rewritten`
    answers read, one written), or the route's token budget if less.

    Judge, reward and paraphrase calls are not foreseen here; a route whose verifiers call models
    bounds them through `max_tokens_budget`, which then is the estimate.
    """
    asked, cap = estimate_tokens(prompt), completion_cap(params)
    tokens = candidates * (asked + cap) + (asked + (rewritten + 1) * cap if rewritten else 0)
    return Estimate(tokens if token_budget is None else min(tokens, token_budget), candidates)


def completion_cap(params: dict[str, Any]) -> int:
    for key in ("max_completion_tokens", "max_tokens"):
        if isinstance(params.get(key), int):
            return int(params[key])
    return COMPLETION_GUESS


@dataclass
class RequestAllowance:
    calls_left: int | None = None  # None: no ceiling
    token_budget: int | None = None  # None: no budget
    spent: int = 0
    reserved: int = 0
    calls: int = 0  # attempts made, for the log and tests

    def take_call(self, upstream: str) -> None:
        if self.calls_left is not None:
            if self.calls_left <= 0:
                raise CallCeilingReached(
                    f"not calling upstream {upstream!r}: the request used all {self.calls} upstream calls "
                    "its route allows"
                )
            self.calls_left -= 1
        self.calls += 1

    def affordable(self, each: int, wanted: int) -> int:
        """How many of `wanted` calls costing `each` the budget can still hold (at least 1 is tried)."""
        if self.token_budget is None or each <= 0:
            return wanted
        left = self.token_budget - self.spent - self.reserved
        return max(1, min(wanted, left // each))

    def reserve(self, estimate: int) -> int:
        """Hold `estimate` tokens for a call about to start; raises when they do not fit."""
        if self.token_budget is not None and self.spent + self.reserved + estimate > self.token_budget:
            raise TokenBudgetExceeded(
                f"this request needs about {self.spent + self.reserved + estimate} upstream tokens, "
                f"more than its route's budget of {self.token_budget}",
                param="messages",
            )
        self.reserved += estimate
        return estimate

    def settle(self, estimate: int, usage: Usage | None, *, cut: bool = False) -> None:
        """The call ended: release its hold and charge what it cost.

        A failed call (`usage` None) charges nothing we know of, unless it was `cut` (cancelled
        or timed out while the upstream worked): then it is charged its estimate. An answer that
        reports no usage is charged its estimate too, so an upstream that omits usage cannot slip
        past the budget.
        """
        self.reserved -= estimate
        if usage is not None:
            self.spent += usage.total_tokens or estimate
        elif cut:
            self.spent += estimate

    @property
    def charged(self) -> int:
        """What the request cost upstream, for its key: settled calls, and open ones at their estimate."""
        return self.spent + self.reserved


CURRENT: ContextVar[RequestAllowance | None] = ContextVar("rvr_request_allowance", default=None)
