"""Loading a bundle source: every error at once, each as file:line:col; revisions are content hashes."""

from __future__ import annotations

import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from decider.bundle.compile import load_bundle
from decider.errors import PolicyLoadError

from .helpers import POLICIES, ROOT

BUNDLE = """\
apiVersion: decider/v1
kind: Bundle
metadata:
  name: t
  version: 1.0.0
spec:
  default: deny
"""


def write(folder: Path, name: str, text: str) -> Path:
    path = folder / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(textwrap.dedent(text))
    return path


def policy(rules: str, match: str = 'tools: ["t.*"]') -> str:
    return (
        "apiVersion: decider/v1\nkind: Policy\nmetadata:\n  name: p\nspec:\n  match:\n    "
        + match + "\n  rules:\n" + textwrap.indent(textwrap.dedent(rules), "    ")
    )


def errors_of(folder: Path) -> list[str]:
    with pytest.raises(PolicyLoadError) as exc:
        load_bundle(folder)
    return [str(e) for e in exc.value.errors]


def test_five_mistakes_give_five_located_errors_in_one_run(tmp_path: Path) -> None:
    write(tmp_path, "bundle.yaml", BUNDLE)
    # 1: bad YAML (unclosed flow sequence)
    write(tmp_path, "a_bad_yaml.yaml", "apiVersion: decider/v1\nkind: Policy\nspec: [1, 2\n")
    # 2: unknown key (typo `whne`), 3: CEL syntax error — in the same document
    write(tmp_path, "b_rules.yaml", policy("""\
        - id: r1
          effect: allow
          whne: true
        - id: r2
          effect: deny
          when: tool.args.amount >
        """))
    # 4: unknown field of a typed message, 5: wrong type — again in one document
    write(tmp_path, "c_more.yaml", policy("""\
        - id: r3
          effect: deny
          when: agent.teem == "x"
        - id: r4
          effect: sometimes
        """))
    d = str(tmp_path)
    assert errors_of(tmp_path) == [
        f"{d}/a_bad_yaml.yaml:4:1: bad YAML: did not find expected ',' or ']'",
        f"{d}/b_rules.yaml:11:7: unknown key 'whne'; did you mean 'when'?",
        f"{d}/b_rules.yaml:14:31: syntax error: expected an expression after '>', found the end of the condition",
        f"{d}/c_more.yaml:11:18: undefined field 'teem' not found in struct 'decider.v1.Agent'; did you mean 'team'?",
        f"{d}/c_more.yaml:13:15: spec.rules.1.effect: Input should be 'allow', 'deny', 'require_approval' or 'label'",
    ]


def test_each_error_kind_is_located(tmp_path: Path) -> None:
    write(tmp_path, "bundle.yaml", BUNDLE)
    write(tmp_path, "p.yaml", policy("""\
        - id: typo-key
          effect: allow
          whne: true
        - id: syntax
          effect: deny
          when: tool.args.amount >
        - id: unknown-field
          effect: deny
          when: agent.teem == "x"
        - id: syntax
          effect: allow
        - id: wrong-type
          effect: sometimes
        - id: unknown-variable
          effect: deny
          when: principal.id == "x"
        - id: type-error
          effect: deny
          when: agent.id + 1 == 2
        """))
    f = f"{tmp_path}/p.yaml"
    assert errors_of(tmp_path) == [
        f"{f}:11:7: unknown key 'whne'; did you mean 'when'?",
        f"{f}:14:31: syntax error: expected an expression after '>', found the end of the condition",
        f"{f}:17:18: undefined field 'teem' not found in struct 'decider.v1.Agent'; did you mean 'team'?",
        f"{f}:18:11: duplicate rule id 'syntax' (first at {f}:12:11)",
        f"{f}:21:15: spec.rules.4.effect: Input should be 'allow', 'deny', 'require_approval' or 'label'",
        f"{f}:24:22: undeclared reference to 'principal.id' (in container '')",
        f"{f}:27:22: found no matching overload for '_+_' applied to '(string, int)'",
    ]


def test_block_scalar_condition_errors_point_into_the_block(tmp_path: Path) -> None:
    write(tmp_path, "bundle.yaml", BUNDLE)
    write(tmp_path, "p.yaml", policy("""\
        - id: multi
          effect: deny
          when: |
            tool.name == "x"
              && agent.teem == "y"
        """))
    (err,) = errors_of(tmp_path)
    assert err == f"{tmp_path}/p.yaml:13:19: undefined field 'teem' not found in struct 'decider.v1.Agent'; did you mean 'team'?"


def test_missing_bundle_and_unknown_kind_are_reported(tmp_path: Path) -> None:
    write(tmp_path, "p.yaml", "apiVersion: decider/v1\nkind: Polcy\n")
    errs = errors_of(tmp_path)
    assert f"{tmp_path}/p.yaml:2:7: unknown kind 'Polcy': use Bundle, Policy or Agent" in errs
    assert any("no document of kind Bundle" in e for e in errs)


def test_duplicate_yaml_key_is_an_error_not_last_wins(tmp_path: Path) -> None:
    write(tmp_path, "bundle.yaml", BUNDLE)
    write(tmp_path, "p.yaml", policy("""\
        - id: r
          effect: allow
          when: "false"
          when: "true"
        """))
    assert errors_of(tmp_path) == [f"{tmp_path}/p.yaml:12:7: duplicate key 'when'"]


def test_approvers_only_on_require_approval(tmp_path: Path) -> None:
    write(tmp_path, "bundle.yaml", BUNDLE)
    write(tmp_path, "p.yaml", policy("""\
        - id: r
          effect: allow
          approvers: ["group:x"]
        """))
    (err,) = errors_of(tmp_path)
    assert "approvers and approval_ttl are only for effect require_approval" in err


def test_test_suites_are_not_policy_documents(tmp_path: Path) -> None:
    write(tmp_path, "bundle.yaml", BUNDLE)
    write(tmp_path, "p.yaml", policy("- id: r\n  effect: allow\n"))
    write(tmp_path, "p_test.yaml", "anything: [not a policy\n")
    assert load_bundle(tmp_path).name == "t"


def test_identical_sources_give_identical_revisions_and_any_change_changes_it(tmp_path: Path) -> None:
    a, b = tmp_path / "a", tmp_path / "b"
    shutil.copytree(POLICIES, a)
    shutil.copytree(POLICIES, b)
    ra, rb = load_bundle(a).revision, load_bundle(b).revision
    assert ra == rb and len(ra) == 64
    payments = b / "payments.yaml"
    payments.write_text(payments.read_text().replace("> 1000.0", "> 1001.0", 1))
    assert load_bundle(b).revision != ra
    (b / "extra").mkdir()
    (b / "extra" / "empty.yaml").write_text("# only a comment\n")
    payments.write_text((a / "payments.yaml").read_text())
    assert load_bundle(b).revision != ra  # an added file is a content change too


def test_check_command_prints_every_error_and_exits_nonzero(tmp_path: Path) -> None:
    write(tmp_path, "bundle.yaml", BUNDLE)
    write(tmp_path, "p.yaml", policy("""\
        - id: a
          effect: deny
          when: agent.teem == "x"
        - id: b
          effect: deny
          when: tool.nam == "x"
        """))
    run = subprocess.run([sys.executable, "-m", "decider", "check", str(tmp_path)],
                         capture_output=True, text=True, cwd=ROOT)
    assert run.returncode == 1
    lines = run.stdout.splitlines()
    assert lines[0] == f"{tmp_path}/p.yaml:11:18: undefined field 'teem' not found in struct 'decider.v1.Agent'; did you mean 'team'?"
    assert lines[1] == f"{tmp_path}/p.yaml:14:17: undefined field 'nam' not found in struct 'decider.v1.ToolCall'; did you mean 'name'?"
    assert lines[2] == f"2 error(s) in {tmp_path}"


def test_check_command_accepts_the_example_bundle() -> None:
    run = subprocess.run([sys.executable, "-m", "decider", "check", str(POLICIES)],
                         capture_output=True, text=True, cwd=ROOT)
    assert run.returncode == 0, run.stdout + run.stderr
    assert run.stdout.startswith("ok: acme-agents 1.0.0 revision ")
