"""A service's JSON-Schema contract, compiled once and evaluated safely.

Schemas come from users, so compiling one must never reach the network or the
file system, and evaluating one must take time linear in the payload. The
validator is jsonschema-rs, built with:

- ``offline=True``: without it, jsonschema-rs reads a ``file://`` reference from
  disk and sends HTTP for an ``http://`` one (or for an unknown ``$schema``),
  waiting up to 30 s for an answer. ``http_options`` must never be passed:
  it turns retrieval back on even with ``offline=True``. Before that, every
  ``$ref``/``$dynamicRef``/``$recursiveRef`` that does not start with ``#`` is
  refused here, with its path, so that nothing depends on the library's default;
- ``RegexOptions()``: the linear-time engine of Rust's ``regex`` crate for
  ``pattern``, ``patternProperties`` and everything that consults them; it has no
  lookaround or backreference, and a pattern it cannot compile is refused at
  creation. (The default, fancy-regex, backtracks.)
- ``validate_formats=True``: ``format`` is an assertion in every draft, as it was
  with jsonschema's format checker.

Linear is not enough: the engine's time grows with a pattern's expanded size
times the text's length, holding Python's lock. So each pattern's weight, the
schema's summed weight, the compiled size and the work of one payload are
bounded (``broker.contract.patterns``). The same checks run whenever a schema
is compiled, not only when a service is created: a schema stored before a
limit existed is refused where it would be used (a job's registration or
results fail with the reason) rather than stalling the process that uses it.

Schemas and payloads are bounded (``broker.contract.bounds``) before the validator
sees them, and so is the number of references in a schema: a chain of references
is recursion in Rust, which overflows the stack (killing the process) instead of
raising; and so is what references multiply (``broker.contract.references``).
Checking a schema costs far more than a validation, so contracts are cached.
"""

from __future__ import annotations

import functools
import itertools
import json
from collections.abc import Iterable, Mapping
from typing import Any
from urllib.parse import urlsplit

import jsonschema_rs

from broker.contract.bounds import Checked, canonical_json, check_payload
from broker.contract.integers import WholeNumbers
from broker.contract.patterns import (
    BASE_WEIGHT,
    MAX_COMPILED_BYTES,
    MAX_SCHEMA_WEIGHT,
    MAX_WORK,
    members,
    pattern_problem,
    pattern_weight,
    schema_patterns,
    text_length,
)
from broker.contract.references import (
    MAX_EVALUATIONS,
    MAX_EXPANSION,
    Evaluations,
    LoopingReferences,
    evaluations,
)
from broker.errors import DeserializationError, InvalidSchemaError

#: How many reference keywords a schema may hold. Each link of a chain of
#: references costs the validator about 200 bytes of stack at each of up to
#: ``MAX_DEPTH`` payload levels: 64 levels x 128 references fit in a 2 MiB thread
#: stack (Linux gives 8 MiB); 64 x 256 overflow it.
MAX_REFERENCES = 128
_REFERENCES = ("$ref", "$dynamicRef", "$recursiveRef")
#: Errors considered when picking the one to report: a huge invalid payload must
#: not cost one error object per item.
_MAX_ERRORS = 256
#: Errors that only say "no branch matched": any other error at the same depth
#: says more.
_WEAK = frozenset({"anyOf", "oneOf"})

_Validator = jsonschema_rs.Validator
_DEFAULT: type[_Validator] = jsonschema_rs.Draft202012Validator
#: Each dialect jsonschema-rs implements, by its meta-schema URI (normalized as
#: by ``_normalized``: an empty fragment dropped, the scheme in lower case).
_DIALECTS: dict[str, type[_Validator]] = {
    "http://json-schema.org/draft-04/schema": jsonschema_rs.Draft4Validator,
    "http://json-schema.org/draft-06/schema": jsonschema_rs.Draft6Validator,
    "http://json-schema.org/draft-07/schema": jsonschema_rs.Draft7Validator,
    "https://json-schema.org/draft/2019-09/schema": jsonschema_rs.Draft201909Validator,
    "https://json-schema.org/draft/2020-12/schema": _DEFAULT,
}
_DRAFT_3 = "http://json-schema.org/draft-03/schema"
#: Each dialect's number, as ``jsonschema_rs.Registry`` takes it.
_DRAFTS: dict[type[_Validator], int] = {
    jsonschema_rs.Draft4Validator: jsonschema_rs.Draft4,
    jsonschema_rs.Draft6Validator: jsonschema_rs.Draft6,
    jsonschema_rs.Draft7Validator: jsonschema_rs.Draft7,
    jsonschema_rs.Draft201909Validator: jsonschema_rs.Draft201909,
    jsonschema_rs.Draft202012Validator: jsonschema_rs.Draft202012,
}


class Contract:
    """A JSON Schema compiled once, validating payloads against it."""

    def __init__(self, schema: Mapping[str, Any], *, source: str = "schema") -> None:
        if not isinstance(schema, Mapping):
            raise InvalidSchemaError(source, "a schema must be a JSON object")
        plain = json.loads(canonical_json(dict(schema), source, InvalidSchemaError))
        self._text = json.dumps(plain)  # insertion order kept; ``schema`` copies it
        _check_patterns(plain, source)
        self._validator, dialect = _compile_validator(plain, source)
        counted = _count(plain, source)
        #: The pattern work each byte of a payload's text costs.
        self._weight = counted.patterns
        #: The most evaluations on one value at each depth of a payload.
        self._profile = counted.profile
        self._most = max(counted.profile)
        #: Only a schema that names ``integer`` can turn a float into an int.
        self._whole_numbers = (
            WholeNumbers(plain, self._validator, _DRAFTS[dialect])
            if '"integer"' in self._text
            else None
        )

    @property
    def schema(self) -> dict[str, Any]:
        """A copy: the compiled schema must not change under its validator."""
        copy: dict[str, Any] = json.loads(self._text)
        return copy

    def validate(self, instance: object, *, source: str = "parameters") -> Any:
        """The value to store and send, if valid; else ``DeserializationError`` naming the
        failing path and the reason.

        That value is plain JSON (``check_payload``: NumPy arrays as lists, NumPy
        numbers as Python ones), with whole floats as ints where the schema says
        ``integer`` (``broker.contract.integers``); ``instance`` itself when it
        already was all that, and never changed.
        """
        checked = check_payload(instance, source)
        value = checked.value
        self._check_work(checked, source)
        try:
            self._validator.validate(value)
        except jsonschema_rs.ValidationError as first:
            error = _most_relevant(self._validator.iter_errors(value), first)
            raise DeserializationError(source, error.message, error.instance_path) from None
        except ValueError as failure:  # the validator could not read the value
            raise DeserializationError(source, f"cannot be validated: {failure}") from None
        if checked.whole_floats and self._whole_numbers is not None:
            return self._whole_numbers.applied(value)
        return value

    def is_valid(self, instance: object) -> bool:
        try:
            checked = check_payload(instance, "parameters")
            value = checked.value
            self._check_work(checked, "parameters")
        except DeserializationError:
            return False
        try:
            return self._validator.is_valid(value)
        except ValueError:
            return False

    def _check_work(self, checked: Checked, source: str) -> None:
        """Refuse a payload that would take this schema too long to validate: too many
        subschema evaluations for its shape, or too much text for its patterns.
        """
        if self._most * checked.size > MAX_EVALUATIONS:  # else no shape can exceed it
            work = sum(a * n for a, n in zip(self._profile, checked.shape, strict=False))
            if work > MAX_EVALUATIONS:
                raise DeserializationError(
                    source,
                    f"validating it would take {work} subschema evaluations (its values "
                    "at each depth times the schema's subschemas there); at most "
                    f"{MAX_EVALUATIONS} are accepted in one payload: send large data as "
                    "a file, or simplify the schema",
                )
        if self._weight * 4 * checked.size <= MAX_WORK:  # UTF-8: at most 4 bytes a character
            return
        most = MAX_WORK // self._weight
        length = text_length(checked.value)
        if length > most:
            raise DeserializationError(
                source,
                f"{length} bytes of text (UTF-8, in strings and keys): this schema's "
                f"patterns may read at most {most} in one payload, so that validating "
                "it takes bounded time; send long text as a file, or loosen the patterns",
            )


@functools.lru_cache(maxsize=256)
def _compile(canonical: str) -> Contract:
    return Contract(json.loads(canonical))


def compile_contract(schema: Mapping[str, Any], *, source: str = "schema") -> Contract:
    """The cached ``Contract`` for ``schema``: compiled and checked once per process.

    The cache is keyed by the schema alone, not by ``source``, so that the
    registration and result schemas of many services share one compilation; a
    refused schema is not cached, and its error is re-labelled with ``source``.
    """
    if not isinstance(schema, Mapping):
        raise InvalidSchemaError(source, "a schema must be a JSON object")
    canonical = canonical_json(dict(schema), source, InvalidSchemaError)
    try:
        return _compile(canonical)
    except InvalidSchemaError as error:
        raise InvalidSchemaError(source, error.validator_error_message, error.path) from None


def build_validator(schema: dict[str, Any], dialect: type[_Validator]) -> _Validator:
    """The one place a validator is constructed, so that every one is offline and linear.

    It raises ``jsonschema_rs.ValidationError`` for a schema that fails its
    meta-schema, a pattern the regex engine refuses, or a reference that cannot
    be resolved inside the document.
    """
    return dialect(
        schema,
        validate_formats=True,
        pattern_options=jsonschema_rs.RegexOptions(size_limit=MAX_COMPILED_BYTES),
        offline=True,
    )


# -- internals -------------------------------------------------------------------


def _compile_validator(schema: dict[str, Any], source: str) -> tuple[_Validator, type[_Validator]]:
    dialect, canonical = _dialect(schema, source)
    _check_document(schema, source)
    if canonical is not None:  # say "HTTP://...#": jsonschema-rs knows the exact URI only
        schema = {**schema, "$schema": canonical}
    try:
        return build_validator(schema, dialect), dialect
    except jsonschema_rs.ValidationError as error:
        raise InvalidSchemaError(source, _schema_reason(error), error.instance_path) from None
    except (ValueError, jsonschema_rs.ReferencingError) as failure:
        raise InvalidSchemaError(source, f"cannot be compiled: {failure}") from None


def _check_patterns(schema: dict[str, Any], source: str) -> None:
    """Refuse a pattern, or a schema's patterns together, too costly to validate against
    (what they cost a payload is counted by ``_count``).
    """
    total = 0
    for path, pattern in schema_patterns(schema):
        problem = pattern_problem(pattern)
        if problem is not None:
            raise InvalidSchemaError(source, problem, path)
        total += pattern_weight(pattern) + BASE_WEIGHT
        if total > MAX_SCHEMA_WEIGHT:
            message = (
                f"the patterns expand to more than {MAX_SCHEMA_WEIGHT} positions in all "
                "(each counts its repeats multiplied, plus "
                f"{BASE_WEIGHT}); that is the limit"
            )
            raise InvalidSchemaError(source, message, path)


def _normalized(uri: str) -> str:
    """A ``$schema`` as jsonschema's lookup compares it (an empty fragment is no fragment)."""
    try:
        return urlsplit(uri).geturl()
    except ValueError:  # an invalid IPv6 literal, say
        return uri


def _dialect(schema: dict[str, Any], source: str) -> tuple[type[_Validator], str | None]:
    """The validator class ``$schema`` names, and the URI to hand jsonschema-rs instead."""
    dialect = schema.get("$schema")
    if dialect is None:
        return _DEFAULT, None
    if not isinstance(dialect, str):
        raise InvalidSchemaError(source, f"$schema must be a URI, not {dialect!r}", ["$schema"])
    normal = _normalized(dialect)
    if normal == _DRAFT_3:
        message = f"$schema {dialect!r}: draft 3 is not supported; use draft 4 or later"
        raise InvalidSchemaError(source, message, ["$schema"])
    cls = _DIALECTS.get(normal)
    if cls is None:
        raise InvalidSchemaError(source, f"unknown $schema {dialect!r}", ["$schema"])
    return cls, (None if normal == dialect else normal)


def _check_document(schema: dict[str, Any], source: str) -> None:
    """Refuse, anywhere in ``schema``, a reference outside it, a nested ``$schema`` that
    names no known dialect, and more than ``MAX_REFERENCES`` references.

    Blind to which values are subschemas (``patterns.members``): a ``$ref``
    inside an ``enum`` is refused too.
    """
    references = 0
    for path, key, value in members(schema):
        if not isinstance(value, str):
            continue
        if key in _REFERENCES:
            if not value.startswith("#"):
                message = f"{key} {value!r} points outside this schema; only '#...' is allowed"
                raise InvalidSchemaError(source, message, path)
            references += 1
            if references > MAX_REFERENCES:
                message = f"more than {MAX_REFERENCES} references; that is the limit"
                raise InvalidSchemaError(source, message, path)
        if key == "$schema" and len(path) > 1 and _normalized(value) not in _DIALECTS:
            raise InvalidSchemaError(source, f"unknown $schema {value!r}", path)


def _count(schema: dict[str, Any], source: str) -> Evaluations:
    """What one payload value can cost (``broker.contract.references``): references that
    multiply the evaluations on a value, or apply patterns again past the limit, are
    refused.
    """
    try:
        counted = evaluations(schema)
    except LoopingReferences as loop:
        message = (
            "references loop back here, without descending into the value, in more than "
            "one way: such a loop constrains nothing, and its turns multiply"
        )
        raise InvalidSchemaError(source, message, loop.where) from None
    if counted.most > counted.own + MAX_EXPANSION:
        shown = "more than 10**15" if counted.most >= 10**15 else str(counted.most)
        message = (
            f"references make {shown} subschema evaluations on one value (each use of a "
            f"$ref evaluates its target again); at most {MAX_EXPANSION} more than the "
            "schema's own are accepted"
        )
        raise InvalidSchemaError(source, message, counted.heaviest)
    if counted.patterns > MAX_SCHEMA_WEIGHT:
        message = (
            f"references apply patterns expanding to {counted.patterns} positions to one "
            f"value; at most {MAX_SCHEMA_WEIGHT} are accepted"
        )
        raise InvalidSchemaError(source, message, counted.heaviest)
    return counted


def _schema_reason(error: jsonschema_rs.ValidationError) -> str:
    """Why a schema was refused, in words that say what to change."""
    kind = error.kind
    if isinstance(kind, jsonschema_rs.ValidationErrorKind.Format) and kind.format == "regex":
        return (
            f"pattern {_clipped(error.instance)} is not supported by the linear-time regex "
            "engine: lookarounds and backreferences are refused because they can take "
            "exponential time, and a pattern compiling to more than "
            f"{MAX_COMPILED_BYTES} bytes because its time grows with its size"
        )
    if isinstance(kind, jsonschema_rs.ValidationErrorKind.Referencing):
        return f"a reference cannot be resolved: {kind.error}"
    return error.message


def _clipped(value: object, limit: int = 80) -> str:
    text = repr(value)
    return text if len(text) <= limit else f"{text[:limit]}... ({len(text)} characters)"


def _relevance(error: jsonschema_rs.ValidationError) -> tuple[object, ...]:
    """Shallowest first, as jsonschema's ``best_match``: the error nearest the root
    says what is wrong with the payload as a whole; then a definite error before
    an ``anyOf``/``oneOf`` that only says no branch matched; then the schema's
    order, so that the choice never depends on the order the errors came in.
    """
    return (
        len(error.instance_path),
        error.kind.name in _WEAK,
        [str(part) for part in error.schema_path],
        error.message,
    )


def _most_relevant(
    errors: Iterable[jsonschema_rs.ValidationError], first: jsonschema_rs.ValidationError
) -> jsonschema_rs.ValidationError:
    return min(itertools.islice(errors, _MAX_ERRORS), key=_relevance, default=first)
