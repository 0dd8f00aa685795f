"""Settings for running many processes and instances as one: shared state and per-key limits.

    server:
      state: {backend: redis, url: os.environ/REDIS_URL, prefix: rvr}
      keys:
        - {key: os.environ/TEAM_A_KEY, name: team-a, rpm: 600, tpm: 200000, daily_tokens: 5000000}
      drain_s: 30

`server.api_keys` stays a shorthand for keys without limits (see `proxy.access.auth`).
"""

from __future__ import annotations

from typing import Literal
from urllib.parse import urlsplit

from pydantic import Field, field_validator, model_validator

from strategies.contract import KEY_NAME_PATTERN, NAME_PATTERN, StrictModel

REDIS_SCHEMES = ("redis", "rediss", "unix")


class StateSettings(StrictModel):
    """Where state every process must agree on lives (`proxy.state.base`)."""

    # memory: one instance on its own (its workers share a file, proxy/state/local.py); redis: all
    backend: Literal["memory", "redis"] = "memory"
    url: str | None = None  # redis://host:6379/0, rediss://..., unix:///path; usually os.environ/REDIS_URL
    prefix: str = Field("rvr", pattern=NAME_PATTERN)  # every Redis key starts `<prefix>:`
    # Per Redis command: past it the proxy serves from local state, so a hung Redis costs each
    # request at most this once, then nothing until it answers again.
    timeout_s: float = Field(0.25, gt=0, le=10)

    @field_validator("url")
    @classmethod
    def _redis_url(cls, url: str | None) -> str | None:
        if url is not None and urlsplit(url).scheme not in REDIS_SCHEMES:
            raise ValueError(f"must start with one of {', '.join(s + '://' for s in REDIS_SCHEMES)}")
        return url

    @model_validator(mode="after")
    def _redis_needs_url(self) -> StateSettings:
        if self.backend == "redis" and not self.url:
            raise ValueError("url is required with backend: redis (e.g. url: os.environ/REDIS_URL)")
        return self


class KeySettings(StrictModel):
    """One client key and its limits; a limit left out is no limit.

    `rpm` is checked and counted when a request arrives. Tokens and candidates are reserved at
    the request's estimate before it runs and settled at its cost when it ends, so concurrent
    requests cannot together overshoot (`proxy.access.limits` says what still can).
    """

    key: str = Field(min_length=1)
    name: str = Field(pattern=KEY_NAME_PATTERN)  # what metrics and logs show; never the key
    rpm: int | None = Field(None, ge=1)  # requests per minute
    tpm: int | None = Field(None, ge=1)  # upstream tokens per minute, every candidate and judge call
    daily_tokens: int | None = Field(None, ge=1)  # upstream tokens per UTC day
    max_candidates_per_min: int | None = Field(None, ge=1)  # candidates sampled for this key per minute

    @field_validator("key")
    @classmethod
    def _not_blank(cls, key: str) -> str:
        if not key.strip():
            raise ValueError("an API key must not be empty")
        return key


def check_keys(api_keys: list[str], keys: list[KeySettings]) -> None:
    """Names and keys are unique across `server.keys` and the `server.api_keys` shorthand."""
    names: set[str] = set()
    for i, entry in enumerate(keys):
        if entry.name in names:
            raise ValueError(f"server.keys.{i}.name: duplicate {entry.name!r}")
        names.add(entry.name)
    seen = set(api_keys)
    for i, entry in enumerate(keys):
        if entry.key in seen:
            raise ValueError(f"server.keys.{i}.key: the same key is listed twice (in keys or api_keys)")
        seen.add(entry.key)
