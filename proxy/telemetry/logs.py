"""Logs are one JSON object per line and nothing else, with every configured secret scrubbed.

The proxy's own request lines are JSON already. Everything else that logs (uvicorn, litellm,
httpx, the embedded model host) goes through `JsonLineFormatter`, which wraps a plain message
in an object and names an exception by its class, never with a stack trace: a traceback is
many lines, and can carry request data or secrets from the frames it prints.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from typing import Any

_FIELDS = ("level", "logger", "message")


class JsonLineFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        message = record.getMessage()
        if _is_json_object(message) and "\n" not in message:
            return message
        line: dict[str, Any] = {"level": record.levelname.lower(), "logger": record.name, "message": message}
        if record.exc_info and record.exc_info[0] is not None:
            line["exception"] = record.exc_info[0].__name__
        return json.dumps(line, ensure_ascii=False, default=str)


def _is_json_object(text: str) -> bool:
    if not (text.startswith("{") and text.endswith("}")):
        return False
    try:
        return isinstance(json.loads(text), dict)
    except ValueError:
        return False


class RedactingFilter(logging.Filter):
    """Applies the proxy's redactor to every record's final message."""

    def __init__(self, redact: Callable[[str], str]) -> None:
        super().__init__()
        self._redact = redact

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        scrubbed = self._redact(message)
        if scrubbed != message:
            record.msg, record.args = scrubbed, None
        return True


def install_redaction(redact: Callable[[str], str]) -> None:
    """Scrub secrets from every line any handler of this process writes (one per worker)."""
    for handler in logging.getLogger().handlers:
        handler.addFilter(RedactingFilter(redact))


def log_config(level: str) -> dict[str, Any]:
    """A `logging.config.dictConfig` for the CLI and uvicorn (every worker applies it)."""
    level = level.upper()
    quiet = max(logging.WARNING, logging.getLevelName(level))  # per-call lines would drown requests
    return {
        "version": 1,
        "disable_existing_loggers": False,
        "formatters": {"json": {"()": "proxy.telemetry.logs.JsonLineFormatter"}},
        "handlers": {"stderr": {"class": "logging.StreamHandler", "formatter": "json", "stream": "ext://sys.stderr"}},
        "root": {"handlers": ["stderr"], "level": level},
        "loggers": {
            # uvicorn's own loggers carry handlers of their own; route them through ours instead
            "uvicorn": {"handlers": [], "propagate": True, "level": level},
            "uvicorn.error": {"handlers": [], "propagate": True, "level": level},
            "uvicorn.access": {"handlers": [], "propagate": False, "level": "WARNING"},
            **{name: {"level": logging.getLevelName(quiet)} for name in ("httpx", "LiteLLM", "litellm")},
        },
    }


__all__ = ["JsonLineFormatter", "RedactingFilter", "install_redaction", "log_config"]
