"""Stateful controls survive a restart, and replicas sharing one database see each other's changes."""

from __future__ import annotations

import threading
from pathlib import Path

from decider.v1 import decider_pb2 as pb

from .helpers import start_server
from .stateful import REFUND_BOT, client, write_bundle, write_tokens


def test_pending_approvals_reservations_and_kill_switches_survive_a_restart(tmp_path: Path, db_url: str) -> None:
    bundle, tokens = write_bundle(tmp_path), str(write_tokens(tmp_path))
    s = start_server(tmp_path, bundle, db_url, "--tokens", tokens)
    try:
        with client(s, "gw-token") as gw, client(s, "admin-token") as admin:
            pending = gw.decide(agent=REFUND_BOT, tool="payments.refund", args={"amount": 5})
            assert gw.decide(agent={"id": "spender"}, tool="work.do", estimated_cost=80).outcome == pb.ALLOW
            ks = admin.set_kill_switch("agent", "rogue", "restart test")
    finally:
        assert s.stop() == 0
    s = start_server(tmp_path, bundle, db_url, "--tokens", tokens, name="restarted")
    try:
        with client(s, "gw-token") as gw, client(s, "admin-token") as admin, client(s, "ana-token") as ana:
            again = gw.decide(agent=REFUND_BOT, tool="payments.refund", args={"amount": 5})
            assert again.decision_id == pending.decision_id and again.approval.state == pb.APPROVAL_PENDING
            assert pending.decision_id in {r.decision_id for r in ana.list_approvals()}
            over = gw.decide(agent={"id": "spender"}, tool="work.do", estimated_cost=30)
            assert over.deciding_rule == "budget_exceeded"   # the 80 reserved before the restart still holds
            assert gw.decide(agent={"id": "rogue"}, tool="work.do").deciding_rule == "killed"
            assert [k.id for k in admin.list_kill_switches()] == [ks.id]
    finally:
        s.stop()


def test_approval_resolved_on_one_replica_reaches_a_watcher_on_the_other(tmp_path: Path, db_url: str) -> None:
    bundle, tokens = write_bundle(tmp_path), str(write_tokens(tmp_path))
    a = start_server(tmp_path, bundle, db_url, "--tokens", tokens, name="a")
    b = start_server(tmp_path, bundle, db_url, "--tokens", tokens, name="b")
    try:
        with client(a, "gw-token") as gw:
            pending = gw.decide(agent=REFUND_BOT, tool="payments.refund", args={"amount": 77})
        seen: list[pb.DecisionRecord] = []
        first = threading.Event()

        def watch() -> None:
            with client(b, "gw-token") as c:
                for rec in c.watch_decision(pending.decision_id, timeout=30):
                    seen.append(rec)
                    first.set()

        t = threading.Thread(target=watch)
        t.start()
        assert first.wait(10)
        with client(a, "carol-token") as carol:
            carol.resolve_approval(pending.decision_id, True, comment="from replica a")
        t.join(30)
        assert not t.is_alive()
        assert [r.approval.state for r in seen] == [pb.APPROVAL_PENDING, pb.APPROVAL_APPROVED]
        assert seen[-1].approval.comment == "from replica a" and seen[-1].approval.resolved_by == "user:carol"
        # The approval is usable once, on whichever replica the agent's retry reaches.
        with client(b, "gw-token") as gw:
            assert gw.decide(agent=REFUND_BOT, tool="payments.refund", args={"amount": 77}).outcome == pb.ALLOW
        with client(a, "gw-token") as gw:
            assert gw.decide(agent=REFUND_BOT, tool="payments.refund",
                             args={"amount": 77}).outcome == pb.REQUIRE_APPROVAL
    finally:
        a.stop()
        b.stop()
