"""`.matches("literal")` is evaluated with a pattern compiled once, and answers exactly as CEL's own."""

from __future__ import annotations

import pytest
from google.protobuf import struct_pb2

from decider.cel.env import compile_condition, environment
from decider.cel.regex import MATCHES_FUNCTION, rewrite_literal_matches
from decider.v1 import decider_pb2 as pb

PATTERNS = [r"rm\s+-rf|mkfs|dd\s+if=", r"(?i)^\s*(drop|alter)\b", r"^/workspace/[^.]+$", r"\bprod(uction)?\b", "ü+"]
TEXTS = ["rm  -rf /", "sudo mkfs /dev/sda", "DROP table x", "  alter t", "/workspace/a", "/workspace/a.b",
         "deploy to production", "product", "üü", "", "plain"]


def _activation(value: object) -> object:
    args = struct_pb2.Struct()
    args.update({"v": value})
    return environment().Activation(data={"tool": pb.ToolCall(name="t", args=args), "agent": pb.Agent(),
                                          "request": pb.Request(), "context": {}, "budget": {}})


def _cel_builtin(expr: str) -> object:
    return environment().compile(expr)  # as written: CEL's own matches()


@pytest.mark.parametrize("pattern", PATTERNS)
def test_literal_patterns_answer_like_cel_matches(pattern: str) -> None:
    expr = f'tool.args.v.matches(r"{pattern}")'
    fast = compile_condition(expr)
    assert not isinstance(fast, list)
    builtin = _cel_builtin(expr)
    for text in TEXTS:
        act = _activation(text)
        assert fast.eval(act).value() is builtin.eval(act).value(), (pattern, text)


def test_the_rewrite_touches_only_literal_patterns_outside_strings() -> None:
    assert MATCHES_FUNCTION in rewrite_literal_matches('tool.args.v.matches("x")')
    assert rewrite_literal_matches("tool.args.v.matches(tool.args.p)") == "tool.args.v.matches(tool.args.p)"
    quoted = '"a.matches(\\"x\\")" == tool.name'
    assert rewrite_literal_matches(quoted) == quoted


def test_a_non_string_value_is_still_an_error_value() -> None:
    fast = compile_condition('tool.args.v.matches("x")')
    assert not isinstance(fast, list)
    value = fast.eval(_activation(3.0)).value()
    assert value is not True and value is not False  # an error: on_error decides (fail closed)


def test_compile_errors_still_point_into_the_text_as_written() -> None:
    errors = compile_condition('tool.args.v.matches("x") && agent.teem == "a"')
    assert isinstance(errors, list) and "teem" in errors[0].message
    assert errors[0].column > len('tool.args.v.matches("x") && ')
