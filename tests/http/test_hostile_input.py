"""Hostile and malformed client input, through the real proxy (uvicorn on loopback, stub upstream).

Three families, each a defect that once reached production code paths:

* a client's JSON schema made the proxy fetch `$ref` URLs (remote or `file://`);
* a client's schema regex ran in Python's backtracking `re` on the event loop (ReDoS);
* malformed standard fields reached litellm and came back as 500/502, retried upstream.

Each case asserts the client's 400 and that nothing left the proxy (no upstream call, no fetch).
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest

from strategies.contract import Candidate, Scored, VerifyContext
from strategies.verifiers import VerifierConfigError, build_verifier
from tests.conftest import UPSTREAM_KEY, upstream
from tests.proxy_process import ROOT, ProxyProcess
from tests.stub_upstream import Handler, StubServer

HELLO = [{"role": "user", "content": "hello there"}]
PATHOLOGICAL = "^(a+)+$"  # exponential in Python's re on a run of a's that then fails to match
EVIL_TEXT = "a" * 40 + "!"  # 2**40 backtracking paths: never finishes in a backtracking engine
NEVER = 30.0  # seconds: RE2 needs microseconds, backtracking needs days


# ---- helpers ------------------------------------------------------------------------------------


def post(proxy: ProxyProcess, body: Any, path: str = "/v1/chat/completions", timeout: float = 30) -> httpx.Response:
    content = body if isinstance(body, bytes) else json.dumps(body).encode()
    return httpx.post(
        f"{proxy.base_url}{path}", content=content, headers={"content-type": "application/json"}, timeout=timeout
    )


def assert_400(response: httpx.Response, param: str | None = None) -> dict[str, Any]:
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert error["type"] == "invalid_request_error" and error["message"]
    assert "Traceback" not in response.text and UPSTREAM_KEY not in response.text
    if param is not None:
        assert error["param"] == param, error
    return error


def json_schema_format(schema: dict[str, Any]) -> dict[str, Any]:
    return {"type": "json_schema", "json_schema": {"name": "answer", "schema": schema}}


class Listener(ThreadingHTTPServer):
    """A loopback HTTP server that serves one schema and counts who asked for it."""

    daemon_threads = True

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), _ListenerHandler)
        self.hits: list[str] = []

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"


class _ListenerHandler(BaseHTTPRequestHandler):
    server: Listener

    def log_message(self, format: str, *args: Any) -> None:
        return

    def do_GET(self) -> None:
        self.server.hits.append(self.path)
        # Answering (rather than hanging) keeps a fetching proxy alive, so the test can see it.
        payload = json.dumps({"type": "object"}).encode()
        self.send_response(200)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)


@pytest.fixture
def listener() -> Iterator[Listener]:
    server = Listener()
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()


def upstream_calls(stub: StubServer) -> int:
    with stub.state.lock:
        return len(stub.state.requests)


def score_in_child(
    spec: dict[str, Any], texts: list[str], response_format: dict[str, Any] | None = None
) -> dict[str, Any] | None:
    """`score` in a child process killed after NEVER seconds: its views and errors, or None if it
    did not finish. A backtracking `re` match holds the GIL for its whole run, so neither a
    thread's join timeout nor a signal could interrupt it inside the test process."""
    args = json.dumps({"spec": spec, "texts": texts, "response_format": response_format})
    code = (
        "import json, sys\n"
        "from tests.http.test_hostile_input import score\n"
        "a = json.loads(sys.argv[1])\n"
        "s = score(a['spec'], a['texts'], a['response_format'])\n"
        "print(json.dumps({'views': s.views, 'errors': s.errors}))\n"
    )
    try:
        done = subprocess.run(
            [sys.executable, "-c", code, args], cwd=ROOT, capture_output=True, text=True, timeout=NEVER
        )
    except subprocess.TimeoutExpired:
        return None
    assert done.returncode == 0, done.stderr
    result: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    return result


def run_bounded(work: Any) -> tuple[bool, Any]:
    """Run `work()` (which waits on another process) in a thread; (finished in time, result)."""
    result: list[Any] = []
    thread = threading.Thread(target=lambda: result.append(work()), daemon=True)
    thread.start()
    thread.join(timeout=NEVER)
    return not thread.is_alive(), (result[0] if result else None)


def score(spec: dict[str, Any], texts: list[str], response_format: dict[str, Any] | None = None) -> Scored:
    verifier = build_verifier(spec, 0)
    candidates = [Candidate(i, "original", {"role": "assistant", "content": t}) for i, t in enumerate(texts)]
    ctx = VerifyContext([{"role": "user", "content": "x"}], services=None, response_format=response_format)  # type: ignore[arg-type]
    return asyncio.run(verifier.score(ctx, candidates))


# ---- 1. `$ref` in a client's schema is never fetched ---------------------------------------------


def test_remote_ref_is_400_and_never_fetched(proxy: ProxyProcess, stub: StubServer, listener: Listener) -> None:
    before = upstream_calls(stub)
    schema = {"$ref": f"{listener.url}/s.json"}
    response = post(proxy, {"model": "json-best", "messages": HELLO, "response_format": json_schema_format(schema)})
    assert listener.hits == []
    error = assert_400(response, "response_format")
    assert "$ref" in error["message"]
    assert upstream_calls(stub) == before


@pytest.mark.parametrize(
    "make_schema",
    [
        # relative to an `$id`: resolves to the listener's URL
        lambda url: {"$id": f"{url}/base/", "type": "object", "properties": {"answer": {"$ref": "s.json"}}},
        # deep inside the schema, behind a local ref
        lambda url: {"$defs": {"a": {"items": {"$ref": f"{url}/deep.json"}}}, "$ref": "#/$defs/a"},
        # the 2020-12 dynamic reference keyword
        lambda url: {"$dynamicRef": f"{url}/dyn.json"},
    ],
    ids=["id-relative", "nested", "dynamic-ref"],
)
def test_any_non_local_ref_is_400_and_never_fetched(
    proxy: ProxyProcess, stub: StubServer, listener: Listener, make_schema: Any
) -> None:
    before = upstream_calls(stub)
    body = {"model": "json-best", "messages": HELLO, "response_format": json_schema_format(make_schema(listener.url))}
    response = post(proxy, body)
    assert listener.hits == []
    assert_400(response, "response_format")
    assert upstream_calls(stub) == before


def test_file_ref_is_400(proxy: ProxyProcess, stub: StubServer, tmp_path: Path) -> None:
    secret = tmp_path / "schema.json"
    secret.write_text(json.dumps({"type": "object"}))
    before = upstream_calls(stub)
    schema = {"$ref": secret.as_uri()}
    error = assert_400(
        post(proxy, {"model": "json-best", "messages": HELLO, "response_format": json_schema_format(schema)}),
        "response_format",
    )
    assert "self-contained" in error["message"]
    assert upstream_calls(stub) == before


def test_invalid_or_unresolvable_schema_is_400(proxy: ProxyProcess, stub: StubServer) -> None:
    before = upstream_calls(stub)
    for schema in ({"type": 7}, {"$ref": "#/$defs/missing"}, {"$schema": "http://example.invalid/meta"}):
        body = {"model": "json-best", "messages": HELLO, "response_format": json_schema_format(schema)}
        assert_400(post(proxy, body), "response_format")
    assert upstream_calls(stub) == before


def test_local_ref_still_resolves_and_is_scored(client: openai.OpenAI) -> None:
    schema = {
        "$defs": {"answer": {"type": "integer"}},
        "type": "object",
        "properties": {"answer": {"$ref": "#/$defs/answer"}},
        "required": ["answer"],
    }
    completion = client.chat.completions.create(  # type: ignore[call-overload]
        model="json-best",
        messages=HELLO,
        response_format=json_schema_format(schema),
        extra_body={"rvr": {"details": True}},
    )
    info = completion.model_extra["rvr"]
    views = info["views"]["json_schema"]
    # The stub answers {"answer": 42} or {"answer": "forty-two"}: the ref decides which passes.
    expected = [1.0 if isinstance(json.loads(text)["answer"], int) else 0.0 for text in info["candidate_texts"]]
    assert views == expected and len(views) == 6


def test_config_schema_with_a_remote_ref_fails_at_load(listener: Listener) -> None:
    with pytest.raises(VerifierConfigError, match=r"verifiers\[0\].*\$ref"):
        build_verifier({"type": "json_schema", "schema": {"$ref": f"{listener.url}/config.json"}}, 0)
    assert listener.hits == []


def test_verifier_refuses_to_fetch_even_when_request_validation_is_skipped(listener: Listener) -> None:
    scored = score({"type": "json_schema"}, ["{}"], json_schema_format({"$ref": f"{listener.url}/s.json"}))
    assert scored.errors == 1 and listener.hits == []


# ---- 2. client regexes run in a linear-time engine -----------------------------------------------


def test_pathological_pattern_finishes_in_the_verifier() -> None:
    fmt = json_schema_format({"type": "string", "pattern": PATHOLOGICAL})
    scored = score_in_child({"type": "json_schema"}, [json.dumps(EVIL_TEXT), json.dumps("aaaa")], fmt)
    assert scored is not None, "the pattern backtracked: client regexes must run in RE2"
    assert scored["views"]["json_schema"] == [0.0, 1.0]


def test_pathological_pattern_properties_finish_in_the_verifier() -> None:
    schema = {
        "type": "object",
        "patternProperties": {PATHOLOGICAL: {"type": "integer"}},
        "additionalProperties": False,
    }
    texts = [json.dumps({EVIL_TEXT: 1}), json.dumps({"aaa": 1})]
    scored = score_in_child({"type": "json_schema"}, texts, json_schema_format(schema))
    assert scored is not None, "patternProperties backtracked: client regexes must run in RE2"
    assert scored["views"]["json_schema"] == [0.0, 1.0]


def test_config_regex_runs_in_re2() -> None:
    scored = score_in_child({"type": "regex", "pattern": PATHOLOGICAL}, [EVIL_TEXT, "aaaa"])
    assert scored is not None, "the regex verifier backtracked"
    assert scored["views"]["regex"] == [0.0, 1.0]


@pytest.mark.parametrize("pattern", [r"(a)\1", r"(?<=x)y", r"x(?!y)"])
def test_config_regex_re2_cannot_run_fails_at_load(pattern: str) -> None:
    with pytest.raises(VerifierConfigError, match=r"verifiers\[0\] \(regex\): pattern: .*not supported"):
        build_verifier({"type": "regex", "pattern": pattern}, 0)


def test_unsupported_client_pattern_is_400(proxy: ProxyProcess, stub: StubServer) -> None:
    before = upstream_calls(stub)
    for schema in (
        {"type": "string", "pattern": r"(a)\1"},
        {"type": "object", "patternProperties": {r"(?<=x)y": {}}},
    ):
        body = {"model": "json-best", "messages": HELLO, "response_format": json_schema_format(schema)}
        error = assert_400(post(proxy, body), "response_format")
        assert "not supported" in error["message"] and "RE2" in error["message"]
    assert upstream_calls(stub) == before


def test_no_schema_keyword_left_on_pythons_re() -> None:
    """Every keyword of every draft's validator either is RE2-based or never sees a pattern;
    `unevaluatedProperties` (which would) is refused next to `patternProperties`. Guards
    against a jsonschema upgrade adding a keyword that calls `re`."""
    from strategies.verifiers import json_schema as js

    re_users = {"re", "find_additional_properties", "find_evaluated_property_keys_by_schema"}
    for draft in js._DRAFTS:
        safe = js._SAFE_DRAFTS[draft]
        for keyword, function in safe.VALIDATORS.items():
            if function in js._RE2_KEYWORDS.values():
                continue
            names = set(getattr(function, "__code__", compile("", "", "exec")).co_names)
            assert not names & re_users or keyword == "unevaluatedProperties", (draft.__name__, keyword)
    with pytest.raises(js.SchemaRejected):
        js.check_schema({"patternProperties": {"a": {}}, "unevaluatedProperties": False})


class _EvilHandler(Handler):
    """The stub upstream, answering the `evil` model with a string a backtracking regex chokes on."""

    def _content(self, behaviour: str, body: dict[str, Any], index: int) -> str:
        if behaviour == "evil":
            return json.dumps(EVIL_TEXT)
        return super()._content(behaviour, body, index)


@pytest.fixture(scope="module")
def evil_proxy() -> Iterator[ProxyProcess]:
    """Its own proxy: a proxy whose event loop a ReDoS wedged would fail every later test."""
    with StubServer() as server:
        server.RequestHandlerClass = _EvilHandler
        config = {
            "upstreams": [upstream("evil", server.api_base, retries=0)],
            "routes": [
                {
                    "model": "evil-json",
                    "upstream": "evil",
                    "strategy": {
                        "name": "best_of_n",
                        "max_n": 2,
                        "adaptive": False,
                        "verifiers": [{"type": "json_schema"}],
                    },
                }
            ],
        }
        with ProxyProcess(config, env={"UPSTREAM_KEY": UPSTREAM_KEY}) as process:
            yield process


def test_pathological_pattern_keeps_the_event_loop_responsive(evil_proxy: ProxyProcess) -> None:
    body = {
        "model": "evil-json",
        "messages": HELLO,
        "response_format": json_schema_format({"type": "string", "pattern": PATHOLOGICAL}),
    }
    finished, response = run_bounded(lambda: post(evil_proxy, body, timeout=NEVER + 5))
    health = [httpx.get(f"{evil_proxy.base_url}/healthz", timeout=5).status_code for _ in range(3)]
    assert finished and response is not None, "the proxy stalled on the client's pattern"
    assert response.status_code == 200, response.text
    assert response.json()["rvr"]["views"]["json_schema"] == [0.0, 0.0]
    assert health == [200, 200, 200]


# ---- 3. malformed standard fields are the client's 400, before any upstream call -----------------

_RAW = b'{"model": "echo", "messages": [{"role": "user", "content": %s}]%s}'


@pytest.mark.parametrize(
    "body,param",
    [
        ({"model": "echo", "messages": [{"role": {}, "content": "x"}]}, "messages[0].role"),
        ({"model": "echo", "messages": [{"role": [], "content": "x"}]}, "messages[0].role"),
        ({"model": "echo", "messages": HELLO, "metadata": [1]}, "metadata"),
        ({"model": "echo", "messages": HELLO, "metadata": {"k": 1}}, "metadata.k"),
        ({"model": "echo", "messages": HELLO, "tools": True}, "tools"),
        ({"model": "echo", "messages": HELLO, "tools": [{"type": "function"}]}, "tools[0].function"),
        ({"model": "echo", "messages": HELLO, "response_format": 5}, "response_format"),
        ({"model": "echo", "messages": HELLO, "response_format": "json"}, "response_format"),
        ({"model": "echo", "messages": HELLO, "response_format": {"type": "xml"}}, "response_format.type"),
        ({"model": "echo", "messages": [{"role": "user", "content": 123}]}, "messages[0].content"),
        ({"model": "echo", "messages": [{"role": "user", "content": [{"text": "x"}]}]}, "messages[0].content[0].type"),
        ({"model": "echo", "messages": [{"role": "assistant", "tool_calls": {}}]}, "messages[0].tool_calls"),
        ({"model": "echo", "messages": HELLO, "temperature": 7}, "temperature"),
        ({"model": "echo", "messages": HELLO, "temperature": "hot"}, "temperature"),
        ({"model": "echo", "messages": HELLO, "top_p": -1}, "top_p"),
        ({"model": "echo", "messages": HELLO, "n": True}, "n"),
        ({"model": "echo", "messages": HELLO, "stop": [1]}, "stop[0]"),
        ({"model": "echo", "messages": HELLO, "tool_choice": "sometimes"}, "tool_choice"),
        ({"model": "echo", "messages": HELLO, "stream": "yes"}, "stream"),
        ({"model": "math-best", "messages": HELLO, "tools": True}, "tools"),
        (_RAW % (b'"hi"', b', "temperature": NaN'), "temperature"),
        (_RAW % (b'"hi"', b', "top_p": Infinity'), "top_p"),
        (_RAW % (b'"\\ud800"', b""), "messages[0].content"),
        (_RAW % (b'"hi"', b', "user": "\\udfff tail"'), "user"),
    ],
)
def test_malformed_fields_are_400_before_any_upstream_call(
    proxy: ProxyProcess, stub: StubServer, body: Any, param: str
) -> None:
    before = upstream_calls(stub)
    assert_400(post(proxy, body), param)
    assert upstream_calls(stub) == before


def nested_body(depth: int) -> bytes:
    return (
        b'{"model": "echo", "messages": [{"role": "user", "content": "hi"}], "x": ' + b"[" * depth + b"]" * depth + b"}"
    )


def test_deeply_nested_json_is_400(proxy: ProxyProcess, stub: StubServer) -> None:
    depth = 100_000
    before = upstream_calls(stub)
    assert_400(post(proxy, nested_body(depth)))
    assert upstream_calls(stub) == before


def test_moderately_nested_json_is_400_naming_the_field(proxy: ProxyProcess, stub: StubServer) -> None:
    depth = 500  # parses, but past any real request's depth
    before = upstream_calls(stub)
    assert_400(post(proxy, nested_body(depth)), "x")
    assert upstream_calls(stub) == before


def test_sdk_client_gets_a_bad_request_error(client: openai.OpenAI, stub: StubServer) -> None:
    before = upstream_calls(stub)
    with pytest.raises(openai.BadRequestError) as caught:
        client.chat.completions.create(model="echo", messages=[{"role": "user", "content": 123}])  # type: ignore[list-item, misc]
    assert caught.value.body["param"] == "messages[0].content"  # type: ignore[index]
    assert upstream_calls(stub) == before


def test_well_formed_fields_and_vendor_extensions_still_pass(client: openai.OpenAI, stub: StubServer) -> None:
    before = len(stub.state.bodies("echo"))
    client.chat.completions.create(
        model="echo",
        messages=[
            {"role": "system", "content": [{"type": "text", "text": "be brief"}]},
            {"role": "user", "content": "hi", "name": "ann"},
        ],
        temperature=0,
        top_p=1,
        stop=["\n\n"],
        seed=7,
        metadata={"team": "a"},
        response_format={"type": "json_object"},
        logit_bias={"50256": -100},
        extra_body={"top_k": 5, "repetition_penalty": 1.1},
    )
    sent = stub.state.bodies("echo")[before]
    assert sent["top_k"] == 5 and sent["repetition_penalty"] == 1.1
    assert sent["stop"] == ["\n\n"] and sent["temperature"] == 0 and sent["seed"] == 7
