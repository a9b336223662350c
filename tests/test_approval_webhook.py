"""Approval notifications: every new pending approval is POSTed to the webhook as Slack-compatible
JSON with a link into the console, retried with back-off while the receiver is down, and nothing
is lost (delivered at least once, from the outbox in the database)."""

from __future__ import annotations

import json
import re
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
    # Deliveries run concurrently (issue 24 item 10): each once, in either order.
    assert sorted(receiver.decision_ids()) == sorted([first.decision_id, second.decision_id])
    at = receiver.decision_ids().index(first.decision_id)
    msg = receiver.received[at]
    assert f"<{CONSOLE_URL}/decisions/{first.decision_id}|Open in the decider console>" in msg["text"]
    assert "payments.refund" in msg["text"] and "Refunds need a finance approver" in msg["text"]
    assert [b["type"] for b in msg["blocks"]] == ["section", "section", "context", "actions"]
    assert msg["blocks"][3]["elements"][0]["url"] == f"{CONSOLE_URL}/decisions/{first.decision_id}"
    assert "sess-hook" in msg["blocks"][2]["elements"][0]["text"]
    assert receiver.headers[at]["Idempotency-Key"] == first.decision_id


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


# ---- issue 24 item 4: what a caller controls is escaped for Slack mrkdwn -------------------------

HOSTILE_TEAM = "<https://evil.example/a|finance> <!here> @channel &amp; <@U0ADMIN>"
HOSTILE_SESSION = "s`<https://evil.example/b|open the console>`"
HOSTILE_ORDER = "x```\n<https://evil.example/c|Approve here> <!channel> @here @everyone\n```tail"


def mrkdwn_texts(msg: dict) -> list[str]:
    """Every string of the message Slack parses as mrkdwn: `text` and each mrkdwn block element."""
    out = [msg["text"]]
    for block in msg["blocks"]:
        if block.get("text", {}).get("type") == "mrkdwn":
            out.append(block["text"]["text"])
        out += [e["text"] for e in block.get("elements", []) if e.get("type") == "mrkdwn"]
    return out


def outside_code(text: str) -> str:
    """What Slack renders as live mrkdwn: the text without its ``` blocks and `inline` spans."""
    import re

    return re.sub(r"`[^`\n]*`", "", re.sub(r"```.*?```", "", text, flags=re.S))


def assert_inert(msg: dict, console_link: str) -> None:
    for text in mrkdwn_texts(msg):
        live = outside_code(text).replace(console_link, "")
        assert "<" not in live and ">" not in live, f"a live Slack link or mention in {text!r}"
        assert "evil.example" not in live, f"the attacker's host outside code in {text!r}"
        for mention in ("@channel", "@here", "@everyone", "<!", "<@"):
            assert mention not in text, f"{mention} survives in {text!r}"
        # Inside code too, Slack's control characters are escaped: no `<…|…>` link anywhere.
        assert "<http" not in text.replace(console_link, "")
    args_block = msg["blocks"][1]["text"]["text"]
    assert args_block.startswith("```") and args_block.endswith("```") and args_block.count("```") == 2


def test_hostile_team_session_and_arguments_arrive_as_inert_text(setup) -> None:  # noqa: ANN001
    srv, receiver, _ = setup
    with client(srv, "gw-token") as c:
        resp = c.decide(agent={**REFUND_BOT, "team": HOSTILE_TEAM, "session_id": HOSTILE_SESSION},
                        tool="payments.refund", args={"amount": 2500, "order": HOSTILE_ORDER})
    assert resp.outcome == pb.REQUIRE_APPROVAL
    wait_for(lambda: len(receiver.received) >= 1, "the webhook post")
    msg = receiver.received[0]
    link = f"<{CONSOLE_URL}/decisions/{resp.decision_id}|Open in the decider console>"
    assert link in msg["text"]
    assert_inert(msg, link)
    # Still readable: the values are there, escaped (`&` → `&amp;`) and in code formatting.
    assert "&lt;https://evil.example/a|finance&gt;" in msg["blocks"][0]["text"]["text"]
    assert "&amp;amp;" in msg["blocks"][0]["text"]["text"]
    assert "Approve here" in msg["blocks"][1]["text"]["text"]


def test_every_field_of_the_slack_message_is_escaped() -> None:
    from decider.server.notify import slack_message

    hostile = "a`b```c <https://evil.example/d|x> <!here> @channel & *bold* \n next"
    row = {"decision_id": "01M8VXX634X3G88BA7YY779BY9", "agent_id": hostile, "team": hostile,
           "tool_name": hostile, "deciding_rule": hostile, "session_id": hostile,
           "reasons": '[{"rule_id": "r", "text": "' + hostile.replace("\n", "\\n") + '"}]',
           "args": '{"q": "' + hostile.replace("\n", "\\n") + '"}', "approval_expires_at": None}
    msg = slack_message(row, CONSOLE_URL)
    assert_inert(msg, f"<{CONSOLE_URL}/decisions/01M8VXX634X3G88BA7YY779BY9|Open in the decider console>")
    # Without a console link there is no link at all.
    assert_inert(slack_message(row, ""), "\0")


@pytest.mark.parametrize("char", ["<", "&", "@", ">", "`", "é"])
def test_no_caller_value_pushes_a_block_past_slacks_limits(char: str) -> None:
    """Escaping grows text (`<` is sent as `&lt;`): the limits count what is sent, so a value made of
    one such character cannot make Slack refuse the message (3,000 characters per block text)."""
    from decider.server.notify import slack_message

    huge = char * 20_000
    row = {"decision_id": "01M8VXX634X3G88BA7YY779BY9", "agent_id": huge, "team": huge, "tool_name": huge,
           "deciding_rule": huge, "session_id": huge, "reasons": json.dumps([{"rule_id": "r", "text": huge}]),
           "args": json.dumps({"q": huge}), "approval_expires_at": None}
    msg = slack_message(row, CONSOLE_URL)
    texts = mrkdwn_texts(msg)
    assert all(len(t) <= 3000 for t in texts), [len(t) for t in texts]
    assert_inert(msg, f"<{CONSOLE_URL}/decisions/01M8VXX634X3G88BA7YY779BY9|Open in the decider console>")
    # Cut between characters: never half an entity or a mention left bare.
    for t in texts:
        assert not re.search(r"&[a-z]{0,3}…", t) and "@…" not in t
