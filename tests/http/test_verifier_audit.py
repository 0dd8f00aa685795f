"""Verifier audits (`rvr-proxy audit`) end to end: verifiers with known preferences on loopback,
the real CLI, the stored results, and the proxy refusing to serve on a missing or failed audit."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from proxy.audit.data import AuditDataError, builtin_pairs, load_pairs_file
from strategies.risk.audit_stats import Decision, flags, krippendorff_alpha_nominal, wilson_interval
from strategies.verifiers import VerifierConfigError, build_verifier
from tests.audit_upstream import AuditUpstream
from tests.proxy_process import ROOT, ProxyProcess

PAIRS = ROOT / "tests" / "fixtures" / "audit_pairs.jsonl"  # 20 `manners` + 20 `help` pairs
PAIRS_PER_DOMAIN = 20


# ---- statistics -------------------------------------------------------------------------


def test_wilson_interval_matches_the_textbook_values() -> None:
    low, high = wilson_interval(8, 10)
    assert (round(low, 4), round(high, 4)) == (0.4902, 0.9433)
    assert wilson_interval(0, 0) == (0.0, 1.0)  # nothing scored: nothing known


def test_krippendorff_alpha_reproduces_krippendorffs_worked_example() -> None:
    # Krippendorff (2011), "Computing Krippendorff's alpha-reliability", nominal example: 0.743.
    n = None
    data: list[list[Any]] = [
        [1, 1, n, 1], [2, 2, 3, 2], [3, 3, 3, 3], [3, 3, 3, 3], [2, 2, 2, 2], [1, 2, 3, 4],
        [4, 4, 4, 4], [1, 1, 2, 1], [2, 2, 2, 2], [n, 5, 5, 5], [n, n, 1, 1], [n, n, 3, n],
    ]
    alpha = krippendorff_alpha_nominal(data)
    assert alpha is not None and round(alpha, 3) == 0.743
    same = [[Decision.DESIRABLE, Decision.DESIRABLE]] * 3
    assert krippendorff_alpha_nominal(same) == 1.0


def test_flags_fire_exactly_past_their_thresholds() -> None:
    assert flags(0.5, 0.8, 0.2) == {"prefers_undesirable": False, "position_biased": False, "template_sensitive": False}
    assert flags(0.499, 0.79, 0.21) == {"prefers_undesirable": True, "position_biased": True, "template_sensitive": True}
    assert not any(flags(None, None, None).values())  # not measured is not flagged


# ---- pairs files ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ("{not json", "not valid JSON"),
        (json.dumps({"domain": "x", "prompt": "p", "chosen": "a"}), "missing rejected"),
        (json.dumps({"domain": "two words", "prompt": "p", "chosen": "a", "rejected": "b"}), "must match"),
        (json.dumps({"domain": "x", "prompt": "p", "chosen": "a", "rejected": "a"}), "the same answer"),
        (json.dumps({"domain": "x", "prompt": "", "chosen": "a", "rejected": "b"}), "prompt must be a non-empty"),
    ],
)
def test_a_bad_pairs_file_names_the_file_and_line(tmp_path: Path, line: str, message: str) -> None:
    good = json.dumps({"domain": "x", "prompt": "p", "chosen": "a", "rejected": "b"})
    path = tmp_path / "pairs.jsonl"
    path.write_text(f"{good}\n\n{line}\n")
    with pytest.raises(AuditDataError, match=rf"{path}:3: .*{message}"):
        load_pairs_file(path)


def test_the_fetched_builtin_pairs_convert_as_the_issue_says() -> None:
    """Uses the cache scripts/setup-test-env.sh fills (`rvr-proxy fetch-audit-data`)."""
    counts = Counter(p.domain for p in builtin_pairs())
    assert sum(n for d, n in counts.items() if d.startswith("bbq_")) == 1640  # 410 items x 2 contexts x 2 questions
    assert counts["moral_exceptqa"] == 148
    assert counts["human_safety"] == 27  # 16 stories, 2 or 3 endings each
    assert counts["emotional_intelligence"] == 344  # 56 items of 4 options, 44 of 5
    assert all("in the image" not in p.prompt for p in builtin_pairs() if p.domain.startswith("bbq_"))


# ---- the audit command on verifiers with known preferences ------------------------------


def _upstream(name: str, base: str) -> dict[str, Any]:
    return {"name": name, "litellm_params": {"model": f"openai/{name}", "api_base": f"{base}/v1",
                                             "api_key": "os.environ/JUDGE_KEY"}, "retries": 0}


def _config(base: str, state_dir: Path, audit: dict[str, Any] | None = None) -> dict[str, Any]:
    def rm(behaviour: str) -> dict[str, Any]:
        # scale 100: lengths of 20-90 characters stay apart after the sigmoid
        spec = {"type": "reward_model", "name": f"rm_{behaviour}", "endpoint": {"url": f"{base}/score/{behaviour}"},
                "scale": 100}
        return {**spec, "audit": audit} if audit else spec

    judges = [
        {"type": "llm_judge", "name": "judge_fair", "upstream": "fair", "mode": "pairwise", "templates": [],
         "pairwise_templates": ["verdict", "hhh"]},
        {"type": "llm_judge", "name": "judge_first", "upstream": "first", "mode": "pairwise", "templates": []},
        {"type": "llm_judge", "name": "judge_split", "upstream": "split", "mode": "pairwise", "templates": [],
         "pairwise_templates": ["verdict", "hhh"]},
        {"type": "llm_judge", "name": "judge_garbled", "upstream": "garbled"},  # pointwise, 2 templates
    ]
    return {
        "server": {"state_dir": str(state_dir)},
        "upstreams": [_upstream(n, base) for n in ("fair", "first", "split", "garbled")],
        "routes": [
            {"model": "judged", "upstream": "fair", "strategy": {"name": "best_of_n", "verifiers": judges}},
            {"model": "rewarded", "upstream": "fair",
             "strategy": {"name": "best_of_n", "verifiers": [rm(b) for b in ("fair", "unkind", "first", "longer", "null")]}},
        ],
    }


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "LITELLM_LOCAL_MODEL_COST_MAP": "True", "JUDGE_KEY": "sk-judge-key-0000"}
    return subprocess.run([sys.executable, "-m", "proxy.cli", *args], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=300)


@pytest.fixture(scope="module")
def audited(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    root = tmp_path_factory.mktemp("audit")
    with AuditUpstream() as upstream:
        config = _config(upstream.base, root / "state")
        path = root / "config.yaml"
        path.write_text(yaml.safe_dump(config))
        done = _cli("audit", "--config", str(path), "--pairs", str(PAIRS), "--out", str(root / "out"), "--no-progress")
        assert done.returncode == 0, done.stderr
        report = json.loads((root / "out" / "report.json").read_text())
        yield {"root": root, "report": report, "requests": list(upstream.requests), "stdout": done.stdout,
               "base": upstream.base, "upstream": upstream}


def _verifier(audited: dict[str, Any], name: str) -> dict[str, Any]:
    return next(v for v in audited["report"]["verifiers"] if v["name"] == name)


def _raised(row: dict[str, Any]) -> set[str]:
    return {flag for flag, on in row["flags"].items() if on}


EXPECTED_FLAGS = {
    # verifier: (flags in `manners`, flags in `help`); desirable answers are short in `manners`
    "judge_fair": (set(), set()),
    "judge_first": ({"position_biased"}, {"position_biased"}),
    "judge_split": ({"template_sensitive"}, {"template_sensitive"}),
    "judge_garbled": (set(), set()),
    "rm_fair": (set(), set()),
    "rm_unkind": ({"prefers_undesirable"}, {"prefers_undesirable"}),
    "rm_first": ({"position_biased"}, {"position_biased"}),
    "rm_longer": ({"prefers_undesirable"}, set()),
    "rm_null": (set(), set()),
}


@pytest.mark.parametrize("name", sorted(EXPECTED_FLAGS))
def test_flags_fire_exactly_when_the_verifier_has_the_flaw(audited: dict[str, Any], name: str) -> None:
    verifier = _verifier(audited, name)
    manners, help_ = EXPECTED_FLAGS[name]
    assert _raised(verifier["domains"]["manners"]) == manners
    assert _raised(verifier["domains"]["help"]) == help_


def test_accuracy_and_intervals(audited: dict[str, Any]) -> None:
    fair = _verifier(audited, "rm_fair")["domains"]["manners"]
    assert fair["accuracy"] == 1.0 and fair["scored"] == PAIRS_PER_DOMAIN and fair["ci95"][0] > 0.8
    first = _verifier(audited, "rm_first")["overall"]
    # both orders averaged: the slot preference cancels into ties, counted half, never as losses
    assert first["ties"] == 2 * PAIRS_PER_DOMAIN and first["accuracy"] == 0.5
    assert first["position_bias_rate"] == 1.0 and first["swap_agreement"] == 0.0
    split = _verifier(audited, "judge_split")["overall"]
    assert split["templates"]["pairwise"]["accuracy"] == 1.0
    assert split["templates"]["pairwise:hhh"]["accuracy"] == 0.0
    assert split["template_disagreement"] == 1.0 and split["template_alpha"] is not None and split["template_alpha"] < 0


def test_every_pair_is_judged_in_both_orders(audited: dict[str, Any]) -> None:
    assert set(_verifier(audited, "rm_fair")["overall"]["orders_run"]) == {"chosen_first", "rejected_first"}
    assert set(_verifier(audited, "judge_fair")["overall"]["orders_run"]) == {"ab", "ba"}
    first_prompt = json.loads(PAIRS.read_text().splitlines()[0])
    scored_orders = {
        tuple(r["responses"]) for r in audited["requests"]
        if r["_path"] == "/score/fair" and r["messages"][-1]["content"] == first_prompt["prompt"]
    }
    assert scored_orders == {(first_prompt["chosen"], first_prompt["rejected"]),
                             (first_prompt["rejected"], first_prompt["chosen"])}
    slots = []
    for r in audited["requests"]:
        text = r.get("messages", [{}])[-1].get("content", "") if r.get("model") == "fair" else ""
        if first_prompt["prompt"] in text and "# Response A" in text:
            slots.append(text.index(first_prompt["chosen"]) < text.index(first_prompt["rejected"]))
    assert sorted(slots) == [False, True]  # the desirable answer once in slot A, once in slot B


def test_parse_failures_are_counted_and_never_scored_zero(audited: dict[str, Any]) -> None:
    garbled = _verifier(audited, "judge_garbled")["overall"]
    # 2 templates x 2 answers x 2 orders per pair, none parsed
    assert garbled["parse_failures"] == 8 * 2 * PAIRS_PER_DOMAIN
    assert garbled["unscored"] == 2 * PAIRS_PER_DOMAIN and garbled["scored"] == 0
    assert garbled["accuracy"] is None and garbled["undesirable"] == 0
    null = _verifier(audited, "rm_null")["overall"]
    assert null["unscored"] == 2 * PAIRS_PER_DOMAIN and null["accuracy"] is None and null["parse_failures"] > 0


def test_the_report_files(audited: dict[str, Any]) -> None:
    out = audited["root"] / "out"
    markdown = (out / "report.md").read_text()
    assert "## `rm_unkind` (reward_model)" in markdown and "**prefers_undesirable**" in markdown
    rows = [json.loads(line) for line in (out / "pairs.jsonl").read_text().splitlines()]
    assert len(rows) == len(EXPECTED_FLAGS) * 2 * PAIRS_PER_DOMAIN
    assert (out / "accuracy_by_domain.png").read_bytes()[:4] == b"\x89PNG"
    assert (out / "position_bias.png").read_bytes()[:4] == b"\x89PNG"
    assert "sk-judge-key-0000" not in markdown + (out / "report.json").read_text()
    assert len(list((audited["root"] / "state" / "verifier_audit").glob("*.json"))) == len(EXPECTED_FLAGS)


def _terminal_rows(stdout: str) -> dict[tuple[str, str], str]:
    """The audit's terminal table: (verifier, domain) -> its line."""
    rows, verifier = {}, ""
    for line in stdout.splitlines():
        if line.endswith("):") and not line.startswith(" "):
            verifier = line.split(" (")[0]
        elif line.startswith("  ") and verifier:
            rows[(verifier, line.split()[0])] = line
    return rows


def test_the_terminal_table_shows_ties_and_failures_as_report_md_does(audited: dict[str, Any]) -> None:
    # issue 25: "accuracy 0.500 ... unscored 0 flags -" for a verifier that only ever tied
    rows = _terminal_rows(audited["stdout"])
    first = _verifier(audited, "rm_first")["overall"]
    line = rows[("rm_first", "all")]
    assert "accuracy 0.500" in line and f"ties {first['ties']} " in line
    assert line.endswith("flags position_biased,mostly_ties")
    garbled = _verifier(audited, "judge_garbled")["overall"]
    line = rows[("judge_garbled", "all")]
    assert f"parse failures {garbled['parse_failures']} " in line and line.endswith("flags parse_failures")
    markdown = (audited["root"] / "out" / "report.md").read_text()
    assert "| **position_biased**, mostly_ties |" in markdown and "| parse_failures |" in markdown


def test_a_bad_pairs_file_fails_the_command_naming_the_line(audited: dict[str, Any], tmp_path: Path) -> None:
    bad = tmp_path / "bad.jsonl"
    bad.write_text(PAIRS.read_text().splitlines()[0] + "\n" + '{"domain": "x"}\n')
    done = _cli("audit", "--config", str(audited["root"] / "config.yaml"), "--pairs", str(bad),
                "--out", str(tmp_path / "out"))
    assert done.returncode == 2
    assert f"{bad}:2: missing prompt, chosen, rejected" in done.stderr and "Traceback" not in done.stderr


# ---- serving policy ---------------------------------------------------------------------


def _serve_config(audited: dict[str, Any], verifier: str, audit: dict[str, Any]) -> dict[str, Any]:
    config = _config(audited["base"], audited["root"] / "state", audit)
    config["routes"] = [r for r in config["routes"] if r["model"] == "rewarded"]
    config["routes"][0]["strategy"]["verifiers"] = [
        v for v in config["routes"][0]["strategy"]["verifiers"] if v["name"] == verifier
    ]
    return config


def test_the_proxy_refuses_to_start_without_the_required_audit(audited: dict[str, Any]) -> None:
    config = _serve_config(audited, "rm_fair", {"require": True, "domains": ["manners"]})
    config["server"]["state_dir"] = str(audited["root"] / "empty-state")
    with pytest.raises(RuntimeError) as refused:
        ProxyProcess(config, env={"JUDGE_KEY": "sk-judge-key-0000"}).start()
    log = str(refused.value)
    assert "verifier 'rm_fair'" in log and "required audit is missing" in log and "rvr-proxy audit" in log
    assert "Traceback" not in log


def test_the_proxy_refuses_a_failed_audit_naming_verifier_and_domain(audited: dict[str, Any]) -> None:
    config = _serve_config(audited, "rm_longer", {"require": True, "min_accuracy": 0.6})
    with pytest.raises(RuntimeError) as refused:
        ProxyProcess(config, env={"JUDGE_KEY": "sk-judge-key-0000"}).start()
    log = str(refused.value)
    assert "verifier 'rm_longer'" in log and "domain 'manners': audit failed, accuracy 0.000" in log
    assert "domain 'help'" not in log  # that domain passed


def test_a_passing_audit_serves_and_exports_its_gauges(audited: dict[str, Any]) -> None:
    config = _serve_config(audited, "rm_fair", {"require": True, "min_accuracy": 0.9, "domains": ["manners", "help"]})
    with ProxyProcess(config, env={"JUDGE_KEY": "sk-judge-key-0000"}, workers=2) as proxy:
        text = httpx.get(f"{proxy.base_url}/metrics", timeout=10).text
    assert 'rvr_verifier_audit_accuracy{domain="manners",verifier="rm_fair"} 1.0' in text
    assert 'rvr_verifier_audit_flag{domain="help",flag="prefers_undesirable",verifier="rm_fair"} 0.0' in text


def test_audit_require_on_a_rule_verifier_is_a_config_error() -> None:
    with pytest.raises(VerifierConfigError, match=r"verifiers\[0\] \(regex\): audit.require: only llm_judge"):
        build_verifier({"type": "regex", "pattern": "x", "audit": {"require": True}}, 0)


def test_a_fuser_is_audited_like_a_judge_and_its_required_audit_holds_the_route(tmp_path: Path) -> None:
    """`selection.fusion`'s fuser, shown each gold pair in both orders, "prefers" the answer it
    writes back: a fuser that copies the first answer is position-biased, one that keeps the
    desirable answer is right; `selection.fusion.audit.require` refuses to serve without a pass."""
    state = tmp_path / "state"
    with AuditUpstream() as upstream:
        def route(model: str, fuser: str, audit: dict[str, Any] | None = None) -> dict[str, Any]:
            fusion = {"fuser": fuser, "min_clusters": 1, **({"audit": audit} if audit else {})}
            return {"model": model, "upstream": "fair",
                    "strategy": {"name": "best_of_n", "selection": {"fusion": fusion}}}

        config = {
            "server": {"state_dir": str(state)},
            "upstreams": [_upstream(n, upstream.base) for n in ("fair", "fuser-kind", "fuser-first")],
            "routes": [route("kind", "fuser-kind"), route("first", "fuser-first")],
        }
        path = tmp_path / "config.yaml"
        path.write_text(yaml.safe_dump(config))
        for name in ("kind", "first"):
            done = _cli("audit", "--config", str(path), "--route", name, "--verifier", "fusion", "--pairs", str(PAIRS),
                        "--out", str(tmp_path / name), "--no-progress")
            assert done.returncode == 0, done.stderr
        fused = [
            json.loads((tmp_path / name / "report.json").read_text())["verifiers"][0] for name in ("kind", "first")
        ]
        assert fused[0]["kind"] == "fuser" and fused[0]["routes"] == ["kind"]
        for domain in ("manners", "help"):
            kind, first = (row["domains"][domain] for row in fused)
            assert kind["accuracy"] == 1.0 and kind["scored"] == PAIRS_PER_DOMAIN and not _raised(kind)
            assert _raised(first) == {"position_biased"}
        required = {"require": True, "min_accuracy": 0.9, "fail_on": ["prefers_undesirable", "position_biased"]}
        config["routes"] = [route("first", "fuser-first", required)]
        with pytest.raises(RuntimeError) as refused:
            ProxyProcess(config, env={"JUDGE_KEY": "sk-judge-key-0000"}).start()
        assert "verifier 'fusion'" in str(refused.value) and "position_biased" in str(refused.value)
        config["routes"] = [route("kind", "fuser-kind", required)]
        with ProxyProcess(config, env={"JUDGE_KEY": "sk-judge-key-0000"}) as proxy:
            assert httpx.get(f"{proxy.base_url}/readyz", timeout=10).status_code == 200
