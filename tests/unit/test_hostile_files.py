"""Hostile input files (a config, audit pairs) end in one line naming the file and the place,
never a traceback, an exhausted memory or a hang (issue: billion-laughs YAML, 5,000-digit numbers
and deep nesting)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from proxy.audit.data import AuditDataError, load_pairs_file
from proxy.config.settings import ConfigError, load_config

LAUGHS = "a: &a [lol, lol, lol, lol, lol, lol, lol, lol, lol]\n" + "".join(
    f"{name}: &{name} [{', '.join([f'*{previous}'] * 9)}]\n"
    for previous, name in zip("abcdefgh", "bcdefghi", strict=True)
)


@pytest.mark.parametrize(
    ("text", "says"),
    [
        (LAUGHS, "aliases expand to more than 100000 YAML nodes"),
        ("a: " + "[" * 5000 + "]" * 5000, "nested too deeply"),
        ("a: [1,\n", "is not valid YAML at line 2, column 1"),
    ],
    ids=["billion-laughs", "deep", "invalid"],
)
def test_a_hostile_config_is_one_line_naming_the_file(tmp_path: Path, text: str, says: str) -> None:
    path = tmp_path / "config.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError) as info:
        load_config(path)
    message = str(info.value)
    assert says in message and str(path) in message and "\n" not in message


def test_a_few_aliases_are_still_fine(tmp_path: Path) -> None:
    path = tmp_path / "config.yaml"
    base = "{model: openai/m, api_base: 'http://127.0.0.1:9/v1'}"
    path.write_text(f"upstreams:\n  - {{name: a, litellm_params: &p {base}}}\n  - {{name: b, litellm_params: *p}}\n")
    assert [u.name for u in load_config(path).upstreams] == ["a", "b"]


@pytest.mark.parametrize(
    ("line", "says"),
    [
        ('{"prompt": ' + "9" * 5000 + "}", "not valid JSON (Exceeds the limit"),
        ("[" * 100_000 + "]" * 100_000, "not valid JSON (nested too deeply)"),
    ],
    ids=["huge-number", "deep"],
)
def test_hostile_audit_pairs_are_one_line_naming_the_place(tmp_path: Path, line: str, says: str) -> None:
    path = tmp_path / "pairs.jsonl"
    good = {"domain": "manners", "prompt": "p", "chosen": "a", "rejected": "b"}
    path.write_text(json.dumps(good) + "\n" + line + "\n")
    with pytest.raises(AuditDataError) as info:
        load_pairs_file(path)
    assert f"{path}:2: {says}" in str(info.value)
