"""Regexes that come from outside the code (client schemas, config) run in RE2, never in `re`.

Python's `re` backtracks: `^(a+)+$` against 40 a's and a "!" takes longer than the age of the
universe, and it runs on the event loop. RE2 matches in time linear in the input, at the price of
backreferences and lookaround, which it refuses to compile: such a pattern is reported as an
`UnsupportedPattern` (a ValueError), so callers turn it into a 400 or a config error.

RE2's `\\d`, `\\w` and `\\s` are ASCII-only, as ECMA-262 (the dialect JSON Schema specifies)
has them, where Python's `re` is Unicode-aware.
"""

from __future__ import annotations

import functools
import re

import re2

# Memory for one compiled program. RE2 fails a pattern that needs more rather than allocate it,
# so a client cannot make the proxy build huge automata; real schema patterns need a few KiB.
_MAX_MEM = 1 << 20
# Compiled patterns are cached: the same client schema comes with every request of a session.
_CACHE_SIZE = 256


class UnsupportedPattern(ValueError):
    """The pattern is not valid RE2 syntax (RE2 has no backreferences or lookaround)."""


def _options() -> re2.Options:
    options = re2.Options()
    options.max_mem = _MAX_MEM
    # RE2 logs every failed compile to stderr, which would let a client fill the proxy's log.
    options.log_errors = False
    return options


@functools.lru_cache(maxsize=_CACHE_SIZE)
def compile_pattern(pattern: str) -> re2._Regexp:
    """The RE2 program for `pattern`, or UnsupportedPattern naming what RE2 could not parse."""
    try:
        return re2.compile(pattern, _options())
    except re2.error as exc:
        raise UnsupportedPattern(f"regex {_shown(pattern)} is not supported: {_reason(exc)}") from None
    except (UnicodeEncodeError, TypeError):
        raise UnsupportedPattern(f"regex {_shown(pattern)} is not a valid UTF-8 string") from None


def check_pattern(pattern: str) -> None:
    compile_pattern(pattern)


def search(pattern: str | re2._Regexp, text: str) -> bool:
    """Whether `pattern` (a string, or what `compile_pattern` made of one) matches anywhere in
    `text`: unanchored, as JSON Schema's `pattern` is."""
    program = compile_pattern(pattern) if isinstance(pattern, str) else pattern
    return program.search(_encodable(text)) is not None


def _encodable(text: str) -> str:
    # RE2 works on UTF-8; a lone surrogate (which JSON's \ud800 escape can produce) has none, so
    # it becomes U+FFFD rather than an exception in the middle of scoring.
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return text.encode("utf-8", "surrogatepass").decode("utf-8", "replace")
    return text


def _shown(pattern: str) -> str:
    # Error messages go back to the client and into logs: a huge pattern is not echoed whole.
    return repr(pattern) if len(pattern) <= 80 else repr(pattern[:77]) + "..."


def _reason(exc: BaseException) -> str:
    detail = exc.args[0] if exc.args else ""
    if isinstance(detail, bytes):
        detail = detail.decode("utf-8", "replace")
    detail = str(detail)
    hints = {
        r"invalid escape sequence: \\[1-9k]": "backreferences are not supported",
        r"invalid perl operator: \(\?<[=!]": "lookbehind is not supported",
        r"invalid perl operator: \(\?[=!]": "lookahead is not supported",
    }
    for prefix, hint in hints.items():
        if re.match(prefix, detail):  # a fixed pattern over RE2's short message: no ReDoS here
            return f"{detail} ({hint}: patterns run in RE2, a linear-time engine)"
    return detail or "RE2 could not compile it"
