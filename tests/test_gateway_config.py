"""gateway.yaml: what a valid config gives, and every mistake reported at once with file:line:col."""

from __future__ import annotations

import hashlib
import subprocess
import sys
from pathlib import Path

import pytest

from decider.gateway import naming
from decider.gateway.config import GatewayConfigError, parse_config

GOOD = """\
decider: {target: 127.0.0.1:50051, token_env: GW_TOKEN, deadline: 750ms}
agent: {id: coder-7, team: platform, capabilities: [shell], labels: {tier: prod}}
listen: http://127.0.0.1:8800/mcp
clients:
  - {token: s3cret, agent: {id: coder-http, team: platform}}
  - {sha256: CI_SHA, agent: {id: ci-bot}}
approval_wait: 2m
upstreams:
  - {name: time, command: [python, -m, mcp_server_time]}
  - {name: docs-v2, url: "http://127.0.0.1:9000/mcp"}
""".replace("CI_SHA", hashlib.sha256(b"ci-token").hexdigest())


def test_a_valid_config_gives_target_token_identities_and_upstreams() -> None:
    cfg = parse_config(GOOD, "gw.yaml", {"GW_TOKEN": "from-env"})
    assert (cfg.decider.target, cfg.decider.token, cfg.decider.deadline_s) == ("127.0.0.1:50051", "from-env", 0.75)
    assert cfg.agent == {"id": "coder-7", "team": "platform", "capabilities": ["shell"], "labels": {"tier": "prod"}}
    assert cfg.http == ("127.0.0.1", 8800, "/mcp") and cfg.approval_wait_s == 120
    assert [u.server for u in cfg.upstreams] == ["mcp://time", "mcp://docs-v2"]
    assert cfg.agent_for_token("s3cret") == {"id": "coder-http", "team": "platform"}
    assert cfg.agent_for_token("ci-token") == {"id": "ci-bot"}
    assert cfg.agent_for_token("guess") is None and cfg.agent_for_token("") is None


def test_every_mistake_is_reported_with_file_line_and_column() -> None:
    bad = """\
decider: {target: 127.0.0.1:50051, token_env: MISSING, deadline: soon}
listen: http://127.0.0.1:8800/mcp
approval_wait: forever
colour: blue
upstreams:
  - {name: Time_Server, command: [python]}
  - {name: a, command: [x], url: "http://h/mcp"}
  - {name: b, url: "ftp://h/mcp"}
"""
    with pytest.raises(GatewayConfigError) as e:
        parse_config(bad, "gw.yaml", {})
    got = [str(x) for x in e.value.errors]
    assert "gw.yaml:1:36: decider: environment variable MISSING is not set" in got
    assert "gw.yaml:1:56: decider.deadline: a positive duration such as 500ms or 2s" in got
    assert "gw.yaml:2:1: listen: an HTTP gateway needs 'clients' (bearer token → agent identity)" in got
    assert "gw.yaml:3:1: approval_wait: a duration such as 30s or 5m" in got
    assert any(x.startswith("gw.yaml:4:1: unknown key 'colour'") for x in got)
    assert any(x.startswith("gw.yaml:6:6: upstreams.name: 'Time_Server' must be lower-case") for x in got)
    assert "gw.yaml:7:5: upstreams 'a': give exactly one of command (a list) or url" in got
    assert "gw.yaml:8:15: upstreams 'b': url must be http(s)://…" in got


def test_stdio_needs_an_agent_and_plain_names_need_a_single_upstream() -> None:
    text = "decider: {target: x:1}\ntool_names: plain\nupstreams:\n  - {name: a, command: [a]}\n  - {name: b, command: [b]}\n"
    with pytest.raises(GatewayConfigError) as e:
        parse_config(text, "gw.yaml", {})
    got = [str(x) for x in e.value.errors]
    assert "gw.yaml:1:1: agent: required when listen is stdio (the client's identity)" in got
    assert "gw.yaml:2:1: tool_names: plain names need exactly one upstream (several would collide)" in got


@pytest.mark.parametrize(("upstream", "tool"), [("time", "get_current_time"), ("a-b", "x__y"), ("fs", "__"),
                                                ("git", "git__status")])
def test_exposed_names_map_back_to_exactly_one_upstream_and_tool(upstream: str, tool: str) -> None:
    exposed = naming.expose(upstream, tool, plain=False)
    assert naming.split(exposed, None) == (upstream, tool)
    assert naming.split(tool, upstream) == (upstream, tool)   # plain: one upstream, names unchanged


def test_names_without_an_upstream_prefix_do_not_route() -> None:
    assert naming.split("get_current_time", None) is None
    assert naming.split("__x", None) is None and naming.split("time__", None) is None


def test_gateway_command_refuses_a_bad_config_with_every_error(tmp_path: Path) -> None:
    cfg = tmp_path / "gw.yaml"
    cfg.write_text("decider: {target: 127.0.0.1:1}\nlisten: stdio\nupstreams: []\n")
    out = subprocess.run([sys.executable, "-m", "decider", "gateway", "mcp", "--config", str(cfg)],
                         capture_output=True, text=True, timeout=60, stdin=subprocess.DEVNULL)
    assert out.returncode == 2
    assert f"{cfg}:1:1: agent: required when listen is stdio" in out.stderr
    assert f"{cfg}:3:1: upstreams: a non-empty list is required" in out.stderr
    assert "Traceback" not in out.stderr


def test_pass_through_lists_governed_methods_other_than_tools_call() -> None:
    cfg = parse_config(GOOD + "pass_through: [prompts/get, completion/complete]\n", "gw.yaml", {"GW_TOKEN": "t"})
    assert cfg.pass_through == {"prompts/get", "completion/complete"}
    assert not cfg.governs("prompts/get") and cfg.governs("resources/read") and cfg.governs("tools/call")
    assert not cfg.governs("tools/list")                      # a list is never decided
    with pytest.raises(GatewayConfigError) as e:
        parse_config(GOOD + "pass_through: [tools/call, resources/raed]\n", "gw.yaml", {"GW_TOKEN": "t"})
    text = str(e.value)
    assert "tools/call is always decided" in text and "'resources/raed' is not a governed method" in text
    assert "gw.yaml:11:" in text


def test_costs_name_an_upstream_and_a_tool_or_star() -> None:
    cfg = parse_config(GOOD + 'costs: {"time/*": 0.5, "time/convert_time": 2, "docs-v2/resources/read": 0.01}\n',
                       "gw.yaml", {"GW_TOKEN": "t"})
    assert cfg.cost_of("time", "convert_time") == 2.0 and cfg.cost_of("time", "get_current_time") == 0.5
    assert cfg.cost_of("docs-v2", "resources/read") == 0.01 and cfg.cost_of("docs-v2", "search") is None
    with pytest.raises(GatewayConfigError) as e:
        parse_config(GOOD + 'costs: {"nope/x": 1, "time/x": -1, "time/y": "3", "time": 1}\n', "gw.yaml",
                     {"GW_TOKEN": "t"})
    text = str(e.value)
    assert "costs: 'nope/x' must be <upstream>/<tool>" in text and "costs: 'time': " not in text
    assert "'time/x': -1 is not a number >= 0" in text and "'time/y': '3' is not a number" in text
    assert "costs: 'time' must be" in text
