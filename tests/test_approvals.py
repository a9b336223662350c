"""Approvals against a real server: bound to the exact call, resolved by the right people only,
pushed to watchers, consumed once, expired to deny."""

from __future__ import annotations

import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest

from decider.v1 import decider_pb2 as pb

from .helpers import ROOT, ServerProcess, start_server
from .stateful import REFUND_BOT, client, write_bundle, write_tokens


@pytest.fixture(scope="module")
def srv(tmp_path_factory: pytest.TempPathFactory, module_db_url: str) -> Iterator[ServerProcess]:
    tmp = tmp_path_factory.mktemp("approvals")
    s = start_server(tmp, write_bundle(tmp), module_db_url, "--tokens", str(write_tokens(tmp)), "--poll-interval", "0.2")
    try:
        yield s
    finally:
        s.stop()


def ask(srv: ServerProcess, args: dict, tool: str = "payments.refund", agent: dict = REFUND_BOT) -> pb.DecideResponse:
    with client(srv, "gw-token") as c:
        return c.decide(agent=agent, tool=tool, args=args)


def refused(fn, code: grpc.StatusCode) -> str:  # noqa: ANN001
    with pytest.raises(grpc.RpcError) as err:
        fn()
    assert err.value.code() == code, err.value.details()
    return err.value.details()


def test_identical_call_while_pending_returns_same_decision(srv: ServerProcess) -> None:
    first = ask(srv, {"amount": 2500, "order": "o-1"})
    again = ask(srv, {"order": "o-1", "amount": 2500})   # same arguments, other key order
    other = ask(srv, {"amount": 2501, "order": "o-1"})
    assert first.outcome == again.outcome == other.outcome == pb.REQUIRE_APPROVAL
    assert again.decision_id == first.decision_id
    assert again.approval.state == pb.APPROVAL_PENDING and again.approval.approval_id == first.decision_id
    assert other.decision_id != first.decision_id
    with client(srv, "ana-token") as c:
        pending = {r.decision_id for r in c.list_approvals()}
    assert {first.decision_id, other.decision_id} <= pending


def test_each_identical_call_gets_its_own_request_id_and_sees_the_approval_change(srv: ServerProcess) -> None:
    # The server answers identical calls from a per-version memo of the stored approval (issue 17):
    # each answer still carries its own request id, and a resolution is seen at once.
    with client(srv, "gw-token") as c:
        answers = [c.decide(agent=REFUND_BOT, tool="payments.refund", args={"amount": 2600, "order": "o-m"},
                            request_id=f"m-{i}") for i in range(3)]
    assert [a.request_id for a in answers] == ["m-0", "m-1", "m-2"]
    assert len({a.decision_id for a in answers}) == 1 and answers[2].approval.state == pb.APPROVAL_PENDING
    with client(srv, "ana-token") as c:
        c.resolve_approval(answers[0].decision_id, False, comment="not this one")
    after = ask(srv, {"amount": 2600, "order": "o-m"})
    assert after.outcome == pb.DENY and after.reasons[0].rule_id == "rejected"
    assert "not this one" in after.reasons[0].text


def test_approved_call_is_allowed_exactly_once_and_watchers_see_it(srv: ServerProcess) -> None:
    pending = ask(srv, {"amount": 3000, "order": "o-2"})
    seen: list[pb.DecisionRecord] = []

    def watch() -> None:
        with client(srv, "gw-token") as c:
            seen.extend(c.watch_decision(pending.decision_id, timeout=30))

    t = threading.Thread(target=watch)
    t.start()
    time.sleep(0.3)  # let the stream deliver the pending record first (order only; not asserted on time)
    with client(srv, "ana-token") as c:   # ana is in group finance-oncall via her token entry
        rec = c.resolve_approval(pending.decision_id, True, comment="checked the order")
    t.join(30)
    assert not t.is_alive(), "WatchDecision did not end after the approval"
    assert [r.approval.state for r in seen] == [pb.APPROVAL_PENDING, pb.APPROVAL_APPROVED]
    assert rec.approval.state == pb.APPROVAL_APPROVED and rec.approval.resolved_by == "user:ana"

    allowed = ask(srv, {"amount": 3000, "order": "o-2"})
    assert allowed.outcome == pb.ALLOW and allowed.reasons[0].rule_id == "approved"
    assert allowed.decision_id != pending.decision_id
    again = ask(srv, {"amount": 3000, "order": "o-2"})
    assert again.outcome == pb.REQUIRE_APPROVAL and again.decision_id not in (pending.decision_id,
                                                                               allowed.decision_id)
    with client(srv, "gw-token") as c:
        original = c.get_decision(pending.decision_id)
        used = c.get_decision(allowed.decision_id)
    assert original.approval.state == pb.APPROVAL_CONSUMED
    assert used.approval.approval_id == pending.decision_id and used.approval.resolved_by == "user:ana"


def test_group_membership_from_the_groups_map_and_direct_users_can_approve(srv: ServerProcess) -> None:
    a = ask(srv, {"amount": 1, "order": "o-3"})
    b = ask(srv, {"amount": 1, "order": "o-4"})
    with client(srv, "carol-token") as c:   # user:carol is listed directly
        assert c.resolve_approval(a.decision_id, True).approval.state == pb.APPROVAL_APPROVED
    dan_agent = {**REFUND_BOT, "owner": "user:zed"}
    d = ask(srv, {"amount": 1, "order": "o-5"}, agent=dan_agent)
    with client(srv, "olga-token") as c:    # user:olga is in finance-oncall through the groups map
        assert c.resolve_approval(d.decision_id, False).approval.state == pb.APPROVAL_REJECTED
    assert b.decision_id


def test_the_asking_agent_its_owner_and_outsiders_cannot_approve(srv: ServerProcess) -> None:
    pending = ask(srv, {"amount": 5000, "order": "o-6"})
    did = pending.decision_id
    with client(srv, "olga-token") as c:    # olga owns refund-bot (and is in the group): still no
        msg = refused(lambda: c.resolve_approval(did, True), grpc.StatusCode.PERMISSION_DENIED)
        assert "cannot resolve" in msg
    with client(srv, "bo-token") as c:      # an approver, but not one of this rule's approvers
        msg = refused(lambda: c.resolve_approval(did, True), grpc.StatusCode.PERMISSION_DENIED)
        assert "not among" in msg
        # Nor can bo claim to be someone else.
        refused(lambda: c.resolve_approval(did, True, approver="user:carol"), grpc.StatusCode.PERMISSION_DENIED)
    with client(srv, "gw-token") as c:      # the enforcer role cannot approve at all
        refused(lambda: c.resolve_approval(did, True, approver="user:carol"), grpc.StatusCode.PERMISSION_DENIED)
    with client(srv, "gw-token") as c:
        assert c.get_decision(did).approval.state == pb.APPROVAL_PENDING


def test_agent_principal_cannot_approve_its_own_call(tmp_path: Path, db_url: str) -> None:
    # Without a token file (loopback), the approver is whoever the request names.
    s = start_server(tmp_path, write_bundle(tmp_path), db_url)
    try:
        with s.client() as c:
            p = c.decide(agent=REFUND_BOT, tool="payments.refund", args={"amount": 9})
            for who in ("refund-bot", "agent:refund-bot", "user:olga"):
                refused(lambda w=who: c.resolve_approval(p.decision_id, True, approver=w),
                        grpc.StatusCode.PERMISSION_DENIED)
            # Group membership cannot be verified without a token file: fail closed.
            refused(lambda: c.resolve_approval(p.decision_id, True, approver="user:dan"),
                    grpc.StatusCode.PERMISSION_DENIED)
            assert c.resolve_approval(p.decision_id, True, approver="user:carol").approval.resolved_by == "user:carol"
    finally:
        s.stop()


def test_get_decision_shows_state_approver_time_and_comment_after_reject(srv: ServerProcess) -> None:
    pending = ask(srv, {"amount": 7000, "order": "o-7"})
    with client(srv, "carol-token") as c:
        c.resolve_approval(pending.decision_id, False, comment="duplicate refund")
        refused(lambda: c.resolve_approval(pending.decision_id, True), grpc.StatusCode.FAILED_PRECONDITION)
    with client(srv, "gw-token") as c:
        rec = c.get_decision(pending.decision_id)
    ap = rec.approval
    assert ap.state == pb.APPROVAL_REJECTED and ap.resolved_by == "user:carol"
    assert ap.comment == "duplicate refund" and ap.resolved_at.seconds > 0


def test_unresolved_approval_expires_to_deny_and_watchers_are_told(srv: ServerProcess) -> None:
    pending = ask(srv, {"n": 1}, tool="payments.quick")   # approval_ttl: 1s
    assert pending.outcome == pb.REQUIRE_APPROVAL
    with client(srv, "gw-token") as c:
        states = [r.approval.state for r in c.watch_decision(pending.decision_id, timeout=30)]
    assert states[-1] == pb.APPROVAL_EXPIRED
    with client(srv, "carol-token") as c:
        msg = refused(lambda: c.resolve_approval(pending.decision_id, True), grpc.StatusCode.FAILED_PRECONDITION)
    assert "expired" in msg
    again = ask(srv, {"n": 1}, tool="payments.quick")
    assert again.decision_id != pending.decision_id   # an expired approval is never reused


def cli(srv: ServerProcess, *args: str, token: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "decider", *args, "--server", srv.target, "--token", token],
                          capture_output=True, text=True, cwd=ROOT, timeout=60)


def test_cli_lists_approves_and_rejects(srv: ServerProcess) -> None:
    a = ask(srv, {"amount": 11, "order": "cli-1"})
    b = ask(srv, {"amount": 12, "order": "cli-2"})
    listed = cli(srv, "approvals", token="ana-token")
    assert listed.returncode == 0 and a.decision_id in listed.stdout and b.decision_id in listed.stdout
    ok = cli(srv, "approve", a.decision_id, "--comment", "fine", token="ana-token")
    assert ok.returncode == 0 and f"{a.decision_id} approved by user:ana" in ok.stdout
    no = cli(srv, "reject", b.decision_id, "--comment", "not today", token="carol-token")
    assert no.returncode == 0 and "rejected by user:carol" in no.stdout and "not today" in no.stdout
    denied = cli(srv, "approve", b.decision_id, token="gw-token")
    assert denied.returncode == 1 and "PERMISSION_DENIED" in denied.stderr
    listed = cli(srv, "approvals", token="ana-token")
    assert a.decision_id not in listed.stdout and b.decision_id not in listed.stdout
