"""Policy authors get errors in words (issue 12, item 15): CEL syntax errors say what was expected
instead of the parser's token sets, keeping file:line:col; unknown keys suggest the closest valid key."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from decider.bundle.compile import load_bundle
from decider.cel.env import compile_condition
from decider.errors import PolicyLoadError

BUNDLE = "apiVersion: decider/v1\nkind: Bundle\nmetadata: {name: t, version: 1.0.0}\nspec: {default: deny}\n"


@pytest.mark.parametrize(("expression", "column", "message"), [
    ("tool.args.amount > 1 &&", 24, "expected an expression after '&&', found the end of the condition"),
    ("tool.name in", 13, "expected an expression after 'in', found the end of the condition"),
    ("(tool.args.a > 1", 17, "expected ')' to close the '(', found the end of the condition"),
    ("tool.args[1", 12, "expected ']' to close the '[', found the end of the condition"),
    ('tool.name == "abc', 14, 'a string is not closed: "abc has no closing "'),
    ("tool.name tool.server", 11, "unexpected 'tool' after a complete expression"),
    ("tool.name == @", 14, "'@' cannot appear in a condition"),
    ("[1, 2", 6, "expected ']' or ',', found the end of the condition"),
    ("true ? false", 13, "expected ':', found the end of the condition"),
])
def test_cel_syntax_errors_are_said_in_words(expression: str, column: int, message: str) -> None:
    errors = compile_condition(expression)
    assert isinstance(errors, list) and len(errors) == 1
    assert (errors[0].line, errors[0].column) == (1, column)
    assert errors[0].message.startswith("syntax error: " + message), errors[0].message
    assert "NUM_FLOAT" not in errors[0].message and "mismatched" not in errors[0].message


def test_a_syntax_error_in_a_policy_file_keeps_its_position_and_unknown_keys_suggest(tmp_path: Path) -> None:
    (tmp_path / "bundle.yaml").write_text(BUNDLE.replace("default: deny", "default: deny, tool: {}"))
    (tmp_path / "p.yaml").write_text(textwrap.dedent("""\
        apiVersion: decider/v1
        kind: Policy
        metadata: {name: p, ownr: x}
        spec:
          match: {tols: ["a.*"]}
          rules:
            - id: r
              effect: deny
              when: tool.args.amount > 1 &&
            - id: r2
              effect: deny
              resaon: x
        """))
    with pytest.raises(PolicyLoadError) as err:
        load_bundle(tmp_path)
    got = [str(e).removeprefix(f"{tmp_path}/") for e in err.value.errors]
    assert got == [
        "bundle.yaml:4:23: unknown key 'tool'; did you mean 'tools'?",
        "p.yaml:3:21: unknown key 'ownr'; did you mean 'owner'?",
        "p.yaml:5:11: unknown key 'tols'; did you mean 'tools'?",
        "p.yaml:9:36: syntax error: expected an expression after '&&', found the end of the condition",
        "p.yaml:12:7: unknown key 'resaon'; did you mean 'reason'?",
    ]


@pytest.mark.parametrize(("expression", "suggestion"), [
    ('agent.teem == "x"', "undefined field 'teem' not found in struct 'decider.v1.Agent'; did you mean 'team'?"),
    ("tool.agrs.amount > 1", "undefined field 'agrs' not found in struct 'decider.v1.ToolCall'; did you mean 'args'?"),
    ('request.enviroment == "x"', "; did you mean 'environment'?"),
    ('agent.zzzzzz == "x"', "undefined field 'zzzzzz' not found in struct 'decider.v1.Agent'"),
])
def test_an_unknown_field_of_a_typed_variable_suggests_the_closest(expression: str, suggestion: str) -> None:
    errors = compile_condition(expression)
    assert isinstance(errors, list)
    assert errors[0].message.endswith(suggestion), errors[0].message
