"""OpenAI conformance: every answer the proxy gives has the shape OpenAI's own API document gives it.

Every response body, every stream chunk and every error is validated against the response schemas
of OpenAI's OpenAPI document, vendored in tests/fixtures/openai_schemas.json (its `_source` says
from where), with `jsonschema` over a `referencing` registry that holds only that file: nothing is
ever fetched. Extra fields are allowed (the proxy's `rvr` extension, vendors' own fields).

Around the shapes:

* a matrix of requests (plain, streamed with and without `include_usage`, `n=3`, tools with
  `tool_choice`, `response_format` json_object and json_schema, `logprobs` with `top_logprobs`,
  `stop`, a panel route whose answer a fuser writes) on passthrough and strategy routes, for chat
  and text completions;
* every error status the proxy answers with (400, 401, 404, 405, 413, 502, 504);
* `/v1/models` and `/v1/models/{model}` for every route alias;
* a passthrough answer compared field by field with the upstream's own answer to the same request
  (the stub's deterministic `rich` behaviour), streamed and not;
* tool calls streamed as OpenAI streams them (the stub's `tools-stream`), assembled by the Python
  SDK and by the official `openai` npm package (tests/node, run with `node`), on a passthrough
  route and on a best_of_n route over that upstream;
* the standard request fields reaching the upstream.

One proxy serves the module, with an API key (for the 401s) and a small body limit (for the 413).
"""

from __future__ import annotations

import copy
import functools
import json
import os
import shutil
import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
from jsonschema import Draft202012Validator
from referencing import Registry
from referencing.jsonschema import DRAFT202012

from tests.conftest import UPSTREAM_KEY, main_config, upstream
from tests.proxy_process import ROOT, ProxyProcess
from tests.stub_upstream import RICH_FINGERPRINT, RICH_SERVICE_TIER, TOOL_ARGUMENTS, StubServer

KEY = "sk-conformance-proxy-key-0001"
AUTH = {"authorization": f"Bearer {KEY}"}
MAX_BODY = 64 * 1024
NODE_DIR = ROOT / "tests" / "node"

# ---- the vendored schemas --------------------------------------------------------------------

SCHEMA_FILE = Path(__file__).parents[1] / "fixtures" / "openai_schemas.json"
SCHEMA_URI = "urn:openai-openapi:components"  # the registry's only resource; refs resolve inside it
CHAT = "CreateChatCompletionResponse"
CHAT_CHUNK = "CreateChatCompletionStreamResponse"
TEXT = "CreateCompletionResponse"
TEXT_CHUNK = "CreateCompletionChunk"  # derived in `_load_schemas`, see there
MODELS = "ListModelsResponse"
MODEL = "Model"
ERROR = "ErrorResponse"


def _nullable(node: Any) -> Any:
    """OpenAPI 3.0's `nullable: true`, as JSON Schema says it: the document (3.1.0) still has a few
    (`finish_reason`, `logprobs` and `usage` of a chat chunk), which JSON Schema would ignore,
    refusing the null that OpenAI itself sends in every chunk."""
    if isinstance(node, list):
        return [_nullable(item) for item in node]
    if not isinstance(node, dict):
        return node
    node = {key: _nullable(value) for key, value in node.items()}
    if node.pop("nullable", False) is True:
        return {"anyOf": [node, {"type": "null"}]}
    return node


def _open(node: Any) -> Any:
    """Extra fields allowed everywhere: `additionalProperties: false` would refuse the proxy's
    `rvr` extension and vendors' own fields. None of the vendored schemas has one today (2.3.0);
    this keeps a future re-vendoring from turning extensions into failures."""
    if isinstance(node, list):
        return [_open(item) for item in node]
    if not isinstance(node, dict):
        return node
    return {k: _open(v) for k, v in node.items() if not (k == "additionalProperties" and v is False)}


def _load_schemas() -> dict[str, Any]:
    schemas = _open(_nullable(json.loads(SCHEMA_FILE.read_text())["components"]["schemas"]))
    # A text completion chunk is a CreateCompletionResponse (the document says so), but its
    # `finish_reason` is null until the choice's last chunk, as OpenAI streams it; the document's
    # schema (an enum of strings) only describes the final chunk. The chunk schema allows null there.
    chunk = copy.deepcopy(schemas[TEXT])
    choice = chunk["properties"]["choices"]["items"]["properties"]
    choice["finish_reason"] = {"anyOf": [choice["finish_reason"], {"type": "null"}]}
    schemas[TEXT_CHUNK] = chunk
    return schemas


@functools.cache
def _validator(name: str) -> Draft202012Validator:
    resource = DRAFT202012.create_resource({"components": {"schemas": _load_schemas()}})
    registry: Registry[Any] = Registry().with_resource(SCHEMA_URI, resource)  # no `retrieve`: never fetches
    return Draft202012Validator({"$ref": f"{SCHEMA_URI}#/components/schemas/{name}"}, registry=registry)


def conforms(name: str, instance: Any, where: str = "") -> None:
    errors = sorted(_validator(name).iter_errors(instance), key=lambda e: list(e.absolute_path))
    if errors:
        lines = [f"  {'/'.join(map(str, e.absolute_path)) or '(root)'}: {e.message[:240]}" for e in errors[:6]]
        pytest.fail(f"{where or 'response'} does not conform to {name}:\n" + "\n".join(lines), pytrace=False)


def test_the_vendored_schemas_are_the_ones_named() -> None:
    document = json.loads(SCHEMA_FILE.read_text())
    source = document["_source"]
    assert source["repository"] == "https://github.com/openai/openai-openapi"
    assert source["info.version"] == "2.3.0"
    schemas = document["components"]["schemas"]
    for name in (CHAT, CHAT_CHUNK, TEXT, MODELS, MODEL, ERROR):
        assert name in schemas
    # every $ref is to a vendored schema: nothing left to fetch
    refs = {ref for ref in _refs(schemas)}
    assert {ref.rsplit("/", 1)[-1] for ref in refs} <= set(schemas)
    assert all(ref.startswith("#/components/schemas/") for ref in refs)
    # and the validator is not a pushover
    with pytest.raises(pytest.fail.Exception):
        conforms(CHAT, {"id": "x", "object": "chat.completion", "created": 0, "model": "m", "choices": [{}]})


def _refs(node: Any) -> Iterator[str]:
    if isinstance(node, dict):
        for key, value in node.items():
            if key == "$ref":
                yield value
            else:
                yield from _refs(value)
    elif isinstance(node, list):
        for item in node:
            yield from _refs(item)


# ---- the proxy --------------------------------------------------------------------------------

STRATEGY = ["math-best", "tools-best", "json-best", "fail-best"]


@pytest.fixture(scope="module")
def conformant(stub: StubServer, strategy_routes: list[dict[str, Any]]) -> Iterator[ProxyProcess]:
    config = main_config(stub.api_base)
    config["server"] = {"api_keys": ["os.environ/RVR_KEY"], "max_body_bytes": MAX_BODY}
    # `rich` answers as OpenAI does, `n` included: declared so, its n > 1 streams are one upstream stream
    config["upstreams"] += [upstream("rich", stub.api_base, retries=0, supports_n=True)]
    config["upstreams"] += [upstream("tools-stream", stub.api_base, retries=0)]
    config["upstreams"] += [upstream("answer-42", stub.api_base, retries=0)]  # a panelist and the fuser
    # Streams the proxy cannot read below litellm (compressed), and an upstream that never reports usage.
    for name in ("gzip-echo", "gzip-ends-early", "no-usage-echo"):
        config["upstreams"].append(upstream(name, stub.api_base, retries=0))
        config["routes"].append({"model": name, "upstream": name})
    # The same `echo` upstream, declared to honour `n` or not: the two ways to stream n > 1.
    for name, supports_n in (("n-native", True), ("n-fanout", False)):
        config["upstreams"].append(
            {**upstream("echo", stub.api_base, retries=0), "name": name, "supports_n": supports_n}
        )
    config["routes"] += [route for route in strategy_routes if route["model"] in STRATEGY]
    config["routes"] += [
        {"model": "rich", "upstream": "rich"},
        {"model": "n-native", "upstream": "n-native"},
        {"model": "n-fanout", "upstream": "n-fanout"},
        {"model": "rich-best", "upstream": "rich", "strategy": {"name": "best_of_n", "max_n": 4, "adaptive": False}},
        {"model": "tools-stream", "upstream": "tools-stream"},
        {"model": "tools-stream-best", "upstream": "tools-stream", "strategy": {"name": "best_of_n", "max_n": 4}},
        # a panel whose answer a fuser writes, every time: its pieces are streamed as they come
        {"model": "fused-best", "strategy": {
            "name": "best_of_n", "max_n": 4, "adaptive": False,
            "panel": [{"upstream": "math"}, {"upstream": "answer-42"}],
            "selection": {"fusion": {"fuser": "answer-42", "min_clusters": 1, "when": "always"}}}},
    ]
    with ProxyProcess(config, env={"UPSTREAM_KEY": UPSTREAM_KEY, "RVR_KEY": KEY}) as process:
        process.aliases = [route["model"] for route in config["routes"]]  # type: ignore[attr-defined]
        yield process


@pytest.fixture(scope="module")
def sdk(conformant: ProxyProcess) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{conformant.base_url}/v1", api_key=KEY, max_retries=0, timeout=30)


def post(proxy: ProxyProcess, path: str, body: Any, headers: dict[str, str] | None = None) -> httpx.Response:
    return httpx.post(f"{proxy.base_url}{path}", json=body, headers=AUTH if headers is None else headers, timeout=30)


class Stream:
    """A streamed answer: its status, the chunks (parsed `data:` events) and how it ended."""

    def __init__(self, response: httpx.Response, text: str) -> None:
        self.status = response.status_code
        self.content_type = response.headers.get("content-type", "")
        self.body = json.loads(text) if "json" in self.content_type else None
        events = [line[len("data: ") :] for line in text.splitlines() if line.startswith("data: ")]
        self.done = bool(events) and events[-1] == "[DONE]"
        self.chunks = [json.loads(e) for e in events if e != "[DONE]"]


def stream(url: str, body: dict[str, Any], headers: dict[str, str] | None = None) -> Stream:
    with httpx.stream("POST", url, json=body, headers=AUTH if headers is None else headers, timeout=30) as response:
        return Stream(response, response.read().decode())


def assemble(chunks: list[dict[str, Any]]) -> dict[int, dict[str, Any]]:
    """Chunks as a client assembles them: per choice index, content, tool calls (by their index),
    logprob entries and the finish reason."""
    choices: dict[int, dict[str, Any]] = {}
    for chunk in chunks:
        for c in chunk.get("choices") or []:
            choice = choices.setdefault(
                c["index"], {"content": "", "tool_calls": {}, "logprobs": [], "finish_reason": None, "chunks": 0}
            )
            choice["chunks"] += 1
            delta = c.get("delta")
            if delta is None:  # a text completion chunk
                choice["content"] += c.get("text") or ""
                lp = c.get("logprobs") or {}
                choice["logprobs"] += list(lp.get("tokens") or [])
            else:
                choice["content"] += delta.get("content") or ""
                for call in delta.get("tool_calls") or []:
                    slot = choice["tool_calls"].setdefault(call["index"], {"id": None, "name": "", "arguments": ""})
                    slot["id"] = call.get("id") or slot["id"]
                    slot["name"] += (call.get("function") or {}).get("name") or ""
                    slot["arguments"] += (call.get("function") or {}).get("arguments") or ""
                lp = c.get("logprobs") or {}
                choice["logprobs"] += [entry["token"] for entry in lp.get("content") or []]
                if lp.get("content"):
                    choice.setdefault("top", []).extend(len(e.get("top_logprobs") or []) for e in lp["content"])
            if c.get("finish_reason"):
                choice["finish_reason"] = c["finish_reason"]
    return choices


def marker() -> str:
    return f"conformance-{uuid.uuid4().hex[:12]}"


def sent_upstream(stub: StubServer, mark: str) -> list[dict[str, Any]]:
    """The request bodies the stub got whose prompt carries `mark`."""
    with stub.state.lock:
        return [r for r in stub.state.requests if mark in json.dumps(r.get("messages") or r.get("prompt"))]


# ---- the request matrix ------------------------------------------------------------------------

TOOLS: Any = [
    {
        "type": "function",
        "function": {
            "name": "get_weather",
            "description": "The weather in a city",
            "parameters": {
                "type": "object",
                "properties": {
                    "city": {"type": "string"},
                    "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]},
                },
                "required": ["city"],
            },
        },
    },
    {
        "type": "function",
        "function": {
            "name": "get_time",
            "description": "The local time in a city",
            "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
        },
    },
]
FORCED = {"type": "function", "function": {"name": "get_weather"}}
ANSWER_SCHEMA = {
    "type": "json_schema",
    "json_schema": {
        "name": "answer",
        "strict": True,
        "schema": {
            "type": "object",
            "properties": {"answer": {"type": "integer"}},
            "required": ["answer"],
            "additionalProperties": False,
        },
    },
}


class Case:
    def __init__(
        self,
        passthrough: str,
        strategy: str,
        extra: dict[str, Any],
        *,
        tools: list[str] | None = None,
        logprobs: int | None = None,
    ) -> None:
        self.routes = {"passthrough": passthrough, "strategy": strategy}
        self.extra = extra
        self.tools = tools  # the functions the answer must call, in order
        self.logprobs = logprobs  # alternatives per token the answer must carry

    @property
    def n(self) -> int:
        return int(self.extra.get("n", 1))


CHAT_CASES = {
    "plain": Case("echo", "math-best", {}),
    "n3": Case("n-native", "math-best", {"n": 3}),  # one upstream call (stream) with n, as OpenAI serves it
    "rich": Case("rich", "rich-best", {}),
    "tools-forced": Case(
        "tools-stream", "tools-stream-best", {"tools": TOOLS, "tool_choice": FORCED}, tools=["get_weather"]
    ),
    "tools-required": Case(
        "tools-stream",
        "tools-stream-best",
        {"tools": TOOLS, "tool_choice": "required"},
        tools=["get_weather", "get_time"],
    ),
    "tools-auto": Case("tools", "tools-best", {"tools": TOOLS, "tool_choice": "auto"}),
    "json_object": Case("json", "json-best", {"response_format": {"type": "json_object"}}),
    "json_schema": Case("json", "json-best", {"response_format": ANSWER_SCHEMA}),
    "logprobs": Case("rich", "rich-best", {"logprobs": True, "top_logprobs": 2}, logprobs=2),
    "stop": Case("echo", "math-best", {"stop": ["\n\n", "END"]}),
    "fused": Case("echo", "fused-best", {}),
}
TEXT_CASES = {
    "plain": Case("echo", "math-best", {}),
    "n3": Case("n-native", "math-best", {"n": 3}),  # one upstream call (stream) with n, as OpenAI serves it
    "rich": Case("rich", "rich-best", {}),
    "logprobs": Case("rich", "rich-best", {"logprobs": 2}, logprobs=2),
    "stop": Case("echo", "math-best", {"stop": ["END"]}),
    "fused": Case("echo", "fused-best", {}),
}
MODES = ["plain", "stream", "stream-usage"]
KINDS = ["passthrough", "strategy"]


def _request(endpoint: str, case: Case, kind: str, mode: str, mark: str) -> dict[str, Any]:
    route = case.routes[kind]
    prompt = f"{mark}: what is six times seven? p=0.9"
    body: dict[str, Any] = {"model": route, **copy.deepcopy(case.extra)}
    body.update({"messages": [{"role": "user", "content": prompt}]} if endpoint == "chat" else {"prompt": prompt})
    if mode != "plain":
        body["stream"] = True
    if mode == "stream-usage":
        body["stream_options"] = {"include_usage": True}
    return body


def _check_tools(case: Case, calls: list[tuple[str | None, str, str]]) -> None:
    """`calls`: (id, name, arguments) as the client got them."""
    assert [name for _, name, _ in calls] == case.tools
    for k, (call_id, _, arguments) in enumerate(calls):
        assert call_id and call_id.startswith("call_")
        assert json.loads(arguments) == TOOL_ARGUMENTS[k]
    assert len({call_id for call_id, _, _ in calls}) == len(calls)


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("case_name", list(CHAT_CASES))
def test_chat(conformant: ProxyProcess, stub: StubServer, case_name: str, kind: str, mode: str) -> None:
    case = CHAT_CASES[case_name]
    route = case.routes[kind]
    mark = marker()
    body = _request("chat", case, kind, mode, mark)
    if mode == "plain":
        response = post(conformant, "/v1/chat/completions", body)
        assert response.status_code == 200, response.text
        answer = response.json()
        conforms(CHAT, answer)
        assert answer["model"] == route
        assert [c["index"] for c in answer["choices"]] == list(range(case.n))
        for choice in answer["choices"]:
            if case.tools:
                assert choice["finish_reason"] == "tool_calls"
                calls = choice["message"]["tool_calls"]
                _check_tools(case, [(c["id"], c["function"]["name"], c["function"]["arguments"]) for c in calls])
            if case.logprobs is not None:
                entries = choice["logprobs"]["content"]
                assert "".join(e["token"] for e in entries) == choice["message"]["content"]
                assert all(len(e["top_logprobs"]) == case.logprobs for e in entries)
    else:
        answer_stream = stream(f"{conformant.base_url}/v1/chat/completions", body)
        assert answer_stream.status == 200, answer_stream.body
        assert answer_stream.content_type.startswith("text/event-stream")
        assert answer_stream.done, "the stream did not end with [DONE]"
        for i, chunk in enumerate(answer_stream.chunks):
            conforms(CHAT_CHUNK, chunk, f"chunk {i}")
            assert chunk["model"] == route
        assert len({chunk["id"] for chunk in answer_stream.chunks}) == 1
        _check_stream_usage(answer_stream.chunks, mode)
        choices = assemble(answer_stream.chunks)
        assert sorted(choices) == list(range(case.n)), f"choices {sorted(choices)} of n={case.n}"
        for index, choice in choices.items():
            assert choice["finish_reason"] is not None, f"choice {index} has no finish_reason"
            if case.tools:
                assert choice["finish_reason"] == "tool_calls"
                calls = [choice["tool_calls"][k] for k in sorted(choice["tool_calls"])]
                _check_tools(case, [(c["id"], c["name"], c["arguments"]) for c in calls])
            if case.logprobs is not None:
                assert choice["logprobs"], "the stream carries no logprobs"
                assert "".join(choice["logprobs"]) == choice["content"]
                assert set(choice["top"]) == {case.logprobs}
    if kind == "passthrough":
        _check_forwarded(stub, mark, case, streamed=mode != "plain")


def _check_forwarded(stub: StubServer, mark: str, case: Case, streamed: bool) -> None:
    """The passthrough request reached the upstream as sent, asking for exactly `n` choices.

    Not streamed, that is one request with `n` (the stub honours it). Streamed, the proxy may
    also open one stream per choice (its answer to upstreams that ignore `n`): `n` requests
    without it. Whether an upstream declared to honour `n` gets one stream is
    `test_a_passthrough_route_streams_n_choices[n-native-*]`'s question, not this one's.
    """
    sent = sent_upstream(stub, mark)
    assert sent, "nothing reached the upstream"
    asked = sum(int(body.get("n") or 1) for body in sent)
    assert asked == case.n, f"{len(sent)} upstream requests asked for {asked} choices, not n={case.n}"
    if not streamed:
        assert len(sent) == 1, f"{len(sent)} upstream requests for one passthrough request"
    for body in sent:
        for key, value in case.extra.items():
            if key != "n":
                assert body.get(key) == value, f"{key} reached the upstream as {body.get(key)!r}"


def _check_stream_usage(chunks: list[dict[str, Any]], mode: str) -> None:
    with_usage = [c for c in chunks if c.get("usage")]
    if mode == "stream-usage":
        assert len(with_usage) == 1, "include_usage: exactly one chunk carries the usage"
        assert with_usage[0] is chunks[-1] or chunks[-1].get("rvr") is not None
        assert with_usage[0]["choices"] == []
        usage = with_usage[0]["usage"]
        assert usage["total_tokens"] == usage["prompt_tokens"] + usage["completion_tokens"]
    else:
        assert not with_usage, "usage in a stream that did not ask for it"


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("case_name", list(TEXT_CASES))
def test_text_completion(conformant: ProxyProcess, stub: StubServer, case_name: str, kind: str, mode: str) -> None:
    case = TEXT_CASES[case_name]
    route = case.routes[kind]
    mark = marker()
    body = _request("text", case, kind, mode, mark)
    if mode == "plain":
        response = post(conformant, "/v1/completions", body)
        assert response.status_code == 200, response.text
        answer = response.json()
        conforms(TEXT, answer)
        assert answer["model"] == route
        assert [c["index"] for c in answer["choices"]] == list(range(case.n))
        if case.logprobs is not None:
            for choice in answer["choices"]:
                assert "".join(choice["logprobs"]["tokens"]) == choice["text"]
                assert all(len(top) == case.logprobs for top in choice["logprobs"]["top_logprobs"])
    else:
        answer_stream = stream(f"{conformant.base_url}/v1/completions", body)
        assert answer_stream.status == 200, answer_stream.body
        assert answer_stream.done, "the stream did not end with [DONE]"
        for i, chunk in enumerate(answer_stream.chunks):
            # the document: a text completion chunk has the shape of the whole response
            conforms(TEXT_CHUNK, chunk, f"chunk {i}")
            assert chunk["model"] == route and chunk["object"] == "text_completion"
        _check_stream_usage(answer_stream.chunks, mode)
        choices = assemble(answer_stream.chunks)
        assert sorted(choices) == list(range(case.n)), f"choices {sorted(choices)} of n={case.n}"
        for index, choice in choices.items():
            assert choice["finish_reason"] is not None, f"choice {index} has no finish_reason"
            if case.logprobs is not None:
                assert choice["logprobs"], "the stream carries no logprobs"
                assert "".join(choice["logprobs"]) == choice["content"]
    if kind == "passthrough":
        _check_forwarded(stub, mark, case, streamed=mode != "plain")


# ---- n > 1 streamed on a passthrough route (issue item 3) ----------------------------------------


@pytest.mark.parametrize("endpoint", ["chat", "text"])
@pytest.mark.parametrize("route", ["n-native", "n-fanout"])
def test_a_passthrough_route_streams_n_choices(
    conformant: ProxyProcess, stub: StubServer, route: str, endpoint: str
) -> None:
    """`n-native`'s upstream is declared to honour `n`: one upstream stream carries every choice.
    `n-fanout`'s is declared not to: the proxy may open a stream per choice. Either way the client
    gets n complete choices, indexed 0..n-1, each with its finish reason."""
    mark = marker()
    body: dict[str, Any] = {"model": route, "n": 3, "stream": True, "stream_options": {"include_usage": True}}
    body.update({"messages": [{"role": "user", "content": mark}]} if endpoint == "chat" else {"prompt": mark})
    path = "/v1/chat/completions" if endpoint == "chat" else "/v1/completions"
    answer = stream(f"{conformant.base_url}{path}", body)
    assert answer.status == 200, answer.body
    assert answer.done
    for i, chunk in enumerate(answer.chunks):
        conforms(CHAT_CHUNK if endpoint == "chat" else TEXT_CHUNK, chunk, f"chunk {i}")
    choices = assemble(answer.chunks)
    assert sorted(choices) == [0, 1, 2], f"choices {sorted(choices)} of n=3"
    for index, choice in choices.items():
        assert choice["finish_reason"] == "stop", f"choice {index} has no finish_reason"
        assert mark in choice["content"]
    sent = sent_upstream(stub, mark)
    if route == "n-native":
        assert [body.get("n") for body in sent] == [3], "one upstream stream with n=3"
        assert [choices[i]["content"].split(":")[0] for i in range(3)] == ["echo 0", "echo 1", "echo 2"]
    usage = answer.chunks[-1]["usage"]
    assert usage["completion_tokens"] == sum(len(choices[i]["content"].split(" ")) for i in range(3))


# ---- fields the upstream sent, kept (issue item 2) ----------------------------------------------


def test_rich_chat_answer_keeps_every_field(conformant: ProxyProcess) -> None:
    body = {"model": "rich", "messages": [{"role": "user", "content": "hi"}], "logprobs": True, "top_logprobs": 1}
    answer = post(conformant, "/v1/chat/completions", body).json()
    conforms(CHAT, answer)
    assert answer.get("system_fingerprint") == RICH_FINGERPRINT
    assert answer.get("service_tier") == RICH_SERVICE_TIER
    message = answer["choices"][0]["message"]
    assert "refusal" in message and message["refusal"] is None
    assert message.get("annotations") == []
    assert answer["choices"][0]["logprobs"]["refusal"] is None
    usage = answer["usage"]
    assert usage.get("prompt_tokens_details") == {"cached_tokens": 0, "audio_tokens": 0}
    assert usage.get("completion_tokens_details") == {
        "reasoning_tokens": 0,
        "audio_tokens": 0,
        "accepted_prediction_tokens": 0,
        "rejected_prediction_tokens": 0,
    }


def test_rich_chat_stream_keeps_every_field(conformant: ProxyProcess) -> None:
    body = {"model": "rich", "messages": [{"role": "user", "content": "hi"}], "stream": True}
    chunks = stream(f"{conformant.base_url}/v1/chat/completions", body).chunks
    assert chunks
    for chunk in chunks:
        assert chunk.get("system_fingerprint") == RICH_FINGERPRINT
        assert chunk.get("service_tier") == RICH_SERVICE_TIER
        for choice in chunk["choices"]:
            assert "logprobs" in choice and choice["logprobs"] is None, f"choices[].logprobs dropped: {choice}"
    first = chunks[0]["choices"][0]["delta"]
    assert "refusal" in first and first["refusal"] is None, f"delta.refusal dropped: {first}"


def test_a_minimal_upstream_answer_gets_the_spec_nulls(conformant: ProxyProcess) -> None:
    """The `echo` upstream leaves out `message.refusal` (required by the document): the proxy sends null."""
    answer = post(conformant, "/v1/chat/completions", {"model": "echo", "messages": [{"role": "user", "content": "x"}]})
    message = answer.json()["choices"][0]["message"]
    assert "refusal" in message and message["refusal"] is None


@pytest.mark.parametrize("logprobs", [False, True])
def test_a_strategy_route_returns_the_chosen_candidates_fields(conformant: ProxyProcess, logprobs: bool) -> None:
    body: dict[str, Any] = {"model": "rich-best", "messages": [{"role": "user", "content": "hi"}]}
    if logprobs:
        body.update(logprobs=True, top_logprobs=1)
    answer = post(conformant, "/v1/chat/completions", body).json()
    conforms(CHAT, answer)
    message = answer["choices"][0]["message"]
    assert "refusal" in message and message["refusal"] is None
    assert message.get("annotations") == []
    if logprobs:
        assert answer["choices"][0]["logprobs"]["refusal"] is None
        assert "".join(e["token"] for e in answer["choices"][0]["logprobs"]["content"]) == message["content"]
    else:
        assert answer["choices"][0]["logprobs"] is None


# ---- passthrough: the upstream's own answer, field by field -------------------------------------

VOLATILE = ("id", "created", "model")


def _stable(answer: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in answer.items() if k not in VOLATILE}


@pytest.mark.parametrize("endpoint", ["chat", "text"])
def test_passthrough_answer_is_the_upstreams(conformant: ProxyProcess, stub: StubServer, endpoint: str) -> None:
    body: dict[str, Any] = {"model": "rich", "n": 2}
    if endpoint == "chat":
        path = "/chat/completions"
        body.update(messages=[{"role": "user", "content": "compare me"}], logprobs=True, top_logprobs=2)
    else:
        path = "/completions"
        body.update(prompt="compare me", logprobs=2)
    direct = httpx.post(f"{stub.api_base}{path}", json=body, timeout=10).json()
    proxied = post(conformant, f"/v1{path}", body).json()
    assert proxied["model"] == "rich"
    assert _stable(proxied) == _stable(direct)


@pytest.mark.parametrize("n", [1, 2])
@pytest.mark.parametrize("endpoint", ["chat", "text"])
def test_passthrough_stream_is_the_upstreams(conformant: ProxyProcess, stub: StubServer, endpoint: str, n: int) -> None:
    body: dict[str, Any] = {"model": "rich", "stream": True, "stream_options": {"include_usage": True}}
    if n > 1:
        body["n"] = n
    if endpoint == "chat":
        path = "/chat/completions"
        body.update(messages=[{"role": "user", "content": "compare my stream"}], logprobs=True, top_logprobs=2)
    else:
        path = "/completions"
        body.update(prompt="compare my stream", logprobs=2)
    direct = stream(f"{stub.api_base}{path}", body, headers={})
    proxied = stream(f"{conformant.base_url}/v1{path}", body)
    assert proxied.status == 200, proxied.body
    assert direct.done and proxied.done
    assert all(chunk["model"] == "rich" for chunk in proxied.chunks)
    assert len({chunk["id"] for chunk in proxied.chunks}) == 1
    assert [_stable(c) for c in proxied.chunks] == [_stable(c) for c in direct.chunks]


# ---- streams the proxy relays as litellm reads them --------------------------------------------


@pytest.mark.parametrize("endpoint", ["chat", "text"])
def test_a_compressed_stream_is_relayed_from_litellms_chunks(conformant: ProxyProcess, endpoint: str) -> None:
    """A gzip-compressed event stream is not tapped (its bytes are not yet events where the proxy
    listens): litellm's own chunks are relayed, whole, as before the tap."""
    mark = marker()
    body: dict[str, Any] = {"model": "gzip-echo", "stream": True, "stream_options": {"include_usage": True}}
    body.update({"messages": [{"role": "user", "content": mark}]} if endpoint == "chat" else {"prompt": mark})
    path = "/v1/chat/completions" if endpoint == "chat" else "/v1/completions"
    answer = stream(f"{conformant.base_url}{path}", body)
    assert answer.status == 200, answer.body
    assert answer.done
    for i, chunk in enumerate(answer.chunks):
        conforms(CHAT_CHUNK if endpoint == "chat" else TEXT_CHUNK, chunk, f"chunk {i}")
    choices = assemble(answer.chunks)
    assert list(choices) == [0]
    assert choices[0]["content"] == f"echo 0: {mark}" and choices[0]["finish_reason"] == "stop"
    assert answer.chunks[-1]["usage"]["completion_tokens"] == 3


@pytest.mark.parametrize("path", ["/v1/chat/completions", "/v1/completions"])
def test_a_compressed_stream_that_did_not_finish_ends_with_an_error(conformant: ProxyProcess, path: str) -> None:
    """Untapped, the end litellm invents for a stream that stopped short is still caught."""
    body: dict[str, Any] = {"model": "gzip-ends-early", "stream": True}
    body.update({"messages": [{"role": "user", "content": "hello"}]} if "chat" in path else {"prompt": "hello"})
    answer = stream(f"{conformant.base_url}{path}", body)
    assert not answer.done
    final = answer.chunks[-1] if answer.chunks else answer.body
    assert final is not None and final["error"]["type"] == "upstream_error"
    assert all(not c.get("finish_reason") for chunk in answer.chunks for c in chunk.get("choices") or [])


@pytest.mark.parametrize("endpoint", ["chat", "text"])
def test_an_upstream_that_ignores_include_usage_still_reports_usage(conformant: ProxyProcess, endpoint: str) -> None:
    """The upstream's chunks are relayed, and litellm's token count stands in for the usage it never sent."""
    mark = marker()
    body: dict[str, Any] = {"model": "no-usage-echo", "stream": True, "stream_options": {"include_usage": True}}
    body.update({"messages": [{"role": "user", "content": mark}]} if endpoint == "chat" else {"prompt": mark})
    path = "/v1/chat/completions" if endpoint == "chat" else "/v1/completions"
    answer = stream(f"{conformant.base_url}{path}", body)
    assert answer.status == 200 and answer.done
    usage = answer.chunks[-1]["usage"]
    assert answer.chunks[-1]["choices"] == []
    assert usage["prompt_tokens"] > 0 and usage["completion_tokens"] > 0
    assert usage["total_tokens"] == usage["prompt_tokens"] + usage["completion_tokens"]
    assert assemble(answer.chunks)[0]["content"] == f"echo 0: {mark}"


# ---- standard request fields reach the upstream (issue item 5) ----------------------------------

CHAT_FIELDS: dict[str, dict[str, Any]] = {
    "user": {"user": "user-1234"},
    "metadata": {"metadata": {"purpose": "conformance", "team": "rvr"}},
    "seed": {"seed": 7},
    "temperature": {"temperature": 0.5},
    "top_p": {"top_p": 0.9},
    "presence_penalty": {"presence_penalty": 0.25},
    "frequency_penalty": {"frequency_penalty": 0.5},
    "logit_bias": {"logit_bias": {"50256": -100}},
    "max_completion_tokens": {"max_completion_tokens": 64},
    "max_tokens": {"max_tokens": 64},
    "stop": {"stop": ["END"]},
    "store": {"store": False},
    "service_tier": {"service_tier": "auto"},
    "logprobs": {"logprobs": True, "top_logprobs": 3},
    "parallel_tool_calls": {"tools": TOOLS, "tool_choice": "auto", "parallel_tool_calls": False},
    "prompt_cache_key": {"prompt_cache_key": "cache-key-1"},
    "safety_identifier": {"safety_identifier": "safety-id-1"},
}
TEXT_FIELDS: dict[str, dict[str, Any]] = {
    "user": {"user": "user-1234"},
    "seed": {"seed": 7},
    "suffix": {"suffix": " the end"},
    "echo": {"echo": True},
    "logit_bias": {"logit_bias": {"50256": -100}},
    "presence_penalty": {"presence_penalty": 0.25},
    "stop": {"stop": ["END"]},
    "max_tokens": {"max_tokens": 64},
    "logprobs": {"logprobs": 3},
}


@pytest.mark.parametrize("field", list(CHAT_FIELDS))
def test_chat_forwards_standard_field(conformant: ProxyProcess, stub: StubServer, field: str) -> None:
    mark = marker()
    fields = CHAT_FIELDS[field]
    body = {"model": "echo", "messages": [{"role": "user", "content": mark}], **fields}
    response = post(conformant, "/v1/chat/completions", body)
    assert response.status_code == 200, response.text
    (sent,) = sent_upstream(stub, mark)
    for key, value in fields.items():
        assert sent.get(key) == value, f"{key} reached the upstream as {sent.get(key)!r}"


@pytest.mark.parametrize("field", list(TEXT_FIELDS))
def test_completions_forward_standard_field(conformant: ProxyProcess, stub: StubServer, field: str) -> None:
    mark = marker()
    fields = TEXT_FIELDS[field]
    response = post(conformant, "/v1/completions", {"model": "echo", "prompt": mark, **fields})
    assert response.status_code == 200, response.text
    (sent,) = sent_upstream(stub, mark)
    for key, value in fields.items():
        assert sent.get(key) == value, f"{key} reached the upstream as {sent.get(key)!r}"


def test_a_stream_forwards_user_and_metadata(conformant: ProxyProcess, stub: StubServer) -> None:
    mark = marker()
    body = {
        "model": "echo",
        "messages": [{"role": "user", "content": mark}],
        "stream": True,
        "user": "user-1234",
        "metadata": {"purpose": "conformance"},
    }
    assert stream(f"{conformant.base_url}/v1/chat/completions", body).done
    (sent,) = sent_upstream(stub, mark)
    assert sent.get("user") == "user-1234"
    assert sent.get("metadata") == {"purpose": "conformance"}


# ---- models (issue item 1) ---------------------------------------------------------------------


def test_models_list(conformant: ProxyProcess) -> None:
    response = httpx.get(f"{conformant.base_url}/v1/models", headers=AUTH, timeout=10)
    assert response.status_code == 200
    conforms(MODELS, response.json())
    assert {m["id"] for m in response.json()["data"]} == set(conformant.aliases)  # type: ignore[attr-defined]


def test_every_route_alias_is_a_model(conformant: ProxyProcess) -> None:
    wrong = {}
    for alias in conformant.aliases:  # type: ignore[attr-defined]
        response = httpx.get(f"{conformant.base_url}/v1/models/{alias}", headers=AUTH, timeout=10)
        if response.status_code != 200:
            wrong[alias] = response.status_code
            continue
        conforms(MODEL, response.json(), f"GET /v1/models/{alias}")
        assert response.json()["id"] == alias
    assert not wrong, f"GET /v1/models/{{model}} failed for {wrong}"


def test_python_sdk_lists_and_retrieves_models(sdk: openai.OpenAI, conformant: ProxyProcess) -> None:
    assert {m.id for m in sdk.models.list()} == set(conformant.aliases)  # type: ignore[attr-defined]
    model = sdk.models.retrieve("math-best")
    assert model.id == "math-best" and model.object == "model"


# ---- errors ------------------------------------------------------------------------------------

HI: Any = [{"role": "user", "content": "hi"}]  # Any: the SDK's message types are TypedDicts
CHAT_PATH = "/v1/chat/completions"
BAD_KEY = {"authorization": "Bearer sk-wrong-key-000000000"}
ERRORS: dict[str, tuple[int, str, str, Any, dict[str, str] | None]] = {
    # name: (status, method, path, json body, headers)
    "400-temperature": (400, "POST", CHAT_PATH, {"model": "echo", "messages": HI, "temperature": 5}, None),
    "400-no-messages": (400, "POST", CHAT_PATH, {"model": "echo"}, None),
    "400-not-json": (400, "POST", CHAT_PATH, "not json", None),
    "400-text-logprobs": (400, "POST", "/v1/completions", {"model": "echo", "prompt": "x", "logprobs": 9}, None),
    "400-over-max-n": (400, "POST", CHAT_PATH, {"model": "capped", "messages": HI, "n": 3}, None),
    "400-stream": (400, "POST", CHAT_PATH, {"model": "echo", "messages": HI, "stream": True, "top_p": 3}, None),
    "401-no-key": (401, "POST", CHAT_PATH, {"model": "echo", "messages": HI}, {}),
    "401-wrong-key": (401, "POST", CHAT_PATH, {"model": "echo", "messages": HI}, BAD_KEY),
    "401-text": (401, "POST", "/v1/completions", {"model": "echo", "prompt": "x"}, BAD_KEY),
    "401-models": (401, "GET", "/v1/models", None, {}),
    "401-model": (401, "GET", "/v1/models/echo", None, {}),
    "404-model": (404, "POST", CHAT_PATH, {"model": "no-such-model", "messages": HI}, None),
    "404-model-text": (404, "POST", "/v1/completions", {"model": "no-such-model", "prompt": "x"}, None),
    "404-model-stream": (404, "POST", CHAT_PATH, {"model": "no-such-model", "messages": HI, "stream": True}, None),
    "404-models-unknown": (404, "GET", "/v1/models/no-such-model", None, None),
    "404-endpoint": (404, "POST", "/v1/nothing-here", {}, None),
    "405-get-chat": (405, "GET", CHAT_PATH, None, None),
    "405-delete-models": (405, "DELETE", "/v1/models", None, None),
    "413-body": (
        413,
        "POST",
        CHAT_PATH,
        {"model": "echo", "messages": [{"role": "user", "content": "x" * MAX_BODY}]},
        None,
    ),
    "502-fail": (502, "POST", CHAT_PATH, {"model": "fail", "messages": HI}, None),
    "502-fail-text": (502, "POST", "/v1/completions", {"model": "fail", "prompt": "x"}, None),
    "502-fail-stream": (502, "POST", CHAT_PATH, {"model": "fail", "messages": HI, "stream": True}, None),
    "502-fail-strategy": (502, "POST", CHAT_PATH, {"model": "fail-best", "messages": HI}, None),
    "504-timeout": (504, "POST", CHAT_PATH, {"model": "timeout", "messages": HI}, None),
    "504-timeout-stream": (504, "POST", CHAT_PATH, {"model": "timeout", "messages": HI, "stream": True}, None),
}


@pytest.mark.parametrize("name", list(ERRORS))
def test_error(conformant: ProxyProcess, name: str) -> None:
    status, method, path, body, headers = ERRORS[name]
    kwargs: dict[str, Any] = {"headers": AUTH if headers is None else headers, "timeout": 30}
    if isinstance(body, str):
        kwargs["content"] = body.encode()
        kwargs["headers"] = {**kwargs["headers"], "content-type": "application/json"}
    elif body is not None:
        kwargs["json"] = body
    response = httpx.request(method, f"{conformant.base_url}{path}", **kwargs)
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/json")
    conforms(ERROR, response.json())
    assert response.json()["error"]["message"]


SDK_ERRORS: dict[str, tuple[dict[str, Any], type[openai.APIStatusError]]] = {
    "400": ({"model": "echo", "temperature": 5}, openai.BadRequestError),
    "401": ({"model": "echo", "api_key": "sk-wrong-key-000000000"}, openai.AuthenticationError),
    "404": ({"model": "no-such-model"}, openai.NotFoundError),
    "502": ({"model": "fail"}, openai.InternalServerError),
    "504": ({"model": "timeout"}, openai.InternalServerError),
}


@pytest.mark.parametrize("name", list(SDK_ERRORS))
def test_python_sdk_raises_the_matching_error(sdk: openai.OpenAI, name: str) -> None:
    params, error = SDK_ERRORS[name]
    params = dict(params)
    client = sdk.with_options(api_key=params.pop("api_key")) if "api_key" in params else sdk
    with pytest.raises(error) as raised:
        client.chat.completions.create(messages=HI, **params)  # type: ignore[call-overload]
    assert raised.value.status_code == int(name)
    conforms(ERROR, raised.value.response.json())


# ---- the Python SDK --------------------------------------------------------------------------


@pytest.mark.parametrize("route", ["echo", "math-best", "rich", "rich-best"])
def test_python_sdk_chat_and_stream(sdk: openai.OpenAI, route: str) -> None:
    completion = sdk.chat.completions.create(model=route, messages=HI, n=2)
    assert completion.model == route and len(completion.choices) == 2
    conforms(CHAT, completion.model_dump(exclude_unset=True))
    chunks = list(
        sdk.chat.completions.create(model=route, messages=HI, stream=True, stream_options={"include_usage": True})
    )
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    if route in ("echo", "rich"):  # passthrough: the same answer, streamed or not
        assert text == completion.choices[0].message.content
    assert chunks[-1].usage is not None or chunks[-2].usage is not None


@pytest.mark.parametrize("route", ["tools-stream", "tools-stream-best"])
@pytest.mark.parametrize("tool_choice", ["required", "forced"])
def test_python_sdk_assembles_streamed_tool_calls(sdk: openai.OpenAI, route: str, tool_choice: str) -> None:
    choice: Any = FORCED if tool_choice == "forced" else "required"
    expected = ["get_weather"] if tool_choice == "forced" else ["get_weather", "get_time"]
    arguments_deltas = 0
    with sdk.chat.completions.stream(model=route, messages=HI, tools=TOOLS, tool_choice=choice) as events:  # type: ignore[arg-type]
        for event in events:
            if event.type == "tool_calls.function.arguments.delta":
                arguments_deltas += 1
            if event.type == "chunk":
                conforms(CHAT_CHUNK, event.chunk.model_dump(exclude_unset=True), "chunk")
        final = events.get_final_completion()
    assert final.choices[0].finish_reason == "tool_calls"
    calls = final.choices[0].message.tool_calls or []
    assert [c.function.name for c in calls] == expected  # type: ignore[union-attr]
    for k, call in enumerate(calls):
        assert call.id.startswith("call_")
        assert json.loads(call.function.arguments) == TOOL_ARGUMENTS[k]  # type: ignore[union-attr]
    assert arguments_deltas >= len(expected)
    if route == "tools-stream":  # passthrough: the upstream's fragments, as they came
        assert arguments_deltas > len(expected)


# ---- the official openai npm package ------------------------------------------------------------

NPM_PROMPT = "hello from node"
NPM_CASES: list[dict[str, Any]] = [
    {"name": "chat-passthrough", "kind": "chat", "model": "echo"},
    {"name": "chat-strategy", "kind": "chat", "model": "math-best"},
    {"name": "chat-n3", "kind": "chat", "model": "echo", "extra": {"n": 3}},
    {
        "name": "stream-passthrough",
        "kind": "stream",
        "model": "echo",
        "extra": {"stream_options": {"include_usage": True}},
    },
    {
        "name": "stream-strategy",
        "kind": "stream",
        "model": "math-best",
        "extra": {"stream_options": {"include_usage": True}},
    },
    {"name": "stream-rich-logprobs", "kind": "stream", "model": "rich", "extra": {"logprobs": True, "top_logprobs": 1}},
    {"name": "stream-n3", "kind": "stream", "model": "n-native", "extra": {"n": 3}},
    {
        "name": "tool-call",
        "kind": "chat",
        "model": "tools-stream",
        "extra": {"tools": TOOLS, "tool_choice": "required"},
    },
    {
        "name": "tool-stream-passthrough",
        "kind": "stream_helper",
        "model": "tools-stream",
        "extra": {"tools": TOOLS, "tool_choice": "required"},
    },
    {
        "name": "tool-stream-strategy",
        "kind": "stream_helper",
        "model": "tools-stream-best",
        "extra": {"tools": TOOLS, "tool_choice": "required"},
    },
    {
        "name": "tool-raw-stream-passthrough",
        "kind": "stream",
        "model": "tools-stream",
        "extra": {"tools": TOOLS, "tool_choice": "required"},
    },
    {
        "name": "tool-raw-stream-strategy",
        "kind": "stream",
        "model": "tools-stream-best",
        "extra": {"tools": TOOLS, "tool_choice": "required"},
    },
    {"name": "completion", "kind": "completion", "model": "echo"},
    {"name": "models", "kind": "models"},
    {"name": "model", "kind": "model", "model": "echo"},
    {"name": "error-404", "kind": "chat", "model": "no-such-model"},
    {"name": "error-502", "kind": "chat", "model": "fail"},
]
for _case in NPM_CASES:
    _case.setdefault("prompt", NPM_PROMPT)
    _case.setdefault("extra", {})


@pytest.fixture(scope="module")
def npm_run(conformant: ProxyProcess) -> dict[str, Any]:
    node = shutil.which("node")
    if node is None:  # the setup script installs it: missing node is a broken setup, not a skip
        pytest.fail("node is not installed: run scripts/setup-test-env.sh (it apt-installs nodejs and npm)")
    if not (NODE_DIR / "node_modules" / "openai" / "package.json").exists():
        pytest.fail("tests/node/node_modules is missing: run `npm ci --prefix tests/node` (scripts/setup-test-env.sh)")
    env = {
        **os.environ,
        "RVR_BASE_URL": f"{conformant.base_url}/v1",
        "RVR_API_KEY": KEY,
        "RVR_CASES": json.dumps(NPM_CASES),
    }
    done = subprocess.run(
        [node, str(NODE_DIR / "client.mjs")], env=env, capture_output=True, text=True, timeout=60, check=False
    )
    assert done.returncode == 0, f"node exited with {done.returncode}:\n{done.stderr}"
    return json.loads(done.stdout)


def test_npm_client_is_the_pinned_version(npm_run: dict[str, Any]) -> None:
    pinned = json.loads((NODE_DIR / "package.json").read_text())["dependencies"]["openai"]
    assert npm_run["openai_version"] == pinned
    lock = json.loads((NODE_DIR / "package-lock.json").read_text())
    assert lock["packages"]["node_modules/openai"]["version"] == pinned


def _npm(npm_run: dict[str, Any], name: str) -> dict[str, Any]:
    result = npm_run["results"][name]
    assert result["ok"], f"the npm client failed: {result['error']}"
    return result


@pytest.mark.parametrize("name", ["chat-passthrough", "chat-strategy", "chat-n3"])
def test_npm_chat(npm_run: dict[str, Any], name: str) -> None:
    case = next(c for c in NPM_CASES if c["name"] == name)
    completion = _npm(npm_run, name)["completion"]
    conforms(CHAT, completion)
    assert completion["model"] == case["model"]
    assert len(completion["choices"]) == case["extra"].get("n", 1)
    assert completion["choices"][0]["message"]["content"]


@pytest.mark.parametrize("name", ["stream-passthrough", "stream-strategy", "stream-rich-logprobs", "stream-n3"])
def test_npm_stream(npm_run: dict[str, Any], name: str) -> None:
    case = next(c for c in NPM_CASES if c["name"] == name)
    result = _npm(npm_run, name)
    for i, chunk in enumerate(result["chunks"]):
        conforms(CHAT_CHUNK, chunk, f"chunk {i}")
    choices = result["assembled"]["choices"]
    assert sorted(int(k) for k in choices) == list(range(case["extra"].get("n", 1)))
    for index, choice in choices.items():
        assert choice["content"], f"choice {index} is empty"
        assert choice["finish_reason"] == "stop", f"choice {index} finished with {choice['finish_reason']!r}"
    if case["extra"].get("stream_options"):
        assert result["assembled"]["usage"]["total_tokens"] > 0
    else:
        assert result["assembled"]["usage"] is None
    if case["extra"].get("logprobs"):
        assert "".join(e["token"] for e in choices["0"]["logprobs"]) == choices["0"]["content"]


def test_npm_tool_call(npm_run: dict[str, Any]) -> None:
    completion = _npm(npm_run, "tool-call")["completion"]
    conforms(CHAT, completion)
    calls = completion["choices"][0]["message"]["tool_calls"]
    assert [c["function"]["name"] for c in calls] == ["get_weather", "get_time"]
    assert [json.loads(c["function"]["arguments"]) for c in calls] == list(TOOL_ARGUMENTS)


@pytest.mark.parametrize("name", ["tool-stream-passthrough", "tool-stream-strategy"])
def test_npm_assembles_streamed_tool_calls(npm_run: dict[str, Any], name: str) -> None:
    result = _npm(npm_run, name)
    completion = result["completion"]
    choice = completion["choices"][0]
    assert choice["finish_reason"] == "tool_calls"
    calls = choice["message"]["tool_calls"]
    assert [c["function"]["name"] for c in calls] == ["get_weather", "get_time"]
    assert [json.loads(c["function"]["arguments"]) for c in calls] == list(TOOL_ARGUMENTS)
    assert all(c["id"].startswith("call_") and c["type"] == "function" for c in calls)
    assert result["argument_deltas"] >= 2


@pytest.mark.parametrize("name", ["tool-raw-stream-passthrough", "tool-raw-stream-strategy"])
def test_npm_raw_tool_call_stream(npm_run: dict[str, Any], name: str) -> None:
    result = _npm(npm_run, name)
    for i, chunk in enumerate(result["chunks"]):
        conforms(CHAT_CHUNK, chunk, f"chunk {i}")
    choice = result["assembled"]["choices"]["0"]
    assert choice["finish_reason"] == "tool_calls"
    assert [c["function"]["name"] for c in choice["tool_calls"]] == ["get_weather", "get_time"]
    assert [json.loads(c["function"]["arguments"]) for c in choice["tool_calls"]] == list(TOOL_ARGUMENTS)


def test_npm_completion(npm_run: dict[str, Any]) -> None:
    completion = _npm(npm_run, "completion")["completion"]
    conforms(TEXT, completion)
    assert completion["choices"][0]["text"]


def test_npm_models(npm_run: dict[str, Any], conformant: ProxyProcess) -> None:
    models = _npm(npm_run, "models")["models"]
    for model in models:
        conforms(MODEL, model)
    assert {m["id"] for m in models} == set(conformant.aliases)  # type: ignore[attr-defined]
    model = _npm(npm_run, "model")["model"]
    conforms(MODEL, model)
    assert model["id"] == "echo"


@pytest.mark.parametrize(
    ("name", "status", "error_class"), [("error-404", 404, "NotFoundError"), ("error-502", 502, "InternalServerError")]
)
def test_npm_error(npm_run: dict[str, Any], name: str, status: int, error_class: str) -> None:
    result = npm_run["results"][name]
    assert not result["ok"]
    error = result["error"]
    assert error["status"] == status and error["class"] == error_class
    conforms("Error", error["body"])
    assert error["type"] == error["body"]["type"] and error["code"] == error["body"]["code"]
