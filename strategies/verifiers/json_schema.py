"""A hard output constraint: the candidate's content must be JSON that meets a schema.

The schema comes from config (`schema`) and/or from the request's own `response_format`:
`{"type": "json_schema", "json_schema": {"schema": ...}}` adds that schema, and
`{"type": "json_object"}` requires a JSON object. When both config and request give a schema the
content must meet both. With neither, the content need only parse as JSON.

Content is parsed strictly (no stripping of markdown fences): a client that asked for JSON will
parse it strictly too. A candidate that only makes tool calls has no content to check and scores
None (missing), not 0, since calling a tool is a legitimate reply to a JSON-mode request.

Schemas are untrusted (a client writes them), so `check_schema` is the one gate every schema
passes, at request validation for client schemas and at config load for configured ones:

* it must be self-contained. A `$ref` is only ever resolved inside the schema (`#/$defs/x`,
  `#anchor`); a remote or file URI would make the proxy fetch it, blocking the event loop and
  letting a client probe the network behind the proxy or the proxy's own files. The validator's
  registry refuses every retrieval as well, so nothing is ever fetched even if a check is missed;
* its regexes (`pattern`, `patternProperties`) must compile in RE2 and run there, since Python's
  backtracking `re` can take exponential time on a candidate (see `strategies.safe_regex`);
* it must be a valid schema of a known draft, of bounded depth.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Mapping, Sequence
from typing import Any, Literal
from urllib.parse import urljoin

import jsonschema
import referencing
import referencing.jsonschema
from jsonschema.protocols import Validator
from pydantic import Field, field_validator
from referencing.exceptions import NoSuchResource, Unresolvable

from strategies import safe_regex
from strategies.contract import Candidate, Scored, VerifyContext
from strategies.verifiers.base import BaseVerifier, VerifierSpec

# Deeper schemas serve no real output format, and validating one recurses once per level.
MAX_SCHEMA_DEPTH = 64
_REF_KEYWORDS = ("$ref", "$dynamicRef", "$recursiveRef")
_DRAFTS: tuple[type[Validator], ...] = (
    jsonschema.Draft4Validator,
    jsonschema.Draft6Validator,
    jsonschema.Draft7Validator,
    jsonschema.Draft201909Validator,
    jsonschema.Draft202012Validator,
)
_DEFAULT_DRAFT: type[Validator] = jsonschema.Draft202012Validator


class SchemaRejected(ValueError):
    """A schema the proxy will not use; the message says what and where (a JSON pointer)."""


def _refuse(uri: str) -> referencing.Resource[Any]:
    raise NoSuchResource(ref=uri)  # type: ignore[call-arg]  # an attrs class; mypy sees KeyError


# Holds nothing and retrieves nothing: a ref resolves within its own schema or not at all.
_LOCAL_ONLY: referencing.Registry[Any] = referencing.Registry(retrieve=_refuse)  # type: ignore[call-arg]  # attrs init


def _dialect_key(uri: str) -> str:
    return uri.rstrip("#")


_BY_DIALECT: dict[str, type[Validator]] = {
    _dialect_key(str(cls.META_SCHEMA.get("$id") or cls.META_SCHEMA["id"])): cls for cls in _DRAFTS
}


def check_schema(schema: Any) -> None:
    """Raise SchemaRejected unless `schema` is one the proxy can check candidates against safely.

    The single source of truth for client and config schemas alike: request validation and
    config loading call it, and the verifier builds validators only through it.
    """
    if not isinstance(schema, dict):
        raise SchemaRejected("the schema must be a JSON object")
    draft = _draft_of(schema)
    refs, patterns, uses = _scan(schema, "id" if draft is jsonschema.Draft4Validator else "$id")
    for pointer, pattern in patterns:
        try:
            safe_regex.check_pattern(pattern)
        except safe_regex.UnsupportedPattern as exc:
            raise SchemaRejected(f"{exc} (at {pointer or '/'})") from None
    if "patternProperties" in uses and "unevaluatedProperties" in uses:
        # jsonschema matches patternProperties with Python's `re` while working out which
        # properties are unevaluated; RE2 cannot be substituted there, so the pair is refused.
        raise SchemaRejected("`unevaluatedProperties` together with `patternProperties` is not supported")
    try:
        draft.check_schema(schema, format_checker=_SCHEMA_FORMATS[draft])
    except jsonschema.SchemaError as exc:
        where = "/" + "/".join(str(p) for p in exc.path)
        raise SchemaRejected(f"not a valid JSON Schema: {exc.message} (at {where})") from None
    except RecursionError:
        raise SchemaRejected(f"the schema nests deeper than {MAX_SCHEMA_DEPTH} levels") from None
    _check_refs(schema, draft, refs)


def _draft_of(schema: dict[str, Any]) -> type[Validator]:
    dialect = schema.get("$schema")
    if dialect is None:
        return _DEFAULT_DRAFT
    if not isinstance(dialect, str) or _dialect_key(dialect) not in _BY_DIALECT:
        known = ", ".join(sorted(_BY_DIALECT))
        shown = repr(dialect)[:80]  # the client's text, echoed in the error: bounded
        raise SchemaRejected(f"unsupported $schema {shown}; supported: {known}")
    return _BY_DIALECT[_dialect_key(dialect)]


def _scan(
    schema: dict[str, Any], id_keyword: str
) -> tuple[list[tuple[str, str, str]], list[tuple[str, str]], set[str]]:
    """Refs (pointer, base URI, ref), regexes (pointer, pattern) and keywords used, walking every
    object in the schema: also data positions like `const`, since a `$ref` can point into them.

    Iterative, so depth is checked rather than hit as a RecursionError.
    """
    refs: list[tuple[str, str, str]] = []
    patterns: list[tuple[str, str]] = []
    uses: set[str] = set()
    root_id = schema.get(id_keyword)
    stack: list[tuple[Any, str, int, str]] = [(schema, "", 0, root_id if isinstance(root_id, str) else "")]
    while stack:
        node, pointer, depth, base = stack.pop()
        if depth > MAX_SCHEMA_DEPTH:
            raise SchemaRejected(f"the schema nests deeper than {MAX_SCHEMA_DEPTH} levels (at {pointer})")
        if isinstance(node, list):
            stack.extend((item, f"{pointer}/{i}", depth + 1, base) for i, item in enumerate(node))
            continue
        if not isinstance(node, dict):
            continue
        if depth:
            local_id = node.get(id_keyword)
            if isinstance(local_id, str):
                base = urljoin(base, local_id)
        for key, value in node.items():
            at = f"{pointer}/{_escape(str(key))}"
            if key in _REF_KEYWORDS and isinstance(value, str):
                if not value.startswith("#"):
                    raise SchemaRejected(
                        f"{key} {value!r} (at {at}) is not allowed: a schema must be self-contained, "
                        "so only local references like '#/$defs/name' are resolved"
                    )
                refs.append((at, base, value))
            elif key == "pattern" and isinstance(value, str):
                patterns.append((at, value))
            elif key == "patternProperties" and isinstance(value, dict):
                patterns.extend((f"{at}/{_escape(str(p))}", p) for p in value)
            if key in ("patternProperties", "unevaluatedProperties"):
                uses.add(key)
            stack.append((value, at, depth + 1, base))
    return refs, patterns, uses


def _escape(token: str) -> str:
    return token.replace("~", "~0").replace("/", "~1")


def _check_refs(schema: dict[str, Any], draft: type[Validator], refs: list[tuple[str, str, str]]) -> None:
    """Every local ref must resolve now, so a broken one is the client's 400, not a scoring error."""
    if not refs:
        return
    specification = referencing.jsonschema.specification_with(
        str(draft.META_SCHEMA.get("$id") or draft.META_SCHEMA["id"])
    )
    resolver = _LOCAL_ONLY.resolver_with_root(specification.create_resource(schema))
    for pointer, base, ref in refs:
        if ref in ("#", ""):
            continue
        try:
            resolver.lookup(urljoin(base, ref) if base else ref)
        except (Unresolvable, LookupError, TypeError, ValueError):
            raise SchemaRejected(f"$ref {ref!r} (at {pointer}) does not resolve within the schema") from None


def _schema_formats(draft: type[Validator]) -> jsonschema.FormatChecker:
    """The draft's format checker for checking schemas, with `regex` meaning "compiles in RE2"
    (the engine the patterns will run in) rather than "compiles in Python's re"."""
    base = draft.FORMAT_CHECKER
    checker = jsonschema.FormatChecker(formats=())
    checker.checkers = dict(base.checkers)

    def is_re2(instance: object) -> bool:
        if isinstance(instance, str):
            safe_regex.check_pattern(instance)
        return True

    checker.checks("regex", raises=safe_regex.UnsupportedPattern)(is_re2)
    return checker


# ---- keywords that match regexes, re-implemented on RE2 --------------------------------------
# Same semantics as jsonschema's own (`jsonschema._keywords`), with `re.search` replaced.


def _pattern(validator: Validator, pattern: str, instance: Any, schema: Mapping[str, Any]) -> Iterator[Any]:
    if validator.is_type(instance, "string") and not safe_regex.search(pattern, instance):
        yield jsonschema.ValidationError(f"{instance!r} does not match {pattern!r}")


def _pattern_properties(
    validator: Validator, patterns: Mapping[str, Any], instance: Any, schema: Mapping[str, Any]
) -> Iterator[Any]:
    if not validator.is_type(instance, "object"):
        return
    for pattern, subschema in patterns.items():
        for key, value in instance.items():
            if safe_regex.search(pattern, key):
                yield from validator.descend(value, subschema, path=key, schema_path=pattern)


def _additional_properties(
    validator: Validator, additional: Any, instance: Any, schema: Mapping[str, Any]
) -> Iterator[Any]:
    if not validator.is_type(instance, "object"):
        return
    properties = schema.get("properties", {})
    patterns = list(schema.get("patternProperties", {}))
    extras = {key for key in instance if key not in properties and not any(safe_regex.search(p, key) for p in patterns)}
    if validator.is_type(additional, "object"):
        for extra in extras:
            yield from validator.descend(instance[extra], additional, path=extra)
    elif not additional and extras:
        listed = ", ".join(repr(each) for each in sorted(extras, key=str))
        if patterns:
            yield jsonschema.ValidationError(f"{listed} do not match any of the regexes: {sorted(patterns)}")
        else:
            yield jsonschema.ValidationError(f"Additional properties are not allowed ({listed} unexpected)")


_RE2_KEYWORDS = {
    "pattern": _pattern,
    "patternProperties": _pattern_properties,
    "additionalProperties": _additional_properties,
}


def _safe_draft(draft: type[Validator]) -> type[Validator]:
    return jsonschema.validators.extend(draft, _RE2_KEYWORDS)


_SCHEMA_FORMATS: dict[type[Validator], jsonschema.FormatChecker] = {d: _schema_formats(d) for d in _DRAFTS}
_SAFE_DRAFTS: dict[type[Validator], type[Validator]] = {d: _safe_draft(d) for d in _DRAFTS}


def compile_schema(schema: Any) -> Validator:
    """A validator for a schema that passed `check_schema`: RE2 regexes, local refs only."""
    check_schema(schema)
    return _SAFE_DRAFTS[_draft_of(schema)](schema, registry=_LOCAL_ONLY)


# ---- settings and verifier --------------------------------------------------------------------


class JsonSchemaSettings(VerifierSpec):
    type: Literal["json_schema"] = "json_schema"
    # `schema` shadows a deprecated BaseModel attribute, hence the alias.
    json_schema: dict[str, Any] | None = Field(None, alias="schema")

    model_config = {"populate_by_name": True}

    @field_validator("json_schema")
    @classmethod
    def _valid_schema(cls, schema: dict[str, Any] | None) -> dict[str, Any] | None:
        if schema is not None:
            check_schema(schema)  # a SchemaRejected is a ValueError: a config error naming it
        return schema


def request_schema(response_format: Any) -> Any:
    """The schema a `response_format` carries (`json_schema.schema`), or None.

    Request validation checks exactly what this returns, so the verifier never meets a schema
    that was not checked.
    """
    if not isinstance(response_format, dict) or response_format.get("type") != "json_schema":
        return None
    spec = response_format.get("json_schema")
    return spec.get("schema") if isinstance(spec, dict) else None


def request_constraints(
    response_format: dict[str, Any] | None,
) -> tuple[dict[str, Any] | None, bool]:
    """(schema from the request or None, whether the request demands a JSON object)."""
    if not isinstance(response_format, dict):
        return None, False
    if response_format.get("type") == "json_object":
        return None, True
    schema = request_schema(response_format)
    return (schema if isinstance(schema, dict) else None), False


class JsonSchemaVerifier(BaseVerifier):
    kind = "json_schema"
    Settings = JsonSchemaSettings
    hard = True

    def __init__(self, settings: JsonSchemaSettings) -> None:
        super().__init__(settings)
        self._config = compile_schema(settings.json_schema) if settings.json_schema is not None else None

    async def score(self, ctx: VerifyContext, candidates: Sequence[Candidate]) -> Scored:
        validators = [v for v in (self._config,) if v is not None]
        request_schema, want_object = request_constraints(ctx.response_format)
        errors = 0
        if request_schema is not None:
            key = (self.name, "request_validator")
            if key not in ctx.cache:  # once per request, not once per sampling round
                try:
                    ctx.cache[key] = compile_schema(request_schema)
                except SchemaRejected:
                    # Request validation refuses such schemas; one that gets here anyway (a
                    # caller that skipped it) cannot be checked safely, so it constrains nothing.
                    ctx.cache[key] = None
            if ctx.cache[key] is None:
                errors = 1
            else:
                validators.append(ctx.cache[key])
        scores: list[float | None] = []
        for candidate in candidates:
            score, failed = self._check(candidate, validators, want_object)
            scores.append(score)
            errors += failed
        return Scored(views={self.view(): scores}, hard=True, errors=errors)

    @staticmethod
    def _check(candidate: Candidate, validators: Sequence[Validator], want_object: bool) -> tuple[float | None, int]:
        """(score, 1 if a validator could not be applied else 0)."""
        text = candidate.text
        if not text.strip() and candidate.tool_calls:
            return None, 0
        try:
            value = json.loads(text)
        except (ValueError, RecursionError):  # JSONDecodeError is a ValueError; so is a deep nest
            return 0.0, 0
        if want_object and not isinstance(value, dict):
            return 0.0, 0
        failed = 0
        for validator in validators:
            try:
                if not validator.is_valid(value):
                    return 0.0, 0
            except RecursionError:  # an answer nested past what the schema can be checked to
                return 0.0, 0
            except (Unresolvable, safe_regex.UnsupportedPattern):
                failed = 1  # `check_schema` should have refused this schema; it constrains nothing
        return 1.0, failed
