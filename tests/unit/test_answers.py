"""Final-answer extraction and normalization: what self-consistency votes with."""

from __future__ import annotations

import json

import pytest
from hypothesis import given
from hypothesis import strategies as st

from strategies.answers import (
    Extraction,
    answer_key,
    compile_patterns,
    extract,
    extract_answer,
    normalize_answer,
    parse_question,
    question_of,
    tool_calls_key,
)
from strategies.contract import Candidate


def cand(
    content: str | list | None = None, tool_calls: list | None = None, index: int = 0
) -> Candidate:
    message: dict = {"role": "assistant", "content": content}
    if tool_calls is not None:
        message["tool_calls"] = tool_calls
    return Candidate(index=index, variant="original", message=message)


def call(name: str, arguments: str | dict, call_id: str = "call_1") -> dict:
    return {"id": call_id, "type": "function", "function": {"name": name, "arguments": arguments}}


# --- each default pattern ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("Natalia sold 48 clips, then 24.\n#### 72", "72"),
        ("#### 1,000\n", "1000"),
        ("first #### 5 then corrected\n#### 6", "6"),  # the last marker wins
    ],
)
def test_hash_marker(text: str, expected: str) -> None:
    assert extract_answer(text) == expected


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (r"So the result is \boxed{42}.", "42"),
        (r"\boxed{\frac{1}{2}}", "0.5"),
        (r"\boxed{x^{2} + {y}_{1}}", "x^{2} + {y}_{1}"),  # nested braces are kept whole
        (r"first \boxed{3} then \boxed{4}", "4"),
        (r"\boxed{\text{Paris}}", "paris"),
        (r"\boxed{3} and an unclosed \boxed{4", "3"),
    ],
)
def test_boxed(text: str, expected: str) -> None:
    assert extract_answer(text) == expected


def test_boxed_beats_an_earlier_answer_phrase_and_hash_beats_boxed() -> None:
    assert extract_answer(r"The answer is 5. Wait, no: \boxed{6}") == "6"
    assert extract_answer("\\boxed{6}\n#### 7") == "7"


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("Adding up, the answer is 17.", "17"),
        ("The answer is 3.5. Done.", "3.5"),  # a decimal point does not end the phrase
        ("Answer: Paris", "paris"),
        ("The final answer is: $1,250.", "1250"),
        ("I think the answer is 12 apples.\nThanks", "12"),
        ("So the answer is **(C)**.", "c"),
        ("The answer is 10 and then 7 more lines with 99", "10 and then 7 more lines with 99"),
    ],
)
def test_answer_phrase(text: str, expected: str) -> None:
    assert extract_answer(text) == expected


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("Looking at the options, (B) is right because...", "b"),
        ("Reasoning...\nD. Both of the above", "d"),
        ("I would pick option C here", "c"),
        ("choice (A) seems best, but (D) fits better", "d"),  # the last one in the text
    ],
)
def test_option_letters(text: str, expected: str) -> None:
    assert extract_answer(text) == expected


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("3 plus 4 makes 7", "7"),
        ("costs 12.50 in total", "12.5"),
        ("temperature fell to -4 degrees", "-4"),
        ("we need 1,234,567 bricks", "1234567"),
        ("items: 1, 2, 3", "3"),
    ],
)
def test_last_number(text: str, expected: str) -> None:
    assert extract_answer(text) == expected


def test_nothing_to_extract_is_none_not_empty() -> None:
    assert extract_answer("I am not sure how to answer.") is None
    assert extract_answer("") is None
    assert extract_answer("#### ") is None
    assert extract_answer(cand(None)) is None


def test_extracts_from_candidate_text_and_content_parts() -> None:
    assert extract_answer(cand("#### 9")) == "9"
    assert (
        extract_answer(
            cand([{"type": "text", "text": "the answer is "}, {"type": "text", "text": "8"}])
        )
        == "8"
    )


# --- custom patterns ----------------------------------------------------------------------


def test_custom_pattern_first_group_takes_precedence() -> None:
    text = "FINAL=[blue] and the answer is 4"
    assert extract_answer(text, patterns=[r"FINAL=\[(\w+)\]"]) == "blue"


def test_custom_pattern_without_group_uses_whole_match_and_last_occurrence() -> None:
    assert extract_answer("yes no maybe no", patterns=[r"\b(?:yes|no)\b"]) == "no"


def test_custom_pattern_falls_back_to_defaults_unless_disabled() -> None:
    assert extract_answer("#### 5", patterns=[r"FINAL=(\d+)"]) == "5"
    assert extract_answer("#### 5", patterns=[r"FINAL=(\d+)"], defaults=False) is None


def test_bad_custom_pattern_is_named() -> None:
    with pytest.raises(ValueError, match=r"\(unclosed"):
        compile_patterns(["(unclosed"])


# --- normalization -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("  42  ", "42"),
        ("42.", "42"),
        ("1,000", "1000"),
        ("3.0", "3"),
        ("3.50", "3.5"),
        ("0.5", "0.5"),
        ("1/2", "0.5"),
        ("2/6", "1/3"),
        (r"\frac{3}{4}", "0.75"),
        (r"\dfrac{2}{3}", "2/3"),
        ("$5", "5"),
        ("\\$5", "5"),
        ("$x+1$", "x+1"),
        ("12 apples", "12"),
        ("50%", "50"),
        ("+7", "7"),
        ("-0.0", "0"),
        ("Paris", "paris"),
        ("  New   York. ", "new york"),
        ("**Yes**", "yes"),
        ("(b)", "b"),
        ("B)", "b"),
        ("Option D", "d"),
        ('"blue"', "blue"),
        ("1/0", "1/0"),  # not a number: kept as text, no crash
    ],
)
def test_normalize(raw: str, expected: str) -> None:
    assert normalize_answer(raw) == expected


def test_equal_meanings_vote_together_different_answers_do_not() -> None:
    """optillm merged 'answer is 21' with 'answer is 24' by text similarity; we must not."""
    assert extract_answer("The answer is 21.") != extract_answer("The answer is 24.")
    assert (
        extract_answer("#### 1,000")
        == extract_answer(r"\boxed{1000}")
        == extract_answer("The answer is 1000.0")
    )
    assert extract_answer(r"\boxed{\frac{1}{2}}") == extract_answer("The answer is 0.5")


@given(st.integers(min_value=-(10**12), max_value=10**12))
def test_integer_formats_agree(n: int) -> None:
    grouped = f"{n:,}"
    assert (
        normalize_answer(grouped)
        == normalize_answer(str(n))
        == normalize_answer(f"{n}.0")
        == str(n)
    )


@given(st.integers(min_value=-1000, max_value=1000), st.integers(min_value=1, max_value=64))
def test_fractions_normalize_to_one_form(p: int, q: int) -> None:
    once = normalize_answer(f"{p}/{q}")
    assert normalize_answer(f"{2 * p}/{2 * q}") == once
    assert normalize_answer(once) == once  # idempotent


# --- tool calls --------------------------------------------------------------------------


def test_tool_call_key_is_canonical() -> None:
    a = cand(None, [call("get_weather", '{"city": "Paris", "unit": "c"}', "call_a")])
    b = cand("", [call("get_weather", '{"unit":"c","city":"Paris"}', "call_b")])
    c = cand(None, [call("get_weather", {"city": "Rome", "unit": "c"})])
    assert answer_key(a, ()) == answer_key(b, ()) == 'tool:get_weather({"city":"Paris","unit":"c"})'
    assert answer_key(c, ()) != answer_key(a, ())


def test_tool_call_key_covers_all_calls_in_any_order() -> None:
    one = [call("a", '{"x": 1}'), call("b", "{}")]
    two = [call("b", "{}", "id9"), call("a", '{"x":1}', "id8")]
    assert tool_calls_key(one) == tool_calls_key(two) == 'tool:a({"x":1})|b({})'
    assert tool_calls_key(one) != tool_calls_key(one[:1])


def test_tool_call_key_keeps_invalid_json_verbatim_and_ignores_text() -> None:
    broken = cand("#### 5", [call("f", "{not json")])
    assert answer_key(broken, ()) == "tool:f({not json)"
    assert answer_key(cand(None, [call("f", "")]), ()) == "tool:f({})"
    assert json.loads(answer_key(cand(None, [call("f", '{"k": [1, 2]}')]), ())[7:-1]) == {
        "k": [1, 2]
    }


def test_answer_key_without_tool_calls_is_the_extracted_answer() -> None:
    assert answer_key(cand("so #### 3"), ()) == "3"
    assert answer_key(cand("no idea"), ()) is None


@pytest.mark.parametrize(
    ("text", "answer"),
    [
        ("2 + 3 = 5", "5"),  # "X = Y" answers Y, not the operand before it
        ("2 + 3 = 7", "7"),
        ("2 + 3 = 5. So 5.", "5"),
        ("x = 3.5 m.", "3.5"),
        ("4", "4"),
        ("3 is the answer.", "3"),
        ("2 + 3", None),  # the question's expression restated: no answer
        ("4 + 2 + 3", None),
        ("13 + 11 =", None),  # an "=" with nothing after it evaluates nothing either
        ("13 plus 11 is", None),
        ("5 x 1 =", None),
        ("7 multiplied by 9", None),
        ("2 plus 5 equals 7.", "7"),
        ("2+3\nExplanation:", None),
        ("a == b then 3", "3"),  # a comparison is not an equation
    ],
)
def test_equations_answer_and_restated_expressions_do_not(text: str, answer: str | None) -> None:
    assert extract_answer(text) == answer


@pytest.mark.parametrize(
    ("text", "answer"),
    [
        ("Paris", "paris"),
        ("Paris.", "paris"),
        ('"The Eiffel Tower!"', "eiffel tower"),
        ("The capital of Japan is Tokyo.", "tokyo"),  # the surrounding sentence drops away
        ("Yes, it is.", "yes"),
        ("No.", "no"),
        ("31.5 million", "31.5"),  # a number where the answer is one
        ("1. La gente agradece", "la gente agradece"),  # a list numeral is not the answer
        ("New York City", "new york city"),
        ("Paris\n\nIt has been the capital of France since the year 987.", "paris"),  # the first line answers
    ],
)
def test_short_answers_are_their_own_words(text: str, answer: str) -> None:
    assert extract_answer(text) == answer


@pytest.mark.parametrize(
    "text", ["I am not sure.", "No idea", "I don't know.", "Sorry, I cannot help with that.", "2 + 3", "####"]
)
def test_hedges_and_restatements_are_non_answers(text: str) -> None:
    assert extract_answer(text) is None


def test_a_long_answer_without_a_number_has_no_number_for_an_answer() -> None:
    prose = "France is a country in Western Europe whose capital is a city on the Seine river."
    assert extract_answer(prose) is None
    assert extract_answer("She had 3 apples, bought 4 more and now holds 7 apples in her basket.") == "7"


# --- answers that know the question ----------------------------------------------------------


@pytest.mark.parametrize(
    ("question", "text", "answer"),
    [
        ("is 36 even?", "36 is a prime number.", None),  # the question's number, restated
        ("is 36 even?", "36", None),
        ("is 36 even?", "Yes, 36 is an even number.", "yes"),
        ("is 36 even?", "Yes\nIs 36 even?", "yes"),
        ("is 16 bigger than 28", "yes it's 16", "yes"),
        ("does 2 plus 5 equal 7?", "no, because 2 plus 5 is not a multiple of 7 at all.", "no"),  # any length
        ("does 2 plus 5 equal 7?", "2+5 =7", None),  # restates the question's numbers, says neither
        ("Is 9 less than 28?", "It's 28\nThe answer is yes.", "yes"),
        ("Is 9 less than 28?", "The answer is yes, it is.", "yes"),
        ("Is 4 + 1 equal to 4?", "4 + 1 = 5", "5"),  # not the question's number: an answer of its own
        ("Is 30 odd?", "30 is odd.", None),
        ("Is the sun a star?", "It is a star.", None),  # its words, restated
        ("Is the earth flat?", "No.", "no"),
    ],
)
def test_yes_no_questions_are_answered_yes_or_no(question: str, text: str, answer: str | None) -> None:
    assert extract_answer(text, question=question) == answer


@pytest.mark.parametrize(
    ("question", "text", "answer"),
    [
        ("what is 5 times 1?", "5", "5"),  # the answer may be one of the question's numbers
        ("what is 5 times 1?", "5 x 1 = 5", "5"),
        ("what is 5 times 1?", "5 times 1 is 5", "5"),
        ("what is 5 times 1?", "5 times 1 =", None),
        ("What is 7 minus 0?", "7", "7"),
        ("what do you get if you take 5 from 12?", "5 from 12", None),  # only the question's numbers
        ("what do you get if you take 5 from 12?", "12 take away 5 leaves 7", "7"),  # a new number: an answer
        ("What is 13 plus 11?", "The answer is 11", "11"),  # stated as the answer: it counts
        ("What is the capital of France?", "The capital of France", None),
        ("What is the capital of France?", "France.", None),
        ("What is the capital of France?", "It is the capital of France.", None),
        ("What is the capital of France?", "Paris, the capital of France", "paris capital of france"),
        ("What is the capital of France?", "The capital of France is Paris.", "paris"),
        ("Which day comes after Monday?", "Monday", None),
        ("Which day comes after Monday?", "Tuesday", "tuesday"),
        ("Can you add 18 and 3?", "21", "21"),  # a request, not a yes/no question
        ("Can you add 18 and 3?", "Can you add 18 and 3?", None),
    ],
)
def test_what_only_restates_the_question_is_no_answer(question: str, text: str, answer: str | None) -> None:
    assert extract_answer(text, question=question) == answer


def test_without_the_question_nothing_changes() -> None:
    assert extract_answer("36 is a prime number.") == "36"
    assert extract_answer("The capital of France") == "capital of france"
    assert extract_answer("5 from 12") == "12"


@pytest.mark.parametrize(
    ("question", "text", "answer"),
    [
        ("Is 7 odd or even?", "Odd.", "odd"),  # a choice offers its answers
        ("Which is larger? (A) 5 (B) 7", "(B)", "b"),  # option letters are the question's by design
        ("Classify as positive or negative: I loved it", "positive", "positive"),
        (" ".join(["Q: capital of France? A: Paris."] * 8) + " Q: capital of France? A:", "Paris", "paris"),
    ],
)
def test_choices_options_and_long_prompts_are_not_restated(question: str, text: str, answer: str) -> None:
    assert extract_answer(text, question=question) == answer


def test_custom_patterns_are_never_judged_against_the_question() -> None:
    assert extract_answer("ANS<36>", [r"ANS<(\d+)>"], question="is 36 even?") == "36"


def test_restated_answers_are_non_answers_not_prose() -> None:
    assert extract("36 is a prime number.", question="is 36 even?") == Extraction(None, True)
    assert extract("Yes.", question="is 36 even?") == Extraction("yes", False)
    prose = "The number you gave has many divisors and a long history in number theory."
    assert extract(prose, question="is 36 even?") == Extraction(None, False)  # unextractable, not restated
    assert extract("", question="is 36 even?") == Extraction(None, True)
    assert extract("I am not sure.") == Extraction(None, True)


def test_answer_key_passes_the_question_on() -> None:
    assert answer_key(cand("36 is a prime number."), question="is 36 even?") is None
    assert answer_key(cand("Yes!"), question="is 36 even?") == "yes"


@pytest.mark.parametrize(
    ("text", "yes_no"),
    [
        ("is 36 even?", True),
        ("Does a week have seven days?", True),
        ("Isn't it hot?", True),
        ("can a dog fly", True),
        ("Can you add 18 and 3?", False),  # a request
        ("Could you tell me the capital of France?", False),
        ("What is 2 + 2?", False),
        ("Island of Crete: where is it?", False),  # "Is" only as the start of a word
    ],
)
def test_yes_no_questions_are_recognized(text: str, yes_no: bool) -> None:
    question = parse_question(text)
    assert question is not None and question.yes_no is yes_no


def test_question_of_is_the_last_user_message() -> None:
    messages = [
        {"role": "system", "content": "Answer briefly."},
        {"role": "user", "content": "What is 2 + 2?"},
        {"role": "assistant", "content": "4"},
        {"role": "user", "content": [{"type": "text", "text": "is 36 even?"}]},
    ]
    assert question_of(messages) == "is 36 even?"
    assert question_of([{"role": "system", "content": "x"}]) is None
    assert parse_question("is 36 even?").numbers == {"36": 1}  # type: ignore[union-attr]


def test_answer_types_name_the_kind_of_each_key() -> None:
    from strategies.answers import ANSWER_TYPES, answer_type

    kinds = {key: answer_type(key) for key in ("42", "-3.5", "yes", "no", "tokyo", "tool:f({})", "prose:3", None, "")}
    assert kinds == {
        "42": "number", "-3.5": "number", "yes": "yes_no", "no": "yes_no", "tokyo": "text",
        "tool:f({})": "tool_call", "prose:3": "none", None: "none", "": "none",
    }
    assert set(kinds.values()) <= set(ANSWER_TYPES)
