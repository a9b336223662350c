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
from jsonschema.exceptions import SchemaError, ValidationError, best_match

from decider.policy.models import ToolInfo

__all__ = ["ToolSchema", "compile_schemas", "argument_reads", "ArgRead", "violation"]


@dataclass(frozen=True, slots=True)
class ToolSchema:
    pattern: str                          # the catalogue key (a tool name or a glob)
    validator: Any                        # a jsonschema Validator instance, built once
    declared: frozenset[str] | None       # top-level argument names; None when any name may appear

    def is_valid(self, args: dict[str, Any]) -> bool:
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
        out[name] = ToolSchema(name, cls(info.args), _declared(info.args))
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
    the catalogue does not describe (or any tool: no `match.tools`). A glob stands for the
    catalogue entries it matches; an exact name must be in the catalogue (or under one of its globs)."""
    if not patterns:
        return None
    found: list[str] = []
    for p in patterns:
        if any(c in p for c in "*?["):
            rx = re.compile(fnmatch.translate(p))
            hits = [k for k in catalogue if k == p or rx.match(k)]
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
