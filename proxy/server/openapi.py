"""The proxy's OpenAPI 3.1 document: request bodies from the request models, honest responses.

Request bodies are the JSON schemas of the pydantic models that validate them
(`Endpoint.request_model`), with two repairs pydantic cannot make on its own: constraints it
leaves under their Python names (`ge`, `le`, ...) become JSON Schema keywords, and fields
checked by a plain function (`content`, `stop`, `tool_choice`, `prompt`), of which pydantic
knows nothing, get the schema that function enforces. Responses are written from what
`proxy.server.responses`, `proxy.server.streaming` and `proxy.errors` emit; the answer fields of each
endpoint's choices are found by asking the endpoint to render one (`Endpoint.choice`,
`Endpoint.pieces`), so nothing here branches on chat or text.

`serve_openapi(app, document_for(config, routes), check_key)` registers `GET /openapi.json`,
built once per process from the proxy's config: the configured routes name the valid `model`
values, and with `api_keys` set the document, like `/v1/models`, needs the key.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Iterable, Mapping, Sequence
from http import HTTPStatus
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response
from pydantic import BaseModel
from pydantic.json_schema import JsonSchemaMode, models_json_schema

from proxy.config.settings import Config, RouteLimits, RouteSettings
from proxy.errors import AuthenticationFailed, ClientDisconnected, ModelNotFound, ProxyError, UpstreamError
from proxy.pipeline.endpoints import ENDPOINTS, Endpoint
from proxy.pipeline.requests import MAX_DEPTH, PART_FIELDS
from strategies.answers import ANSWER_TYPES
from strategies.best_of_n.panel import DROP_REASONS
from strategies.contract import Candidate, StopReason
from strategies.risk.calibration import STATUSES
from strategies.selection.explain import EXPLANATION_FIELDS, RULES

OPENAPI_VERSION = "3.1.0"
PATH = "/openapi.json"
_REF = "#/components/schemas/{model}"
_NULL = {"type": "null"}

# ---- request bodies -------------------------------------------------------------------------

# Constraints pydantic leaves under their Python names when a validator wraps the type.
_KEYWORDS = {"ge": "minimum", "le": "maximum", "gt": "exclusiveMinimum", "lt": "exclusiveMaximum"}
_TYPED = ("type", "anyOf", "oneOf", "allOf", "$ref", "enum", "const")


_CONTENT_PART = {  # one branch per part type, from the table the request validator checks
    "oneOf": [
        {
            "type": "object",
            "required": ["type", field],
            "properties": {"type": {"const": kind}, field: {"type": "string" if kind_type is str else "object"}},
            "additionalProperties": True,
        }
        for kind, (field, kind_type) in PART_FIELDS.items()
    ]
}
_TOOL_CHOICE_FUNCTION = {
    "type": "object",
    "required": ["type", "function"],
    "properties": {
        "type": {"const": "function"},
        "function": {
            "type": "object",
            "required": ["name"],
            "properties": {"name": {"type": "string", "minLength": 1}},
            "additionalProperties": True,
        },
    },
    "additionalProperties": True,
}
_TOOL_CHOICE_OTHER = {
    "type": "object",
    "required": ["type"],
    "properties": {"type": {"type": "string", "not": {"const": "function"}}},
    "additionalProperties": True,
}
# Fields a plain validator function checks (proxy/pipeline/requests.py): the schema each function enforces.
FUNCTION_CHECKED: dict[str, dict[str, Any]] = {
    "content": {
        "anyOf": [{"type": "string"}, {"type": "array", "items": _CONTENT_PART}, _NULL],
        "description": "A string, content parts (objects that name their `type`), or null.",
    },
    "stop": {
        "anyOf": [{"type": "string"}, {"type": "array", "items": {"type": "string"}}, _NULL],
        "description": "A stop sequence, an array of them, or null.",
    },
    "tool_choice": {
        "anyOf": [{"enum": ["none", "auto", "required"]}, _TOOL_CHOICE_FUNCTION, _TOOL_CHOICE_OTHER, _NULL],
    },
    "prompt": {
        "anyOf": [
            {"type": "string"},
            {"type": "array", "items": {"type": "string"}, "minItems": 1, "description": "a batch of prompts"},
            {"type": "array", "items": {"type": "integer"}, "minItems": 1, "description": "one prompt as token ids"},
        ],
    },
}
# Rules between fields that a model validator checks (proxy/pipeline/requests.py), by definition name.
CROSS_FIELD: dict[str, dict[str, Any]] = {
    "ResponseFormat": {  # `_self_contained`: a json_schema format must carry its schema
        "anyOf": [{"properties": {"type": {"enum": ["text", "json_object"]}}}, {"required": ["json_schema"]}],
    },
}
RVR_REQUEST = (
    "rvr-proxy extension: per-request options of a strategy route (best_of_n). They can only lower "
    "the route's caps (`max_n`), pick among the route's own `variants` and `verifiers`, turn "
    "adaptive sampling off, and ask for `details` (every candidate's text in the response's `rvr`). "
    "A passthrough route, or a name the route lacks, is a 400."
)
REQUEST_NOTES = (
    "Only the OpenAI fields listed are checked; other fields are vendor extensions and reach the "
    "upstream untouched. Every string must be valid Unicode (no lone surrogates), every number "
    f"finite, and the body nested at most {MAX_DEPTH} levels deep. Each route also caps `n` (times the "
    "number of prompts) and `max_tokens`/`max_completion_tokens`: past a cap the answer is a 400."
)


def request_schemas(endpoints: Sequence[Endpoint] = ENDPOINTS) -> dict[str, dict[str, Any]]:
    """`components.schemas` for the endpoints' request models and everything they refer to."""
    models: list[tuple[type[BaseModel], JsonSchemaMode]] = [(e.request_model, "validation") for e in endpoints]
    _, top = models_json_schema(models, ref_template=_REF)
    schemas: dict[str, dict[str, Any]] = top.get("$defs", {})
    for schema in schemas.values():
        _repair(schema)
    for name, rule in CROSS_FIELD.items():
        if name in schemas:
            schemas[name].update(copy.deepcopy(rule))
    for endpoint in endpoints:
        body = schemas[endpoint.request_model.__name__]
        body["description"] = REQUEST_NOTES
        rvr = body["properties"].get("rvr")
        if rvr is not None:
            rvr["description"] = RVR_REQUEST
    return schemas


def _repair(schema: Any) -> None:
    """Rename pydantic's leftover constraints, and fill in what plain validators check."""
    if isinstance(schema, list):
        for item in schema:
            _repair(item)
        return
    if not isinstance(schema, dict):
        return
    for python_name, keyword in _KEYWORDS.items():
        if python_name in schema and schema.get("type") in ("integer", "number"):
            schema[keyword] = schema.pop(python_name)
    properties = schema.get("properties")
    if isinstance(properties, dict):
        for name, prop in properties.items():
            if name in FUNCTION_CHECKED and isinstance(prop, dict) and not any(k in prop for k in _TYPED):
                prop.update(copy.deepcopy(FUNCTION_CHECKED[name]))
    for value in schema.values():
        _repair(value)


def _integer_branch(schema: dict[str, Any]) -> dict[str, Any]:
    """The `integer` schema of a field that may also be null."""
    if schema.get("type") == "integer":
        return schema
    return next(branch for branch in schema.get("anyOf", []) if branch.get("type") == "integer")


def untyped_properties(document: dict[str, Any]) -> list[str]:
    """Properties the document says nothing about (a plain validator without a schema here)."""
    found: list[str] = []
    for name, schema in document.get("components", {}).get("schemas", {}).items():
        for prop, sub in (schema.get("properties") or {}).items():
            if isinstance(sub, dict) and not any(k in sub for k in _TYPED):
                found.append(f"{name}.{prop}")
    return found


# ---- responses ------------------------------------------------------------------------------

_STRING = {"type": "string"}
_INT = {"type": "integer"}
_COUNT = {"type": "integer", "minimum": 0}
_SCORE = {"anyOf": [{"type": "number"}, _NULL]}
_STRINGS = {"type": "array", "items": _STRING}
_INTERVAL = {"type": "array", "items": {"type": "number"}, "minItems": 2, "maxItems": 2}  # [low, high]

USAGE = {
    "type": "object",
    "required": ["prompt_tokens", "completion_tokens", "total_tokens"],
    "properties": {
        "prompt_tokens": _COUNT,
        "completion_tokens": _COUNT,
        "total_tokens": _COUNT,
        # the upstream's breakdowns, summed over every call of the request
        "prompt_tokens_details": {"type": "object", "additionalProperties": _COUNT},
        "completion_tokens_details": {"type": "object", "additionalProperties": _COUNT},
    },
    "additionalProperties": False,
}
TOOL_CALL = {
    "type": "object",
    "description": "As the upstream returned it: usually `id`, `type` (`function`) and `function` "
    "(`name`, `arguments` as a JSON string).",
    "additionalProperties": True,
}
RESPONSE_FIELD_SCHEMAS = {  # passed on from the upstream response the answer came from
    "system_fingerprint": _STRING,
    "service_tier": _STRING,
}
MESSAGE = {
    "type": "object",
    "description": "The upstream's assistant message as it sent it (vendor fields included), with "
    "`content` and `refusal` null where it sent none.",
    "required": ["role", "content", "refusal"],
    "properties": {
        "role": {"type": "string", "examples": ["assistant"]},
        "content": {"anyOf": [_STRING, _NULL]},
        "refusal": {"anyOf": [_STRING, _NULL]},
        "tool_calls": {"type": "array", "items": TOOL_CALL},
        "function_call": {"type": "object", "additionalProperties": True},
        "annotations": {"type": "array", "items": {"type": "object", "additionalProperties": True}},
        "audio": {"type": "object", "additionalProperties": True},
    },
    "additionalProperties": True,
}
DELTA = {
    "type": "object",
    "description": "What this chunk adds to the message; relayed streams carry the upstream's delta.",
    "properties": {
        "role": _STRING,
        "content": {"anyOf": [_STRING, _NULL]},
        "tool_calls": {"type": "array", "items": {"type": "object", "additionalProperties": True}},
    },
    "additionalProperties": True,
}
# The schema of each field an endpoint renders an answer into (`Endpoint.choice`, `Endpoint.pieces`).
ANSWER_FIELDS: dict[str, dict[str, Any]] = {"message": MESSAGE, "text": _STRING, "delta": DELTA}
LOGPROBS = {
    "anyOf": [{"type": "object", "additionalProperties": True}, _NULL],
    "description": "The upstream's logprobs object, untouched; null unless asked for.",
}
RISK = {
    "type": "object",
    "description": "Per-request rational value risk; null terms are unknown, never zero.",
    "required": [
        "k_ref",
        "baseline",
        "residual",
        "candidate",
        "prompt",
        "verifier",
        "aeu",
        "selected_score",
        "disagreement",
        "residual_terms",
        "intervals",
        "sources",
    ],
    "properties": {
        "k_ref": _INT,
        **{
            k: _SCORE
            for k in (
                "baseline", "residual", "candidate", "prompt", "verifier", "aeu", "selected_score", "disagreement"
            )
        },
        "residual_terms": _STRINGS,
        "intervals": {"type": "object", "additionalProperties": _INTERVAL},
        "sources": {"type": "object", "additionalProperties": {"enum": ["request", "route"]}},
        "calibration": {"$ref": _REF.format(model="Calibration")},
    },
    "additionalProperties": False,
}
_ESTIMATE = {
    "anyOf": [
        {
            "type": "object",
            "required": ["estimate", "ci90", "method", "lambda"],
            "properties": {
                "estimate": {"type": "number"},
                "ci90": _INTERVAL,
                "method": {"enum": ["ppi++", "classical", "wilson"]},
                "lambda": {"type": "number"},
            },
            "additionalProperties": False,
        },
        _NULL,
    ]
}
CALIBRATION = {
    "type": "object",
    "description": "The route's risk terms anchored to its gold probes (PPI++); null terms without gold.",
    "required": [
        "status", "n_gold", "n_items", "n_records", "window_requests", "rho", "residual", "baseline", "candidate",
        "prompt", "verifier", "verifier_bias", "min_gold_for_ppi", "tolerance",
    ],
    "properties": {
        "status": {
            "enum": list(STATUSES),
            "description": "calibrated: the 95% interval of the verifier bias lies inside ±tolerance; uncalibrated: "
            "wholly outside it; inconclusive: too few probe items to tell; no_gold: fewer than two items",
        },
        "n_gold": {**_COUNT, "description": "distinct probe items the estimates rest on (the same as n_items)"},
        "n_items": {**_COUNT, "description": "distinct probe items: the unit every interval counts"},
        "n_records": {**_COUNT, "description": "gold records (runs of those items) in the window"},
        "tolerance": {"type": "number", "description": "the route's `probes.tolerance` on the residual scale"},
        "window_requests": _COUNT,
        "min_gold_for_ppi": _COUNT,
        "rho": _SCORE,
        **{k: _ESTIMATE for k in ("residual", "baseline", "candidate", "prompt", "verifier")},
        "verifier_bias": {
            "anyOf": [
                {
                    "type": "object",
                    "required": ["estimate", "ci95"],
                    "properties": {
                        "estimate": {"type": "number"},
                        "ci95": _INTERVAL,
                    },
                    "additionalProperties": False,
                },
                _NULL,
            ]
        },
    },
    "additionalProperties": False,
}
_INDICES = {"type": "array", "items": _COUNT}
# `rvr.selection`'s account of the choice (strategies/selection/explain.py).
SELECTION_EXPLANATION: dict[str, Any] = {
    "rule": {
        "enum": list(RULES),
        "description": "what chose: vote (the ranking key, ordered by vote shares alone), score (the ranking key "
        "of the verifiers' normalized scores), consensus (no verifier ordered the candidates: agreement chose), "
        "learned (P(correct) per cluster), knockout (pairwise judge tournament), single (one candidate), "
        "abstain (below min_confidence: the abstention message answered), fusion (a fuser wrote the answer "
        "from the strongest distinct answers, `rvr.fusion`)",
    },
    "over": {"enum": ["candidates", "clusters"], "description": "what `compared` and `chosen` index"},
    "key": {**_STRING, "description": "what the compared numbers are"},
    "compared": {
        "type": "array",
        "items": _SCORE,
        "description": "the numbers the rule compared, per candidate or cluster; null where one could not be chosen",
    },
    "chosen": {**_COUNT, "description": "index into `compared` of the winner: its maximum"},
    "tie_break": {
        "anyOf": [
            {
                "type": "object",
                "description": "entries tied at the maximum, and the support that decided (then the earliest)",
                "required": ["by", "tied", "support"],
                "properties": {
                    "by": {"enum": ["consensus", "vote_share", "position"]},
                    "tied": _INDICES,
                    "support": {"anyOf": [{"type": "array", "items": {"type": "number"}}, _NULL]},
                },
                "additionalProperties": False,
            },
            _NULL,
        ]
    },
    "disqualified": {**_INDICES, "description": "candidates a hard verifier excluded"},
    "members": {
        "anyOf": [{"type": "array", "items": _INDICES}, _NULL],
        "description": "each cluster's candidates, when `over` is clusters",
    },
    "higher_scores": {
        **_INDICES,
        "description": "candidates whose `scores` entry beats the selected one's; `why` says why they lost",
    },
    "why": {**_STRING, "description": "the choice in words"},
}
# `rvr.cost` (proxy/server/responses.py `cost_body`; the gain is strategies/best_of_n/adapt.py's `Gain`).
COST = {
    "type": "object",
    "description": "what the answer cost upstream, and what the route's candidate cap buys on its gold probes",
    "required": ["upstream_tokens", "candidates", "single_call_tokens", "multiple", "gain"],
    "properties": {
        "upstream_tokens": {**_COUNT, "description": "every upstream token: candidates, judges, paraphrases"},
        "candidates": {**_COUNT, "description": "candidates sampled"},
        "single_call_tokens": {
            "anyOf": [_COUNT, _NULL], "description": "what one plain call cost (the first sample's share)",
        },
        "multiple": {"anyOf": [{"type": "number"}, _NULL], "description": "upstream_tokens / single_call_tokens"},
        "by_upstream": {
            "type": "object",
            "description": "the tokens each configured upstream was paid for this request (panelists, fuser, "
            "judges, paraphrases; `reward_model` for reward endpoints)",
            "additionalProperties": USAGE,
        },
        "gain": {
            "anyOf": [
                {
                    "type": "object",
                    "description": "gold accuracy at the served cap `n` minus one sample's, paired by probe item, "
                    "with its 90% interval; `adapted`: `strategy.adapt_n` chose `n`",
                    "required": ["n", "estimate", "ci90", "items", "best_n", "adapted"],
                    "properties": {
                        "n": _COUNT,
                        "estimate": {"type": "number"},
                        "ci90": _INTERVAL,
                        "items": _COUNT,
                        "best_n": _COUNT,
                        "adapted": {"type": "boolean"},
                    },
                    "additionalProperties": False,
                },
                _NULL,
            ],
            "description": "null until the route has enough gold probe items",
        },
    },
    "additionalProperties": False,
}
# `rvr.panel` (strategies/best_of_n/panel.py `PanelRecord.report`).
PANEL = {
    "type": "object",
    "description": "panel routes: candidates per upstream, the upstream of the candidate the selection chose "
    "(before any fusion: a fused answer's writer is `rvr.fusion.fuser`), the panelists dropped for this "
    "request and why",
    "required": ["upstreams", "candidates", "selected_upstream", "dropped", "min_panel"],
    "properties": {
        "upstreams": _STRINGS,
        "candidates": {"type": "object", "additionalProperties": _COUNT},
        "selected_upstream": {"anyOf": [_STRING, _NULL]},
        "dropped": {"type": "object", "additionalProperties": {"enum": list(DROP_REASONS)}},
        "min_panel": _COUNT,
        "weights": {"type": "object", "additionalProperties": {"type": "number"},
                    "description": "the weights this request split by (`auto` ones as learned)"},
    },
    "additionalProperties": False,
}
# `rvr.fusion` (strategies/best_of_n/fusing.py `Fuser.fuse`).
FUSION = {
    "type": "object",
    "description": "routes with `selection.fusion`: whether the fuser wrote the answer; if not, why "
    "(`skipped`) or how it failed (`error`, and the selected candidate answered); the candidates it read "
    "(`shown`, in the order shown), its answer's score under the route's verifiers, whether that answer "
    "`agrees` with the selected cluster, and fused minus selected gold utility on the route's probes",
    "required": ["fuser", "fused", "gain"],
    "properties": {
        "fuser": _STRING,
        "fused": {"type": "boolean"},
        "skipped": _STRING,
        "error": _STRING,
        "shown": _INDICES,
        "answers": _COUNT,
        "selected_candidate": _COUNT,
        "score": _SCORE,
        "agrees": {"type": "boolean"},
        "gain": {
            "anyOf": [
                {
                    "type": "object",
                    "required": ["estimate", "ci90", "items"],
                    "properties": {"estimate": {"type": "number"}, "ci90": _INTERVAL, "items": _COUNT},
                    "additionalProperties": False,
                },
                _NULL,
            ],
        },
    },
    "additionalProperties": False,
}
RVR_REPORT = {
    "type": "object",
    "description": "rvr-proxy extension, on strategy routes only: what the strategy did and why it stopped.",
    "required": [
        "summary",
        "route",
        "strategy",
        "candidates",
        "selected",
        "stop_reason",
        "variants",
        "scores",
        "views",
        "candidate_variants",
        "verifier_disagreement",
        "upstream_errors",
        "verifier_errors",
        "audit",
        "timings_ms",
        "risk",
        "cost",
    ],
    "properties": {
        "summary": {**_STRING, "description": "one line for a person to read"},
        "route": _STRING,
        "strategy": _STRING,
        "candidates": {**_COUNT, "description": "candidates sampled (a fused answer is written, not sampled)"},
        "selected": {**_INT, "description": "index of the chosen candidate among them (a fused answer comes last)"},
        "stop_reason": {"enum": [reason.value for reason in StopReason]},
        "variants": _STRINGS,
        "scores": {"type": "array", "items": _SCORE, "description": "ensemble score per candidate"},
        "views": {"type": "object", "additionalProperties": {"type": "array", "items": _SCORE}},
        "candidate_variants": _STRINGS,
        "verifier_disagreement": _SCORE,
        "upstream_errors": _COUNT,
        "verifier_errors": {
            "type": "object",
            "description": "per verifier with any: runs that failed whole, scores left missing, the last cause",
            "additionalProperties": {
                "type": "object",
                "required": ["failed", "missing", "cause"],
                "properties": {"failed": _COUNT, "missing": _COUNT, "cause": {"anyOf": [_STRING, _NULL]}},
                "additionalProperties": False,
            },
        },
        "audit": {"type": "boolean"},
        "timings_ms": {"type": "object", "additionalProperties": {"type": "number"}},
        "risk": {"anyOf": [{"$ref": _REF.format(model="RiskReport")}, _NULL]},
        "cost": COST,
        "candidate_texts": {**_STRINGS, "description": "with `rvr.details` only"},
        "answer_types": {
            "type": "array",
            "items": {"enum": list(ANSWER_TYPES)},
            "description": "best_of_n, with `rvr.details` only: each candidate's kind of answer (`none`: no answer "
            "could be extracted: prose without one, a hedge, the question restated)",
        },
        "answer_type": {"enum": list(ANSWER_TYPES), "description": "the served candidate's entry of `answer_types`"},
        "confidence": {
            "anyOf": [_SCORE, _NULL],
            "description": "best_of_n: P(the served answer is right): its cluster's share of one distribution over "
            "the request's answer clusters and 'none is right', recalibrated on held-out probe items; null unless "
            "`learned` selection chose",
        },
        "selection": {
            "type": "object",
            "description": "best_of_n: `mode` (weighted | learned), `fallback_reason` (why learned was configured "
            "but weighted chose: no model yet, or the safety gate found the model's held-out accuracy possibly "
            "worse than weighted selection's by more than `selection.gate_margin`), `confidence`, and how the "
            "answer was chosen: the `rule` and the numbers it `compared`, `compared[chosen]` being their maximum; "
            "with `rvr.details` also the answer clusters, their features and P(correct), the model's weights "
            "and AUROCs, and the safety `gate`'s numbers",
            "required": ["mode", "fallback_reason", "confidence", *EXPLANATION_FIELDS],
            "properties": {
                "mode": {"enum": ["weighted", "learned"]},
                "fallback_reason": {"anyOf": [_STRING, _NULL]},
                "confidence": {"anyOf": [_SCORE, _NULL]},
                **SELECTION_EXPLANATION,
            },
        },
        "panel": PANEL,
        "candidate_upstreams": {
            "type": "array", "items": {"anyOf": [_STRING, _NULL]},
            "description": "panel routes: the upstream that drew each candidate (the fuser for a fused answer)",
        },
        "fusion": FUSION,
        "low_confidence": {
            "type": "object",
            "description": "set when `selection.min_confidence` was not met: `action` route (another route answered) or abstain",
            "required": ["confidence", "min_confidence", "action"],
            "properties": {
                "confidence": _SCORE,
                "min_confidence": _SCORE,
                "action": {"enum": ["route", "abstain"]},
                "route": _STRING,
            },
            "additionalProperties": False,
        },
    },
    "additionalProperties": False,
}
ERROR = {
    "type": "object",
    "required": ["error"],
    "properties": {
        "error": {
            "type": "object",
            "required": ["message", "type", "param", "code"],
            "properties": {
                "message": _STRING,
                "type": _STRING,
                "param": {"anyOf": [_STRING, _NULL], "description": "the field at fault: `messages[0].role`"},
                "code": {"anyOf": [_STRING, _NULL]},
            },
            "additionalProperties": False,
        }
    },
    "additionalProperties": False,
}
MODEL = {
    "type": "object",
    "required": ["id", "object", "created", "owned_by"],
    "properties": {
        "id": _STRING,
        "object": {"const": "model"},
        "created": _INT,
        "owned_by": {"const": "rvr-proxy"},
    },
    "additionalProperties": False,
}
MODEL_LIST = {
    "type": "object",
    "required": ["object", "data"],
    "properties": {
        "object": {"const": "list"},
        "data": {"type": "array", "items": {"$ref": _REF.format(model="Model")}},
    },
    "additionalProperties": False,
}


def _sample_candidate() -> Candidate:
    message = {"role": "assistant", "content": "sample", "tool_calls": [{"id": "c", "type": "function"}]}
    return Candidate(0, "original", message, "stop")


def _answer_fields(rendered: Iterable[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """The schemas of the answer fields in rendered choices: whatever is not index/finish_reason."""
    fields: dict[str, dict[str, Any]] = {}
    for choice in rendered:
        for key in choice:
            if key not in ("index", "finish_reason", "logprobs"):
                fields[key] = ANSWER_FIELDS[key]
    return fields


def _title(endpoint: Endpoint) -> str:
    return "".join(part.capitalize() for part in endpoint.object.replace(".", "_").split("_"))


def response_schemas(endpoint: Endpoint) -> dict[str, dict[str, Any]]:
    """The endpoint's response object and stream chunk, named after its OpenAI object."""
    sample = _sample_candidate()
    answer = _answer_fields([endpoint.choice(sample)])
    piece = _answer_fields([*endpoint.pieces(sample, 0), endpoint.final_piece(sample, 0)])
    name = _title(endpoint)
    choice = {
        "type": "object",
        "required": ["index", *answer, "finish_reason", "logprobs"],
        "properties": {
            "index": _COUNT,
            **answer,
            "finish_reason": {"type": "string", "examples": ["stop", "length", "tool_calls"]},
            "logprobs": LOGPROBS,
        },
        "additionalProperties": False,
    }
    body = {
        "type": "object",
        "required": ["id", "object", "created", "model", "choices", "usage"],
        "properties": {
            "id": {"type": "string", "pattern": f"^{endpoint.id_prefix}-[0-9a-f]{{24}}$"},
            "object": {"const": endpoint.object},
            "created": _INT,
            "model": {"type": "string", "description": "the route that served the request"},
            "choices": {"type": "array", "items": choice},
            "usage": {"$ref": _REF.format(model="Usage")},
            "rvr": {"$ref": _REF.format(model="RvrReport")},
            **RESPONSE_FIELD_SCHEMAS,
        },
        "additionalProperties": False,
    }
    chunk_choice = {
        "type": "object",
        "required": ["index", *piece, "finish_reason", "logprobs"],
        "properties": {
            "index": _COUNT,
            **piece,
            "finish_reason": {"anyOf": [_STRING, _NULL]},
            "logprobs": LOGPROBS,
        },
        "additionalProperties": True,
    }
    chunk = {
        "type": "object",
        "description": "One `data:` event of a stream. Passthrough routes relay the upstream's chunks "
        "(under this id and the route's name), so they may carry more fields.",
        "required": ["id", "object", "created", "model", "choices"],
        "properties": {
            "id": {"type": "string", "pattern": f"^{endpoint.id_prefix}-[0-9a-f]{{24}}$"},
            "object": {"type": "string", "examples": [endpoint.chunk_object]},
            "created": _INT,
            "model": _STRING,
            "choices": {"type": "array", "items": chunk_choice},
            "usage": {"$ref": _REF.format(model="Usage")},
            "rvr": {"$ref": _REF.format(model="RvrReport")},
        },
        "additionalProperties": True,
    }
    return {name: body, f"{name}Chunk": chunk}


# ---- errors, by status ------------------------------------------------------------------------

# What each status means here; a status the error tree gains later is documented by its HTTP name
# until a line is added.
STATUS_MEANINGS = {
    400: "The request is malformed, exceeds the route's limits, or the upstream refused it as invalid.",
    401: "The proxy's API key is missing or wrong.",
    404: "No route serves the requested model.",
    413: "The request body exceeds the server's size limit.",
    500: "A bug in the proxy; the response's x-request-id finds it in the proxy's log.",
    502: "The upstream errored, was unreachable, rate-limited past the retries, or no candidate survived.",
    504: "The upstream, or the whole request, ran past its timeout.",
}
_NEVER_ANSWERED = (UpstreamError, ClientDisconnected)  # a base never raised; a hang-up nobody reads


def error_statuses() -> dict[int, list[type[ProxyError]]]:
    """Every status `proxy.errors` can answer with, and the classes that answer it."""
    found: dict[int, list[type[ProxyError]]] = {}
    stack: list[type[ProxyError]] = [ProxyError]
    while stack:
        cls = stack.pop(0)
        stack.extend(cls.__subclasses__())
        if cls.__module__ == ProxyError.__module__ and cls not in _NEVER_ANSWERED:
            found.setdefault(cls.status, []).append(cls)
    return dict(sorted(found.items()))


def _error_response(status: int, classes: Sequence[type[ProxyError]]) -> dict[str, Any]:
    meaning = STATUS_MEANINGS.get(status, HTTPStatus(status).phrase + ".")
    examples = {
        cls.__name__: {"value": {"error": {"message": meaning, "type": cls.type, "param": None, "code": cls.code}}}
        for cls in classes
    }
    return {
        "description": meaning,
        "headers": {"x-request-id": {"$ref": "#/components/headers/RequestId"}},
        "content": {"application/json": {"schema": {"$ref": _REF.format(model="Error")}, "examples": examples}},
    }


# ---- the document -----------------------------------------------------------------------------


def _json(schema: dict[str, Any], description: str, headers: dict[str, Any] | None = None) -> dict[str, Any]:
    return {
        "description": description,
        "headers": {"x-request-id": {"$ref": "#/components/headers/RequestId"}, **(headers or {})},
        "content": {"application/json": {"schema": schema}},
    }


# A sample of each field a request model may take its input in, for the request examples.
SAMPLE_INPUTS: dict[str, Any] = {"messages": [{"role": "user", "content": "Say hi."}], "prompt": "Say hi."}


def request_examples(endpoint: Endpoint, model: str) -> dict[str, dict[str, Any]]:
    """A plain request and a streamed one for `model`."""
    fields = endpoint.request_model.model_fields
    plain = {"model": model, **{k: v for k, v in SAMPLE_INPUTS.items() if k in fields}}
    streamed = {**plain, "stream": True, "stream_options": {"include_usage": True}}
    return {
        "plain": {"summary": "One answer", "value": plain},
        "stream": {"summary": "Streamed, with usage at the end", "value": streamed},
    }


def _generation(endpoint: Endpoint, auth: bool, max_body_bytes: int | None, model: str) -> dict[str, Any]:
    name = _title(endpoint)
    events = {
        "schema": {
            "type": "object",
            "description": "With `stream: true`: server-sent events, described one event at a time. Each "
            f"`data:` holds a `{name}Chunk`, and a complete stream ends with `data: [DONE]`; a stream that "
            "fails after it started ends instead with one `data:` holding an `Error` (and no `[DONE]`). "
            "Strategy routes send `: keep-alive` comments while they work, then the chosen answer in "
            "chunks; their last chunk, with empty `choices`, carries `rvr` (and `usage`, with "
            "`stream_options.include_usage`).",
            "required": ["data"],
            "properties": {
                "event": {"const": "message"},
                "data": {
                    "anyOf": [
                        {"const": "[DONE]"},
                        {
                            "type": "string",
                            "pattern": "^\\{",
                            "contentMediaType": "application/json",
                            "contentSchema": {
                                "anyOf": [
                                    {"$ref": _REF.format(model=f"{name}Chunk")},
                                    {"$ref": _REF.format(model="Error")},
                                ]
                            },
                        },
                    ]
                },
            },
        },
    }
    ok = _json(
        {"$ref": _REF.format(model=name)},
        f"A `{endpoint.object}` object, or with `stream: true` a stream of `{endpoint.chunk_object}` chunks.",
        {
            "x-rvr-route": {"description": "The route that served the request.", "required": True, "schema": _STRING},
            "x-rvr-candidates": {
                "description": "Candidates sampled (not sent with `stream: true`).",
                "schema": {"type": "string", "pattern": "^[0-9]+$"},
            },
        },
    )
    ok["content"]["text/event-stream"] = events
    errors = error_statuses()
    if not auth:
        errors.pop(AuthenticationFailed.status)
    responses = {"200": ok, **{str(status): _error_response(status, cls) for status, cls in errors.items()}}
    if max_body_bytes is not None and "413" in responses:
        responses["413"]["description"] += f" This server's limit is {max_body_bytes} bytes."
    operation: dict[str, Any] = {
        "operationId": f"create_{endpoint.name}_completion",
        "summary": f"Create a {endpoint.object} (OpenAI-compatible)",
        "parameters": [{"$ref": "#/components/parameters/RequestId"}],
        "requestBody": {
            "required": True,
            "content": {
                "application/json": {
                    "schema": {"$ref": _REF.format(model=endpoint.request_model.__name__)},
                    "examples": request_examples(endpoint, model),
                }
            },
        },
        "responses": responses,
    }
    if auth:
        operation["security"] = [{"bearer": []}]
    return operation


def _status(*values: str) -> dict[str, Any]:
    return {
        "type": "object",
        "required": ["status"],
        "properties": {"status": {"const": values[0]} if len(values) == 1 else {"enum": list(values)}},
        "additionalProperties": False,
    }


def _get(operation_id: str, responses: dict[str, Any], secured: bool) -> dict[str, Any]:
    operation: dict[str, Any] = {
        "operationId": operation_id,
        "parameters": [{"$ref": "#/components/parameters/RequestId"}],
        "responses": responses,
    }
    if secured:
        operation["security"] = [{"bearer": []}]
        responses["401"] = _error_response(AuthenticationFailed.status, [AuthenticationFailed])
    return {"get": operation}


def _capped_request_schemas(
    endpoints: Sequence[Endpoint], routes: Sequence[str], any_model: bool, max_n: int | None, max_tokens: int | None
) -> dict[str, Any]:
    """Request schemas narrowed to this proxy: its route names, its largest caps."""
    schemas: dict[str, Any] = request_schemas(endpoints)
    for endpoint in endpoints:
        properties = schemas[endpoint.request_model.__name__]["properties"]
        if routes:
            properties["model"]["examples"] = list(routes)
            if not any_model:
                properties["model"]["enum"] = list(routes)
        caps = {"n": max_n, "max_tokens": max_tokens, "max_completion_tokens": max_tokens}
        for field, cap in caps.items():
            if cap is not None and field in properties:
                _integer_branch(properties[field])["maximum"] = cap
    return schemas


def _model_path(routes: Sequence[str], auth: bool) -> dict[str, Any]:
    """`GET /v1/models/{model}`: a route alias as a model; any other name is a 404, even where a
    default upstream serves it (it is no route of this proxy's)."""
    name: dict[str, Any] = {**_STRING, "description": "A route alias (`model` of a route); it may hold `/`."}
    if routes:
        name["enum"] = list(routes)
    found = _json({"$ref": _REF.format(model="Model")}, "The route, as a model.")
    path = _get("retrieve_model", {"200": found, "404": _error_response(404, [ModelNotFound])}, auth)
    parameter = {"name": "model", "in": "path", "required": True, "schema": name}
    path["get"]["parameters"].append(parameter)
    return path


def _service_paths(routes: Sequence[str], auth: bool, metrics_auth: bool) -> dict[str, Any]:
    """The paths beside generation: models, health, readiness, metrics, this document."""
    models = _json({"$ref": _REF.format(model="ModelList")}, "The routes this proxy serves, as models.")
    ready = {"200": _json(_status("ready"), "Ready to serve."), "503": _json(
        _status("starting", "draining"), "Still starting, or draining after SIGTERM (proxy/server/drain.py)."
    )}
    metrics = {
        "description": "Prometheus metrics in the text exposition format.",
        "content": {"text/plain": {"schema": _STRING}},
    }
    return {
        "/v1/models": _get("list_models", {"200": models}, auth),
        "/v1/models/{model}": _model_path(routes, auth),
        "/healthz": _get("healthz", {"200": _json(_status("ok"), "Up.")}, False),
        "/readyz": _get("readyz", ready, False),
        "/metrics": _get("metrics", {"200": metrics}, metrics_auth),
        PATH: _get("openapi", {"200": _json({"type": "object"}, "This document.")}, auth),
    }


def openapi_schema(
    endpoints: Sequence[Endpoint] = ENDPOINTS,
    *,
    routes: Sequence[str] = (),
    any_model: bool = False,
    max_n: int | None = None,
    max_tokens: int | None = None,
    auth: bool = False,
    metrics_auth: bool = False,
    max_body_bytes: int | None = None,
) -> dict[str, Any]:
    """The OpenAPI 3.1 document of a proxy serving `endpoints`.

    `routes` are the model names the proxy serves; unless `any_model` (a `default_upstream` takes
    every other name) they are the only valid values of `model`, and any other is a 404. `auth`:
    the proxy has `api_keys`, so the generation endpoints and `/v1/models` need a bearer key.
    `max_n` and `max_tokens` are the largest caps of any route: no request above them is served.
    """
    schemas = _capped_request_schemas(endpoints, routes, any_model, max_n, max_tokens)
    schemas.update(
        {
            "Error": ERROR,
            "Usage": USAGE,
            "RvrReport": RVR_REPORT,
            "RiskReport": RISK,
            "Calibration": CALIBRATION,
            "Model": MODEL,
            "ModelList": MODEL_LIST,
        }
    )
    paths: dict[str, Any] = {}
    for endpoint in endpoints:
        schemas.update(response_schemas(endpoint))
        model = routes[0] if routes else "gpt-4o-mini"
        paths[endpoint.path] = {"post": _generation(endpoint, auth, max_body_bytes, model)}
    paths.update(_service_paths(routes, auth, metrics_auth))
    components: dict[str, Any] = {
        "schemas": schemas,
        "parameters": {
            "RequestId": {
                "name": "x-request-id",
                "in": "header",
                "required": False,
                "description": "The client's request id: echoed back when it is 1 to 64 of `A-Za-z0-9._-`, "
                "else replaced by a fresh one (never refused).",
                "schema": {"type": "string"},
            }
        },
        "headers": {
            "RequestId": {
                "description": "The request's id: the client's, when sane, else a fresh one.",
                "required": True,
                "schema": {"type": "string"},
            }
        },
    }
    if auth or metrics_auth:
        components["securitySchemes"] = {"bearer": {"type": "http", "scheme": "bearer"}}
    document = {
        "openapi": OPENAPI_VERSION,
        "info": {
            "title": "rvr-proxy",
            "version": _version(),
            "description": "OpenAI-compatible proxy that mitigates rational value risk. Errors are OpenAI-shaped "
            "(`Error`); a method a path does not serve is a 405 and an unknown path a 404, in the same shape.",
        },
        "paths": paths,
        "components": components,
    }
    return copy.deepcopy(document)  # the schemas above are shared module constants


def document_for(config: Config, routes: Mapping[str, RouteSettings]) -> dict[str, Any]:
    """The document of a running proxy: its routes, its auth, its limits."""
    server = config.server
    limits = [route.limits for route in routes.values()]
    if server.default_upstream is not None:
        limits.append(RouteLimits())  # the default route's
    return openapi_schema(
        routes=list(routes),
        any_model=server.default_upstream is not None,
        max_n=max((limit.max_n for limit in limits), default=None),
        max_tokens=max((limit.token_cap for limit in limits), default=None),
        auth=bool(server.api_keys),
        metrics_auth=bool(server.metrics_auth),
        max_body_bytes=server.max_body_bytes,
    )


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("rvr-proxy")
    except PackageNotFoundError:
        return "0.0.0"


def serve_openapi(app: FastAPI, document: dict[str, Any], check_key: Callable[[str | None], object]) -> None:
    """`GET /openapi.json`, built once; with `api_keys` set it needs a key, as `/v1/models` does."""

    async def openapi(request: Request) -> Response:
        try:
            check_key(request.headers.get("authorization"))
        except ProxyError as exc:
            return JSONResponse(exc.body(), status_code=exc.status)
        return JSONResponse(document)

    app.add_api_route(PATH, openapi, methods=["GET"], include_in_schema=False)
