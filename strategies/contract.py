"""The data that crosses the boundary between `proxy/` and `strategies/`.

Strategies never touch HTTP, litellm or Prometheus. The proxy hands them a `Services` object
(plain async callables) and gets back one `Outcome`; metrics, logs and the response's `rvr`
field are all views of that one object.
"""

from __future__ import annotations

import enum
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    from strategies.settings import RewardEndpoint

Message = dict[str, Any]


@dataclass(frozen=True)
class Usage:
    prompt_tokens: int = 0
    completion_tokens: int = 0

    @property
    def total_tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens

    def __add__(self, other: Usage) -> Usage:
        return Usage(
            self.prompt_tokens + other.prompt_tokens,
            self.completion_tokens + other.completion_tokens,
        )


@dataclass
class Candidate:
    """One sampled answer, kept structured: tool calls are never flattened to text."""

    index: int
    variant: str
    message: Message  # OpenAI assistant message: role, content, optional tool_calls
    finish_reason: str | None = None
    token_logprobs: list[float] | None = None
    logprobs: Any = None  # the upstream's logprobs object, returned to the client untouched

    @property
    def text(self) -> str:
        content = self.message.get("content")
        if isinstance(content, str):
            return content
        if isinstance(content, list):  # content parts
            return "".join(p.get("text", "") for p in content if isinstance(p, dict))
        return ""

    @property
    def tool_calls(self) -> list[dict[str, Any]]:
        return list(self.message.get("tool_calls") or [])


@dataclass
class Sample:
    """What one upstream generation returns for one choice, before it gets an index."""

    message: Message
    finish_reason: str | None = None
    token_logprobs: list[float] | None = None
    logprobs: Any = None


@dataclass
class Batch:
    samples: list[Sample]
    usage: Usage = field(default_factory=Usage)
    errors: int = 0  # upstream calls of this batch that failed


@dataclass
class Reply:
    """A judge or paraphrase completion."""

    text: str
    usage: Usage = field(default_factory=Usage)


@dataclass
class EmbedReply:
    vectors: list[list[float]]
    usage: Usage = field(default_factory=Usage)


@dataclass
class RewardReply:
    scores: list[float | None]
    usage: Usage = field(default_factory=Usage)


class Services(Protocol):
    """The outside world as a strategy sees it. The proxy implements it per request."""

    async def generate(self, messages: Sequence[Message], n: int) -> Batch:
        """Sample `n` answers from the route's upstream with the client's parameters.

        Partial failure returns the samples that succeeded (and counts `errors`); raises
        only when not a single sample could be produced.
        """
        ...

    async def chat(self, upstream: str, messages: Sequence[Message], **params: Any) -> Reply:
        """One completion from a configured upstream (judges, paraphrases)."""
        ...

    async def embed(self, upstream: str, texts: Sequence[str]) -> EmbedReply:
        """Embedding vectors from a configured upstream, one per text, in order."""
        ...

    async def reward(
        self, endpoint: RewardEndpoint, messages: Sequence[Message], answers: Sequence[str]
    ) -> RewardReply:
        """Scores from a reward-model endpoint named in the route config, one per answer."""
        ...


class StopReason(str, enum.Enum):
    """A fixed enum: it is a metric label, so it must stay bounded."""

    PASSTHROUGH = "passthrough"
    VOTE_CONFIDENT = "vote_confident"
    NO_GAIN = "no_gain"
    GOOD_ENOUGH = "good_enough"
    MAX_N = "max_n"
    TOKEN_BUDGET = "token_budget"
    DEADLINE = "deadline"
    UPSTREAM_ERRORS = "upstream_errors"


@dataclass
class RiskReport:
    """Per-request rational value risk (method §3). `None` means unknown, never zero."""

    k_ref: int
    baseline: float | None = None
    residual: float | None = None
    candidate: float | None = None
    prompt: float | None = None
    verifier: float | None = None
    aeu: float | None = None
    selected_utility: float | None = None
    residual_terms: list[str] = field(default_factory=list)
    intervals: dict[str, tuple[float, float]] = field(default_factory=dict)
    sources: dict[str, str] = field(default_factory=dict)  # term -> "request" | "route"

    def as_dict(self) -> dict[str, Any]:
        return {
            "k_ref": self.k_ref,
            "baseline": self.baseline,
            "residual": self.residual,
            "candidate": self.candidate,
            "prompt": self.prompt,
            "verifier": self.verifier,
            "aeu": self.aeu,
            "selected_score": self.selected_utility,
            "residual_terms": list(self.residual_terms),
            "intervals": {k: [lo, hi] for k, (lo, hi) in self.intervals.items()},
            "sources": dict(self.sources),
        }


@dataclass
class Outcome:
    candidates: list[Candidate]
    selected: int
    stop_reason: StopReason
    usage: Usage
    strategy: str
    scores: list[float | None] = field(default_factory=list)  # ensemble score per candidate
    view_scores: dict[str, list[float | None]] = field(default_factory=dict)
    variants: list[str] = field(default_factory=list)
    risk: RiskReport | None = None
    verifier_disagreement: float | None = None
    upstream_errors: int = 0
    verifier_outcomes: dict[str, dict[str, int]] = field(default_factory=dict)  # name -> ok|failed|missing -> count
    plain_usage: Usage | None = None  # what one plain call cost (first batch per sample), for cost ratios
    audit: bool = False
    timings: dict[str, float] = field(default_factory=dict)  # step -> seconds

    @property
    def chosen(self) -> Candidate:
        return self.candidates[self.selected]


@dataclass
class VerifyContext:
    """Everything a verifier may look at for one request. Lives and dies with the request."""

    messages: Sequence[Message]  # the client's original messages (before any variant)
    services: Services
    response_format: dict[str, Any] | None = None
    cache: dict[Any, Any] = field(default_factory=dict)  # per-request memo, e.g. judge scores by candidate


@dataclass
class Scored:
    """One verifier's verdict on all candidates so far.

    `views` maps a view name (template, candidate order, ...) to one score in [0, 1] per
    candidate; `None` marks a missing score (e.g. a judge reply that did not parse), which is
    never the same as 0. `hard` marks a constraint verifier: a 0 there disqualifies.
    """

    views: dict[str, list[float | None]]
    usage: Usage = field(default_factory=Usage)
    hard: bool = False
    errors: int = 0  # judge/reward calls or plugin runs that failed or did not parse (scored None)


class Verifier(Protocol):
    name: str  # the config name; used as a metric label, so it comes from config only
    weight: float

    async def score(self, ctx: VerifyContext, candidates: Sequence[Candidate]) -> Scored:
        ...


ORIGINAL_VARIANT = "original"  # the plain prompt; AEU is measured on its candidates


class StrategyError(Exception):
    """Base of the errors a strategy raises on purpose; the proxy maps each to an HTTP status."""


class NoCandidatesError(StrategyError):
    """Not a single candidate could be produced (every upstream call failed)."""


class OverrideError(StrategyError, ValueError):
    """A client's `rvr` overrides named something the route does not have."""
