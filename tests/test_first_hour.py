"""The first hour of a new user (issue 28): `make run` serves with the example token file so an
approval can be resolved from the Quickstart, and a server without tokens takes `--approver` the
same way whatever it names, with refusals that say what to do (never "X is not among [X]")."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from decider.client import DeciderClient
from decider.v1 import decider_pb2 as pb

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
        # The serving line the README shows is this one, but for its time, address and database.
        readme = next(json.loads(x) for x in (ROOT / "README.md").read_text().splitlines()
                      if x.startswith("{") and '"msg": "serving"' in x)
        real = next(json.loads(x) for x in text.splitlines() if x.startswith("{") and '"msg": "serving"' in x)
        assert readme.keys() == real.keys()
        assert {k: v for k, v in readme.items() if k not in ("ts", "address", "db")} == \
            {k: v for k, v in real.items() if k not in ("ts", "address", "db")}
        assert '"msg": "serving"' in [x for x in text.splitlines() if x.startswith("{")][-1]   # "the last one"
        target = f"127.0.0.1:{port}"
        denied = cli("decide", "--server", target, *REFUND, "--args", '{"amount": 2500, "order": "o-1"}')
        assert denied.returncode == 1 and "UNAUTHENTICATED" in denied.stderr
        decision = ask_refund(target, "o-1", env={"DECIDER_TOKEN": "gw-secret"})
        done = cli("approve", decision, "--server", target, "--token", "ana-secret")
        assert done.returncode == 0, done.stderr
        assert "approved by user:ana" in done.stdout
    finally:
        with contextlib.suppress(ProcessLookupError):   # `make` may have exited already (a failed start)
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


def test_sigterm_releases_the_metrics_port_so_an_immediate_restart_serves(tmp_path: Path) -> None:
    # Item 7: the old server drains (a watch is in flight, --grace 30) while the new one binds the same
    # gRPC and /metrics ports and serves; before, the restart failed `Address already in use`.
    ports = ["--listen", f"127.0.0.1:{_free_port()}", "--metrics-listen", f"127.0.0.1:{_free_port()}",
             "--grace", "30"]
    metrics_url = f"http://{ports[3]}/metrics"
    first = start_server(tmp_path, ROOT / "policies", None, *ports, name="first")
    second: ServerProcess | None = None
    with DeciderClient(first.target) as c:
        try:
            asked = c.decide(agent={"id": "refund-bot", "team": "finance", "model": "gpt-5"},
                             tool="payments.refund", args={"amount": 2500, "order": "o-restart"})
            watch = c.watch_decision(asked.decision_id)
            assert next(watch).approval.state == pb.APPROVAL_PENDING   # a call in flight: the drain waits
            first.proc.send_signal(signal.SIGTERM)
            for _ in range(200):   # bounded: until the first server says it is shutting down
                if "shutting down" in first.log():
                    break
                time.sleep(0.05)
            assert "shutting down" in first.log()
            second = start_server(tmp_path, ROOT / "policies", None, *ports, name="second")
            assert first.proc.poll() is None, "the first server should still be draining"
            with urllib.request.urlopen(metrics_url, timeout=10) as resp:
                assert resp.status == 200 and b"decider_decisions_total" in resp.read()
            with DeciderClient(second.target) as c2:
                again = c2.decide(agent={"id": "coder-7", "capabilities": ["shell"]}, tool="shell.exec",
                                  args={"command": "ls"})
                assert again.decision_id
            watch.cancel()
        finally:
            first.stop()
            if second is not None:
                second.stop()


def test_the_gateway_decides_the_first_call_after_decider_restarts(tmp_path: Path) -> None:
    # Item 7: after decider was down a few seconds, grpc's reconnect backoff had grown and the gateway
    # refused calls for ~5 s after decider came back. The first call after the restart is decided now.
    from decider.client import build_request
    from decider.gateway.config import DeciderTarget
    from decider.gateway.decisions import DeciderLink, DecisionUnavailable

    listen = ["--listen", f"127.0.0.1:{_free_port()}"]
    before = start_server(tmp_path, ROOT / "policies", None, *listen, name="before")
    servers = [before]

    def call() -> pb.DecideRequest:
        return build_request(agent={"id": "coder-7", "capabilities": ["shell"]}, tool="shell.exec",
                             args={"command": "ls"})

    async def run() -> None:
        link = DeciderLink(DeciderTarget(before.target, deadline_s=2.0))
        try:
            assert (await link.decide(call())).decision_id
            before.stop()
            for _ in range(3):   # decider is down: each call fails closed, and the backoff grows
                with pytest.raises(DecisionUnavailable):
                    await link.decide(call())
            servers.append(start_server(tmp_path, ROOT / "policies", None, *listen, name="after"))
            assert (await link.decide(call())).decision_id
        finally:
            await link.close()

    try:
        asyncio.run(run())
    finally:
        for s in servers:
            s.stop()


# ---- item 5: one meaning per name --------------------------------------------------------------

SHELL = ["--agent", "coder-7", "--capability", "shell", "--tool", "shell.exec", "--args", '{"command": "ls"}']


def test_decider_address_is_decider_and_server_is_a_warned_alias(open_srv: ServerProcess) -> None:
    done = cli("decide", "--decider", open_srv.target, *SHELL)
    assert done.returncode == 0 and done.stderr == "", done.stderr
    assert json.loads(done.stdout)["outcome"] == "ALLOW"
    old = cli("decide", "--server", open_srv.target, *SHELL)
    assert old.returncode == 0 and json.loads(old.stdout)["outcome"] == "ALLOW"
    assert "decider: warning: --server is deprecated; use --decider" in old.stderr
    listed = cli("approvals", "--decider", open_srv.target)
    assert listed.returncode == 0 and listed.stderr == "", listed.stderr
    status = cli("status", "--server", open_srv.target)
    assert status.returncode == 0 and "--server is deprecated" in status.stderr


def test_decider_addr_is_the_environment_variable_and_decider_server_is_warned(open_srv: ServerProcess) -> None:
    env = {k: v for k, v in os.environ.items() if k not in ("DECIDER_SERVER", "DECIDER_ADDR")}
    done = subprocess.run([sys.executable, "-m", "decider", "decide", *SHELL], cwd=ROOT, capture_output=True,
                          text=True, timeout=60, env={**env, "DECIDER_ADDR": open_srv.target})
    assert done.returncode == 0 and done.stderr == "", done.stderr
    done = subprocess.run([sys.executable, "-m", "decider", "approvals"], cwd=ROOT, capture_output=True,
                          text=True, timeout=60, env={**env, "DECIDER_SERVER": open_srv.target})
    assert done.returncode == 0 and "$DECIDER_SERVER is deprecated; use $DECIDER_ADDR" in done.stderr


def test_python_names_the_tools_server_tool_server_and_warns_on_the_old_keyword(open_srv: ServerProcess) -> None:
    from decider.client import build_request
    from decider.guard import Guard

    assert build_request(agent={"id": "a"}, tool="t", tool_server="mcp://billing").tool.server == "mcp://billing"
    with pytest.warns(DeprecationWarning, match="server= is deprecated; use tool_server="):
        old = build_request(agent={"id": "a"}, tool="t", server="mcp://billing")
    assert old.tool.server == "mcp://billing"
    agent = {"id": "refund-bot", "team": "finance", "model": "gpt-5"}
    with pytest.warns(DeprecationWarning, match="Guard: server= is deprecated"):
        Guard(open_srv.target, agent=agent, server="mcp://billing").close()
    with Guard(open_srv.target, agent=agent, tool_server="mcp://billing") as g:
        verdict = g.decide("payments.refund", {"amount": 10, "order": "o-g"})
        assert verdict.outcome == "ALLOW", verdict
        assert g.client.get_decision(verdict.decision_id).tool_server == "mcp://billing"


def test_decide_format_text_is_one_line_a_person_reads() -> None:
    done = cli("decide", "--bundle", "policies", *REFUND, "--args", '{"amount": 2500, "order": "o-1"}',
               "--format", "text")
    assert done.returncode == 0, done.stderr
    assert done.stdout == ("REQUIRE_APPROVAL refund-needs-approval-above-1000 | Refunds above 1000 need a finance "
                           "approver  (approvers: group:finance-oncall)\n")


# ---- the README's gateway path, run as written -------------------------------------------------

def _readme_block(heading: str) -> list[tuple[str, list[str]]]:
    """The first code block after `heading` in README.md: (command, shown output lines) per `$ ` line."""
    lines = (ROOT / "README.md").read_text(encoding="utf-8").splitlines()
    start = lines.index(heading)
    first = next(i for i in range(start, len(lines)) if lines[i].startswith("```"))
    steps: list[tuple[str, list[str]]] = []
    for raw in lines[first + 1:]:
        if raw.startswith("```"):
            break
        if raw.startswith("$ "):
            steps.append((raw[2:], []))
        elif steps and steps[-1][0].endswith("\\"):
            steps[-1] = (steps[-1][0][:-1] + raw.strip(), [])
        elif steps:
            steps[-1][1].append(raw)
    return steps


def _gist(line: str) -> tuple[str, ...]:
    # tool, ok/isError, and for a refusal its reason up to the decision id (ids and times differ)
    tool, status, *rest = line.split(None, 2)
    return (tool, status, rest[0].split(" (decision")[0]) if status == "isError" and rest else (tool, status)


def test_the_readme_gateway_path_runs_as_written(tmp_path: Path) -> None:
    # The README's step 4 with its own files, on ports of this test's own (written into a copy of
    # gateway.yaml, and $DECIDER_ADDR for `decider approve`); every command as the README shows it.
    from .gateway_support import ensure_node_tools

    ensure_node_tools()
    steps = _readme_block("### 4. Put the gateway in front of an agent")
    commands = [c.split("  #")[0].strip() for c, _ in steps]
    assert commands[0] == "mkdir -p /tmp/agent-workspace"
    assert commands[1].startswith("decider serve --dev --bundle examples/mcp-gateway/bundle") and commands[1].endswith("&")
    assert "decider gateway mcp --config examples/mcp-gateway/gateway.yaml" in commands[2]
    work = tmp_path / "work"
    shutil.copytree(ROOT / "examples", work / "examples")
    grpc_port, http_port = _free_port(), _free_port()
    cfg = work / "examples" / "mcp-gateway" / "gateway.yaml"
    cfg.write_text(cfg.read_text().replace("127.0.0.1:50051", f"127.0.0.1:{grpc_port}")
                   .replace("127.0.0.1:8800", f"127.0.0.1:{http_port}"))
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",
           "DECIDER_ADDR": f"127.0.0.1:{grpc_port}", "GATEWAY_URL": f"http://127.0.0.1:{http_port}/mcp",
           "PYTHONUNBUFFERED": "1"}
    env.pop("DECIDER_TOKEN", None)
    env.pop("DECIDER_BINDING_KEY", None)   # as a user has it: the README's commands must say how to serve

    def run(cmd: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(["bash", "-c", cmd], cwd=work, env=env, capture_output=True, text=True, timeout=120)

    def background(cmd: str, log: Path, ready: str) -> subprocess.Popen[bytes]:
        proc = subprocess.Popen(["bash", "-c", cmd.rstrip("& ")], cwd=work, env=env,
                                stdout=log.open("wb"), stderr=subprocess.STDOUT, start_new_session=True)
        for _ in range(1200):   # bounded: up to ~120 s (npx may fetch the filesystem server)
            if ready in log.read_text(errors="replace") or proc.poll() is not None:
                break
            time.sleep(0.1)
        assert ready in log.read_text(errors="replace"), log.read_text(errors="replace")
        return proc

    assert run(commands[0]).returncode == 0
    procs: list[subprocess.Popen[bytes]] = []
    try:
        serve = commands[1].replace("decider serve", f"decider serve --listen 127.0.0.1:{grpc_port} "
                                    f"--db sqlite:///{tmp_path / 'gw.db'}", 1)
        procs.append(background(serve, tmp_path / "serve.log", '"msg": "serving"'))
        procs.append(background(commands[2], tmp_path / "gateway.log", "gateway serving"))
        first = run(commands[3])
        assert first.returncode == 0, first.stderr
        assert [_gist(x) for x in first.stdout.splitlines()] == [_gist(x) for x in steps[3][1]], first.stdout
        pending = re.search(r"time__convert_time .*\(decision (\w+)\)", first.stdout)
        assert pending is not None
        shown = re.search(r"decider approve (\w+)", commands[4])
        assert shown is not None
        approved = run(commands[4].replace(shown.group(1), pending.group(1)))
        assert approved.returncode == 0 and f"{pending.group(1)} approved by user:ana at " in approved.stdout, \
            approved.stderr
        retry = run(commands[5])
        assert retry.returncode == 0, retry.stderr
        assert [_gist(x) for x in retry.stdout.splitlines()] == [_gist(x) for x in steps[5][1]], retry.stdout
    finally:
        for p in reversed(procs):
            os.killpg(p.pid, signal.SIGTERM)
            p.wait(30)
