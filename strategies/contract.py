"""The data that crosses the boundary between `proxy/` and `strategies/`.

Strategies never touch HTTP, litellm or Prometheus. The proxy hands them a `Services` object
(plain async callables) and gets back one `Outcome`; metrics, logs and the response's `rvr`
field are all views of that one object.
"""

from __future__ import annotations

import enum
import math
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, ClassVar, Literal, Protocol
from urllib.parse import urlsplit

from pydantic import BaseModel, ConfigDict, Field, field_validator

Message = dict[str, Any]

# Label-safe names (Prometheus label values come only from config names that match these).
NAME_PATTERN = r"^[A-Za-z0-9_.-]{1,64}$"  # verifiers, variants
MODEL_NAME_PATTERN = r"^[A-Za-z0-9_.:/-]{1,128}$"  # routes and upstreams: `org/model:tag` is common
KEY_NAME_PATTERN = r"^[A-Za-z0-9_.:-]{1,64}$"  # client keys (`server.keys[].name`)


class StrictModel(BaseModel):
    """The base of every config and request model: an unknown field is an error, so a typo
    never passes silently."""

    model_config = ConfigDict(extra="forbid")


class RequestOverrides(StrictModel):
    """What a client may send as `"rvr": {...}`. It can only lower the route's caps."""

    max_n: int | None = Field(None, ge=1)
    variants: list[str] | None = None  # names among the route's variants
    verifiers: list[str] | None = None  # names among the route's verifiers
    adaptive: bool | None = None
    details: bool = False  # include per-candidate texts in the `rvr` object


class RewardEndpoint(StrictModel):
    """A reward-model scoring endpoint. Only ever taken from config, never from a request."""

    url: str  # e.g. http://127.0.0.1:8001/score (vLLM) or any JSON endpoint
    api: Literal["vllm_score", "vllm_reward", "generic"] = "generic"
    model: str | None = None
    api_key: str | None = None  # `os.environ/NAME` is resolved by the proxy's config loader
    timeout_s: float = Field(30.0, gt=0)

    @field_validator("url")
    @classmethod
    def _http_only(cls, url: str) -> str:
        # Anything else (file:, ftp:, a bare path) is never a scoring service, only a way to
        # make the proxy read what it should not.
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.netloc:
            raise ValueError("must be an http:// or https:// URL")
        return url
PART_SEPARATOR = "\n"


def content_text(content: Any, *, mark_attachments: bool = False) -> str:
    """The text of an OpenAI message `content`: a string, a list of content parts, or None.

    The one place content becomes text. Text parts (and refusals) are joined with a newline:
    parts are usually separate paragraphs, and a newline never glues two words together (vLLM's
    chat templates join them the same way). Non-text parts (images, audio, files) are dropped,
    or with `mark_attachments` shown as `[image_url]`, for a reader (a judge, a base model) who
    should know that something was there.
    """
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    if isinstance(content, Mapping):  # a single part sent without its list
        content = [content]
    if not isinstance(content, list):
        return str(content)
    pieces: list[str] = []
    for part in content:
        if isinstance(part, str):
            pieces.append(part)
        elif isinstance(part, Mapping):
            kind = part.get("type", "text")
            if kind == "text":
                pieces.append(str(part.get("text", "")))
            elif kind == "refusal":
                pieces.append(str(part.get("refusal", "")))
            elif mark_attachments:
                pieces.append(f"[{kind}]")
    return PART_SEPARATOR.join(p for p in pieces if p)


def finite(value: Any, low: float = -math.inf, high: float = math.inf) -> float:
    """A number read from a file, checked: finite and within [low, high], else ValueError.

    The one gate for numbers that state files (gold records, learned models) bring back, so one
    NaN or 1e308 written by a crash or a hand can never reach a response, which must be JSON.
    """
    number = float(value)
    if not math.isfinite(number) or not low <= number <= high:
        raise ValueError(f"{value!r} is not a finite number in [{low}, {high}]")
    return number


def shot_pairs(messages: Sequence[Message]) -> list[tuple[int, int]]:
    """(user, assistant) index pairs of plain few-shot examples before the last user turn."""
    last_user = max((i for i, m in enumerate(messages) if m.get("role") == "user"), default=-1)
    return [
        (i - 1, i) for i in range(1, last_user)
        if messages[i].get("role") == "assistant" and messages[i - 1].get("role") == "user"
        and not messages[i].get("tool_calls")
    ]


@dataclass(frozen=True)
class Usage:
    prompt_tokens: int = 0
    completion_tokens: int = 0
    # The upstream's breakdowns (`prompt_tokens_details`, `completion_tokens_details`), summed
    # key by key across calls and passed on to the client as sent.
    details: dict[str, dict[str, int]] = field(default_factory=dict, compare=False)

    @property
    def total_tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens

    def __add__(self, other: Usage) -> Usage:
        details = {name: dict(counts) for name, counts in self.details.items()}
        for name, counts in other.details.items():
            into = details.setdefault(name, {})
            for key, value in counts.items():
                into[key] = into.get(key, 0) + value
        return Usage(
            self.prompt_tokens + other.prompt_tokens,
            self.completion_tokens + other.completion_tokens,
            details,
        )

    @classmethod
    def from_openai(cls, usage: Any) -> Usage:
        """An OpenAI `usage` object (or None, or anything malformed) as token counts.

        The one place usage is parsed: missing or non-numeric counts are 0, never an error,
        because an upstream that forgets usage must not fail the request.
        """
        if not isinstance(usage, Mapping):
            return cls()
        details = {
            name: {key: _count(value) for key, value in usage[name].items() if isinstance(value, (int, float))}
            for name in DETAIL_FIELDS
            if isinstance(usage.get(name), Mapping)
        }
        return cls(_count(usage.get("prompt_tokens")), _count(usage.get("completion_tokens")), details)


DETAIL_FIELDS = ("prompt_tokens_details", "completion_tokens_details")


def _count(value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value != value:
        return 0
    return max(0, int(value))


@dataclass
class Candidate:
    """One sampled answer, kept structured: tool calls are never flattened to text."""

    index: int
    variant: str
    message: Message  # OpenAI assistant message: role, content, optional tool_calls
    finish_reason: str | None = None
    token_logprobs: list[float] | None = None
    logprobs: Any = None  # the upstream's logprobs object, returned to the client untouched
    response_fields: dict[str, Any] = field(default_factory=dict)  # system_fingerprint, ... as sent
    # The panelist (configured upstream) that drew it, on panel routes; verifiers never show it
    # to a judge, so judging stays blind to which model wrote what.
    upstream: str | None = None

    @property
    def text(self) -> str:
        return content_text(self.message.get("content"))

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
    response_fields: dict[str, Any] = field(default_factory=dict)


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
class StreamEnd:
    """The last item of `Services.chat_stream`: what the stream was charged, and why it ended."""

    usage: Usage
    finish_reason: str | None = None


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

    async def generate(self, messages: Sequence[Message], n: int, upstream: str | None = None) -> Batch:
        """Sample `n` answers from the route's upstream (or the configured `upstream`, a panelist)
        with the client's parameters.

        Partial failure returns the samples that succeeded (and counts `errors`); raises
        only when not a single sample could be produced.
        """
        ...

    async def chat(self, upstream: str, messages: Sequence[Message], **params: Any) -> Reply:
        """One completion from a configured upstream (judges, paraphrases)."""
        ...

    def chat_stream(self, upstream: str, messages: Sequence[Message]) -> AsyncIterator[str | StreamEnd]:
        """One completion from a configured upstream with the client's parameters, as text pieces
        while they arrive (a fuser writing the answer), then, last, how it ended (`StreamEnd`)."""
        ...

    async def embed(self, upstream: str, texts: Sequence[str]) -> EmbedReply:
        """Embedding vectors from a configured upstream, one per text, in order."""
        ...

    async def reward(
        self, endpoint: RewardEndpoint, messages: Sequence[Message], answers: Sequence[str]
    ) -> RewardReply:
        """Scores from a reward-model endpoint named in the route config, one per answer."""
        ...

    async def forward(self, n: int) -> Batch:
        """The client's request exactly as sent (its own messages or prompt), with `n` choices."""
        ...

    def forward_stream(self, n: int) -> AsyncIterator[dict[str, Any]]:
        """The client's request as sent, streamed with `n` choices: the upstream's chunks as dicts."""
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
    NO_MEASURED_GAIN = "no_measured_gain"  # one sample: the route's gold shows no n > 1 paying off


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
    disagreement: float | None = None  # the residual the answers' disagreement alone implies
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
            "disagreement": self.disagreement,
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
    verifier_causes: dict[str, str] = field(default_factory=dict)  # name -> why its last failure happened
    plain_usage: Usage | None = None  # what one plain call cost (first batch per sample), for cost ratios
    audit: bool = False
    timings: dict[str, float] = field(default_factory=dict)  # step -> seconds
    # Answer clusters and how one was chosen (strategies/selection/choice.py): `selection` is
    # `rvr.selection`, `confidence` the learned P(correct) of the chosen cluster, `clusters`
    # the answered clusters' features, which gold probes record as training rows.
    selection: dict[str, Any] | None = None
    confidence: float | None = None
    clusters: list[dict[str, Any]] = field(default_factory=list)
    # Per candidate, the kind of answer its cluster holds (`strategies.answers.answer_type`).
    answer_types: list[str] = field(default_factory=list)
    # What the route's candidate cap buys on its gold probes: the served cap's gold accuracy minus
    # one sample's, with its interval (strategies/best_of_n/adapt.py `Gain.as_dict`); None without gold.
    gain: dict[str, Any] | None = None
    # What each upstream (config name) was paid for this request, filled by the proxy, which
    # meters every call: `rvr.cost.by_upstream`.
    usage_by_upstream: dict[str, Usage] = field(default_factory=dict)
    # Panel routes: `rvr.panel` (strategies/best_of_n/panel.py `PanelRecord.report`).
    panel: dict[str, Any] | None = None
    # Fusion routes: `rvr.fusion`; `fusion_stream` is set, instead of a fused candidate, when the
    # client streams: the fuser's text pieces, then `finish` completes the outcome.
    fusion: dict[str, Any] | None = None
    fusion_stream: FusionStream | None = None
    # Set by the proxy when `min_confidence` was not met: what the client gets instead.
    abstention: Candidate | None = None
    low_confidence: dict[str, Any] | None = None

    @property
    def chosen(self) -> Candidate:
        return self.candidates[self.selected]

    @property
    def sampled(self) -> int:
        """Candidates drawn from the upstreams: a fused answer is written from them, not drawn."""
        return sum(1 for c in self.candidates if c.variant != FUSION_VARIANT)


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
    cause: str | None = None  # why the last of them failed, in words safe to log (`failure_cause`)


def failure_cause(exc: BaseException) -> str:
    """A failure in words fit for a client and a log: the proxy's errors carry a `summary`
    without upstream text (which may echo the prompt); anything else is named by its class."""
    return str(getattr(exc, "summary", None) or type(exc).__name__)[:200]


class Verifier:
    """What the sampling loop needs of a verifier, with every optional capability declared.

    A capability a kind does not offer keeps its default here, so callers read the declaration
    instead of probing with `getattr` (scikit-learn's estimator tags do the same).
    """

    name: str  # the config name; used as a metric label, so it comes from config only
    kind: ClassVar[str] = "custom"  # the config `type` of a config-built verifier
    weight: float = 1.0
    hard: bool = False  # a constraint: a 0 disqualifies
    # Scores by judgement (a judge, a reward model, a plugin) rather than by a fixed rule, so
    # `rvr-proxy audit` can measure which answers of gold pairs it prefers.
    auditable: ClassVar[bool] = False
    judges_pairs: bool = False  # `compare` judges a pair of answers (knockout tournaments)
    orders_itself: bool = False  # scoring already shows it every candidate in both orders
    needs_logprobs: bool = False  # candidates must be sampled with token logprobs
    extracts_answers: bool = False  # `answer_of` gives the answer a vote compares
    upstreams: tuple[str, ...] = ()  # configured upstreams it calls through `Services`

    async def score(self, ctx: VerifyContext, candidates: Sequence[Candidate]) -> Scored:
        raise NotImplementedError

    def answer_of(self, candidate: Candidate, question: str | None = None) -> str | None:
        """The candidate's final answer, for the vote stop rule; None when not extractable.
        `question` is the request's last user message (an answer that only restates it is none)."""
        return None

    async def compare(self, ctx: VerifyContext, first: Candidate, second: Candidate) -> tuple[str | None, Usage]:
        """One pairwise verdict with `first` in slot A: 'a', 'b', 'tie', or None (failed or
        unparsed), and what it cost. Offered where `judges_pairs`; the caller runs both orders."""
        raise NotImplementedError

    async def add_views(self, ctx: VerifyContext) -> bool:
        """Make the next `score` add a view (another order, another template).

        Returns False when there is nothing more to offer. Used by the verifier-first rule
        (method §4.4).
        """
        return False


ORIGINAL_VARIANT = "original"  # the plain prompt; AEU is measured on its candidates
FUSION_VARIANT = "fusion"  # a fused answer's `variant`: written by a fuser, asked in no variant's words


class StrategyError(Exception):
    """Base of the errors a strategy raises on purpose; the proxy maps each to an HTTP status.

    * StrategyError
      x NoCandidatesError   every upstream call failed (the upstream's own error is the cause)
      x BudgetExhausted     raised by `Services`: the next call would pass the request's budget
      x RequestNotServed    the client asked for something this strategy cannot do (400)
        - OverrideError     the client's `rvr` options name what the route lacks (400)
    """


class NoCandidatesError(StrategyError):
    """Not a single candidate could be produced (every upstream call failed)."""


class BudgetExhausted(StrategyError):
    """The request's token budget cannot pay for the next upstream call, which was not made."""


class RequestNotServed(StrategyError, ValueError):
    """The request is valid OpenAI but this strategy cannot serve it; `param` names the field."""

    param: str | None = None

    def __init__(self, message: str, param: str | None = None) -> None:
        super().__init__(message)
        if param is not None:
            self.param = param


class OverrideError(RequestNotServed):
    """A client's `rvr` overrides named something the route does not have."""

    param = "rvr"


@dataclass(frozen=True)
class StrategyRequest:
    """One client request as a strategy sees it; built by the proxy, never kept past it."""

    messages: Sequence[Message]  # the conversation; a text prompt arrives as one user message
    n: int = 1  # choices the client asked for
    overrides: RequestOverrides | None = None  # the client's `rvr` options
    response_format: dict[str, Any] | None = None
    audit: bool | None = None  # None: the strategy draws it from its audit rate
    stream: bool = False  # the client streams: a fused answer streams as the fuser writes it


class RunningTotals(Protocol):
    """Running (sum, count) totals a strategy learns across requests; the proxy merges them
    across workers and instances."""

    def totals(self) -> dict[str, tuple[float, int]]: ...

    def restore(self, totals: dict[str, tuple[float, int]]) -> None: ...


class SharedCounts(Protocol):
    """Additive counts a strategy learns across requests, in named buckets (time windows); the
    proxy adds every process's increments per bucket and hands back the totals."""

    def buckets(self) -> dict[str, dict[str, float]]: ...

    def restore(self, bucket: str, totals: Mapping[str, float]) -> None: ...


class Strategy:
    """A route's way of answering: built once per route from config, `run` once per request.

    Capabilities are declared here with their defaults, so the proxy asks the strategy what it
    does instead of checking its name.
    """

    name: str  # the config name of the kind; a metric label
    Settings: ClassVar[type[Any]]  # its settings model, a `strategies.settings.StrategySpec`
    reports: bool = True  # the outcome carries an `rvr` report, and the client may tune it with `rvr`
    relays_stream: bool = False  # streams the upstream's chunks as they come (else: replays the outcome)
    takes_prompt_batches: bool = False  # serves a text-completion prompt array as sent
    needs_logprobs: bool = False  # candidates must be sampled with token logprobs
    upstreams: tuple[str, ...] = ()  # configured upstreams it calls besides the route's own
    verifiers: Sequence[Verifier] = ()  # the verifiers it built, in config order
    audited: Sequence[Verifier] = ()  # what `rvr-proxy audit` measures: its settings' `audited_specs()`, built
    state: RunningTotals | None = None  # estimates it learns across requests, which processes share
    # Counts it learns across requests and probes, by name (`vote_prior`, `gain`), which processes
    # share as they do `state`, less often (they move slowly).
    shared_counts: Mapping[str, SharedCounts] = MappingProxyType({})

    @classmethod
    def build(cls, settings: Any) -> Strategy:
        """The strategy `settings` (an instance of `Settings`) describe, built once at start-up.

        Raises ValueError naming the bad field.
        """
        return cls()

    def use_selector(self, state: Callable[[], Any]) -> None:
        """Take the route's learned selection model, which the proxy keeps from its gold probes
        (called only for strategies whose settings have `selection_settings()`)."""

    async def run(self, request: StrategyRequest, services: Services) -> Outcome:
        raise NotImplementedError

    async def reference(
        self, request: StrategyRequest, services: Services, k: int, served: Sequence[Candidate] = ()
    ) -> list[Candidate]:
        """`k` candidates from each way this strategy asks, for gold probes (method §9.1).

        They measure what the route could have served at the reference budget: the best of K
        from one prompt and the best of K from every prompt variant. The first way of asking
        comes first and is labelled `ORIGINAL_VARIANT`. The `served` candidates of a variant
        count towards its K and only the rest are drawn: they are draws from the same prompt, so
        the K are still K independent draws, and the probe costs less and varies less.
        """
        return await topped_up(services, request.messages, ORIGINAL_VARIANT, k, served)

    async def learn_from_gold(
        self, request: StrategyRequest, services: Services, reference: Sequence[Candidate],
        utility: Callable[[Candidate], float | None], item: str,
    ) -> None:
        """Gold probes: what the route learns from one item's reference candidates (its
        `shared_counts`), e.g. the gold accuracy of serving n candidates. Nothing by default."""

    async def judge_pairs(
        self, request: StrategyRequest, services: Services, outcome: Outcome, utility: Callable[[Candidate], float | None]
    ) -> list[dict[str, bool]]:
        """Gold probes: the route's pairwise judge on (right, wrong) answer pairs of a served
        outcome, both orders (strategies/selection/knockout.py). Nothing for strategies without one."""
        return []

    def stream(self, request: StrategyRequest, services: Services) -> AsyncIterator[dict[str, Any]]:
        """The upstream's chunks, for strategies that relay streams.

        Checks the request eagerly (raising `RequestNotServed`), before any byte is sent.
        """
        raise NotImplementedError


async def topped_up(
    services: Services, messages: Sequence[Message], variant: str, k: int, served: Sequence[Candidate]
) -> list[Candidate]:
    """The variant's served candidates, then fresh ones up to `k` in all."""
    mine = [c for c in served if c.variant == variant][:k]
    fresh = await sample_variant(services, messages, variant, k - len(mine)) if len(mine) < k else []
    return mine + fresh


async def sample_variant(
    services: Services, messages: Sequence[Message], variant: str, k: int, upstream: str | None = None
) -> list[Candidate]:
    """`k` candidates for `messages` as one variant; what they cost is charged where every call is."""
    batch = await services.generate(messages, k, upstream)
    return [as_candidate(i, variant, s, upstream) for i, s in enumerate(batch.samples)]


def as_candidate(index: int, variant: str, sample: Sample, upstream: str | None = None) -> Candidate:
    return Candidate(index, variant, sample.message, sample.finish_reason, sample.token_logprobs, sample.logprobs,
                     sample.response_fields, upstream)


@dataclass
class FusionStream:
    """A fused answer still being written: `pieces` yields the fuser's text as it arrives; then
    `finish(text, None)` scores it and returns the completed outcome, or, where the fuser failed
    before its first piece, `finish(None, error)` returns the selected candidate's."""

    pieces: AsyncIterator[str]
    finish: Callable[[str | None, BaseException | None], Awaitable[Outcome]]
