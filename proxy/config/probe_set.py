"""A route's gold probe set: its config block and its JSONL file.

Each line of the file is one item: `{"id": "...", "messages": [...] | "prompt": "...", "answer": ...}`.
A chat item runs through the chat endpoint, a prompt item through the text-completion endpoint,
as a client's request would.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import Field, field_validator

from strategies.contract import StrictModel
from strategies.risk.calibration import DEFAULT_TOLERANCE
from strategies.risk.checkers import build_checker

MAX_WINDOW_REQUESTS = 50_000
MAX_WINDOW_ITEMS = 5_000


class ProbeSettings(StrictModel):
    file: Path  # relative paths are read from the config file's directory
    checker: str = "exact"  # exact | numeric | regex | choice | plugin:package.module:function
    every_s: float = Field(60.0, ge=0)  # background cadence; 0 = only on demand (`rvr-proxy probe`)
    items_per_run: int = Field(8, ge=1, le=10_000)
    max_tokens_per_hour: int = Field(200_000, ge=1)  # hard budget for all probe traffic of the route
    # Reference candidates per item, per variant. None: the strategy's own `k_ref`, so the gold
    # terms measure what the online ones estimate; a smaller K is cheaper and measures less.
    k_ref: int | None = Field(None, ge=1, le=4096)
    # The windows are recomputed on the request path (the calibration once a second, the learned
    # selection at each new record), so they are bounded: at these maxima the calibration takes
    # about 0.1 s and a selection refit (its rows capped too, proxy/probes/selection.py) about
    # 0.2 s; 20,000 gold items had stalled a worker for 6 s (issue 21).
    window_requests: int = Field(10_000, ge=1, le=MAX_WINDOW_REQUESTS)  # recent client requests the estimates use
    window_items: int = Field(2_000, ge=1, le=MAX_WINDOW_ITEMS)  # recent gold items the estimates use
    min_gold_for_ppi: int = Field(30, ge=2)  # probe items; below: the gold mean alone, with a Wilson interval
    # How far the online residual may sit from the gold one and still read `calibrated` (method
    # §9.3): `uncalibrated` only when the bias interval lies wholly outside ±tolerance.
    tolerance: float = Field(DEFAULT_TOLERANCE, gt=0, le=1)

    @field_validator("checker")
    @classmethod
    def _checker_exists(cls, spec: str) -> str:
        build_checker(spec)  # a plugin that does not import fails the config, not the first probe
        return spec


class ProbeSetError(ValueError):
    """A probe file that cannot be used; the message names the file and the line."""


@dataclass(frozen=True)
class ProbeItem:
    id: str
    answer: Any
    messages: list[dict[str, Any]] | None = None
    prompt: str | None = None

    def as_item(self) -> dict[str, Any]:
        """What a checker receives: the line as written."""
        body: dict[str, Any] = {"id": self.id, "answer": self.answer}
        if self.messages is not None:
            body["messages"] = self.messages
        else:
            body["prompt"] = self.prompt
        return body


def _item(line: str, number: int, path: Path, seen: set[str]) -> ProbeItem:
    def bad(reason: str) -> ProbeSetError:
        return ProbeSetError(f"{path}:{number}: {reason}")

    try:
        data = json.loads(line)
    except json.JSONDecodeError as exc:
        raise bad(f"not valid JSON ({exc.msg})") from None
    if not isinstance(data, dict):
        raise bad("each line must be a JSON object")
    unknown = sorted(set(data) - {"id", "messages", "prompt", "answer"})
    if unknown:
        raise bad(f"unknown field(s) {unknown}")
    item_id = data.get("id")
    if not isinstance(item_id, str) or not item_id:
        raise bad('"id" must be a non-empty string')
    if item_id in seen:
        raise bad(f"duplicate id {item_id!r}")
    if "answer" not in data or data["answer"] is None:
        raise bad('"answer" is required')
    messages, prompt = data.get("messages"), data.get("prompt")
    if (messages is None) == (prompt is None):
        raise bad('give exactly one of "messages" and "prompt"')
    if messages is not None:
        if not isinstance(messages, list) or not messages:
            raise bad('"messages" must be a non-empty list')
        for i, message in enumerate(messages):
            if not isinstance(message, dict) or not isinstance(message.get("role"), str) or "content" not in message:
                raise bad(f"messages[{i}] needs a role and content")
    elif not isinstance(prompt, str) or not prompt:
        raise bad('"prompt" must be a non-empty string')
    seen.add(item_id)
    return ProbeItem(item_id, data["answer"], messages, prompt)


def load_probe_set(path: Path) -> list[ProbeItem]:
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ProbeSetError(f"cannot read probe file {path}: {exc.strerror}") from None
    except UnicodeDecodeError:
        raise ProbeSetError(f"{path}: not UTF-8 text") from None
    seen: set[str] = set()
    items = [_item(line, i, path, seen) for i, line in enumerate(text.splitlines(), 1) if line.strip()]
    if not items:
        raise ProbeSetError(f"{path}: no probe items")
    return items
