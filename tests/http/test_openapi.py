"""The OpenAPI document, and a bounded schemathesis run against the real proxy: never a 5xx.

The run builds the document in-process (`openapi_schema`), generates a few hundred requests from
it (valid and invalid, seeded, so CI sees the same ones every time) and sends them over loopback
to a real `rvr-proxy serve` in front of the stub upstream. Every answer must be below 500 and
must match what the document says of it: status, content type, headers, body (and each event
of a stream).
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import replace
from typing import Any

import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, settings
from jsonschema import Draft202012Validator
from schemathesis import checks

from proxy.config.settings import DEFAULT_MAX_TOKENS, RouteLimits
from proxy.pipeline.endpoints import ENDPOINTS
from proxy.server.openapi import openapi_schema, request_examples, untyped_properties
from proxy.server.responses import rvr_body
from strategies.answers import answer_key
from strategies.contract import Candidate, Outcome, Scored, StopReason, Usage
from strategies.selection.choice import choose
from strategies.selection.explain import RULES, explain
from strategies.selection.learned import LearnedSelector, SelectorState
from strategies.selection.settings import SelectionSettings
from strategies.selection.weighted import VerifierResult, select
from tests.conftest import UPSTREAM_KEY, main_config
from tests.proxy_process import ProxyProcess
from tests.stub_upstream import StubServer

KEY = "sk-openapi-proxy-key-0001"
AUTH = {"Authorization": f"Bearer {KEY}"}
# Routes whose stub upstream answers (reject-n refuses n > 1 with a 400: the client's error). The
# run's `model` is one of these, so the deliberately failing routes (fail, cut, timeout, slow)
# never count as the proxy's 5xx; any other name is a 404, which the run sends too.
HEALTHY = ["echo", "capped", "reject-n", "tools", "math-best", "tools-best", "json-best"]
STRATEGY_ROUTES: list[dict[str, Any]] = [
    {"model": "math-best", "upstream": "math", "strategy": {"name": "best_of_n", "max_n": 4}},
    {"model": "tools-best", "upstream": "tools", "strategy": {"name": "best_of_n", "max_n": 4}},
    {
        "model": "json-best",  # the client's own `response_format` schema reaches a verifier
        "upstream": "json",
        "strategy": {
            "name": "best_of_n",
            "max_n": 4,
            "adaptive": False,
            "verifiers": [{"type": "json_schema"}, {"type": "mbr"}],
        },
    },
]
EXAMPLES_PER_OPERATION = 100  # four operations: ~400 requests, ~35 s on two cores
SEED = 20240601
CHECKS = [
    checks.not_a_server_error,
    checks.status_code_conformance,
    checks.content_type_conformance,
    checks.response_headers_conformance,
    checks.response_schema_conformance,
    checks.negative_data_rejection,
    # Not positive_data_acceptance: a schema-valid request may still pass a route's own caps
    # (`max_n` of a capped route, `rvr` on a passthrough route) and get a 400.
]

# The document of the proxy below as a client holding its key sees it: the key goes on every
# request, so the run spends no cases on 401s; the healthy routes keep the default caps or lower.
DOCUMENT = openapi_schema(routes=HEALTHY, max_n=RouteLimits().max_n, max_tokens=DEFAULT_MAX_TOKENS)
for _endpoint in ENDPOINTS:  # the examples phase sends these first: a strategy route's replayed stream too
    _examples = DOCUMENT["paths"][_endpoint.path]["post"]["requestBody"]["content"]["application/json"]["examples"]
    for _name, _example in request_examples(_endpoint, "math-best").items():
        _examples[f"best-of-n-{_name}"] = {"value": {**_example["value"], "rvr": {"details": True}}}
SCHEMA = schemathesis.openapi.from_dict(
    DOCUMENT,
    config=schemathesis.Config.from_dict(
        {
            "seed": SEED,
            "generation": {"mode": "all", "max-examples": EXAMPLES_PER_OPERATION, "deterministic": True},
            # The coverage phase adds ~900 boundary cases (~10 s more); fuzzing alone stays bounded.
            "phases": {"coverage": {"enabled": False}},
        }
    ),
).include(path_regex="^/v1/")


def fuzz_config(api_base: str) -> dict[str, Any]:
    config = main_config(api_base)
    config["routes"] += STRATEGY_ROUTES
    config["server"] = {"api_keys": ["os.environ/RVR_KEY"]}
    return config


@pytest.fixture(scope="module")
def fuzzed_proxy() -> Iterator[ProxyProcess]:
    """A proxy and stub of their own: the run's requests stay out of the session stub's request
    log and its seeded random answers, which other tests read."""
    with StubServer(slow_s=5.0) as stub:
        with ProxyProcess(fuzz_config(stub.api_base), env={"UPSTREAM_KEY": UPSTREAM_KEY, "RVR_KEY": KEY}) as process:
            yield process


@SCHEMA.parametrize()
@settings(
    max_examples=EXAMPLES_PER_OPERATION,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=list(HealthCheck),
)
def test_no_request_gets_a_server_error(case: schemathesis.Case, fuzzed_proxy: ProxyProcess) -> None:
    response = case.call(base_url=fuzzed_proxy.base_url, headers=AUTH, timeout=60)
    assert response.status_code < 500, (
        f"{case.method} {case.path} answered {response.status_code}: {response.text[:500]}\n"
        f"body: {json.dumps(case.body)[:2000] if case.body is not None else None}\n"
        f"reproduce: {case.as_curl_command(headers=AUTH, base_url=fuzzed_proxy.base_url)}"
    )
    case.validate_response(response, checks=CHECKS, headers=AUTH)


# ---- the document itself ------------------------------------------------------------------------


def test_every_request_field_has_a_schema() -> None:
    """A field checked by a plain function has no schema from pydantic: proxy/server/openapi.py gives it one."""
    assert untyped_properties(openapi_schema()) == []


def test_no_python_constraint_names_are_left() -> None:
    text = json.dumps(openapi_schema())
    for name in ('"ge"', '"le"', '"gt"', '"lt"'):
        assert name not in text


def test_each_endpoint_documents_its_body_its_object_and_its_errors() -> None:
    document = openapi_schema(auth=True)
    schemas = document["components"]["schemas"]
    for endpoint in ENDPOINTS:
        operation = document["paths"][endpoint.path]["post"]
        body = operation["requestBody"]["content"]["application/json"]["schema"]["$ref"]
        assert body.endswith(f"/{endpoint.request_model.__name__}")
        assert "rvr" in schemas[endpoint.request_model.__name__]["properties"]
        ok = operation["responses"]["200"]["content"]
        assert set(ok) == {"application/json", "text/event-stream"}
        name = ok["application/json"]["schema"]["$ref"].rsplit("/", 1)[1]
        assert schemas[name]["properties"]["object"] == {"const": endpoint.object}
        assert "rvr" in schemas[name]["properties"]
        assert {"400", "401", "404", "413", "502", "504"} <= set(operation["responses"])
        assert operation["security"] == [{"bearer": []}]


def test_every_served_get_path_is_documented(fuzzed_proxy: ProxyProcess) -> None:
    """What the app routes, the document describes: each GET path the proxy answers with a 200."""
    document = httpx.get(f"{fuzzed_proxy.base_url}/openapi.json", headers=AUTH, timeout=10).json()
    served = {"/v1/models", "/v1/models/{model}", "/healthz", "/readyz", "/metrics", "/openapi.json"}
    for path in served:
        concrete = path.replace("{model}", HEALTHY[0])
        response = httpx.get(f"{fuzzed_proxy.base_url}{concrete}", headers=AUTH, timeout=10)
        assert response.status_code == 200, f"{concrete}: {response.status_code}"
        assert "get" in document["paths"].get(path, {}), f"GET {path} is served but not documented"


def test_a_model_is_retrieved_by_route_alias() -> None:
    document = openapi_schema(routes=["a", "org/b"], auth=True)
    operation = document["paths"]["/v1/models/{model}"]["get"]
    (name,) = [p for p in operation["parameters"] if p.get("in") == "path"]
    assert name["name"] == "model" and name["required"] is True
    assert name["schema"]["enum"] == ["a", "org/b"]
    assert operation["responses"]["200"]["content"]["application/json"]["schema"]["$ref"].endswith("/Model")
    assert {"401", "404"} <= set(operation["responses"])
    listed = document["components"]["schemas"]["ModelList"]["properties"]["data"]["items"]
    assert listed == {"$ref": "#/components/schemas/Model"}


def test_routes_name_the_valid_models_unless_a_default_upstream_takes_any() -> None:
    closed = openapi_schema(routes=["a", "b"])["components"]["schemas"]["ChatRequest"]["properties"]["model"]
    assert closed["enum"] == ["a", "b"]
    open_ = openapi_schema(routes=["a"], any_model=True)["components"]["schemas"]["ChatRequest"]["properties"]["model"]
    assert "enum" not in open_ and open_["examples"] == ["a"]


def test_a_document_is_a_fresh_copy() -> None:
    first = openapi_schema()
    first["components"]["schemas"]["Error"]["properties"].clear()
    assert openapi_schema()["components"]["schemas"]["Error"]["properties"]


def test_the_proxy_serves_its_document(fuzzed_proxy: ProxyProcess) -> None:
    """Needs `serve_openapi(...)` in `proxy.server.app.create_app`."""
    response = httpx.get(f"{fuzzed_proxy.base_url}/openapi.json", headers=AUTH, timeout=10)
    assert response.status_code == 200, response.text
    document = response.json()
    assert document["openapi"] == "3.1.0"
    assert {endpoint.path for endpoint in ENDPOINTS} | {"/v1/models", "/v1/models/{model}"} <= set(document["paths"])
    routes = [route["model"] for route in fuzz_config("http://unused")["routes"]]
    assert document["components"]["schemas"]["ChatRequest"]["properties"]["model"]["enum"] == routes
    assert document["components"]["securitySchemes"] == {"bearer": {"type": "http", "scheme": "bearer"}}
    # Like /v1/models, it names the routes, so it needs the key.
    assert httpx.get(f"{fuzzed_proxy.base_url}/openapi.json", timeout=10).status_code == 401


def _explained_outcomes() -> list[Outcome]:
    """best_of_n outcomes whose `rvr.selection` explains a choice by each rule a route can produce."""
    texts = ["The answer is 42.", "The answer is 41.", "The answer is 42.", "The answer is 40."]
    candidates = [Candidate(i, "original", {"role": "assistant", "content": t}, "stop") for i, t in enumerate(texts)]
    vote = VerifierResult("self_consistency", 1.0, Scored({"self_consistency": [0.5, 0.25, 0.5, 0.25]}))
    judge = VerifierResult("judge", 1.0, Scored({"judge:yes": [0.0, 1.0, 0.0, 1.0]}))
    gate = VerifierResult("gate", 1.0, Scored({"check": [1.0, 1.0, 1.0, 0.0]}, hard=True))
    model = LearnedSelector(signals=("vote_share",), center=(0.5,), scale=(0.25,), weights=(-3.0,), bias=0.0, l2=1.0,
                            auroc={"vote_share": 0.2}, n_items=50, n_clusters=100, cv_log_loss=0.5)
    outcomes = []
    for mode, views, voters, knocked_out in (
        ("weighted", [vote, gate], ["self_consistency"], False),  # a vote
        ("weighted", [vote, judge], ["self_consistency"], False),  # a score: the judge had a say
        ("weighted", [vote, judge], ["self_consistency"], True),
        ("learned", [vote, judge, gate], ["self_consistency"], False),
    ):
        selection, choice = choose(candidates, select(candidates, views), [], answer_key,
                                   SelectionSettings(mode=mode), lambda: SelectorState(model))
        knockout = None
        if knocked_out:  # a knockout among the first two clusters, the second winning
            knockout = {"played": True, "seeds": [0, 1], "winner_cluster": 1,
                        "matches": [{"round": 1, "holder": 0, "challenger": 1, "winner": 1}]}
            selection = replace(selection, index=choice.clusters[1].representative)
        report = choice.report(selection.index) | explain(selection, choice, knockout, voters).as_dict()
        outcomes.append(Outcome(candidates, selection.index, StopReason.MAX_N, Usage(), "best_of_n",
                                scores=selection.utility_list(), selection=report, confidence=choice.confidence))
    abstaining = replace(outcomes[-1], abstention=Candidate(4, "abstain", {"role": "assistant", "content": "?"}),
                         low_confidence={"confidence": 0.2, "min_confidence": 0.5, "action": "abstain"})
    single = candidates[:1]
    selection, choice = choose(single, select(single, []), [], answer_key, SelectionSettings(), None)
    lone = Outcome(single, 0, StopReason.MAX_N, Usage(), "best_of_n", scores=selection.utility_list(),
                   selection=choice.report(0) | explain(selection, choice, None, []).as_dict())
    return [*outcomes, abstaining, lone]


def test_the_selection_explanation_of_every_rule_matches_the_document() -> None:
    document = openapi_schema()
    validator = Draft202012Validator({**document, "$ref": "#/components/schemas/RvrReport"})
    selection = document["components"]["schemas"]["RvrReport"]["properties"]["selection"]
    assert selection["properties"]["rule"]["enum"] == list(RULES) and "fusion" in RULES
    seen = set()
    for outcome in _explained_outcomes():
        for details in (False, True):
            body = rvr_body(outcome, "r", details)
            errors = [f"{list(e.absolute_path)}: {e.message}" for e in validator.iter_errors(body)]
            assert errors == [], errors
            seen.add(body["selection"]["rule"])
    assert seen == {"vote", "score", "learned", "knockout", "abstain", "single"}
