"""A hard output constraint: the candidate's content must be JSON that meets a schema.

The schema comes from config (`schema`) and/or from the request's own `response_format`:
`{"type": "json_schema", "json_schema": {"schema": ...}}` adds that schema, and
`{"type": "json_object"}` requires a JSON object. When both config and request give a schema the
content must meet both. With neither, the content need only parse as JSON.

Content is parsed strictly (no stripping of markdown fences): a client that asked for JSON will
parse it strictly too. A candidate that only makes tool calls has no content to check and scores
None (missing), not 0, since calling a tool is a legitimate reply to a JSON-mode request.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any, Literal

import jsonschema
from jsonschema.protocols import Validator
from pydantic import Field, field_validator

from strategies.contract import Candidate, Scored, VerifyContext
from strategies.verifiers.base import BaseVerifier, VerifierSpec


class JsonSchemaSettings(VerifierSpec):
    type: Literal["json_schema"] = "json_schema"
    # `schema` shadows a deprecated BaseModel attribute, hence the alias.
    json_schema: dict[str, Any] | None = Field(None, alias="schema")

    model_config = {"populate_by_name": True}

    @field_validator("json_schema")
    @classmethod
    def _valid_schema(cls, schema: dict[str, Any] | None) -> dict[str, Any] | None:
        if schema is not None:
            try:
                jsonschema.validators.validator_for(schema).check_schema(schema)
            except jsonschema.SchemaError as exc:
                raise ValueError(f"not a valid JSON Schema: {exc.message}") from exc
        return schema


def _validator(schema: dict[str, Any]) -> Validator:
    cls = jsonschema.validators.validator_for(schema)
    cls.check_schema(schema)
    return cls(schema)


def request_constraints(
    response_format: dict[str, Any] | None,
) -> tuple[dict[str, Any] | None, bool]:
    """(schema from the request or None, whether the request demands a JSON object)."""
    if not isinstance(response_format, dict):
        return None, False
    kind = response_format.get("type")
    if kind == "json_object":
        return None, True
    if kind == "json_schema":
        spec = response_format.get("json_schema") or {}
        schema = spec.get("schema") if isinstance(spec, dict) else None
        return (schema if isinstance(schema, dict) else None), False
    return None, False


class JsonSchemaVerifier(BaseVerifier):
    kind = "json_schema"
    Settings = JsonSchemaSettings
    hard = True

    def __init__(self, settings: JsonSchemaSettings) -> None:
        super().__init__(settings)
        self._config = (
            _validator(settings.json_schema) if settings.json_schema is not None else None
        )

    async def score(self, ctx: VerifyContext, candidates: Sequence[Candidate]) -> Scored:
        validators = [v for v in (self._config,) if v is not None]
        request_schema, want_object = request_constraints(ctx.response_format)
        errors = 0
        if request_schema is not None:
            try:
                validators.append(_validator(request_schema))
            except jsonschema.SchemaError:
                # The client's schema is broken: we cannot check it, so it constrains nothing.
                errors = 1
        scores = [self._check(c, validators, want_object) for c in candidates]
        return Scored(views={self.view(): scores}, hard=True, errors=errors)

    @staticmethod
    def _check(
        candidate: Candidate, validators: Sequence[Validator], want_object: bool
    ) -> float | None:
        text = candidate.text
        if not text.strip() and candidate.tool_calls:
            return None
        try:
            value = json.loads(text)
        except (json.JSONDecodeError, ValueError):
            return 0.0
        if want_object and not isinstance(value, dict):
            return 0.0
        return 1.0 if all(v.is_valid(value) for v in validators) else 0.0
