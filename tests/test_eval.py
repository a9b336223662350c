"""`decider eval EXPR [--request JSON] [--args JSON] [--bundle DIR]`: one CEL expression, like `opa eval`
(issue 12, item 16). Every example of docs/functions.md runs through it."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from decider.cli.main import main

from .helpers import POLICIES, ROOT
from .test_functions import DOCUMENTED


def run(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    code = main(["eval", *args])
    out = capsys.readouterr()
    return code, out.out, out.err


@pytest.mark.parametrize(("expression", "result"), DOCUMENTED)
def test_every_functions_md_example_prints_its_documented_result(
        capsys: pytest.CaptureFixture[str], expression: str, result: str) -> None:
    code, out, err = run(capsys, expression)
    assert code == 0, err
    assert json.loads(out) == json.loads(result)


def test_eval_reads_the_request_and_the_bundle_budgets(capsys: pytest.CaptureFixture[str]) -> None:
    request = json.dumps({"agent": {"id": "refund-bot", "team": "finance"}, "tool": {"name": "payments.refund"},
                          "request": {"estimatedCost": 5}})
    assert run(capsys, 'agent.team == "finance" && tool.name.startsWith("payments.")', "--request", request)[:2] \
        == (0, "true\n")
    assert run(capsys, "tool.args.amount > 1000.0", "--args", '{"amount": 2500}')[:2] == (0, "true\n")
    code, out, _ = run(capsys, "budget.team.remaining >= request.estimated_cost", "--bundle", str(POLICIES),
                       "--request", request)
    assert (code, out) == (0, "true\n")
    code, out, _ = run(capsys, "budget.team", "--bundle", str(POLICIES), "--format", "json")
    assert json.loads(out) == {"type": "MAP<DYN, DYN>", "value": {"limit": 500.0, "remaining": 500.0,
                                                                  "reserved": 0.0, "spent": 0.0}}


def test_eval_prints_the_error_or_the_syntax_problem(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = run(capsys, "tool.args.bsae > 1")
    assert (code, out) == (1, "") and err == 'error: NOT_FOUND: Key not found in map : "bsae"\n'
    code, out, err = run(capsys, "tool.args.x > 1 &&")
    assert code == 2
    assert err == "<expression>:1:19: syntax error: expected an expression after '&&', found the end of the condition\n"
    code, out, err = run(capsys, "agent.teem")
    assert code == 2 and "undefined field 'teem'" in err


def test_eval_runs_as_a_command() -> None:
    done = subprocess.run([sys.executable, "-m", "decider", "eval", 'url.host("https://user@Api.GitHub.com:443/x")'],
                          capture_output=True, text=True, cwd=ROOT, timeout=60)
    assert (done.returncode, done.stdout) == (0, '"api.github.com"\n'), done.stderr


def test_eval_with_a_bundle_sees_its_named_lists(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(capsys, '"bit.ly" in lists.shorteners && lists.fetch_hosts.size() > 0',
                       "--bundle", str(POLICIES))
    assert (code, out.strip()) == (0, "true")
    code, _, err = run(capsys, "lists.shortners", "--bundle", str(POLICIES))
    assert code == 2 and "lists.shortners" in err
