"""Approval notifications: every new pending approval is POSTed to the webhook as Slack-compatible
JSON with a link into the console, retried with back-off while the receiver is down, and nothing
is lost (delivered at least once, from the outbox in the database)."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from decider.store import connect
from decider.store.notifications import NotificationStore
from decider.v1 import decider_pb2 as pb

from .console_helpers import WebhookReceiver
from .helpers import ServerProcess, start_server
from .stateful import REFUND_BOT, client, write_bundle, write_tokens

CONSOLE_URL = "https://console.example.test"


def wait_for(check: Callable[[], bool], what: str, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


@pytest.fixture
def setup(tmp_path: Path) -> Iterator[tuple[ServerProcess, WebhookReceiver, NotificationStore]]:
    receiver = WebhookReceiver().start()
    srv = start_server(tmp_path, write_bundle(tmp_path), None, "--tokens", str(write_tokens(tmp_path)),
                       "--poll-interval", "0.2", "--approval-webhook", receiver.url, "--console-url", CONSOLE_URL,
                       "--approval-webhook-max-backoff", "0.5")
    outbox = NotificationStore(connect(srv.db_url))
    try:
        yield srv, receiver, outbox
    finally:
        srv.stop()
        receiver.stop()
        outbox.engine.dispose()


def ask_refund(srv: ServerProcess, order: str, session: str = "") -> pb.DecideResponse:
    with client(srv, "gw-token") as c:
        resp = c.decide(agent={**REFUND_BOT, "session_id": session}, tool="payments.refund",
                        args={"amount": 2500, "order": order})
    assert resp.outcome == pb.REQUIRE_APPROVAL
    return resp


def test_each_new_pending_approval_is_posted_once_as_slack_json_with_a_console_link(setup) -> None:  # noqa: ANN001
    srv, receiver, _ = setup
    first = ask_refund(srv, "w-1", session="sess-hook")
    second = ask_refund(srv, "w-2")
    again = ask_refund(srv, "w-1", session="sess-hook")   # the identical pending call: no new approval
    assert again.decision_id == first.decision_id
    with client(srv, "gw-token") as c:
        assert c.decide(agent=REFUND_BOT, tool="work.read", args={}).outcome == pb.ALLOW   # no approval, no post
    wait_for(lambda: len(receiver.received) >= 2, "two webhook posts")
    time.sleep(1.0)   # several more notifier ticks: nothing is sent twice
    assert receiver.decision_ids() == [first.decision_id, second.decision_id]
    msg = receiver.received[0]
    assert f"<{CONSOLE_URL}/decisions/{first.decision_id}|Open in the decider console>" in msg["text"]
    assert "payments.refund" in msg["text"] and "Refunds need a finance approver" in msg["text"]
    assert [b["type"] for b in msg["blocks"]] == ["section", "section", "context", "actions"]
    assert msg["blocks"][3]["elements"][0]["url"] == f"{CONSOLE_URL}/decisions/{first.decision_id}"
    assert "sess-hook" in msg["blocks"][2]["elements"][0]["text"]
    assert receiver.headers[0]["Idempotency-Key"] == first.decision_id


def test_a_receiver_that_was_down_gets_every_approval_after_it_is_back(setup) -> None:  # noqa: ANN001
    srv, receiver, outbox = setup
    receiver.stop()   # the receiver is down; its port is kept for when it comes back
    made = [ask_refund(srv, f"down-{i}").decision_id for i in range(3)]
    # The server tried and failed, more than once, and keeps the deliveries in its outbox.
    wait_for(lambda: all((outbox.get(i) or {}).get("attempts", 0) >= 2 for i in made), "failed attempts")
    assert all(outbox.get(i)["state"] == "pending" for i in made)
    assert "cannot reach the webhook" in (outbox.get(made[0])["last_error"] or "")
    assert receiver.received == []
    receiver.start()   # back up
    wait_for(lambda: sorted(set(receiver.decision_ids())) == sorted(made), "every approval delivered")
    assert all(outbox.get(i)["state"] == "delivered" for i in made)
    # The log names the webhook's host, never its path (a Slack webhook's path is its secret).
    assert "/hooks/approvals" not in srv.log()


def test_a_restarted_server_resumes_from_its_cursor_and_loses_nothing(tmp_path: Path) -> None:
    receiver = WebhookReceiver().start()
    port = receiver.port
    receiver.stop()
    bundle, tokens = write_bundle(tmp_path), write_tokens(tmp_path)
    args = ("--tokens", str(tokens), "--poll-interval", "0.2", "--approval-webhook", receiver.url,
            "--approval-webhook-max-backoff", "0.5")
    srv = start_server(tmp_path, bundle, None, *args)
    try:
        made = [ask_refund(srv, f"restart-{i}").decision_id for i in range(2)]
        outbox = NotificationStore(connect(srv.db_url))
        wait_for(lambda: all((outbox.get(i) or {}).get("attempts", 0) >= 1 for i in made), "queued and tried")
    finally:
        srv.stop()
    receiver = WebhookReceiver(port=port).start()
    srv = start_server(tmp_path, bundle, srv.db_url, *args)
    try:
        wait_for(lambda: sorted(set(receiver.decision_ids())) == sorted(made), "delivered after the restart")
    finally:
        srv.stop()
        receiver.stop()
        outbox.engine.dispose()
