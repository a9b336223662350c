"""Issue 24 item 13: kill-switch ids without manifests. With no `kind: Agent` in the bundle, 6 of 9
id variants of a killed agent were ALLOW (`KILLME`, `"killme "`, Cyrillic `і`, full-width letters).
Now, bundle or not, every variant is denied: case variants by the kill switch itself (ids compare
case-folded, NFKC, trimmed), the others refused as agent ids (INVALID_ARGUMENT naming agent.id).
A real server on a bundle without manifests."""

from __future__ import annotations

from collections.abc import Iterator

import grpc
import pytest

from decider.v1 import decider_pb2 as pb

from .helpers import ServerProcess, start_server
from .stateful import write_bundle

KILLED = ["killme", "KILLME", "Killme", "kiLLme"]
REFUSED = ["killme ", " killme", "k\u0456llme", "\u043a\u0456llme", "\uff4b\uff49\uff4c\uff4c\uff4d\uff45",
           "killme\u200b", "kill\u00adme", "killme\t", "k\u0131llme"]


@pytest.fixture(scope="module")
def srv(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    tmp = tmp_path_factory.mktemp("kill-ids")
    s = start_server(tmp, write_bundle(tmp))   # no `kind: Agent`: nothing registers any id
    try:
        with s.client() as c:
            assert c.decide(agent={"id": "KILLME"}, tool="work.build").outcome == pb.ALLOW
            pending = c.decide(agent={"id": "KILLME"}, tool="payments.refund", args={"amount": 3})
            assert pending.outcome == pb.REQUIRE_APPROVAL
            c.set_kill_switch("agent", "KillMe", "incident 24")   # the switch's own case does not matter
            s.pending = pending.decision_id  # type: ignore[attr-defined]
        yield s
    finally:
        s.stop()


@pytest.mark.parametrize("agent_id", KILLED)
def test_case_variants_of_a_killed_agent_are_killed(srv: ServerProcess, agent_id: str) -> None:
    with srv.client() as c:
        d = c.decide(agent={"id": agent_id}, tool="work.build")
    assert (d.outcome, d.deciding_rule) == (pb.DENY, "killed")


@pytest.mark.parametrize("agent_id", REFUSED)
def test_look_alike_ids_are_refused_as_agent_ids(srv: ServerProcess, agent_id: str) -> None:
    with srv.client() as c, pytest.raises(grpc.RpcError) as err:
        c.decide(agent={"id": agent_id}, tool="work.build")
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert (err.value.details() or "").startswith("agent.id: "), err.value.details()


def test_the_kill_switch_rejected_the_case_variants_pending_approval(srv: ServerProcess) -> None:
    with srv.client() as c:
        rec = c.get_decision(srv.pending)  # type: ignore[attr-defined]
    assert rec.approval.state == pb.APPROVAL_REJECTED


def test_other_agents_and_safe_ids_still_decide(srv: ServerProcess) -> None:
    with srv.client() as c:
        for agent_id in ("killme-2", "svc:gw/coder_7@acme.example", "a+b.c-d"):
            assert c.decide(agent={"id": agent_id}, tool="work.build").outcome == pb.ALLOW
