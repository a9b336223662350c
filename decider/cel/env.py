"""The CEL environment policies are checked and evaluated in (SPEC §3).

`agent`, `tool` and `request` are the API's own proto messages, so a typo such as `agent.teem`
is a type error at load time. `tool.args` and `context` are `google.protobuf.Struct`, which CEL
sees as JSON (`dyn`): `tool.args.amount > 1000.0` holds for a JSON 2500.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from functools import lru_cache

from cel_expr_python import cel
from google.protobuf import descriptor_pool

from decider.cel import functions, regex
from decider.cel.syntax import describe_syntax_error
from decider.policy.suggest import did_you_mean
from decider.v1 import decider_pb2  # noqa: F401 - registers decider.v1 types in the default pool

__all__ = ["environment", "compile_condition", "compile_errors", "compile_combined", "CelError", "CEL_VARIABLES", "EXTENSIONS",
           "ListDecl"]

CEL_VARIABLES = ("agent", "tool", "request", "context", "budget", "session", "call")

# The CEL standard extensions cel-expr-python carries (SPEC §10): `"a,b".split(",")`, `[3, 1].sort()`,
# `math.greatest(…)`, `sets.contains(…)`, `base64.encode(…)`, and (round two) `cel.bind(name, value,
# expression)` to name a sub-expression once. cel-expr-python enables them through
# an env config (the same YAML form as cel-go's); its `ext` modules cover only some of them.
EXTENSIONS = ("strings", "lists", "math", "sets", "encoders", "bindings")
_CONFIG = "extensions:\n" + "".join(f"  - name: {name}\n" for name in EXTENSIONS)

# A bundle's named lists as CEL sees them: (name, element type) with the type one of
# "string", "double", "bool", "dyn" (a list of those), or "map:string" / "map:dyn" (a map list, keys
# strings). Each is declared as the variable `lists.<name>`, so an unknown name is a type-check
# error at build time (CEL resolves `lists.x` as one qualified name).
ListDecl = tuple[tuple[str, str], ...]
_ELEMENT = {"string": cel.Type.STRING, "double": cel.Type.DOUBLE, "bool": cel.Type.BOOL, "dyn": cel.Type.DYN}

# `ERROR: <input>:3:11: message` — one per problem; cel-expr-python joins them in one exception.
_ERROR = re.compile(r"ERROR: <input>:(\d+):(\d+): (.*?)(?=\n \||\nERROR: |\s*\[INVALID_ARGUMENT\]|$)", re.S)


@dataclass(frozen=True, slots=True)
class CelError:
    """A compile problem at a 1-based line/column inside the expression text."""

    line: int
    column: int
    message: str


@lru_cache(maxsize=64)
def environment(lists: ListDecl = (), outcome: bool = False) -> cel.Env:
    """The typed environment for bundles with these named lists (built once per distinct set of
    lists: an env is immutable and thread-safe; a bundle without lists shares the plain one).
    `outcome`: the environment of `on: outcome` rules, which also declares `result`."""
    variables = {
        "agent": cel.Type("decider.v1.Agent"),
        "tool": cel.Type("decider.v1.ToolCall"),
        "request": cel.Type("decider.v1.Request"),
        "context": cel.Type.Map(cel.Type.STRING, cel.Type.DYN),
        "budget": cel.Type.Map(cel.Type.STRING, cel.Type.Map(cel.Type.STRING, cel.Type.DOUBLE)),
        # SPEC §10: {"calls": [{tool, server, args, outcome, labels, status, at}], "labels": [...]}.
        # A map of dyn: `session.calls` and `session.labels` are the two keys (engine/session.py).
        "session": cel.Type.Map(cel.Type.STRING, cel.Type.DYN),
        # SPEC §10 round two: "call" or "text" (engine/call_source.py). A qualified name, like
        # `lists.<name>`, so that `call.sorce` is a build error, not a condition that never holds.
        "call.source": cel.Type.STRING,
    }
    if outcome:
        # SPEC §10 round two: the tool's result (engine/outcome.py), as text and, where it is JSON,
        # parsed (`null` otherwise). Qualified names, like `call.source`: `result.txet` is a build error.
        variables["result.text"] = cel.Type.STRING
        variables["result.json"] = cel.Type.DYN
    for name, element in lists:
        if element.startswith("map:"):
            variables[f"lists.{name}"] = cel.Type.Map(cel.Type.STRING, _ELEMENT[element[4:]])
        else:
            variables[f"lists.{name}"] = cel.Type.List(_ELEMENT[element])
    return cel.NewEnv(
        descriptor_pool=descriptor_pool.Default(),
        config=cel.NewEnvConfigFromYaml(_CONFIG),
        variables=variables,
        functions=[*functions.declarations(), regex.declaration(), *regex.capture_declarations()],
    )


_UNDEFINED_FIELD = re.compile(r"^undefined field '([^']+)' not found in struct '([\w.]+)'$")


def _suggest_field(message: str) -> str:
    """`undefined field 'teem' …` → the same, plus "; did you mean 'team'?" from the message's fields."""
    m = _UNDEFINED_FIELD.match(message)
    if not m:
        return message
    try:
        fields = [f.name for f in descriptor_pool.Default().FindMessageTypeByName(m[2]).fields]
    except KeyError:
        return message
    return message + did_you_mean(m[1], fields)


def compile_errors(expression: str, exc: RuntimeError) -> list[CelError]:
    """The located problems in cel-expr-python's compile exception for `expression`."""
    found = [CelError(int(m[1]), int(m[2]), _suggest_field(" ".join(m[3].split())))
             for m in _ERROR.finditer(str(exc))]
    if found and found[0].message.startswith("Syntax error: "):
        # The parser's recovery after the first syntax error mostly reports its consequences
        # (an unclosed string, then "mismatched '<EOF>'"): the first one, in words, is the one to fix.
        first = found[0]
        return [CelError(first.line, first.column,
                         describe_syntax_error(expression, first.line, first.column, first.message))]
    return found or [CelError(1, 1, " ".join(str(exc).split()))]


def compile_condition(expression: str, env: cel.Env | None = None) -> cel.Expression | list[CelError]:
    """Compile and type-check one condition; a list of errors if it is not a valid bool condition."""
    env = env or environment()
    try:
        program = env.compile(expression)
    except RuntimeError as e:
        return compile_errors(expression, e)
    rtype = program.return_type()
    if rtype != cel.Type.BOOL and rtype != cel.Type.DYN:
        return [CelError(1, 1, f"a condition must be a bool, this one is {rtype.name()}")]
    # Checked as written; evaluated with literal regexes compiled once (see regex.py).
    fast = regex.rewrite_literal_matches(expression)
    if fast != expression:
        try:
            rewritten = env.compile(fast)
        except RuntimeError:
            return program
        if rewritten.return_type() == rtype:
            return rewritten
    return program


def compile_combined(expressions: list[str], env: cel.Env | None = None) -> cel.Expression | None:
    """All of a policy's conditions as one program returning a list of their values.

    Each condition was already checked on its own (`compile_condition`); this only saves the fixed
    cost of one evaluation per rule. Returns None when the list cannot be built (the engine then
    evaluates rule by rule). A newline before each closing parenthesis keeps a trailing `//` comment
    from swallowing it.
    """
    if not expressions:
        return None
    parts = ", ".join(f"({regex.rewrite_literal_matches(e)}\n)" for e in expressions)
    try:
        return (env or environment()).compile(f"[{parts}]")
    except RuntimeError:
        return None
