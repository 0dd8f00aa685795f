"""Client request bodies: validated, and split into what litellm gets and what the proxy keeps.

Every mistake a client can make in a standard OpenAI field is a 400 here, naming the field by
its path (`messages[0].role`), before any upstream is called: a malformed request that reached
litellm came back as a 500 or a 502, and was retried upstream. Only the fields OpenAI defines are
checked; unknown fields pass untouched, since they are vendor extensions (top_k, ...) that ride
to the upstream in `extra_body`.

Checks that apply to every value in the body, whatever the field, run first (`_check_values`):
JSON's `NaN`/`Infinity` (Python's json accepts them, no upstream does), lone UTF-16 surrogates
(`"\\ud800"` decodes to a str that cannot be encoded again), and nesting depth.
"""

from __future__ import annotations

import math
from typing import Annotated, Any, Literal, cast

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    PlainValidator,
    StrictBool,
    StrictStr,
    ValidationError,
    with_config,
)
from typing_extensions import Required, TypedDict

from proxy.errors import InvalidRequest
from strategies.contract import RequestOverrides
from strategies.verifiers.json_schema import SchemaRejected, check_schema, request_schema

# OpenAI parameters litellm takes by name; anything else a client sends rides in `extra_body`,
# so vendor extensions (top_k, repetition_penalty, ...) still reach the upstream untouched.
# Chat's `user` and `metadata` ride there too: litellm takes them by name but drops them (it
# keeps `metadata` for its own logging), so the upstream never saw them.
CHAT_PARAMS = frozenset(
    {
        "temperature",
        "top_p",
        "stop",
        "max_tokens",
        "max_completion_tokens",
        "presence_penalty",
        "frequency_penalty",
        "logit_bias",
        "response_format",
        "seed",
        "tools",
        "tool_choice",
        "parallel_tool_calls",
        "logprobs",
        "top_logprobs",
        "functions",
        "function_call",
        "modalities",
        "audio",
        "prediction",
        "reasoning_effort",
        "service_tier",
        "store",
    }
)
TEXT_PARAMS = frozenset(
    {
        "temperature",
        "top_p",
        "stop",
        "max_tokens",
        "presence_penalty",
        "frequency_penalty",
        "logit_bias",
        "user",
        "seed",
        "logprobs",
        "echo",
        "best_of",
        "suffix",
    }
)
TOOL_CHOICES = frozenset({"none", "auto", "required"})
RESPONSE_FORMATS = frozenset({"text", "json_object", "json_schema"})
# No OpenAI request comes near this; the limit keeps every later recursive walk (pydantic,
# litellm's serializer, schema validation) far from Python's recursion limit.
MAX_DEPTH = 100
# Fields the proxy itself consumes; the rest of the declared fields are upstream parameters.
_PROXY_FIELDS = frozenset(
    {"model", "n", "stream", "stream_options", "rvr", "messages", "prompt", "max_tokens", "max_completion_tokens"}
)


class _ShapeError(ValueError):
    """A validator's complaint about a value deeper than the field it validates: `at` is the
    rest of the path (list indices and keys), so the client's error names the exact spot."""

    def __init__(self, message: str, at: tuple[int | str, ...] = ()) -> None:
        super().__init__(message)
        self.at = at


# ---- scalar types: JSON types, without pydantic's lax coercions ------------------------------
# Lax mode would take `"2"` or `true` for `n` and `"0.5"` for `temperature`; OpenAI does not.


def _integer(value: Any) -> Any:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise _ShapeError("must be an integer")
    return value  # lax int then refuses 2.5 and takes 2.0, as JSON numbers are one type


def _number(value: Any) -> Any:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise _ShapeError("must be a number")
    if not math.isfinite(value):
        raise _ShapeError("must be a finite number")
    return value


Integer = Annotated[int, BeforeValidator(_integer)]
Number = Annotated[float, BeforeValidator(_number)]


def _stop(value: Any) -> str | list[str] | None:
    if value is None or isinstance(value, str):
        return value
    if isinstance(value, list):
        for i, item in enumerate(value):
            if not isinstance(item, str):
                raise _ShapeError("must be a string", (i,))
        return value
    raise _ShapeError("must be a string, an array of strings, or null")


# Each content part type OpenAI defines, and the field that carries it with that field's JSON
# type. litellm refuses any other part before sending, which surfaced as a 502.
PART_FIELDS: dict[str, tuple[str, type]] = {
    "text": ("text", str),
    "image_url": ("image_url", dict),
    "input_audio": ("input_audio", dict),
    "file": ("file", dict),
    "refusal": ("refusal", str),
}


def _content(value: Any) -> str | list[dict[str, Any]] | None:
    """A message's content: a string, null, or content parts of the types OpenAI defines."""
    if value is None or isinstance(value, str):
        return value
    if isinstance(value, list):
        for i, part in enumerate(value):
            if not isinstance(part, dict):
                raise _ShapeError("a content part must be an object", (i,))
            kind = part.get("type")
            if not isinstance(kind, str):
                raise _ShapeError("a content part needs a string `type`", (i, "type"))
            if kind not in PART_FIELDS:
                raise _ShapeError(f"must be one of {sorted(PART_FIELDS)}", (i, "type"))
            field, expected = PART_FIELDS[kind]
            if not isinstance(part.get(field), expected):
                json_type = "a string" if expected is str else "an object"
                raise _ShapeError(f"a `{kind}` part needs `{field}` as {json_type}", (i, field))
        return value
    raise _ShapeError("must be a string, an array of content parts, or null")


# The part types each role may send (OpenAI's message types); litellm refuses the rest.
ROLE_PARTS: dict[str, frozenset[str]] = {
    "user": frozenset({"text", "image_url", "input_audio", "file"}),
    "assistant": frozenset({"text", "refusal"}),
}
TEXT_ONLY = frozenset({"text"})


def _message(message: ChatMessage) -> ChatMessage:
    """Content each role may send; only an assistant turn may leave it out (to call tools)."""
    allowed = ROLE_PARTS.get(message["role"], TEXT_ONLY)
    content = message.get("content")
    parts = cast(list[dict[str, Any]], content) if isinstance(content, list) else []  # checked by _content
    for i, part in enumerate(parts):
        if part["type"] not in allowed:
            raise _ShapeError(f"a `{message['role']}` message takes parts of {sorted(allowed)}", ("content", i, "type"))
    if message["role"] == "assistant":
        if message.get("content") is None and not message.get("tool_calls") and not message.get("function_call"):
            raise _ShapeError("an assistant message needs `content` or `tool_calls`", ("content",))
    elif message.get("content") is None:
        raise _ShapeError(f"a `{message['role']}` message needs `content`", ("content",))
    return message


def _tool_choice(value: Any) -> str | dict[str, Any] | None:
    if value is None:
        return value
    if isinstance(value, str):
        if value not in TOOL_CHOICES:
            raise _ShapeError(f"must be one of {sorted(TOOL_CHOICES)} or an object naming a function")
        return value
    if not isinstance(value, dict):
        raise _ShapeError("must be a string or an object")
    if not isinstance(value.get("type"), str):
        raise _ShapeError("needs a string `type`", ("type",))
    if value["type"] == "function":
        function = value.get("function")
        if not isinstance(function, dict):
            raise _ShapeError("must be an object with the function's `name`", ("function",))
        if not isinstance(function.get("name"), str) or not function["name"]:
            raise _ShapeError("must be a non-empty string", ("function", "name"))
    return value


def _prompt(value: Any) -> str | list[str] | list[int]:
    if isinstance(value, str):
        return value
    if isinstance(value, list):
        if not value:
            raise _ShapeError("must not be empty")
        if all(isinstance(p, str) for p in value):
            return value
        if all(isinstance(p, int) and not isinstance(p, bool) for p in value):
            return value
        raise _ShapeError("an array prompt must hold only strings or only token ids")
    raise _ShapeError("must be a string, an array of strings, or an array of token ids")


Content = Annotated[str | list[dict[str, Any]] | None, PlainValidator(_content)]
Stop = Annotated[str | list[str] | None, PlainValidator(_stop)]
ToolChoice = Annotated[str | dict[str, Any] | None, PlainValidator(_tool_choice)]
Prompt = Annotated[str | list[str] | list[int], PlainValidator(_prompt)]
Role = Literal["system", "developer", "user", "assistant", "tool", "function"]

# ---- structured fields ---------------------------------------------------------------------------
# TypedDicts, so validated values stay the plain dicts the rest of the proxy and litellm expect,
# unknown keys included (extra="allow"): vendors add their own.

_OPEN = ConfigDict(extra="allow")


@with_config(_OPEN)
class ChatMessage(TypedDict, total=False):
    role: Required[Role]
    content: Content
    name: StrictStr
    tool_calls: list[dict[str, Any]] | None
    tool_call_id: StrictStr


@with_config(_OPEN)
class FunctionDefinition(TypedDict, total=False):
    name: Required[Annotated[StrictStr, Field(min_length=1)]]
    description: StrictStr
    parameters: dict[str, Any]
    strict: StrictBool | None


@with_config(_OPEN)
class Tool(TypedDict, total=False):
    type: Required[Literal["function"]]
    function: Required[FunctionDefinition]


@with_config(_OPEN)
class JsonSchemaFormat(TypedDict, total=False):
    name: StrictStr
    description: StrictStr
    schema: dict[str, Any]
    strict: StrictBool | None


@with_config(_OPEN)
class ResponseFormat(TypedDict, total=False):
    type: Required[Literal["text", "json_object", "json_schema"]]
    json_schema: JsonSchemaFormat


@with_config(_OPEN)
class StreamOptions(TypedDict, total=False):
    include_usage: StrictBool


def _self_contained(value: ResponseFormat | None) -> ResponseFormat | None:
    """The schema the json_schema verifier will check candidates against, checked here first:
    the same `check_schema` the verifier builds its validator through, so a schema that would
    fetch a URL, run a regex outside RE2, or not compile at all is the client's 400."""
    if value is None or value["type"] != "json_schema":
        return value
    if "json_schema" not in value:
        raise _ShapeError("is required when `type` is `json_schema`", ("json_schema",))
    schema = request_schema(value)
    if schema is not None:
        try:
            check_schema(schema)
        except SchemaRejected as exc:
            # The parameter is `response_format` (as OpenAI names it); the message says where.
            raise _ShapeError(f"json_schema.schema: {exc}") from None
    return value


class RequestBody(BaseModel):
    model_config = ConfigDict(extra="allow")

    model: StrictStr = Field(min_length=1, max_length=256)
    n: Integer = Field(1, ge=1)
    stream: StrictBool = False
    stream_options: StreamOptions | None = None
    max_tokens: Integer | None = Field(None, ge=1)
    max_completion_tokens: Integer | None = Field(None, ge=1)
    rvr: RequestOverrides | None = None

    temperature: Number | None = Field(None, ge=0, le=2)
    top_p: Number | None = Field(None, ge=0, le=1)
    presence_penalty: Number | None = Field(None, ge=-2, le=2)
    frequency_penalty: Number | None = Field(None, ge=-2, le=2)
    stop: Stop = None
    seed: Integer | None = None
    user: StrictStr | None = None
    logit_bias: dict[StrictStr, Annotated[Number, Field(ge=-100, le=100)]] | None = None
    metadata: dict[StrictStr, StrictStr] | None = None
    # Only chat sends it to the upstream by name, but a completions request's copy rides in
    # `extra_body` to vendors that honour it, so it is held to the same rules.
    response_format: Annotated[ResponseFormat | None, AfterValidator(_self_contained)] = None

    @property
    def include_usage(self) -> bool:
        return bool(self.stream_options and self.stream_options.get("include_usage"))

    @property
    def token_limit(self) -> int | None:
        return self.max_completion_tokens or self.max_tokens

    def upstream_params(self, allowed: frozenset[str]) -> dict[str, Any]:
        fields = self.model_dump(exclude_unset=True)
        params = {k: v for k, v in fields.items() if k in allowed}
        extra = {k: v for k, v in fields.items() if k not in allowed and k not in _PROXY_FIELDS}
        if extra:
            params["extra_body"] = extra
        return params


class ChatRequest(RequestBody):
    messages: list[Annotated[ChatMessage, AfterValidator(_message)]] = Field(min_length=1)
    tools: list[Tool] | None = None
    tool_choice: ToolChoice = None
    parallel_tool_calls: StrictBool | None = None
    logprobs: StrictBool | None = None
    top_logprobs: Integer | None = Field(None, ge=0, le=20)
    store: StrictBool | None = None


class CompletionRequest(RequestBody):
    prompt: Prompt
    logprobs: Integer | None = Field(None, ge=0, le=5)
    echo: StrictBool | None = None
    suffix: StrictStr | None = None


def parse_body(model: type[RequestBody], data: Any) -> Any:
    if not isinstance(data, dict):
        raise InvalidRequest("the request body must be a JSON object")
    _check_values(data)
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        raise _invalid(exc) from None


# ---- errors --------------------------------------------------------------------------------------

_MESSAGES = {
    "missing": "is required",
    "dict_type": "must be an object",
    "list_type": "must be an array",
    "string_type": "must be a string",
    "bool_type": "must be a boolean",
    "int_type": "must be an integer",
    "int_from_float": "must be an integer",
    "float_type": "must be a number",
    "finite_number": "must be a finite number",
}


def _invalid(exc: ValidationError) -> InvalidRequest:
    err = exc.errors(include_url=False, include_input=False)[0]
    loc: list[int | str] = [p for p in err["loc"] if isinstance(p, (int, str))]
    cause = (err.get("ctx") or {}).get("error")
    if isinstance(cause, _ShapeError):
        loc += cause.at
        message = str(cause)
    else:
        message = _MESSAGES.get(err["type"], err["msg"])
    param = path(loc)
    return InvalidRequest(f"{param}: {message}" if param else message, param=param or None)


def path(loc: list[int | str] | tuple[int | str, ...]) -> str:
    """A location as OpenAI writes it: `messages[0].content[1].type`."""
    out = ""
    for part in loc:
        # A key is the client's text: escaped, so an error body always encodes.
        key = str(part).encode("utf-8", "backslashreplace").decode("utf-8")
        out += f"[{part}]" if isinstance(part, int) else (f".{key}" if out else key)
    return out


def _check_values(data: dict[str, Any]) -> None:
    """Refuse what no field's type would: non-finite numbers, unencodable strings, deep nesting.

    Iterative, so a deep body is measured rather than crashed into.
    """
    stack: list[tuple[Any, tuple[int | str, ...]]] = [(data, ())]
    while stack:
        value, at = stack.pop()
        if len(at) > MAX_DEPTH:
            raise InvalidRequest(f"the request nests deeper than {MAX_DEPTH} levels", param=path(at[:1]) or None)
        if isinstance(value, str):
            _check_text(value, at)
        elif isinstance(value, float):
            if not math.isfinite(value):
                where = path(at)
                raise InvalidRequest(
                    f"{where}: must be a finite number (NaN and Infinity are not JSON)", param=where or None
                )
        elif isinstance(value, dict):
            for key, item in value.items():
                _check_text(key, at)
                stack.append((item, (*at, key)))
        elif isinstance(value, list):
            stack.extend((item, (*at, i)) for i, item in enumerate(value))


def _check_text(text: str, at: tuple[int | str, ...]) -> None:
    if text.isascii():
        return
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        where = path(at)
        raise InvalidRequest(
            f"{where or 'the body'}: contains a lone UTF-16 surrogate, which is not valid Unicode",
            param=where or None,
        ) from None
