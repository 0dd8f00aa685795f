"""Client request bodies: validated, and split into what litellm gets and what the proxy keeps."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from proxy.errors import InvalidRequest
from strategies.contract import Message
from strategies.settings import RequestOverrides

# OpenAI parameters litellm takes by name; anything else a client sends rides in `extra_body`,
# so vendor extensions (top_k, repetition_penalty, ...) still reach the upstream untouched.
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
        "user",
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
        "metadata",
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
ROLES = frozenset({"system", "developer", "user", "assistant", "tool", "function"})


class _Body(BaseModel):
    model_config = ConfigDict(extra="allow")

    model: str = Field(min_length=1, max_length=256)
    n: int = Field(1, ge=1)
    stream: bool = False
    stream_options: dict[str, Any] | None = None
    max_tokens: int | None = Field(None, ge=1)
    max_completion_tokens: int | None = Field(None, ge=1)
    rvr: RequestOverrides | None = None

    @property
    def include_usage(self) -> bool:
        return bool(self.stream_options and self.stream_options.get("include_usage"))

    @property
    def token_limit(self) -> int | None:
        return self.max_completion_tokens or self.max_tokens

    def upstream_params(self, allowed: frozenset[str]) -> dict[str, Any]:
        fields = self.model_dump(exclude_unset=True)
        params = {k: v for k, v in fields.items() if k in allowed}
        extra = {k: v for k, v in (self.model_extra or {}).items() if k not in allowed}
        if extra:
            params["extra_body"] = extra
        return params


class ChatRequest(_Body):
    messages: list[Message] = Field(min_length=1)

    @field_validator("messages")
    @classmethod
    def _roles(cls, messages: list[Message]) -> list[Message]:
        for i, message in enumerate(messages):
            if message.get("role") not in ROLES:
                raise ValueError(f"messages[{i}].role must be one of {sorted(ROLES)}")
        return messages


class CompletionRequest(_Body):
    prompt: str | list[str] | list[int] = Field(...)

    @field_validator("prompt")
    @classmethod
    def _not_empty_list(cls, prompt: Any) -> Any:
        if isinstance(prompt, list) and not prompt:
            raise ValueError("prompt must not be empty")
        return prompt


def parse_body(model: type[_Body], data: Any) -> Any:
    if not isinstance(data, dict):
        raise InvalidRequest("the request body must be a JSON object")
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        err = exc.errors(include_url=False, include_input=False)[0]
        param = ".".join(str(p) for p in err["loc"])
        raise InvalidRequest(f"{param}: {err['msg']}" if param else err["msg"], param=param or None) from None
