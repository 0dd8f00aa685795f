"""The YAML config, parsed once at start-up into typed objects.

Shape (LiteLLM users should feel at home: `litellm_params` reach litellm as written):

    server:   {api_keys: [os.environ/RVR_KEY], max_body_bytes: 1048576, ...}
    upstreams: [{name, litellm_params: {model, api_base, api_key, ...}, mode, supports_n, ...}]
    routes:    [{model, upstream, strategy: {name: passthrough | best_of_n, ...}, limits: {...}}]
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import Field, PrivateAttr, SerializeAsAny, ValidationError, field_validator, model_validator

from proxy.config.probe_set import ProbeSetError, ProbeSettings, load_probe_set
from proxy.config.scale import KeySettings, StateSettings, check_keys
from proxy.config.secrets import MissingSecret, plain_text_secrets, resolve, url_password
from strategies.contract import MODEL_NAME_PATTERN, Strategy, StrictModel
from strategies.passthrough import PassthroughSettings
from strategies.registry import STRATEGIES, build_strategy, parse_settings
from strategies.settings import StrategySpec
from strategies.verifiers import REGISTRY as VERIFIER_KINDS

# Discriminated unions add the chosen tag to an error's path; users never wrote it.


class ConfigError(ValueError):
    """An invalid config; the message names the bad key path."""



class ServerSettings(StrictModel):
    api_keys: list[str] = Field(default_factory=list)  # when set, Bearer auth is required
    max_body_bytes: int = Field(1 << 20, ge=1024)
    default_upstream: str | None = None  # serves unknown `model` names as passthrough
    log_prompts: bool = False  # prompts are personal data: off unless asked for
    request_timeout_s: float = Field(600.0, gt=0)
    metrics_auth: bool = False  # True: /metrics asks for an API key like /v1/* does
    max_messages: int = Field(1024, ge=1)  # per request; each one costs validation and upstream work
    max_header_bytes: int = Field(64 * 1024, ge=1024)  # request line and headers; beyond: 400, closed
    read_timeout_s: float = Field(30.0, gt=0)  # for a request's headers, and again for its body
    # Where probe results, fitted calibration and selection state and verifier audits persist
    # across restarts; None keeps them in memory only.
    state_dir: Path | None = None
    # Running estimates, learned upstream facts and rate-limit counters shared by every worker
    # and instance (proxy/state/redis.py); memory keeps them per process.
    state: StateSettings = Field(default_factory=StateSettings)
    keys: list[KeySettings] = Field(default_factory=list)  # named keys with limits; api_keys: without
    drain_s: float = Field(30.0, ge=0, le=3600)  # on SIGTERM, in-flight requests get this long to finish
    # On SIGTERM, keep accepting and serving this long with /readyz at 503 before the listener
    # closes: a balancer that health-checks /readyz stops routing here first. Closing at once
    # resets the connections that arrive in between (accepted by the kernel, never read).
    drain_delay_s: float = Field(0.0, ge=0, le=300)

    @field_validator("api_keys")
    @classmethod
    def _keys_not_empty(cls, keys: list[str]) -> list[str]:
        if any(not key.strip() for key in keys):
            raise ValueError("an API key must not be empty")
        return keys

    @model_validator(mode="after")
    def _metrics_auth_needs_keys(self) -> ServerSettings:
        if self.metrics_auth and not (self.api_keys or self.keys):
            raise ValueError("metrics_auth: needs server.api_keys or server.keys")
        return self


# litellm model prefixes whose provider speaks OpenAI's HTTP protocol to `api_base`: with
# `client: auto` the proxy speaks it itself (proxy/upstream/native.py) and never imports litellm.
OPENAI_PROTOCOL_PREFIXES = ("openai/", "text-completion-openai/", "hosted_vllm/")
# The `litellm_params` the native client understands: where to send, the key, the timeout, extra
# headers and body, and OpenAI request parameters as defaults. Any other key (`api_version`,
# `drop_params`, `stream_timeout`, ...) is litellm's own, so `auto` leaves such an upstream to litellm.
NATIVE_PARAMS = frozenset(
    {
        "model", "api_base", "base_url", "api_key", "timeout", "max_retries", "extra_headers", "extra_body",
        "temperature", "top_p", "max_tokens", "max_completion_tokens", "stop", "seed", "presence_penalty",
        "frequency_penalty", "logit_bias", "logprobs", "top_logprobs", "user", "response_format",
        "reasoning_effort", "service_tier", "parallel_tool_calls", "store", "top_k", "min_p",
        "repetition_penalty",
    }
)


class UpstreamSettings(StrictModel):
    name: str = Field(pattern=MODEL_NAME_PATTERN)
    litellm_params: dict[str, Any]
    # Which client calls the upstream: `native` speaks OpenAI's protocol itself, `litellm` goes
    # through litellm (every provider), `auto` is native wherever `native` can serve.
    client: Literal["auto", "native", "litellm"] = "auto"
    mode: Literal["chat", "completion"] = "chat"  # completion: chats are rendered for a base model
    supports_n: bool | None = None  # None: try `n`, learn if the upstream ignores or rejects it
    max_concurrency: int = Field(64, ge=1, le=10_000)
    timeout_s: float = Field(120.0, gt=0)
    retries: int = Field(2, ge=0, le=10)
    retry_backoff_s: float = Field(0.25, ge=0)
    fallback: str | None = None  # another upstream's name, tried when this one fails

    @field_validator("litellm_params")
    @classmethod
    def _has_model(cls, params: dict[str, Any]) -> dict[str, Any]:
        if not isinstance(params.get("model"), str) or not params["model"]:
            raise ValueError("litellm_params.model is required")
        return params

    @model_validator(mode="after")
    def _native_can_serve(self) -> UpstreamSettings:
        problem = self.native_problem()
        if self.client == "native" and problem is not None:
            raise ValueError(f"client: native cannot serve this upstream: {problem}")
        return self

    def native_problem(self) -> str | None:
        """Why the native client cannot serve this upstream, or None when it can."""
        params = self.litellm_params
        model = params["model"]
        if not model.startswith(OPENAI_PROTOCOL_PREFIXES) or model.endswith("/"):
            return f"{model!r} is not one of {', '.join(p + '...' for p in OPENAI_PROTOCOL_PREFIXES)}"
        if model.startswith("hosted_vllm/") and not (params.get("api_base") or params.get("base_url")):
            return "hosted_vllm/ needs litellm_params.api_base"
        litellm_only = sorted(set(params) - NATIVE_PARAMS)
        if litellm_only:
            keys = ", ".join(f"litellm_params.{key}" for key in litellm_only)
            return f"{keys} {'is' if len(litellm_only) == 1 else 'are'} litellm's own"
        return None

    @property
    def native(self) -> bool:
        """Whether the native client serves this upstream (else litellm)."""
        return self.client == "native" or (self.client == "auto" and self.native_problem() is None)


MAX_YAML_NODES = 100_000  # a config with every feature is a few hundred; aliases may not multiply it
DEFAULT_MAX_TOKENS = 32_768  # the most a client may ask per completion where the route sets no cap


class RouteLimits(StrictModel):
    """Caps a client can lower but never raise."""

    max_n: int = Field(8, ge=1, le=512)  # the client's `n` times its prompts (choices returned)
    # Per completion, for `max_tokens` and `max_completion_tokens` alike. When set, it is also sent
    # upstream for requests that name no limit; when not, clients may ask up to DEFAULT_MAX_TOKENS.
    max_tokens: int | None = Field(None, ge=1)

    @property
    def token_cap(self) -> int:
        return self.max_tokens if self.max_tokens is not None else DEFAULT_MAX_TOKENS


class RouteSettings(StrictModel):
    model: str = Field(pattern=MODEL_NAME_PATTERN)
    upstream: str | None = None  # the route's model; a best_of_n `panel` names its models instead
    strategy: SerializeAsAny[StrategySpec] = Field(default_factory=PassthroughSettings)
    limits: RouteLimits = Field(default_factory=RouteLimits)
    probes: ProbeSettings | None = None  # gold items that anchor the route's risk numbers

    @field_validator("strategy", mode="before")
    @classmethod
    def _strategy_of_its_kind(cls, value: Any) -> StrategySpec:
        return parse_settings(value)  # the kind's own settings type, found in the registry

    @model_validator(mode="after")
    def _upstream_or_panel(self) -> RouteSettings:
        panel = self.strategy.panel_upstreams()
        if panel and self.upstream is not None:
            raise ValueError("a route has `upstream` or `strategy.panel`, not both")
        if not panel and self.upstream is None:
            raise ValueError("upstream: required (or a best_of_n `strategy.panel`)")
        return self

    @property
    def primary_upstream(self) -> str:
        """The route's own upstream: its `upstream`, or its panel's first. Plain calls (a client's
        request as sent, learned facts such as `n` support) go there."""
        return self.upstream if self.upstream is not None else self.strategy.panel_upstreams()[0]


class Config(StrictModel):
    server: ServerSettings = Field(default_factory=ServerSettings)
    upstreams: list[UpstreamSettings] = Field(min_length=1)
    routes: list[RouteSettings] = Field(default_factory=list)
    _environment_values: list[str] = PrivateAttr(default_factory=list)  # every `os.environ/` value used

    @model_validator(mode="after")
    def _references_resolve(self) -> Config:
        names = [u.name for u in self.upstreams]
        _unique(names, "upstreams", "name")
        _unique([r.model for r in self.routes], "routes", "model")
        known = set(names)
        check_keys(self.server.api_keys, self.server.keys)
        for i, up in enumerate(self.upstreams):
            if up.fallback is not None and up.fallback not in known:
                raise ValueError(f"upstreams.{i}.fallback: unknown upstream {up.fallback!r}")
        if self.server.default_upstream is not None and self.server.default_upstream not in known:
            raise ValueError(f"server.default_upstream: unknown upstream {self.server.default_upstream!r}")
        for i, route in enumerate(self.routes):
            if route.upstream is not None and route.upstream not in known:
                raise ValueError(f"routes.{i}.upstream: unknown upstream {route.upstream!r}")
            for where, name in route.strategy.upstream_references():
                if name not in known:
                    raise ValueError(f"routes.{i}.strategy.{where}: unknown upstream {name!r}")
            for where, name in route.strategy.route_references():
                if name not in {r.model for r in self.routes} - {route.model}:
                    raise ValueError(f"routes.{i}.strategy.{where}: {name!r} is not another route")
        return self

    def upstream(self, name: str) -> UpstreamSettings:
        return next(u for u in self.upstreams if u.name == name)

    def secrets(self) -> list[str]:
        """Every secret value, so output can be scrubbed of them."""
        values = list(self.server.api_keys) + [k.key for k in self.server.keys] + self._environment_values
        state_password = url_password(self.server.state.url)
        if state_password:
            values.append(state_password)
        for up in self.upstreams:
            for key in ("api_key", "aws_secret_access_key", "vertex_credentials"):
                if isinstance(up.litellm_params.get(key), str):
                    values.append(up.litellm_params[key])
            for key in ("api_base", "base_url"):
                password = url_password(up.litellm_params.get(key))
                if password:
                    values.append(password)
        for route in self.routes:
            values.extend(route.strategy.secrets())
        return values


def build_strategy_of(route: RouteSettings, path: str) -> Strategy:
    """The route's strategy, built as serving builds it; a problem names the key path."""
    try:
        strategy = build_strategy(route.strategy)
    except ValueError as exc:
        raise ConfigError(f"{path}.strategy: {exc}") from None
    if route.probes is not None and not strategy.reports:
        raise ConfigError(f"{path}.probes: gold probes calibrate risk numbers, and {strategy.name} routes report none")
    return strategy


def call_ceiling(config: Config, route: RouteSettings) -> int:
    """The most upstream calls one request of `route` may make, unless its config says.

    The strategy's own count (every candidate its own call, every judge call, every paraphrase)
    times the most attempts any upstream it uses makes per call: its retries, then its
    fallback's (a fallback does not fall back). Nothing a client sends changes it.
    """
    strategy = route.strategy
    if strategy.max_upstream_calls is not None:
        return strategy.max_upstream_calls

    def attempts(name: str) -> int:
        upstream = config.upstream(name)
        fallback = config.upstream(upstream.fallback) if upstream.fallback is not None else None
        return 1 + upstream.retries + (1 + fallback.retries if fallback is not None else 0)

    names = [route.primary_upstream, *(name for _, name in strategy.upstream_references())]
    return strategy.upstream_calls(route.limits.max_n) * max(attempts(name) for name in names)


def _unique(values: list[str], where: str, key: str) -> None:
    seen: set[str] = set()
    for i, value in enumerate(values):
        if value in seen:
            raise ValueError(f"{where}.{i}.{key}: duplicate {value!r}")
        seen.add(value)


def parse_config(raw: Any, environ: dict[str, str] | None = None, base_dir: Path | None = None) -> Config:
    """Validate a config; relative probe files are read from `base_dir` (default: the working directory)."""
    if not isinstance(raw, dict):
        raise ConfigError("the config must be a YAML mapping with `upstreams` and `routes`")
    plain = plain_text_secrets(raw)
    if plain:
        raise ConfigError(
            "secrets must come from the environment as `os.environ/NAME`, not stand in the file: "
            + ", ".join(plain)
        )
    environment_values: list[str] = []
    try:
        resolved = resolve(raw, "config", environ, environment_values)
    except MissingSecret as exc:
        raise ConfigError(str(exc).removeprefix("config.")) from None
    try:
        config = Config.model_validate(resolved)
    except ValidationError as exc:
        raise ConfigError(_describe(exc)) from None
    config._environment_values = environment_values
    _anchor_paths(config, base_dir or Path.cwd())
    return config


def _anchor_paths(config: Config, base_dir: Path) -> None:
    """Anchor relative paths to the config's directory, and read every probe file once, so a
    bad line fails here."""
    if config.server.state_dir is not None and not config.server.state_dir.is_absolute():
        config.server.state_dir = (base_dir / config.server.state_dir).resolve()
    for i, route in enumerate(config.routes):
        if route.probes is None:
            continue
        if not route.probes.file.is_absolute():
            route.probes.file = (base_dir / route.probes.file).resolve()
        try:
            load_probe_set(route.probes.file)
        except ProbeSetError as exc:
            raise ConfigError(f"routes.{i}.probes.file: {exc}") from None


def load_config(path: str | os.PathLike[str]) -> Config:
    file = Path(path)
    try:
        text = file.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"cannot read config file {file}: {exc.strerror}") from None
    return parse_config(safe_yaml(text, str(file)), base_dir=file.resolve().parent)


def safe_yaml(text: str, where: str) -> Any:
    """YAML as data, refused with one line when it is not: invalid, nested past any config's
    depth, or expanding (through aliases, as in "billion laughs") past `MAX_YAML_NODES`."""
    try:
        node = yaml.compose(text, Loader=yaml.SafeLoader)
        if node is not None and _expanded_nodes(node, {}) > MAX_YAML_NODES:
            raise ConfigError(f"{where}: its aliases expand to more than {MAX_YAML_NODES} YAML nodes")
        return yaml.safe_load(text)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark
        place = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
        raise ConfigError(f"{where} is not valid YAML{place}: {exc.problem or exc.context}") from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"{where} is not valid YAML: {str(exc).splitlines()[0]}") from None
    except RecursionError:
        raise ConfigError(f"{where}: YAML nested too deeply") from None


def _expanded_nodes(node: yaml.Node, sizes: dict[int, int]) -> int:
    """How many nodes `node` is once every alias is copied out; each node is sized once."""
    known = sizes.get(id(node))
    if known is not None:
        return known
    total = 1
    if isinstance(node, yaml.SequenceNode):
        total += sum(_expanded_nodes(child, sizes) for child in node.value)
    elif isinstance(node, yaml.MappingNode):
        total += sum(_expanded_nodes(k, sizes) + _expanded_nodes(v, sizes) for k, v in node.value)
    sizes[id(node)] = total
    return total


def _describe(exc: ValidationError) -> str:
    lines = []
    for err in exc.errors(include_url=False, include_input=False):
        tags = {*STRATEGIES, *VERIFIER_KINDS}  # a union member's tag locates nothing for a reader
        loc = [str(p) for p in err["loc"] if p not in tags]
        message = err["msg"].removeprefix("Value error, ")
        # Cross-reference checks already name their path in the message.
        lines.append(f"{'.'.join(loc)}: {message}" if loc else message)
    return "invalid config:\n  " + "\n  ".join(lines)
