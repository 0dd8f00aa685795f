"""Issue 25's smaller items, each as a user met it: `rvr-proxy bench` without its extra, the audit's
terminal table and missing plots, a refused upstream connection, `bench --help` defaults, and the
state folder the README's probe example writes."""

from __future__ import annotations

import asyncio
import errno
import json
import runpy
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

import httpx
import litellm
import pytest

from proxy import cli
from proxy.audit import command as audit_command
from proxy.audit.report import PLOTS, markdown, write
from proxy.config.secrets import Redactor
from proxy.config.settings import UpstreamSettings
from proxy.errors import UpstreamFailed, UpstreamTimedOut
from proxy.upstream.client import UpstreamClient, litellm_pool
from proxy.upstream.error_mapping import classify, translate, unreachable_reason

ROOT = Path(__file__).resolve().parents[2]


# ---- `rvr-proxy bench` without the `bench` extra --------------------------------------------


def test_bench_without_its_extra_says_what_to_install_in_one_line(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setitem(sys.modules, "reasoning_gym", None)  # as if not installed: find_spec says None

    def never(*args: Any, **kwargs: Any) -> None:
        raise AssertionError("the benchmark started without its dependencies")

    monkeypatch.setattr(runpy, "run_path", never)
    assert cli.main(["bench"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err
    assert "reasoning_gym" in err and "pip install -e '.[bench]'" in err


def test_bench_help_needs_no_extra(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setitem(sys.modules, "reasoning_gym", None)
    monkeypatch.setattr(sys, "argv", list(sys.argv))  # run_bench hands the script its own argv
    with pytest.raises(SystemExit) as exited:
        cli.main(["bench", "--help"])
    assert exited.value.code == 0
    assert capsys.readouterr().out.startswith("usage: rvr-proxy bench")


# ---- `bench --help`: each default once -------------------------------------------------------

# Runs every given script's `--help` in one interpreter and reports, per option, its help as
# printed and whether its default says something (not a flag's, not None or empty).
_HELP_DRIVER = r"""
import argparse, json, runpy, sys

found = {}
def capture(self, file=None):
    formatter = self._get_formatter()
    options = []
    for action in self._actions:
        if not action.option_strings or isinstance(action, argparse._HelpAction):
            continue
        text = formatter._format_action(action)
        text = text.replace(formatter._format_action_invocation(action), "", 1)
        default = action.default
        meaningful = (action.nargs != 0 and default is not argparse.SUPPRESS and default is not None
                      and default != "" and default != [])
        options.append({"option": action.option_strings[-1], "help": " ".join(text.split()),
                        "meaningful": meaningful})
    found[sys.argv[0]] = options
    raise SystemExit(0)

argparse.ArgumentParser.print_help = capture
for path in sys.argv[1:]:
    sys.argv = [path, "--help"]
    try:
        runpy.run_path(path, run_name="__main__")
    except SystemExit:
        pass
print(json.dumps(found))
"""


def _bench_scripts() -> list[str]:
    """The checkout's bench scripts (as git knows them: one still being written is judged once added)."""
    listed = subprocess.run(["git", "ls-files", "bench/*.py"], cwd=ROOT, capture_output=True, text=True, check=False)
    names = listed.stdout.split() if listed.returncode == 0 else []
    return sorted(names or (str(p.relative_to(ROOT)) for p in (ROOT / "bench").glob("*.py")))


def test_every_bench_option_shows_its_default_once() -> None:
    scripts = _bench_scripts()
    done = subprocess.run([sys.executable, "-c", _HELP_DRIVER, *scripts], cwd=ROOT, capture_output=True, text=True,
                          timeout=300, check=False)
    assert done.returncode == 0, done.stderr
    found = json.loads(done.stdout.strip().splitlines()[-1])
    assert "bench/real_model.py" in found and len(found) >= 12, sorted(found)  # every script with options
    wrong = []
    for script, options in found.items():
        for option in options:
            times = option["help"].lower().count("default")
            if times > 1 or (option["meaningful"] and times != 1):
                wrong.append(f"{script} {option['option']}: {option['help']!r}")
    assert not wrong, "\n".join(wrong)


def test_real_model_help_has_no_doubled_or_empty_defaults() -> None:
    done = subprocess.run([sys.executable, "bench/real_model.py", "--help"], cwd=ROOT, capture_output=True,
                          text=True, timeout=120, check=False)
    text = " ".join(done.stdout.split())
    assert done.returncode == 0 and "(default: 16)" in text
    assert "(default: None)" not in text and "(default: False)" not in text and "(default: )" not in text
    assert "(default: all) (default" not in text and str(ROOT) not in text  # paths relative to the checkout


# ---- the audit's terminal table and plots ---------------------------------------------------


def _row(**values: Any) -> dict[str, Any]:
    """One domain's (or the overall) audit summary, as proxy.audit.run.summarize writes it."""
    row: dict[str, Any] = {
        "pairs": 10, "scored": 10, "desirable": 0, "undesirable": 0, "ties": 0, "unscored": 0,
        "accuracy": 0.5, "ci95": [0.237, 0.763], "parse_failures": 0, "call_failures": 0,
        "swap_agreement": None, "position_bias_rate": None, "template_alpha": None, "template_disagreement": None,
        "flags": {"prefers_undesirable": False, "position_biased": False, "template_sensitive": False},
        "orders_run": ["ab", "ba"], "templates": {}, "most_consistent_template": None,
        "least_consistent_template": None,
    }
    return {**row, **values}


def _report(**overall: Any) -> dict[str, Any]:
    row = _row(**overall)
    return {
        "config": "routes.yaml", "generated_at": "2026-01-01T00:00:00+00:00",
        "data": {"origin": "test pairs", "total_pairs": 10, "pairs_by_domain": {"manners": 10},
                 "sources": {"operator": {"dataset": "x", "licence": "y", "conversion": "z"}}},
        "verifiers": [{"name": "judge", "kind": "llm_judge", "routes": ["r"], "fingerprint": "0" * 64,
                       "overall": row, "domains": {"manners": row}, "failure_causes": []}],
    }


def _summary_line(report: dict[str, Any], capsys: pytest.CaptureFixture[str], domain: str = "all") -> str:
    audit_command._print_summary(report, [], [])
    lines = capsys.readouterr().out.splitlines()
    return next(line for line in lines if line.split()[:1] == [domain])


def test_the_terminal_table_shows_ties_and_parse_failures_and_flags_them(capsys: pytest.CaptureFixture[str]) -> None:
    # the judge of the issue: tied on 10 of 10 pairs, 34 replies unparsed, so "accuracy 0.500"
    report = _report(ties=10, parse_failures=34)
    line = _summary_line(report, capsys)
    assert "accuracy 0.500" in line and "ties 10" in line and "parse failures 34" in line
    assert line.endswith("flags mostly_ties,parse_failures")
    # report.md says the same, apart from the policy's flags
    assert "| mostly_ties, parse_failures |" in markdown(report)


def test_policy_flags_come_first_and_stay_bold_in_the_report(capsys: pytest.CaptureFixture[str]) -> None:
    flags = {"prefers_undesirable": False, "position_biased": True, "template_sensitive": False}
    report = _report(ties=6, call_failures=2, flags=flags)
    assert _summary_line(report, capsys).endswith("flags position_biased,mostly_ties,call_failures")
    assert "| **position_biased**, mostly_ties, call_failures |" in markdown(report)


def test_a_verifier_that_decides_shows_no_warning(capsys: pytest.CaptureFixture[str]) -> None:
    report = _report(ties=5, desirable=5, accuracy=0.75)  # half ties is not "mostly"
    assert _summary_line(report, capsys).endswith("flags -")


def test_without_matplotlib_stdout_says_the_plots_were_skipped_and_what_to_install(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # `import matplotlib` raises ImportError
    report = _report()
    paths = write(report, tmp_path, [])
    assert not any((tmp_path / name).exists() for name in PLOTS)
    audit_command._print_summary(report, paths, [])
    said = [line for line in capsys.readouterr().out.splitlines() if "plots" in line]
    assert len(said) == 1 and "no plots were drawn" in said[0] and "pip install" in said[0]
    assert said[0] in (tmp_path / "report.md").read_text()


# ---- an upstream that refuses the connection --------------------------------------------------


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])  # closed when the block ends: nothing listens there


def test_a_refused_connection_is_a_502_that_says_the_upstream_could_not_be_reached() -> None:
    base = f"http://127.0.0.1:{_closed_port()}/v1"
    # a name of its own: the upstream metric counters are process-wide, and other tests count "local"'s
    settings = UpstreamSettings(name="nobody-home", retries=0,
                                litellm_params={"model": "openai/m", "api_base": base, "api_key": "k"})
    client = UpstreamClient(settings, Redactor([]))

    async def call() -> None:
        async with litellm_pool():  # the serving path: litellm over the proxy's own connection pool
            await client.chat([{"role": "user", "content": "hi"}], {}, 1)

    with pytest.raises(UpstreamFailed) as info:
        asyncio.run(call())
    # litellm says InternalServerError, HTTP 500, "Connection error."; no HTTP answer ever came
    assert info.value.status == 502
    assert info.value.body()["error"] == {
        "message": "upstream 'nobody-home' could not be reached (connection refused)",
        "type": "upstream_error", "param": None, "code": "upstream_error",
    }


def _raised_from(*chain: BaseException) -> BaseException:
    """The first exception, raised from the second, raised from the third, ..."""
    for outer, inner in zip(chain, chain[1:], strict=False):
        outer.__cause__ = inner
    return chain[0]


def _litellm_500() -> Exception:
    return litellm.InternalServerError(message="Connection error.", llm_provider="openai", model="m")


@pytest.mark.parametrize(
    ("beneath", "reason"),
    [
        (ConnectionRefusedError(errno.ECONNREFUSED, "Connect call failed"), "connection refused"),
        (socket.gaierror(-2, "Name or service not known"), "host name not resolved"),
        (OSError(errno.EHOSTUNREACH, "Connect call failed"), "no route to host"),
        (OSError("All connection attempts failed"), "connection failed"),
    ],
)
def test_the_reason_a_connection_failed_is_the_operating_systems(beneath: BaseException, reason: str) -> None:
    exc = _raised_from(_litellm_500(), httpx.ConnectError("Connection error."), beneath)
    assert unreachable_reason(exc) == reason
    mapped, failure = translate(exc, "local", Redactor([]))
    assert mapped.message == f"upstream 'local' could not be reached ({reason})" and failure.retryable


def test_a_reached_upstream_is_not_called_unreachable() -> None:
    cut = _raised_from(litellm.APIConnectionError(message="Response payload is not completed",
                                                  llm_provider="openai", model="m"),
                       httpx.RemoteProtocolError("peer closed connection"))
    assert unreachable_reason(cut) is None
    said = translate(cut, "local", Redactor([]))[0].message
    assert said == "upstream 'local' failed: Response payload is not completed"
    said = translate(_litellm_500(), "local", Redactor([]))[0].message  # no chain to read: litellm's word
    assert said.startswith("upstream 'local' failed with HTTP 500")
    slow = _raised_from(litellm.Timeout(message="Request timed out.", model="m", llm_provider="openai"),
                        httpx.ConnectTimeout("timed out"))
    assert classify(slow).error is UpstreamTimedOut


def test_a_fallbacks_failure_is_not_blamed_on_the_primarys_refused_connection() -> None:
    # UpstreamClient._call runs the fallback while handling the primary's UpstreamFailed, so the
    # fallback's exceptions carry it (and, behind it, the refused connection) as their context
    refused = _raised_from(_litellm_500(), httpx.ConnectError("Connection error."), ConnectionRefusedError())
    try:
        try:
            raise refused
        except Exception:
            raise UpstreamFailed("upstream 'primary' could not be reached (connection refused)") from None
    except UpstreamFailed:
        try:
            raise litellm.InternalServerError(message="model overloaded", llm_provider="openai", model="m")
        except litellm.InternalServerError as exc:
            fallback_failed = exc
    assert unreachable_reason(fallback_failed) is None
    assert translate(fallback_failed, "fallback", Redactor([]))[0].message == (
        "upstream 'fallback' failed with HTTP 500: model overloaded"
    )


# ---- the README's probe example --------------------------------------------------------------


def test_the_state_folder_of_the_probe_example_is_git_ignored() -> None:
    for path in ("rvr-state/probes/math-best.jsonl", "examples/rvr-state/verifier_audit/x.json"):
        done = subprocess.run(["git", "check-ignore", "-q", path], cwd=ROOT, check=False)
        assert done.returncode == 0, f"{path} is not ignored"
