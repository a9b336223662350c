"""The parity matrix (issue 22 item 3): every scenario (tests/parity/scenarios/*.yaml) through every
surface that decides a tool call, each compared with the scenario's one expected table.

`SURFACES` is the one registry. `test_every_surface_is_in_the_matrix` fails when the package has a
surface the registry lacks (a guard module, a Decide* RPC, an ExtMcp-like server hook, a coding-agent
hook under decider/hooks/, a gateway listener: stdio, streamable HTTP and its hook endpoint,
`decider test` / `replay`), so a new surface joins the matrix or the test fails. A
scenario row that is not meaningful on a surface is declared in the scenario file with its reason
and shows as skipped with that reason.

Server surfaces share one real `decider serve` per backend (SQLite and PostgreSQL), serving the
parity bundle as both the active and the shadow bundle, with tokens and ExtMcp on.
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import pytest

from decider.v1 import decider_pb2 as pb
from decider.v1 import decider_pb2_grpc as pb_grpc

from ..helpers import ROOT, start_server
from . import surfaces as s
from .scenario import Row, Scenario, load_scenarios


@dataclass(frozen=True)
class Surface:
    run: Callable[..., list[Row]]
    where: str            # "server": run against the shared server per backend; "memory": in-process
    module: str           # the package module (or RPC) it stands for


# The one registry of surfaces. Keys are what scenario files name in `not_meaningful`.
SURFACES: dict[str, Surface] = {
    "unary": Surface(s.unary, "server", "rpc:Decide"),
    "stream": Surface(s.stream, "server", "rpc:DecideStream"),
    "batch": Surface(s.batch, "server", "rpc:DecideBatchStream"),
    "shadow": Surface(s.shadow, "server", "decider/server/bundles.py"),
    "ext_mcp": Surface(s.ext_mcp, "server", "decider/server/ext_mcp.py"),
    "gateway.stdio": Surface(s.gateway_stdio, "server", "decider/gateway/stdio.py"),
    "gateway.http": Surface(s.gateway_http, "server", "decider/gateway/serve.py"),
    "hook.claude_code": Surface(s.hook_claude_code, "server", "decider/hooks/claude_code.py"),
    "hook.claude_code.http": Surface(s.hook_claude_code_http, "server", "decider/gateway/hook_endpoint.py"),
    "guard.core": Surface(s.guard_core, "server", "decider/guard/core.py"),
    "guard.stream": Surface(s.guard_stream, "server", "decider/guard/stream.py"),
    "guard.decorator": Surface(s.guard_decorator, "server", "decider/guard/decorator.py"),
    "guard.langgraph": Surface(s.guard_langgraph, "server", "decider/guard/langgraph.py"),
    "guard.openai_agents": Surface(s.guard_openai_agents, "server", "decider/guard/openai_agents.py"),
    "test.steps": Surface(s.test_steps, "memory", "decider/verify/suites.py"),
    "replay.trace": Surface(s.replay_trace, "memory", "decider/replay/replay.py"),
    "replay.openai": Surface(s.replay_openai, "memory", "decider/replay/traces/openai.py"),
    "replay.claude_code": Surface(s.replay_claude_code, "memory", "decider/replay/traces/claude_code.py"),
}

SCENARIOS = load_scenarios()


def _cases(where: str) -> list[Any]:
    out = []
    for sc in SCENARIOS:
        for name, surface in SURFACES.items():
            if surface.where != where:
                continue
            reason = sc.not_meaningful.get(name)
            marks = [pytest.mark.skip(reason=f"not meaningful on {name}: {reason}")] if reason else []
            out.append(pytest.param(name, sc, id=f"{name}-{sc.name}", marks=marks))
    return out


def _compare(name: str, sc: Scenario, got: list[Row]) -> None:
    lines = []
    for i, exp in enumerate(sc.expected):
        row = got[i] if i < len(got) else None
        if row is None or not exp.matches(row):
            lines.append(f"  {name} / {sc.name} / step {i + 1}: got {row.show() if row else 'nothing'}, "
                         f"expected {exp.show()}")
    if len(got) > len(sc.expected):
        lines.append(f"  {name} / {sc.name}: {len(got) - len(sc.expected)} rows more than expected")
    assert not lines, "the surface disagrees with the expected table:\n" + "\n".join(lines)


@pytest.fixture(scope="module")
def served(module_db_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[s.Served]:
    tmp = tmp_path_factory.mktemp("parity")
    srv = start_server(tmp, s.BUNDLE, module_db_url, "--tokens", str(s.TOKENS), "--ext-mcp",
                       "--shadow-bundle", str(s.BUNDLE))
    try:
        yield s.Served(srv, tmp)
    finally:
        srv.stop()


@pytest.mark.slow
@pytest.mark.parametrize(("name", "scenario"), _cases("server"))
def test_server_surface(served: s.Served, name: str, scenario: Scenario) -> None:
    sc = scenario.personalized(name.replace(".", "-"))
    try:
        got = SURFACES[name].run(sc, served)
    finally:
        served.clear_kill_switches(sc)
    _compare(name, scenario, got)


@pytest.mark.parametrize(("name", "scenario"), _cases("memory"))
def test_memory_surface(name: str, scenario: Scenario, tmp_path: Path) -> None:
    sc = scenario.personalized(name.replace(".", "-"))
    _compare(name, scenario, SURFACES[name].run(sc, tmp_path))


@pytest.mark.slow
def test_the_shadow_diff_of_a_shadow_equal_to_the_active_bundle_shows_no_change(served: s.Served) -> None:
    """After the shadow surface's scenarios (approved calls included) and whatever else this server
    decided: `decider log --shadow-diff` finds no decision whose shadow outcome differs."""
    s.shadow(SCENARIOS[0].personalized("shadow-diff"), served)
    out = subprocess.run([sys.executable, "-m", "decider", "log", "--db", served.server.db_url, "--shadow-diff",
                          "--format", "jsonl"], capture_output=True, text=True, cwd=ROOT, timeout=60)
    assert out.returncode == 0, out.stderr
    report = json.loads(out.stdout.splitlines()[0])
    assert report["decisions_with_shadow"] > 0
    assert report["disagree"] == 0, json.dumps({k: report[k] for k in ("by_outcome_pair", "by_rule", "examples")},
                                               indent=1)


@pytest.mark.slow
def test_the_shadow_agrees_on_calls_decided_together(served: s.Served) -> None:
    """The budget scenario's calls pipelined on one DecideStream are decided concurrently, in no set
    order (which call the budget denies varies); whichever it is, the shadow of the same bundle,
    decided on its own view of the same state, must decide it alike."""
    sc = next(x for x in SCENARIOS if x.name == "budget-running-out").personalized("shadow-pipelined")
    with grpc.insecure_channel(served.target) as ch:
        replies = list(pb_grpc.DeciderStub(ch).DecideStream(iter([s.request(c) for c in sc.calls]),
                                                            metadata=s.meta("enforcer-token"), timeout=30))
    outcomes = sorted(pb.Outcome.Name(r.outcome) for r in replies)
    assert outcomes == ["ALLOW", "ALLOW", "DENY"]   # two fit the budget of 10, whatever the order
    changed = []
    for r in replies:
        rec = served.record(r.decision_id)
        if rec.shadow_outcome != rec.outcome:
            changed.append(f"{r.request_id}: active {pb.Outcome.Name(rec.outcome)} [{rec.deciding_rule}], "
                           f"shadow {pb.Outcome.Name(rec.shadow_outcome)} {list(rec.shadow_rules)}")
    assert not changed, "the shadow of the active bundle disagrees:\n" + "\n".join(changed)


# ---- the matrix itself --------------------------------------------------------------------------

def test_every_surface_is_in_the_matrix() -> None:
    """A surface the package has but the registry lacks fails here: every guard module, every
    Decider RPC that decides, every agentgateway hook, every coding-agent hook, every gateway
    listener (stdio, HTTP, the HTTP hook endpoint), `test` and `replay`."""
    pkg = ROOT / "decider"
    registered = {surface.module for surface in SURFACES.values()}
    required = {f"decider/guard/{p.name}" for p in (pkg / "guard").glob("*.py") if p.name != "__init__.py"}
    required |= {f"rpc:{m.name}" for m in pb.DESCRIPTOR.services_by_name["Decider"].methods
                 if m.name.startswith("Decide")}
    required |= {f"decider/server/{p.name}" for p in (pkg / "server").glob("ext_*.py")}
    # Every coding-agent hook (a command per event) and every gateway listener: the stdio transport,
    # the streamable-HTTP listener (serve.py: BearerAuth in front of the same proxy) and the HTTP
    # form of the hooks on that listener.
    required |= {f"decider/hooks/{p.name}" for p in (pkg / "hooks").glob("*.py") if p.name != "__init__.py"}
    required |= {"decider/gateway/stdio.py", "decider/gateway/serve.py", "decider/gateway/hook_endpoint.py",
                 "decider/verify/suites.py", "decider/replay/replay.py", "decider/server/bundles.py"}
    missing = sorted(required - registered)
    assert not missing, f"surfaces missing from the parity matrix (add them to SURFACES): {missing}"
    assert all((ROOT / m).exists() for m in registered if not m.startswith("rpc:")), registered


def test_scenarios_name_only_registered_surfaces_with_a_reason() -> None:
    names = [sc.name for sc in SCENARIOS]
    assert len(names) == len(set(names))
    assert {"budget-running-out", "identical-call-approval", "session-labels", "kill-switch", "bound-caller",
            "invalid-input"} <= set(names)
    for sc in SCENARIOS:
        unknown = set(sc.not_meaningful) - set(SURFACES)
        assert not unknown, f"{sc.file}: not_meaningful names unknown surfaces {sorted(unknown)}"
        assert all(len(reason) > 20 for reason in sc.not_meaningful.values()), sc.file
