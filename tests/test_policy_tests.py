"""`decider test`: policy unit tests with coverage, readable failures and CI exit codes."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import textwrap
import xml.etree.ElementTree as ET
from pathlib import Path

from .helpers import POLICIES, ROOT


def cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "decider", *args], capture_output=True, text=True, cwd=ROOT,
                          timeout=60)


def suite(tmp: Path, cases: str, name: str = "extra_test.yaml") -> Path:
    path = tmp / name
    path.write_text("apiVersion: decider/v1\nkind: TestSuite\nmetadata: {name: extra}\n"
                    "fixtures:\n  agents:\n    refunds: {id: refund-bot, team: finance, model: gpt-5}\n"
                    "cases:\n" + textwrap.indent(textwrap.dedent(cases), "  "))
    return path


def test_example_bundle_tests_pass_with_full_rule_coverage() -> None:
    run = cli("test", str(POLICIES), "--coverage", "--min-coverage", "100")
    assert run.returncode == 0, run.stdout + run.stderr
    assert "rule coverage: 34/34 rules decided at least one case (100.0%)" in run.stdout
    assert run.stdout.rstrip().endswith("59 passed, 0 failed")


def test_a_failure_shows_expected_actual_matched_rules_and_the_fields_read(tmp_path: Path) -> None:
    path = suite(tmp_path, """\
        - name: wrong expectation
          agent: refunds
          tool: payments.refund
          args: {amount: 2500}
          request: {estimated_cost: 5.0}
          expect: {outcome: allow, rule: small-refunds}
        """)
    run = cli("test", str(POLICIES), str(path))
    assert run.returncode == 1
    out = run.stdout
    assert f"FAIL  wrong expectation  ({path}:8)" in out
    assert "expected: allow by small-refunds" in out
    assert "actual:   require_approval by refund-needs-approval-above-1000 (Refunds above 1000 need a finance" in out
    assert "matched:  refund-needs-approval-above-1000" in out
    assert "tool.args.amount = 2500.0" in out
    assert "budget.team.remaining = 500.0" in out and "request.estimated_cost = 5.0" in out
    assert out.rstrip().endswith("0 passed, 1 failed")


def test_coverage_names_rules_never_matched_and_always_overridden(tmp_path: Path) -> None:
    path = suite(tmp_path, """\
        - name: big refund (approval rule decides; nothing else matches)
          agent: refunds
          tool: payments.refund
          args: {amount: 2500}
          expect: {outcome: require_approval}
        - name: unreviewed model with a small refund (the deny overrides small-refunds)
          agent: {id: refund-bot, team: finance, model: old}
          tool: payments.refund
          args: {amount: 5}
          expect: {outcome: deny, rule: no-refunds-from-unreviewed-models}
        """)
    run = cli("test", str(POLICIES), str(path), "--format", "json", "--min-coverage", "50")
    assert run.returncode == 1  # both cases pass, coverage is far below 50%
    report = json.loads(run.stdout)
    assert (report["passed"], report["failed"]) == (2, 0)
    cov = report["coverage"]
    assert cov["decided"] == ["refund-needs-approval-above-1000", "no-refunds-from-unreviewed-models"]
    assert cov["overridden"] == ["small-refunds"]
    assert "db-deny-ddl" in cov["never_matched"] and len(cov["never_matched"]) == 31
    assert cov["percent"] == round(200 / 34, 2)


def test_tests_that_do_not_load_exit_2_with_located_errors(tmp_path: Path) -> None:
    path = suite(tmp_path, """\
        - name: unknown fixture and a typo
          agent: nobody
          tool: payments.refund
          expct: {outcome: allow}
        """)
    run = cli("test", str(POLICIES), str(path))
    assert run.returncode == 2
    assert f"{path}:11:5: cases.0.expct: Extra inputs are not permitted" in run.stderr


def test_a_broken_bundle_exits_2(tmp_path: Path) -> None:
    broken = tmp_path / "b"
    shutil.copytree(POLICIES, broken)
    (broken / "http.yaml").write_text((broken / "http.yaml").read_text().replace("tool.args.url", "tool.agrs.url", 1))
    run = cli("test", str(broken))
    assert run.returncode == 2
    assert "undefined field 'agrs' not found in struct 'decider.v1.ToolCall'" in run.stderr


def test_junit_output_lists_failures(tmp_path: Path) -> None:
    path = suite(tmp_path, """\
        - name: passes
          agent: refunds
          tool: payments.refund
          args: {amount: 2500}
          expect: {outcome: require_approval}
        - name: fails
          agent: refunds
          tool: payments.refund
          args: {amount: 5}
          expect: {outcome: deny}
        """)
    run = cli("test", str(POLICIES), str(path), "--format", "junit")
    assert run.returncode == 1
    root = ET.fromstring(run.stdout)
    assert (root.get("tests"), root.get("failures")) == ("2", "1")
    failed = [tc.get("name") for tc in root.iter("testcase") if tc.find("failure") is not None]
    assert failed == ["fails"]


def test_a_rule_whose_condition_only_errored_is_not_covered_and_is_listed(tmp_path: Path) -> None:
    src = tmp_path / "typo"
    src.mkdir()
    (src / "bundle.yaml").write_text("apiVersion: decider/v1\nkind: Bundle\nmetadata: {name: typo, version: 1.0.0}\n"
                                     "spec: {default: allow, on_error: deny}\n")
    # `tool.args.bsae` is a typo for `base`: dyn, so it type-checks, and errors on every call.
    (src / "p.yaml").write_text(textwrap.dedent("""\
        apiVersion: decider/v1
        kind: Policy
        metadata: {name: p}
        spec:
          rules:
            - id: deny-big
              effect: deny
              when: tool.args.bsae > 100
            - id: deny-root
              effect: deny
              when: tool.args.user == "root"
        """))
    path = suite(tmp_path, """\
        - name: big base is denied (by the error, not the condition)
          agent: refunds
          tool: x
          args: {base: 500, user: ana}
          expect: {outcome: deny}
        - name: root is denied
          agent: refunds
          tool: x
          args: {bsae: 1, user: root}
          expect: {outcome: deny, rule: deny-root}
        """)
    run = cli("test", str(src), str(path), "--coverage")
    assert run.returncode == 0, run.stdout + run.stderr
    assert "rule coverage: 1/2 rules decided at least one case (50.0%)" in run.stdout
    assert "condition only errored (never held): deny-big" in run.stdout
    report = json.loads(cli("test", str(src), str(path), "--format", "json", "--coverage").stdout)
    assert report["coverage"]["decided"] == ["deny-root"] and report["coverage"]["errored_only"] == ["deny-big"]
