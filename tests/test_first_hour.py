"""The first hour of a new user (issue 28): `make run` serves with the example token file so an
approval can be resolved from the Quickstart, and a server without tokens takes `--approver` the
same way whatever it names, with refusals that say what to do (never "X is not among [X]")."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from .helpers import ROOT, ServerProcess, start_server

REFUND = ["--agent", "refund-bot", "--team", "finance", "--model", "gpt-5", "--tool", "payments.refund"]


def cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "decider", *args], cwd=ROOT, capture_output=True, text=True,
                          timeout=60, env={**os.environ, **(env or {})})


def ask_refund(target: str, order: str, *extra: str, env: dict[str, str] | None = None) -> str:
    done = cli("decide", "--server", target, *REFUND, "--args", json.dumps({"amount": 2500, "order": order}),
               *extra, env=env)
    assert done.returncode == 0, done.stderr
    out = json.loads(done.stdout)
    assert out["outcome"] == "REQUIRE_APPROVAL", out
    return str(out["decisionId"])


@pytest.fixture(scope="module")
def open_srv(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    s = start_server(tmp_path_factory.mktemp("open"))
    try:
        yield s
    finally:
        s.stop()


def test_without_tokens_approve_needs_a_named_approver_and_says_how(open_srv: ServerProcess) -> None:
    decision = ask_refund(open_srv.target, "o-1")
    done = cli("approve", decision, "--server", open_srv.target)
    assert done.returncode == 2
    assert "no token file" in done.stderr and "--approver group:finance-oncall" in done.stderr, done.stderr


def test_without_tokens_the_approver_named_as_the_rule_writes_it_may_approve(open_srv: ServerProcess) -> None:
    # Without a token file nobody's groups are known: the approval's approvers are named as written.
    decision = ask_refund(open_srv.target, "o-2")
    done = cli("approve", decision, "--server", open_srv.target, "--approver", "group:finance-oncall")
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith(f"{decision} approved by group:finance-oncall at ")


def test_without_tokens_a_refusal_says_why_without_contradicting_itself(open_srv: ServerProcess) -> None:
    decision = ask_refund(open_srv.target, "o-3")
    done = cli("reject", decision, "--server", open_srv.target, "--approver", "user:ana")
    assert done.returncode == 1
    assert ("user:ana is not among this approval's approvers (group:finance-oncall): this server has no token "
            "file, so group memberships are unknown") in done.stderr, done.stderr


def test_without_tokens_the_agent_still_cannot_approve_itself(open_srv: ServerProcess) -> None:
    decision = ask_refund(open_srv.target, "o-4")
    done = cli("approve", decision, "--server", open_srv.target, "--approver", "agent:refund-bot")
    assert done.returncode == 1
    assert "PERMISSION_DENIED" in done.stderr and "cannot resolve it" in done.stderr


def test_with_tokens_a_refusal_names_the_groups_it_checked(tmp_path: Path) -> None:
    tokens = tmp_path / "tokens.yaml"
    tokens.write_text("tokens:\n"
                      "  - {token: gw-secret, principal: 'service:gateway', roles: [enforcer]}\n"
                      "  - {token: ana-secret, principal: 'user:ana', roles: [approver], groups: [finance-oncall]}\n"
                      "  - {token: cy-secret, principal: 'user:cy', roles: [approver]}\n")
    srv = start_server(tmp_path, ROOT / "policies", None, "--tokens", str(tokens))
    try:
        decision = ask_refund(srv.target, "o-5", "--token", "gw-secret")
        done = cli("approve", decision, "--server", srv.target, "--token", "cy-secret")
        assert done.returncode == 1
        assert "user:cy is not among this approval's approvers (group:finance-oncall): user:cy is in no group" \
            in done.stderr, done.stderr
        done = cli("approve", decision, "--server", srv.target, "--token", "ana-secret")
        assert done.returncode == 0, done.stderr
        assert "approved by user:ana" in done.stdout
    finally:
        srv.stop()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_make_run_serves_with_the_example_tokens_so_the_quickstart_can_approve(tmp_path: Path) -> None:
    port = _free_port()
    log = tmp_path / "run.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(["make", "-s", "run", f"PORT={port}", f"DB=sqlite:///{tmp_path / 'run.db'}"],
                                cwd=ROOT, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        for _ in range(600):   # bounded: up to ~60 s for the server to say "serving"
            if '"msg": "serving"' in log.read_text() or proc.poll() is not None:
                break
            time.sleep(0.1)
        text = log.read_text()
        assert '"msg": "serving"' in text, text
        assert "EXAMPLE SECRETS, FOR LOCAL USE ONLY" in text.splitlines()[0]
        assert "ana-secret" in text and "gw-secret" in text
        assert "alembic" not in text    # no migration plumbing before "serving"
        target = f"127.0.0.1:{port}"
        denied = cli("decide", "--server", target, *REFUND, "--args", '{"amount": 2500, "order": "o-1"}')
        assert denied.returncode == 1 and "UNAUTHENTICATED" in denied.stderr
        decision = ask_refund(target, "o-1", env={"DECIDER_TOKEN": "gw-secret"})
        done = cli("approve", decision, "--server", target, "--token", "ana-secret")
        assert done.returncode == 0, done.stderr
        assert "approved by user:ana" in done.stdout
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(30)


def test_report_prints_money_with_cents_in_every_column(open_srv: ServerProcess) -> None:
    # Item 8: a group whose calls all wait for approval has no allowed or denied spend; its money
    # columns said "0" where the others said "0.00".
    ask_refund(open_srv.target, "o-money")
    done = cli("report", "--db", open_srv.db_url, "--since", "1h", "--by", "team")
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    head = next(line for line in lines if line.startswith("team "))
    finance = next(line for line in lines if line.startswith("finance "))
    # columns are right-aligned: a value ends where its heading ends
    money = {h: finance[:head.index(h) + len(h)].split()[-1] for h in ("est cost", "act cost", "denied $")}
    assert money == {"est cost": "0.00", "act cost": "0.00", "denied $": "0.00"}, done.stdout
    rep = json.loads(cli("report", "--db", open_srv.db_url, "--since", "1h", "--format", "json").stdout)
    assert all(isinstance(rep["total"][k], float) for k in ("estimated_cost", "actual_cost", "denied_spend"))
