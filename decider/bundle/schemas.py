"""Tool argument schemas from the catalogue (`spec.tools.<name>.args`, JSON Schema in the MCP
`inputSchema` dialect; SPEC §9): validators built once at load, and the build-time check that a
condition reads only arguments its tools declare.

Validators come from the `jsonschema` library (its dialect is picked by `$schema`, the latest draft
when absent, as MCP servers assume). Building one costs ~100 µs-1 ms, so it is done at load; the
request path only runs `is_valid` (and, for a call that fails, `iter_errors` for the message).
"""

from __future__ import annotations

import fnmatch
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import jsonschema
from google.protobuf import struct_pb2
from jsonschema.exceptions import SchemaError, ValidationError, best_match

from decider.policy.models import ToolInfo

__all__ = ["ToolSchema", "compile_schemas", "argument_reads", "ArgRead", "violation"]


@dataclass(frozen=True, slots=True)
class ToolSchema:
    pattern: str                          # the catalogue key (a tool name or a glob)
    validator: Any                        # a jsonschema Validator instance, built once
    declared: frozenset[str] | None       # top-level argument names; None when any name may appear
    fast: Callable[[Any], bool] | None = None   # exact check for plain schemas (see fast_check)
    on_struct: Callable[[Any], bool] | None = None   # True only when valid, on the Struct (struct_check)

    def is_valid(self, args: dict[str, Any]) -> bool:
        if self.fast is not None:
            return self.fast(args)
        return bool(self.validator.is_valid(args))


def _declared(schema: Mapping[str, Any]) -> frozenset[str] | None:
    """The argument names a schema declares, or None when it cannot say (no `properties`, or
    `patternProperties`/`additionalProperties` schemas that admit other names, or combinators)."""
    props = schema.get("properties")
    if not isinstance(props, dict):
        return None
    if "patternProperties" in schema or any(k in schema for k in ("allOf", "anyOf", "oneOf", "$ref")):
        return None
    extra = schema.get("additionalProperties", True)
    if extra is not True and extra is not False:
        return None   # a schema for the other names: any name may appear
    return frozenset(props)


def compile_schemas(tools: Mapping[str, ToolInfo],
                    error: Callable[[str, str], None]) -> dict[str, ToolSchema]:
    """Each catalogue entry with `args`, checked as a schema; `error(tool, message)` for a bad one."""
    out: dict[str, ToolSchema] = {}
    for name, info in tools.items():
        if info.args is None:
            continue
        cls = jsonschema.validators.validator_for(info.args)
        try:
            cls.check_schema(info.args)
        except SchemaError as e:
            path = "".join(f".{p}" if isinstance(p, str) else f"[{p}]" for p in e.absolute_path)
            error(name, f"tool {name!r}: args is not a valid JSON Schema at args{path}: {e.message}")
            continue
        plain = cls.__name__ in _FAST_DRAFTS
        out[name] = ToolSchema(name, cls(info.args), _declared(info.args), fast_check(info.args) if plain else None,
                               struct_check(info.args) if plain else None)
    return out


def violation(schema: ToolSchema, args: dict[str, Any]) -> str:
    """The reason text for arguments that fail `schema`: the JSON path and what is wrong."""
    err: ValidationError | None = best_match(schema.validator.iter_errors(args))
    if err is None:  # pragma: no cover - only called after is_valid said False
        return "arguments do not match the tool's schema"
    return f"{err.json_path}: {err.message}"


# ---- which arguments a condition reads ---------------------------------------------------------

@dataclass(frozen=True, slots=True)
class ArgRead:
    name: str
    line: int          # 1-based, inside the expression text
    column: int        # 1-based: the first character of the argument's name


_STRING = re.compile(
    r"""(?:[rRbB]{0,2})(?:'''.*?'''|\"\"\".*?\"\"\"|'(?:\\.|[^'\\\n])*'|"(?:\\.|[^"\\\n])*")""", re.S)
_COMMENT = re.compile(r"//[^\n]*")
_SELECT = re.compile(r"(?<![\w.])tool\s*\.\s*args\s*(?:\.\s*([A-Za-z_]\w*)|\[)")


def argument_reads(expression: str) -> list[ArgRead]:
    """Every `tool.args.NAME` and `tool.args["NAME"]` in a condition, with where NAME starts.

    A scan of the text with string literals and comments blanked out (positions kept), so a
    `"tool.args.x"` inside a string is not a read. CEL reaches a Struct field only through these
    two forms (or `tool.args` as a whole map, which names no argument)."""
    # Strings first (a `//` inside a string is not a comment), keeping each literal's quote chars
    # so a `["name"]` index can be read back from the original text.
    masked_chars = list(expression)
    for m in _STRING.finditer(expression):
        for i in range(m.start(), m.end()):
            if expression[i] != "\n":
                masked_chars[i] = " "
    masked = "".join(masked_chars)
    for m in _COMMENT.finditer(masked):
        masked = masked[:m.start()] + " " * (m.end() - m.start()) + masked[m.end():]
    reads: list[ArgRead] = []
    for m in _SELECT.finditer(masked):
        if m.group(1) is not None:
            name, start = m.group(1), m.start(1)
        else:
            at = m.end()
            while at < len(expression) and expression[at].isspace():
                at += 1
            lit = _STRING.match(expression, at)
            if lit is None:
                continue   # an index that is not a literal: nothing to check at build time
            body = lit.group(0).lstrip("rRbB")
            if body[:3] in ("'''", '"""'):
                continue
            name, start = body[1:-1], at + (len(lit.group(0)) - len(body)) + 1
            if "\\" in name:
                continue   # an escaped name: too clever to check by text, left to run time
        before = expression[:start]
        line = before.count("\n") + 1
        column = start - (before.rfind("\n") + 1) + 1
        reads.append(ArgRead(name, line, column))
    return reads


def tools_covered(patterns: tuple[str, ...], catalogue: Mapping[str, ToolInfo]) -> list[str] | None:
    """The catalogue entries a policy's `match.tools` stands for, or None when it covers a tool
    the catalogue does not describe (or any tool: no `match.tools`).

    A glob in `match.tools` stands for the named catalogue tools it matches (and a catalogue entry
    spelled exactly as the glob, when that entry has a schema); catalogue globs without a schema,
    such as `"payments.*": {risk_tier: 4}`, only set defaults and do not count. An exact name must
    be a catalogue entry, or fall under a catalogue glob (the most specific one describes it)."""
    if not patterns:
        return None
    found: list[str] = []
    for p in patterns:
        if any(c in p for c in "*?["):
            rx = re.compile(fnmatch.translate(p))
            hits = [k for k in catalogue if not any(c in k for c in "*?[") and rx.match(k)]
            if p in catalogue and catalogue[p].args is not None:
                hits.append(p)
        elif p in catalogue:
            hits = [p]
        else:
            hits = [k for k in catalogue if any(c in k for c in "*?[") and fnmatch.fnmatchcase(p, k)]
            hits = sorted(hits, key=len, reverse=True)[:1]   # the most specific glob describes it
        if not hits:
            return None
        found.extend(hits)
    return found


__all__ += ["tools_covered"]


# ---- a fast path for the schemas tools actually publish ----------------------------------------
# jsonschema's `is_valid` costs ~10 µs even for a two-property schema (it walks keyword
# dispatch tables per call). MCP `inputSchema`s are almost always plain: typed properties,
# `required`, `additionalProperties`, an `anyOf` of types. For a schema built only from the
# keywords below, a closure tree decides validity exactly as jsonschema would (same type rules:
# bool is not a number, 2.0 is an integer from draft 6 on); any other keyword, and the whole
# schema falls back to jsonschema. A call that fails the fast check is re-checked by jsonschema
# for its message, so the reason text always comes from the library.

Check = Callable[[Any], bool]
_ANNOTATIONS = frozenset({"title", "description", "default", "examples", "$schema", "$comment", "$id", "format",
                          "deprecated", "readOnly", "writeOnly"})
_FAST_DRAFTS = frozenset({"Draft6Validator", "Draft7Validator", "Draft201909Validator", "Draft202012Validator"})


def _is_number(x: Any) -> bool:
    t = type(x)
    return t is float or t is int


def _is_integer(x: Any) -> bool:
    t = type(x)
    return t is int or (t is float and x.is_integer())


_TYPES: dict[str, Check] = {
    "string": lambda x: type(x) is str,
    "number": _is_number,
    "integer": _is_integer,
    "boolean": lambda x: type(x) is bool,
    "object": lambda x: type(x) is dict,
    "array": lambda x: type(x) is list,
    "null": lambda x: x is None,
}


def _all(checks: list[Check]) -> Check:
    if len(checks) == 1:
        return checks[0]
    if len(checks) == 2:
        a, b = checks
        return lambda x: a(x) and b(x)
    tup = tuple(checks)

    def every(x: Any) -> bool:
        for c in tup:
            if not c(x):
                return False
        return True
    return every


def fast_check(schema: Any) -> Check | None:
    """An exact validity check for a plain schema, or None when it uses anything else."""
    if schema is True:
        return lambda x: True
    if schema is False:
        return lambda x: False
    if not isinstance(schema, dict):
        return None
    checks: list[Check] = []
    for key, value in schema.items():
        if key in _ANNOTATIONS:
            continue
        made = _keyword(key, value, schema)
        if made is None:
            return None
        if made is not _NOTHING:
            checks.append(made)
    return _all(checks) if checks else (lambda x: True)


def _nothing(x: Any) -> bool:
    return True


_NOTHING: Check = _nothing
_MISSING = object()


def _keyword(key: str, value: Any, schema: dict[str, Any]) -> Check | None:  # noqa: C901 - one branch per keyword
    if key == "type":
        names = [value] if isinstance(value, str) else value
        if not isinstance(names, list) or not all(isinstance(n, str) and n in _TYPES for n in names):
            return None
        preds = [_TYPES[n] for n in names]
        return preds[0] if len(preds) == 1 else (lambda x: any(p(x) for p in preds))
    if key == "properties":
        if not isinstance(value, dict):
            return None
        subs = {name: fast_check(s) for name, s in value.items()}
        if any(c is None for c in subs.values()):
            return None
        items = tuple(subs.items())

        def properties(x: Any) -> bool:
            if type(x) is dict:
                for name, c in items:
                    v = x.get(name, _MISSING)
                    if v is not _MISSING and not c(v):  # type: ignore[misc]
                        return False
            return True
        return properties
    if key == "required":
        if not isinstance(value, list) or not all(isinstance(n, str) for n in value):
            return None
        names = tuple(value)

        def required(x: Any) -> bool:
            if type(x) is dict:
                for n in names:
                    if n not in x:
                        return False
            return True
        return required
    if key == "additionalProperties":
        if "patternProperties" in schema:
            return None
        known = frozenset(schema.get("properties") or ())
        if value is True:
            return _NOTHING
        extra = fast_check(value)
        if extra is None:
            return None
        return lambda x: type(x) is not dict or all(k in known or extra(v) for k, v in x.items())
    if key == "items":
        sub = fast_check(value) if isinstance(value, (dict, bool)) else None
        if sub is None:
            return None
        return lambda x: type(x) is not list or all(sub(v) for v in x)
    if key in ("minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum"):
        if not _is_number(value):
            return None
        op = {"minimum": lambda x: x >= value, "maximum": lambda x: x <= value,
              "exclusiveMinimum": lambda x: x > value, "exclusiveMaximum": lambda x: x < value}[key]
        return lambda x: not _is_number(x) or op(x)
    if key in ("minLength", "maxLength", "minItems", "maxItems"):
        if type(value) is not int:
            return None
        kind = str if key.endswith("Length") else list
        if key.startswith("min"):
            return lambda x: type(x) is not kind or len(x) >= value
        return lambda x: type(x) is not kind or len(x) <= value
    if key == "enum":
        # Strings only: jsonschema's equality (1 == 1.0, True != 1) differs from Python's.
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            return None
        allowed = frozenset(value)
        return lambda x: type(x) is str and x in allowed
    if key == "anyOf":
        if not isinstance(value, list) or not value:
            return None
        subs = [fast_check(s) for s in value]
        if any(c is None for c in subs):
            return None
        return lambda x: any(c(x) for c in subs)  # type: ignore[misc]
    return None


__all__ += ["fast_check"]


# ---- fast path on the request's Struct itself ----------------------------------------------------
# Converting `tool.args` to Python costs more than checking it. For an object schema whose
# properties are all scalars (the usual MCP tool), the check reads the Struct's Values directly.
# It may only say True when jsonschema would: anything it cannot decide returns False, and the
# caller then converts and checks properly (so a False costs the slow path, never a wrong answer).

ValueCheck = Callable[[Any], bool]
_KIND = {"string": "string_value", "number": "number_value", "integer": "number_value", "boolean": "bool_value",
         "null": "null_value", "object": "struct_value", "array": "list_value"}
_SCALAR_KEYS = frozenset({"type", "enum", "minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum",
                          "minLength", "maxLength"}) | _ANNOTATIONS
_TOP_KEYS = frozenset({"type", "properties", "required", "additionalProperties"}) | _ANNOTATIONS


def _value_check(sub: Any) -> ValueCheck | None:  # noqa: C901 - one branch per keyword
    if sub is True or sub == {}:
        return lambda v: True
    if not isinstance(sub, dict) or not set(sub) <= _SCALAR_KEYS:
        return None
    names = sub.get("type")
    names = [names] if isinstance(names, str) else names
    if names is not None and (not isinstance(names, list) or not all(n in _KIND for n in names)):
        return None
    kinds = frozenset(_KIND[n] for n in names) if names else None
    integer_only = bool(names) and "integer" in names and "number" not in names
    enum = sub.get("enum")
    if enum is not None and (not isinstance(enum, list) or not all(isinstance(e, str) for e in enum)):
        return None
    allowed = frozenset(enum) if enum is not None else None
    bounds = [(k, sub[k]) for k in ("minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum") if k in sub]
    if not all(_is_number(b) for _, b in bounds):
        return None
    lo_len, hi_len = sub.get("minLength"), sub.get("maxLength")
    if any(x is not None and type(x) is not int for x in (lo_len, hi_len)):
        return None
    if kinds is not None and "number_value" not in kinds and allowed is None and lo_len is None and hi_len is None:
        # Only a type to check (the common `{"type": "string"}`): one call per value.
        return lambda v: (v.WhichOneof("kind") or "null_value") in kinds

    def check(v: Any) -> bool:
        kind = v.WhichOneof("kind") or "null_value"
        if kinds is not None and kind not in kinds:
            return False
        if kind == "string_value":
            if allowed is not None or lo_len is not None or hi_len is not None:
                s = v.string_value
                if allowed is not None and s not in allowed:
                    return False
                if (lo_len is not None and len(s) < lo_len) or (hi_len is not None and len(s) > hi_len):
                    return False
            return True
        if allowed is not None:
            return False
        if kind == "number_value":
            x = v.number_value
            if x != x or x in (float("inf"), float("-inf")) or (integer_only and not x.is_integer()):
                return False
            for k, b in bounds:
                if (k == "minimum" and x < b) or (k == "maximum" and x > b) or \
                        (k == "exclusiveMinimum" and x <= b) or (k == "exclusiveMaximum" and x >= b):
                    return False
        return True
    return check


def struct_check(schema: Any) -> Callable[[Any], bool] | None:
    """A check on a `google.protobuf.Struct` for a flat object schema, or None when not flat."""
    if not isinstance(schema, dict) or not set(schema) <= _TOP_KEYS:
        return None
    if schema.get("type", "object") != "object":
        return None
    extra = schema.get("additionalProperties", True)
    if extra is not True and extra is not False:
        return None
    props = schema.get("properties") or {}
    if not isinstance(props, dict):
        return None
    # Properties that only constrain the value's kind (the usual `{"type": "string"}`) are checked
    # inline in the loop below; the others through their ValueCheck.
    kinds_of = {name: k for name, sub in props.items() if (k := _kinds_only(sub)) is not None}
    # One kind (not null: an unset Value reads as null): `HasField` is cheaper than `WhichOneof`.
    single = {name: next(iter(k)) for name, k in kinds_of.items() if len(k) == 1 and "null_value" not in k}
    checks = {name: _value_check(sub) for name, sub in props.items() if name not in kinds_of}
    if any(c is None for c in checks.values()):
        return None
    required = tuple(schema.get("required") or ())
    closed = extra is False

    # Walk the arguments present (usually one or two), not every property the schema declares; by
    # key, then `fields[k]`: a protobuf map's `items()` costs several times a key loop.
    def check(args: Any) -> bool:
        fields = args.fields
        for name in required:
            if name not in fields:
                return False
        for k in fields:
            one = single.get(k)
            if one is not None:
                if not _has_field(fields[k], one):
                    return False
                continue
            kinds = kinds_of.get(k)
            if kinds is not None:
                if (_which_oneof(fields[k], "kind") or "null_value") not in kinds:
                    return False
                continue
            c = checks.get(k)
            if c is None:
                if closed:
                    return False
            elif not c(fields[k]):
                return False
        return True
    return check


_ANY_KIND = frozenset(_KIND.values())
# Unbound: `value.HasField(…)` on a upb message builds a bound method on every call.
_has_field = struct_pb2.Value.HasField
_which_oneof = struct_pb2.Value.WhichOneof


def _kinds_only(sub: Any) -> frozenset[str] | None:
    """The Value kinds a property schema admits when that is all it checks (`{"type": "string"}`,
    `{}`), else None. Numbers are never only a kind: NaN, infinities and `integer` need a look."""
    if sub is True or sub == {}:
        return _ANY_KIND
    if not isinstance(sub, dict) or not set(sub) <= _ANNOTATIONS | {"type"}:
        return None
    names = sub.get("type")
    names = [names] if isinstance(names, str) else names
    if not names or not isinstance(names, list) or not all(isinstance(n, str) and n in _KIND for n in names):
        return None
    kinds = frozenset(_KIND[n] for n in names)
    return None if "number_value" in kinds else kinds


__all__ += ["struct_check"]
