"""Issue 24 item 3: self-approval through identical-call dedup. The gateway asks for a call; a
principal holding enforcer+approver asks for the identical call, gets the same pending approval
(dedup), and must not be able to approve it — then ask again and get ALLOW. Every principal that
joined a pending call is refused as its approver, on every replica sharing the database."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest

from decider.v1 import decider_pb2 as pb

from .helpers import ServerProcess, start_server
from .stateful import REFUND_BOT, client, write_bundle

TOKENS = """\
tokens:
  - {token: gw, principal: "service:gateway", roles: [enforcer]}
  - {token: mallory, principal: "user:mallory", roles: [enforcer, approver], groups: [finance-oncall]}
  - {token: ana, principal: "user:ana", roles: [approver], groups: [finance-oncall]}
"""


@pytest.fixture(scope="module")
def replicas(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[ServerProcess, ServerProcess]]:
    tmp = tmp_path_factory.mktemp("dedup-approval")
    tokens = tmp / "tokens.yaml"
    tokens.write_text(TOKENS)
    bundle: Path = write_bundle(tmp)
    one = start_server(tmp, bundle, None, "--tokens", str(tokens), name="one")
    try:
        two = start_server(tmp, bundle, one.db_url, "--tokens", str(tokens), name="two")
        try:
            yield one, two
        finally:
            two.stop()
    finally:
        one.stop()


@pytest.mark.parametrize("where", ["same replica", "other replica"])
def test_a_principal_that_joined_a_pending_call_cannot_approve_it(
        replicas: tuple[ServerProcess, ServerProcess], where: str) -> None:
    one, two = replicas
    args = {"amount": 4200, "order": f"o-{where}"}
    with client(one, "gw") as gw:
        asked = gw.decide(agent=REFUND_BOT, tool="payments.refund", args=args)
    assert asked.outcome == pb.REQUIRE_APPROVAL
    with client(one, "mallory") as m:
        joined = m.decide(agent=REFUND_BOT, tool="payments.refund", args=args)
        assert joined.outcome == pb.REQUIRE_APPROVAL and joined.decision_id == asked.decision_id
        m.decide(agent=REFUND_BOT, tool="payments.refund", args=args)   # a retry: still one asker
    resolver = one if where == "same replica" else two
    with client(resolver, "mallory") as m:
        with pytest.raises(grpc.RpcError) as err:
            m.resolve_approval(asked.decision_id, True)
        assert err.value.code() == grpc.StatusCode.PERMISSION_DENIED
        assert "user:mallory asked for this call" in (err.value.details() or "")
        with pytest.raises(grpc.RpcError):
            m.resolve_approval(asked.decision_id, False)   # nor reject it
    with client(one, "mallory") as m:   # asking again: still waiting, never ALLOW
        assert m.decide(agent=REFUND_BOT, tool="payments.refund", args=args).outcome == pb.REQUIRE_APPROVAL
    with client(resolver, "ana") as ana:   # someone who did not ask may
        assert ana.resolve_approval(asked.decision_id, True).approval.state == pb.APPROVAL_APPROVED
