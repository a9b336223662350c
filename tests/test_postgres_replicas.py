"""Two decider servers, one PostgreSQL database: what one replica changes, the other enforces."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

from decider.v1 import decider_pb2 as pb

from .helpers import start_server
from .pg import PostgresServer
from .stateful import REFUND_BOT, client, write_bundle, write_tokens

POLL = ("--poll-interval", "0.2")


def eventually(check: Callable[[], bool], timeout: float = 10.0) -> bool:
    """True as soon as `check()` holds; False after `timeout` seconds (bounded in time and count)."""
    deadline = time.monotonic() + timeout
    for _ in range(int(timeout / 0.05) + 1):
        if check():
            return True
        if time.monotonic() > deadline:
            break
        time.sleep(0.05)
    return check()


def test_two_replicas_on_one_postgresql_database_share_kill_switches_and_approvals(
        tmp_path: Path, postgres: PostgresServer) -> None:
    url = postgres.create_database("two_replicas")
    bundle, tokens = write_bundle(tmp_path), str(write_tokens(tmp_path))
    a = start_server(tmp_path, bundle, url, "--tokens", tokens, *POLL, name="a")
    b = start_server(tmp_path, bundle, url, "--tokens", tokens, *POLL, name="b")
    try:
        with client(a, "gw-token") as gw_a, client(b, "gw-token") as gw_b, \
                client(a, "admin-token") as admin_a, client(a, "carol-token") as carol_a:
            # A kill switch set on a takes effect on b (within b's poll), and clearing it on a lifts it on b.
            worker = {"id": "w-1", "team": "ops"}
            assert gw_b.decide(agent=worker, tool="work.do").outcome == pb.ALLOW
            ks = admin_a.set_kill_switch("team", "ops", "incident on replica a")
            assert eventually(lambda: gw_b.decide(agent=worker, tool="work.do").deciding_rule == "killed")
            killed = gw_b.decide(agent=worker, tool="work.do")
            assert killed.outcome == pb.DENY and killed.reasons[0].rule_id == "killed"
            admin_a.clear_kill_switch(ks.id)
            assert eventually(lambda: gw_b.decide(agent=worker, tool="work.do").outcome == pb.ALLOW)

            # An approval asked on b and resolved on a releases the identical call on b, exactly once.
            args = {"amount": 4200, "order": "o-42"}
            pending = gw_b.decide(agent=REFUND_BOT, tool="payments.refund", args=args)
            assert pending.outcome == pb.REQUIRE_APPROVAL
            again = gw_a.decide(agent=REFUND_BOT, tool="payments.refund", args=args)
            assert again.decision_id == pending.decision_id     # one pending approval across both replicas
            resolved = carol_a.resolve_approval(pending.decision_id, True, comment="ok from a")
            assert resolved.approval.state == pb.APPROVAL_APPROVED
            released = gw_b.decide(agent=REFUND_BOT, tool="payments.refund", args=args)
            assert released.outcome == pb.ALLOW and released.reasons[0].rule_id == "approved"
            assert "ok from a" in released.reasons[0].text
            record = gw_a.get_decision(pending.decision_id)
            assert record.approval.state == pb.APPROVAL_CONSUMED and record.approval.comment == "ok from a"
            # Used once: the same call again, on either replica, needs a new approval.
            assert gw_a.decide(agent=REFUND_BOT, tool="payments.refund", args=args).outcome == pb.REQUIRE_APPROVAL
    finally:
        a.stop()
        b.stop()
