"""Final-answer extraction and normalization, so that votes compare answers, not prose.

optillm grouped candidates by text similarity and so counted "answer is 21" and "answer is 24"
as one answer; here two candidates agree only when their *extracted, normalized* answers are equal.

Extraction tries, in order, and takes the last occurrence of the first kind that matches
(reasoning comes first, the final answer last):

1. custom regexes from config (the first capture group, or the whole match if it has none);
2. ``#### x`` (GSM8K style);
3. ``\\boxed{x}`` with nested braces (MATH style);
4. "the answer is x" / "answer: x";
5. the right side of the last equation: "2 + 3 = 5" answers 5;
6. an option letter: ``(B)``, ``B.`` / ``B)`` at the start of a line, "option B" / "choice B";
7. a short answer: when the answer's first line is a few words, that line: yes or no ("Yes, it
   is."), else its last number if it has one ("31.5 million", "costs 12.50 in total"; a list
   numeral such as "1." in front does not count), else its words ("Paris", "The Eiffel Tower!"),
   lower-cased, without articles or punctuation, and for "<something> is <a few words>" only
   those words ("The capital of Japan is Tokyo." answers "tokyo"). Numbers count only where the
   answer has one: "Paris" never answers with a number;
8. the last number in a longer text (reasoning ends with its result).

A non-answer has no answer at all (`is_non_answer`): an empty text, a hedge ("I am not sure",
"no idea") or a restated expression ("2 + 3", "4 + 2 + 3", "13 plus 11 is", "5 x 1 =": its last
number is an operand, not a result).

Answers that know the question (`question`: the request's last user message, `question_of`).
What only repeats the question answers nothing, so it is a non-answer too (`Extraction`):

* a yes/no question ("is 36 even?", "Does a week have seven days", "can a dog fly": it starts
  with is/are/do/does/can/was/... and offers no choice with "or") is answered yes or no when the
  candidate says so: its first word ("No, because 2 + 2 = 4", at any length), or an answer
  that starts with it ("The answer is yes, it is"). A number of the question is never its answer
  ("36 is a prime number", "17 is smaller than 10": the question's number, restated);
* in any other question a number restates only when every number around it is the question's
  own ("5 from 12" to "take 5 from 12"): "5" alone, "5 x 1 = 5" and "5 times 1 is 5" all answer
  5 to "what is 5 times 1?", because the answer may well be one of the operands;
* in any question, an answer in words whose words all occur in the question (articles, "is",
  "of" and the like aside) restates it: "capital of France" and "France" to "What is the
  capital of France?", "Monday" to "Which day comes after Monday?".

Custom patterns and option letters are never judged against the question (the operator's
pattern says what an answer is; options are offered by the question itself), and neither is a
question longer than `QUESTION_WORDS` words or one that offers a choice ("is 7 odd or even?"):
a prompt with instructions, examples or options holds words that an answer may rightly repeat.

Tool-call candidates are keyed by what they would do: every call's function name and its
arguments as canonical JSON.
"""

from __future__ import annotations

import json
import re
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from decimal import Decimal, InvalidOperation
from fractions import Fraction
from functools import lru_cache
from typing import Any

from strategies.contract import Candidate, Message, content_text

PatternLike = str | re.Pattern[str]

_HASH = re.compile(r"####\s*([^\n]+)")
_BOXED_START = re.compile(r"\\(?:boxed|fbox)\s*\{")
# The phrase ends at a line break or at a full stop that is not a decimal point.
_ANSWER_PHRASE = re.compile(
    r"(?:\banswer\s+is|\banswer\s*:|\banswer\s+would\s+be)\s*:?\s*([^\n]*?)\s*(?:(?<!\d)\.(?!\d)|\n|$)",
    re.IGNORECASE,
)
_OPTION_FORMS = (
    re.compile(r"\(([A-J])\)"),
    re.compile(r"(?m)^\s*([A-J])[.)](?=\s|$)"),
    re.compile(r"\b(?:option|choice)\s+\(?([A-J])\b\)?", re.IGNORECASE),
)
# The right side of an equation, up to a line break or a full stop that is not a decimal point.
_EQUATION = re.compile(r"(?<![=<>!])=(?!=)\s*([^=\n]*?)\s*(?:\.(?!\d)|\n|$)")
# A line that is only arithmetic, with at least one operator and no result after an "=" or
# "is": a question restated, not answered ("2 + 3", "13 plus 11 is", "5 x 1 =").
_OPERATOR = r"(?:[-+*/x×÷^]|plus|minus|times|multiplied\s+by|divided\s+by)"
_UNEVALUATED = re.compile(
    rf"^\s*[-+]?\d[\d.,]*(?:\s*{_OPERATOR}\s*[-+]?\d[\d.,]*)+\s*(?:=|is|equals|equal\s+to)?\s*[?.]?\s*$",
    re.IGNORECASE,
)
_NUMBER = re.compile(r"(?<![\w.])[-+]?(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d+)?(?:/\d+)?(?![\w])")

_OPTION_ALONE = re.compile(r"^(?:option\s+|choice\s+)?\(?([a-j])\)?[.):]?$")
_THOUSANDS = re.compile(r"(?<=\d),(?=\d{3}(?!\d))")
_NUMERIC = re.compile(r"^[-+]?(?:\d+(?:\.\d*)?|\.\d+)(?:/\d+)?$")
# A number followed by a short unit ("42 apples", "3 km/h", "50%"); the unit is dropped.
_NUMBER_WITH_UNIT = re.compile(r"^([-+]?[\d.,/]+)\s*(?:%|[a-z]+(?:/[a-z]+)?\.?(?:\s+[a-z]+)?)$")
_LATEX_FRAC = re.compile(r"\\d?t?frac\s*\{\s*([-+]?\d+)\s*\}\s*\{\s*(\d+)\s*\}")
_LATEX_TEXT = re.compile(r"\\(?:text|textbf|mathrm|mbox)\s*\{([^{}]*)\}")
_MARKDOWN = re.compile(r"[*`]+")  # not `_`: it is a LaTeX subscript and part of names
SHORT_ANSWER_WORDS = 8  # a first line this short is the answer itself, not reasoning
SHORT_PREDICATE_WORDS = 3  # "The capital of Japan is Tokyo": what follows "is" when it is this short
_YES_NO = re.compile(r"^(yes|no)(?=$|[\s.,!;:]*$|[.,!;:])", re.IGNORECASE)
_WORD = re.compile(r"[^\W_]")  # a letter or a digit: a line of symbols alone answers nothing
_LIST_NUMERAL = re.compile(r"^\s*\d+[.)]\s+")
_HEDGE = re.compile(
    r"\b(?:not sure|unsure|no idea|(?:do not|don't|cannot|can't|could not|couldn't|unable to) "
    r"(?:know|say|tell|answer|compute|determine|help))\b|^(?:i'm |i am )?sorry\b",
    re.IGNORECASE,
)
_COPULA = re.compile(r"^.+?\s(?:is|are|was|were)\s+(.+?)\W*$", re.IGNORECASE)
_PLAIN_WORDS = re.compile(r"^[^\W\d_][\w\s'’,.!?;:\"()-]*$")  # a phrase in words, no formula
_ARTICLES = re.compile(r"\b(?:a|an|the)\s+")
_INNER_PUNCTUATION = re.compile(r"[^\w\s/.%+-]+")

QUESTION_WORDS = 40  # a longer prompt is not one question whose words an answer only repeats
# "Can you add 18 and 3?" is a request, not a yes/no question.
_YES_NO_QUESTION = re.compile(
    r"^\W*(?:is|are|am|was|were|do|does|did|should|shall|has|have|had|may|might|must"
    r"|(?:can|could|will|would)(?!(?:n['’]?t)?\s+you\b))(?:n['’]?t)?\b",
    re.IGNORECASE,
)
_SAYS_YES_NO = re.compile(r"^(yes|no)\b(?!['’-])", re.IGNORECASE)  # "yes it's 16", "No, because ..."
_CHOICE = re.compile(r"\bor\b", re.IGNORECASE)  # "is 7 odd or even?" offers its answers
_STARTS_YES_NO = re.compile(r"^(yes|no)\b")  # a normalized answer that says yes or no first
_TOKEN = re.compile(r"[^\W_]+")
_DIGITS = re.compile(r"\d+(?:,\d{3})*(?:\.\d+)?")  # a number however written around it ("5x3", "-2")
# Words that restate nothing by themselves: "It is the capital of Thailand" restates the question.
_FILLER = frozenset(
    "a an the of is are was were be been it its it's s this that these those there here in on at to "
    "for from by with and called named known as".split()
)


@dataclass(frozen=True)
class Question:
    """What an answer is judged against (`parse_question`): is it yes/no, and its numbers and words."""

    yes_no: bool
    numbers: Counter[str]  # canonical numbers, with how often each occurs
    words: frozenset[str]  # lower-cased words


@dataclass(frozen=True)
class Extraction:
    """A candidate's answer (`key`, normalized) and whether it says nothing at all: empty, a
    hedge, an expression or the question restated (`non_answer`: no vote, not even as prose)."""

    key: str | None
    non_answer: bool


def question_of(messages: Sequence[Message]) -> str | None:
    """The request's question: its last user message as text; None without one."""
    for message in reversed(messages):
        if message.get("role") == "user":
            return content_text(message.get("content")) or None
    return None


@lru_cache(maxsize=1024)
def parse_question(text: str) -> Question | None:
    """The question an answer is judged against; None when the text is no single short
    question (longer than `QUESTION_WORDS` words, or offering a choice with "or")."""
    if len(text.split()) > QUESTION_WORDS or _CHOICE.search(text):
        return None
    return Question(
        yes_no=bool(_YES_NO_QUESTION.match(text)),
        numbers=_numbers_in(text),
        words=frozenset(_TOKEN.findall(text.lower())),
    )


def _numbers_in(text: str) -> Counter[str]:
    found = (_canonical_number(n) for n in _DIGITS.findall(text))
    return Counter(n for n in found if n is not None)


def compile_patterns(patterns: Iterable[PatternLike]) -> tuple[re.Pattern[str], ...]:
    """Compile config regexes once; a bad one raises ValueError naming it."""
    compiled: list[re.Pattern[str]] = []
    for pattern in patterns:
        if isinstance(pattern, re.Pattern):
            compiled.append(pattern)
            continue
        try:
            compiled.append(re.compile(pattern))
        except re.error as exc:
            raise ValueError(f"answer pattern {pattern!r} is not a valid regex: {exc}") from exc
    return tuple(compiled)


def extract_answer(
    candidate_or_text: Candidate | str,
    patterns: Sequence[PatternLike] = (),
    *,
    defaults: bool = True,
    question: str | None = None,
) -> str | None:
    """The normalized final answer of a text or candidate, or None when there is none.

    With the `question` (the request's last user message), what only restates it is no answer.
    """
    return extract(candidate_or_text, patterns, defaults=defaults, question=question).key


def extract(
    candidate_or_text: Candidate | str,
    patterns: Sequence[PatternLike] = (),
    *,
    defaults: bool = True,
    question: str | None = None,
) -> Extraction:
    """The candidate's answer and whether it is a non-answer (see the module's rules)."""
    text = candidate_or_text.text if isinstance(candidate_or_text, Candidate) else candidate_or_text
    if not text:
        return Extraction(None, True)
    asked = parse_question(question) if question else None
    raw, kind = _extract_raw(text, compile_patterns(patterns), defaults, bool(asked and asked.yes_no))
    key = normalize_answer(raw) if raw is not None else ""
    if not key:
        return Extraction(None, is_non_answer(text))
    if asked is None or kind == "custom":
        return Extraction(key, False)
    said = _STARTS_YES_NO.match(key) if asked.yes_no else None
    if said:
        return Extraction(said.group(1), False)
    if _restates(key, kind, text, asked):
        return Extraction(None, True)
    return Extraction(key, False)


def answer_key(
    candidate: Candidate,
    patterns: Sequence[PatternLike] = (),
    *,
    defaults: bool = True,
    question: str | None = None,
) -> str | None:
    """What a vote compares: the tool calls if the candidate makes any, else its final answer."""
    if candidate.tool_calls:
        return tool_calls_key(candidate.tool_calls)
    return extract_answer(candidate, patterns, defaults=defaults, question=question)


def _restates(key: str, kind: str, text: str, asked: Question) -> bool:
    """Whether an answer only repeats the question (`kind`: the rule that found it)."""
    if kind == "option" or key in ("yes", "no"):
        return False
    if _canonical_number(key) == key:
        if asked.yes_no:  # a yes/no question has no number for an answer, least of all its own
            return key in asked.numbers
        if kind not in ("short", "last_number"):  # stated as the result: "= 5", "the answer is 5"
            return False
        around = _numbers_in(_first_line(text) if kind == "short" else text)
        return around.total() >= 2 and not around - asked.numbers
    words = set(_TOKEN.findall(key)) - _FILLER
    return bool(words) and words <= asked.words


ANSWER_TYPES = ("number", "yes_no", "text", "tool_call", "none")


def answer_type(key: str | None) -> str:
    """What kind of answer a vote key is, as `rvr.answer_types` names it: `none` where no answer
    could be extracted (prose without one, a hedge, the question restated)."""
    if not key or key.startswith("prose:"):
        return "none"
    if key.startswith("tool:"):
        return "tool_call"
    if key in ("yes", "no"):
        return "yes_no"
    return "number" if _canonical_number(key) == key else "text"


def tool_calls_key(tool_calls: Sequence[dict[str, Any]]) -> str:
    """Canonical key of a set of tool calls: name + compact sorted-key JSON arguments.

    Calls are sorted because parallel calls in a different order do the same thing; call ids
    are ignored because they are random per sample.
    """
    keys = sorted(one_call_key(call) for call in tool_calls)
    return "tool:" + "|".join(keys)


def one_call_key(call: dict[str, Any]) -> str:
    """One tool call as `name(canonical JSON args)`; also how judges are shown tool calls."""
    function = call.get("function") or {}
    name = str(function.get("name") or call.get("name") or "")
    arguments = function.get("arguments", call.get("arguments"))
    if isinstance(arguments, str):
        try:
            parsed: Any = json.loads(arguments) if arguments.strip() else {}
        except json.JSONDecodeError:
            # Invalid JSON is still an answer; compare it verbatim rather than drop it.
            return f"{name}({arguments.strip()})"
    else:
        parsed = arguments if arguments is not None else {}
    canonical = json.dumps(parsed, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return f"{name}({canonical})"


def _extract_raw(
    text: str, custom: Sequence[re.Pattern[str]], defaults: bool, yes_no: bool = False
) -> tuple[str | None, str]:
    """The raw answer and the kind of rule that found it (`_restates` reads the kind)."""
    for pattern in custom:
        matches = list(pattern.finditer(text))
        if matches:
            last = matches[-1]
            return (last.group(1) if pattern.groups else last.group(0)), "custom"
    if not defaults:
        return None, "none"
    if yes_no:  # to a yes/no question, a first "No," answers whatever follows
        said = _SAYS_YES_NO.match(_first_line(text))
        if said:
            return said.group(1).lower(), "yes_no"
    extractors = ((_last_hash, "stated"), (_last_boxed, "stated"), (_last_answer_phrase, "stated"),
                  (_last_equation, "stated"), (_last_option, "option"))
    for extractor, kind in extractors:
        found = extractor(text)
        if found is not None and found.strip():
            return found, kind
    if is_non_answer(text):
        return None, "non_answer"
    short = _short_line(text)
    if short is not None:
        return short, "short"
    return _last_number(text), "last_number"


def is_non_answer(text: str) -> bool:
    """No answer at all: empty, a hedge, or an arithmetic expression restated, not evaluated.

    What restates the *question* is known only with it: `extract(..., question=...)`.
    """
    first = _first_line(text)
    return not _WORD.search(first) or bool(_UNEVALUATED.match(first)) or bool(_HEDGE.search(first))


def _first_line(text: str) -> str:
    return _MARKDOWN.sub("", text.strip().split("\n", 1)[0]).strip()


def _short_line(text: str) -> str | None:
    """The answer a short first line gives (rule 7); None when the first line is longer."""
    line = _first_line(text)
    if len(line.split()) > SHORT_ANSWER_WORDS:
        return None
    yes_no = _YES_NO.match(line)
    if yes_no:
        return yes_no.group(1).lower()
    line = _LIST_NUMERAL.sub("", line)
    number = _last_number(line)
    if number is not None:
        return number
    copula = _COPULA.match(line)
    if copula and len(copula.group(1).split()) <= SHORT_PREDICATE_WORDS:
        return copula.group(1)
    return line


def _last_equation(text: str) -> str | None:
    matches = [m.group(1) for m in _EQUATION.finditer(text) if m.group(1).strip()]
    return matches[-1] if matches else None


def _last_hash(text: str) -> str | None:
    matches = _HASH.findall(text)
    return matches[-1] if matches else None


def _last_boxed(text: str) -> str | None:
    starts = list(_BOXED_START.finditer(text))
    for start in reversed(starts):
        inner = _balanced(text, start.end())
        if inner is not None:
            return inner
    return None


def _balanced(text: str, pos: int) -> str | None:
    """The text up to the brace that closes the one just before `pos`, or None if unclosed."""
    depth = 1
    for i in range(pos, len(text)):
        ch = text[i]
        if ch == "{":
            depth += 1
        elif ch == "}":
            depth -= 1
            if depth == 0:
                return text[pos:i]
    return None


def _last_answer_phrase(text: str) -> str | None:
    matches = [m.group(1) for m in _ANSWER_PHRASE.finditer(text) if m.group(1).strip()]
    return matches[-1] if matches else None


def _last_option(text: str) -> str | None:
    best: tuple[int, str] | None = None
    for form in _OPTION_FORMS:
        for m in form.finditer(text):
            if best is None or m.start() > best[0]:
                best = (m.start(), m.group(1))
    return best[1] if best else None


def _last_number(text: str) -> str | None:
    matches = _NUMBER.findall(text)
    return matches[-1] if matches else None


def normalize_answer(raw: str) -> str:
    """Canonical form of an extracted answer: equal meaning, equal string (as far as cheap)."""
    s = raw.strip()
    inner = _last_boxed(s)
    if inner is not None:
        s = inner
    s = _LATEX_TEXT.sub(r"\1", s)
    s = _LATEX_FRAC.sub(r"\1/\2", s)
    s = s.replace("\\$", "$").replace("\\%", "%").replace("\\!", "").replace("\\,", "")
    s = _MARKDOWN.sub("", s)
    s = s.strip().strip("$").strip()
    s = s.strip("\"'“”‘’").strip()
    s = s.rstrip(".,;:!").strip()
    s = re.sub(r"\s+", " ", s).lower()
    if s.startswith("$"):
        s = s[1:].lstrip()

    option = _OPTION_ALONE.match(s)
    if option:
        return option.group(1)

    with_unit = _NUMBER_WITH_UNIT.match(s)
    number = _canonical_number(with_unit.group(1) if with_unit else s)
    if number is not None:
        return number
    if _PLAIN_WORDS.match(s):
        # Words, not a formula: "The Eiffel Tower!" and "eiffel tower" are one answer.
        s = _ARTICLES.sub("", _INNER_PUNCTUATION.sub(" ", s) + " ").strip()
        s = re.sub(r"\s+", " ", s)
    return s


def _canonical_number(s: str) -> str | None:
    """'1,000' -> '1000', '3.0' -> '3', '1/2' and '0.5' -> '0.5', '2/6' -> '1/3'."""
    s = _THOUSANDS.sub("", s).rstrip(".")
    if not _NUMERIC.match(s):
        return None
    try:
        if "/" in s:
            num, den = s.split("/")
            if int(den) == 0:
                return None
            value = Fraction(Decimal(num)) / int(den)
        else:
            value = Fraction(Decimal(s))
    except (InvalidOperation, ValueError, ZeroDivisionError):
        return None
    return _format_fraction(value)


def _format_fraction(value: Fraction) -> str:
    den = value.denominator
    # A fraction with a terminating decimal expansion is written as that decimal, so that
    # 1/2 and 0.5 vote together; others stay p/q (1/3 has no exact decimal).
    while den % 2 == 0:
        den //= 2
    while den % 5 == 0:
        den //= 5
    if den != 1:
        return f"{value.numerator}/{value.denominator}"
    text = format(Decimal(value.numerator) / Decimal(value.denominator), "f")
    if "." in text:
        text = text.rstrip("0").rstrip(".")
    return "0" if text in ("-0", "") else text
