"""A verifier written by the operator: any importable function, named `package.module:function`.

The function is imported once, when the config is loaded, so a typo fails at start-up and not on
the first request. It is called as `function(ctx, candidates)`, may be sync or async, and
returns one score per candidate (`list[float | None]`) or a full `Scored`. Scores are clipped to
[0, 1]; None stays missing. A function that raises or returns the wrong number of scores
yields missing scores for the round (counted in `Scored.errors`) rather than failing the
client's request.
"""

from __future__ import annotations

import importlib
import inspect
from collections.abc import Callable, Sequence
from typing import Any, Literal

from pydantic import Field, field_validator

from strategies.contract import Candidate, Scored, Usage, VerifyContext
from strategies.verifiers.base import BaseVerifier, VerifierSpec, clip01


class PluginSettings(VerifierSpec):
    type: Literal["plugin"] = "plugin"
    function: str = Field(pattern=r"^[A-Za-z_][\w.]*:[A-Za-z_]\w*$")
    hard: bool = False  # True: a 0 disqualifies, like the built-in constraints

    @field_validator("function")
    @classmethod
    def _importable(cls, path: str) -> str:
        load_function(path)
        return path


def load_function(path: str) -> Callable[..., Any]:
    module_name, _, attribute = path.partition(":")
    try:
        module = importlib.import_module(module_name)
    except Exception as exc:  # noqa: BLE001 - any import failure is a config error
        raise ValueError(f"cannot import module {module_name!r}: {exc}") from exc
    function: Callable[..., Any] | None = getattr(module, attribute, None)
    if not callable(function):
        raise ValueError(f"{module_name!r} has no callable {attribute!r}")
    return function


class PluginVerifier(BaseVerifier):
    kind = "plugin"
    auditable = True
    Settings = PluginSettings

    def __init__(self, settings: PluginSettings) -> None:
        super().__init__(settings)
        self.function = load_function(settings.function)
        self.hard = settings.hard  # per instance: each plugin entry chooses

    async def score(self, ctx: VerifyContext, candidates: Sequence[Candidate]) -> Scored:
        n = len(candidates)
        try:
            result = self.function(ctx, candidates)
            if inspect.isawaitable(result):
                result = await result
        except Exception:  # noqa: BLE001 - a broken plugin is a missing view, not a failed request
            return self._missing(n)
        if isinstance(result, Scored):
            if any(len(scores) != n for scores in result.views.values()):
                return self._missing(n, result)
            # One view keeps the verifier's name; several are qualified by it.
            single = len(result.views) == 1
            views = {
                self.view() if single else self.view(local): [clip01(s) for s in scores]
                for local, scores in result.views.items()
            }
            return Scored(
                views=views, usage=result.usage, hard=self.hard or result.hard, errors=result.errors
            )
        try:
            scores = [clip01(s) for s in result]
        except TypeError:
            return self._missing(n)
        if len(scores) != n:
            return self._missing(n)
        return Scored(views={self.view(): scores}, hard=self.hard)

    def _missing(self, n: int, partial: Scored | None = None) -> Scored:
        usage = partial.usage if partial is not None else Usage()
        return Scored(views={self.view(): [None] * n}, usage=usage, hard=self.hard, errors=1)
