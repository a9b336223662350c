"""Agent manifests (SPEC §9) in the one decision function: unregistered agents, identity filled
from and checked against the manifest, least privilege over tools and servers — and `decider
test` / replay decide exactly as the engine does."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from decider.bundle.compile import Bundle, load_bundle
from decider.client import build_request
from decider.engine.decide import decide
from decider.engine.state import KillSwitch, State
from decider.errors import PolicyLoadError
from decider.v1 import decider_pb2 as pb

from .helpers import ROOT

BUNDLE = """\
apiVersion: decider/v1
kind: Bundle
metadata: {{name: ids}}
spec:
  default: {default}
{extra}"""

REFUND_BOT = """\
apiVersion: decider/v1
kind: Agent
metadata: {name: refund-bot}
spec:
  owner: user:olga
  team: finance
  workflows: [refunds]
  models: [gpt-5, claude-opus-4]
  capabilities: [refunds]
  tools: ["payments.refund", "crm.read*"]
  servers: ["mcp://billing"]
  labels: {tier: prod}
---
apiVersion: decider/v1
kind: Agent
metadata: {name: killme}
spec:
  team: ops
  tools: ["work.*"]
---
apiVersion: decider/v1
kind: Agent
metadata: {name: "coder-*"}
spec:
  team: platform
  tools: ["shell.exec"]
"""

CONDITIONS = """\
apiVersion: decider/v1
kind: Policy
metadata: {name: p}
spec:
  rules:
    - id: finance-only
      effect: allow
      when: agent.team == "finance" && agent.owner == "user:olga" && "refunds" in agent.capabilities
    - id: work
      effect: allow
      when: tool.name.startsWith("work.")
"""


def make(tmp: Path, *, default: str = "deny", extra: str = "", policies: str | None = CONDITIONS,
         agents: str = REFUND_BOT) -> Bundle:
    (tmp / "bundle.yaml").write_text(BUNDLE.format(default=default, extra=extra))
    if agents:
        (tmp / "agents.yaml").write_text(agents)
    if policies:
        (tmp / "p.yaml").write_text(policies)
    return load_bundle(tmp)


def ask(bundle: Bundle, agent: dict[str, object], tool: str = "payments.refund", server: str = "",
        state: State | None = None) -> object:
    return decide(bundle, build_request(agent=agent, tool=tool, server=server), state or State())


def test_empty_fields_are_filled_from_the_manifest_and_conditions_see_them(tmp_path: Path) -> None:
    b = make(tmp_path)
    req = build_request(agent={"id": "refund-bot"}, tool="payments.refund")
    d = decide(b, req)
    assert (d.outcome, d.deciding_rule) == (pb.ALLOW, "finance-only")
    assert d.agent is not None and (d.agent.team, d.agent.owner, d.agent.workflow) == ("finance", "user:olga", "refunds")
    assert list(d.agent.capabilities) == ["refunds"] and dict(d.agent.labels) == {"tier": "prod"}
    assert d.agent.model == ""   # two models listed: nothing to fill
    assert req.agent == pb.Agent(id="refund-bot")   # the request itself is never changed


@pytest.mark.parametrize("field, value, named", [
    ("team", "platform", "agent.team"),
    ("owner", "user:mallory", "agent.owner"),
    ("model", "gpt-3.5", "agent.model"),
    ("workflow", "payroll", "agent.workflow"),
    ("capabilities", ["refunds", "shell"], "agent.capabilities"),
    ("labels", {"tier": "dev"}, "agent.labels.tier"),
])
def test_a_field_contradicting_the_manifest_is_identity_mismatch_naming_it(
        tmp_path: Path, field: str, value: object, named: str) -> None:
    d = ask(make(tmp_path), {"id": "refund-bot", field: value})
    assert (d.outcome, d.deciding_rule) == (pb.DENY, "identity_mismatch")
    assert d.reasons[0].text.startswith(f"{named}:") and d.matched_rules == ()


def test_tools_and_servers_outside_the_manifest_are_not_in_manifest(tmp_path: Path) -> None:
    b = make(tmp_path)
    assert ask(b, {"id": "refund-bot"}, "crm.read_customer", "mcp://billing").outcome == pb.ALLOW
    d = ask(b, {"id": "refund-bot"}, "shell.exec")
    assert (d.outcome, d.deciding_rule) == (pb.DENY, "not_in_manifest") and "'shell.exec'" in d.reasons[0].text
    d = ask(b, {"id": "refund-bot"}, "payments.refund", "mcp://evil")
    assert (d.outcome, d.deciding_rule) == (pb.DENY, "not_in_manifest") and "'mcp://evil'" in d.reasons[0].text


# Case, spaces, full-width and zero-width variants are the same agent (match_key, issue 24 item 13):
# the kill switch stops them. Another script's look-alike is no manifest's agent: unregistered.
@pytest.mark.parametrize(("agent_id", "rule"), [
    ("KILLME", "killed"), ("killme ", "killed"), (" killme", "killed"), ("\uff4b\uff49\uff4c\uff4c\uff4d\uff45", "killed"),
    ("killme\u200b", "killed"), ("k\u0456llme", "unregistered_agent"), ("\u043a\u0456llme", "unregistered_agent")])
def test_look_alike_ids_of_a_killed_agent_are_denied(tmp_path: Path, agent_id: str, rule: str) -> None:
    b = make(tmp_path)
    killed = State(kill_switches=(KillSwitch("ks1", "agent", "killme", "incident"),))
    assert ask(b, {"id": "killme"}, "work.do", state=killed).deciding_rule == "killed"
    assert ask(b, {"id": "killme"}, "work.do").outcome == pb.ALLOW   # the kill switch is what stops it
    d = ask(b, {"id": agent_id}, "work.do", state=killed)
    assert (d.outcome, d.deciding_rule) == (pb.DENY, rule)
    # Without the switch, a variant of the registered id is still no way in, nor out of its manifest.
    open_door = make(tmp_path, default="allow", extra="  agents: {unregistered: allow}\n")
    d = ask(open_door, {"id": agent_id}, "work.do")
    assert d.outcome == pb.DENY or agent_id.startswith(("k\u0456", "\u043a")), d
    if rule == "killed":
        assert d.deciding_rule == "identity_mismatch" and "'killme' as registered" in d.reasons[0].text


def test_instance_globs_cover_instances_and_unregistered_allow_lets_others_through(tmp_path: Path) -> None:
    b = make(tmp_path, default="allow")
    assert ask(b, {"id": "coder-7"}, "shell.exec").outcome == pb.ALLOW
    assert ask(b, {"id": "coder", "instance_id": "coder-42"}, "shell.exec").outcome == pb.ALLOW
    assert ask(b, {"id": "coder-7"}, "fs.write").deciding_rule == "not_in_manifest"
    assert ask(b, {"id": "stranger"}, "fs.write").deciding_rule == "unregistered_agent"
    open_door = make(tmp_path, default="allow", extra="  agents: {unregistered: allow}\n")
    assert ask(open_door, {"id": "stranger"}, "fs.write").outcome == pb.ALLOW
    assert ask(open_door, {"id": "coder-7"}, "fs.write").deciding_rule == "not_in_manifest"


def test_without_manifests_nothing_changes(tmp_path: Path) -> None:
    b = make(tmp_path, agents="")
    d = ask(b, {"id": "anyone", "team": "finance", "owner": "user:olga", "capabilities": ["refunds"]})
    assert (d.outcome, d.deciding_rule, d.agent) == (pb.ALLOW, "finance-only", None)


def test_a_manifest_only_bundle_gives_least_privilege(tmp_path: Path) -> None:
    b = make(tmp_path, default="allow", policies=None)
    assert b.policies == ()
    assert ask(b, {"id": "refund-bot"}, "payments.refund").outcome == pb.ALLOW
    assert ask(b, {"id": "refund-bot"}, "crm.read_orders").outcome == pb.ALLOW
    d = ask(b, {"id": "refund-bot"}, "payments.transfer")
    assert (d.outcome, d.deciding_rule) == (pb.DENY, "not_in_manifest")
    assert ask(b, {"id": "someone-else"}, "payments.refund").deciding_rule == "unregistered_agent"


def test_a_manifest_with_an_unknown_key_or_a_duplicate_name_is_a_load_error(tmp_path: Path) -> None:
    bad = REFUND_BOT.replace("  team: ops\n", "  teem: ops\n") + REFUND_BOT.split("---")[0].join(["---\n", ""])
    with pytest.raises(PolicyLoadError) as err:
        make(tmp_path, agents=bad)
    text = "\n".join(str(e) for e in err.value.errors)
    assert "unknown key 'teem'" in text and "duplicate agent manifest 'refund-bot'" in text


def test_decider_test_and_replay_apply_manifests_as_the_engine_does(tmp_path: Path) -> None:
    make(tmp_path, default="allow", policies=None)
    (tmp_path / "ids_test.yaml").write_text("""\
apiVersion: decider/v1
kind: TestSuite
metadata: {name: identity}
fixtures:
  agents:
    bot: {id: refund-bot}
    look_alike: {id: "k\u0456llme"}
    liar: {id: refund-bot, team: platform}
  tools:
    refund: {name: payments.refund}
    write: {name: fs.write}
    work: {name: work.do}
cases:
  - {name: manifest tool, agent: bot, tool: refund, expect: {outcome: allow}}
  - {name: other tool, agent: bot, tool: write, expect: {outcome: deny, rule: not_in_manifest}}
  - {name: look-alike, agent: look_alike, tool: work, expect: {outcome: invalid_argument, reason: agent.id}}
  - {name: lies about team, agent: liar, tool: refund, expect: {outcome: deny, rule: identity_mismatch}}
""", encoding="utf-8")
    out = subprocess.run([sys.executable, "-m", "decider", "test", str(tmp_path)], capture_output=True, text=True,
                         cwd=ROOT, timeout=120)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "4 passed" in out.stdout or "4/4" in out.stdout, out.stdout

    trace = tmp_path / "trace.jsonl"
    calls = [("refund-bot", "payments.refund"), ("refund-bot", "fs.write"), ("k\u0456llme", "work.do")]
    trace.write_text("".join(json.dumps({"decision_id": f"d{i}", "outcome": "ALLOW", "agent": {"id": a},
                                         "tool_name": t, "args": {}}) + "\n" for i, (a, t) in enumerate(calls)))
    out = subprocess.run([sys.executable, "-m", "decider", "replay", str(tmp_path), str(trace), "--format", "jsonl",
                          "--no-progress"], capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert out.returncode == 0, out.stdout + out.stderr
    lines = [json.loads(line) for line in out.stdout.splitlines() if line.startswith("{")]
    assert [x["rule"] for x in lines[:2]] == ["default", "not_in_manifest"], out.stdout
    # The look-alike id is refused before any decision, as the server refuses it (issue 24 item 13;
    # one procedure, validation included: issue 22).
    assert lines[2]["outcome"] == "INDETERMINATE" and "INVALID_ARGUMENT agent.id" in lines[2]["reason"], out.stdout


def test_decider_check_warns_about_manifests_no_policy_can_allow_and_policies_naming_unknown_agents(
        tmp_path: Path) -> None:
    policy = """\
apiVersion: decider/v1
kind: Policy
metadata: {name: ops-only}
spec:
  match:
    agents: ["ops-*", "coder-*"]
    tools: ["work.*"]
  rules:
    - {id: ops-work, effect: allow}
"""
    make(tmp_path, policies=policy)
    out = subprocess.run([sys.executable, "-m", "decider", "check", str(tmp_path)], capture_output=True, text=True,
                         cwd=ROOT, timeout=120)
    assert out.returncode == 0, out.stdout + out.stderr   # warnings, not errors
    lines = out.stdout.splitlines()
    text = "\n".join(lines)
    assert f"{tmp_path}/agents.yaml:3:18: warning: no policy can allow anything for agent manifest 'refund-bot'" in text
    assert "manifest 'killme'" in text       # its tools are work.*, but the policy names other agents
    assert "manifest 'coder-*'" in text      # the policy's agents cover it, its tools do not
    assert any(line.startswith(f"{tmp_path}/p.yaml:6:14: warning: policy 'ops-only' names agents 'ops-*'")
               for line in lines), lines
    assert not any("'coder-*' but" in line for line in lines)    # a manifest covers coder-*
    assert lines[-1].endswith("3 agent manifests, 4 warning(s))"), lines
    (tmp_path / "p.yaml").write_text(policy.replace('["ops-*", "coder-*"]', '["killme"]'))
    out = subprocess.run([sys.executable, "-m", "decider", "check", str(tmp_path)], capture_output=True, text=True,
                         cwd=ROOT, timeout=120)
    assert "manifest 'killme'" not in out.stdout and "names agents" not in out.stdout, out.stdout


def test_server_decide_test_and_replay_of_its_log_decide_identity_and_schemas_alike(tmp_path: Path) -> None:
    """Item 4 of issue 13: the server, the engine and a replay of the server's own log export decide
    every identity and schema case the same way, and the server records each decision."""
    from .helpers import start_server

    bundle_dir = tmp_path / "b"
    bundle_dir.mkdir()
    make(bundle_dir, default="allow", policies=None,
         extra='  tools:\n    "payments.refund":\n      args: {type: object, properties: {amount: {type: number}},'
               ' required: [amount]}\n')
    calls = [
        ({"id": "refund-bot"}, "payments.refund", "mcp://billing", {"amount": 5}),
        ({"id": "refund-bot"}, "payments.refund", "", {"amount": "lots"}),
        ({"id": "refund-bot", "team": "platform"}, "payments.refund", "", {"amount": 5}),
        ({"id": "refund-bot"}, "shell.exec", "", {"command": "ls"}),
        ({"id": "stranger-1"}, "work.do", "", {}),
        ({"id": "killme"}, "work.do", "", {}),
        ({"id": "KILLME"}, "work.do", "", {}),   # a variant of killme's id: denied (issue 24 item 13)
    ]
    b = load_bundle(bundle_dir)
    expected = [decide(b, build_request(agent=a, tool=t, server=s, args=x)).deciding_rule for a, t, s, x in calls]
    assert expected == ["default", "invalid_arguments", "identity_mismatch", "not_in_manifest",
                        "unregistered_agent", "default", "identity_mismatch"]
    srv = start_server(tmp_path, bundle_dir)
    try:
        with srv.client() as c:
            ids = [c.decide(agent=a, tool=t, server=s, args=x).decision_id for a, t, s, x in calls]
            records = [c.get_decision(i) for i in ids]
    finally:
        srv.stop()
    assert [r.deciding_rule for r in records] == expected
    assert records[1].reasons[0].text.endswith("$.amount: 'lots' is not of type 'number'")
    assert records[0].agent.team == "finance"     # the record holds the identity the decision saw
    export = subprocess.run([sys.executable, "-m", "decider", "log", "--db", srv.db_url, "--format", "jsonl",
                             "--reverse"],
                            capture_output=True, text=True, cwd=ROOT, timeout=60)
    assert export.returncode == 0, export.stderr
    log = tmp_path / "log.jsonl"
    log.write_text(export.stdout)
    out = subprocess.run([sys.executable, "-m", "decider", "replay", str(bundle_dir), str(log), "--format", "jsonl",
                          "--no-progress"], capture_output=True, text=True, cwd=ROOT, timeout=120)
    replayed = [json.loads(line)["rule"] for line in out.stdout.splitlines() if line.startswith("{")]
    assert replayed == expected, out.stdout + out.stderr


def test_a_team_the_manifest_fills_is_the_team_whose_budget_is_charged(tmp_path: Path) -> None:
    from decider.engine.memory import MemoryState

    b = make(tmp_path, default="allow", policies=None,
             extra="  budgets:\n    - {scope: team, limit: 100, window: total}\n")
    sim = MemoryState()
    bare = build_request(agent={"id": "refund-bot"}, tool="payments.refund", estimated_cost=60)
    full = build_request(agent={"id": "refund-bot", "team": "finance"}, tool="payments.refund", estimated_cost=60)
    assert sim.decide(b, bare).outcome == pb.ALLOW
    d = sim.decide(b, full)   # the first call charged finance although it named no team
    assert (d.outcome, d.deciding_rule) == (pb.DENY, "budget_exceeded"), d
    assert sim.decide(b, bare).deciding_rule == "budget_exceeded"
