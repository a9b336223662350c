"""DecideStream against a real server: one reply per request, matched by request_id, per-message
errors in `DecideResponse.error`, every decision durable before its reply."""

from __future__ import annotations

import sqlite3

import grpc

from decider.client import build_request
from decider.v1 import decider_pb2 as pb

from .helpers import ServerProcess

CODER = {"id": "coder-7", "team": "platform", "model": "claude-opus-4", "capabilities": ["shell"]}
FINANCE = {"id": "refund-bot", "team": "finance", "model": "gpt-5", "owner": "user:ana"}
STREAM = "/decider.v1.Decider/DecideStream"


def _stream(srv: ServerProcess, messages: list[bytes]) -> list[pb.DecideResponse]:
    """Send raw messages on one stream (half-close after the last), collect every reply."""
    with grpc.insecure_channel(srv.target) as ch:
        call = ch.stream_stream(STREAM, request_serializer=None, response_deserializer=pb.DecideResponse.FromString)
        return list(call(iter(messages), timeout=30))


def _stored(srv: ServerProcess, decision_id: str) -> tuple[str, str] | None:
    with sqlite3.connect(srv.db_url.removeprefix("sqlite:///")) as db:
        return db.execute("select outcome, request_id from decisions where decision_id = ?", (decision_id,)).fetchone()


def test_one_reply_per_request_matched_by_request_id(server: ServerProcess) -> None:
    calls = {
        "s-allow": build_request(agent=CODER, tool="fs.write", args={"path": "/workspace/a.txt"}, request_id="s-allow"),
        "s-deny": build_request(agent=CODER, tool="shell.exec", args={"command": "rm -rf /"}, request_id="s-deny"),
        "s-approve": build_request(agent=FINANCE, tool="payments.refund", args={"amount": 2500}, estimated_cost=5.0,
                                   request_id="s-approve"),
    }
    many = {f"s-{i}": build_request(agent=CODER, tool="fs.write", args={"path": f"/workspace/{i}"}, request_id=f"s-{i}")
            for i in range(40)}
    replies = _stream(server, [r.SerializeToString() for r in (*calls.values(), *many.values())])
    by_id = {r.request_id: r for r in replies}
    assert len(replies) == len(by_id) == len(calls) + len(many)
    assert by_id["s-allow"].outcome == pb.ALLOW and by_id["s-allow"].deciding_rule == "fs-write-workspace"
    assert by_id["s-deny"].outcome == pb.DENY and by_id["s-deny"].deciding_rule == "shell-deny-destructive"
    assert by_id["s-approve"].outcome == pb.REQUIRE_APPROVAL
    assert list(by_id["s-approve"].approval.approvers) == ["group:finance-oncall"]
    assert all(not r.HasField("error") for r in replies)
    # Same answer as the unary call gives for the same request.
    with server.client() as c:
        unary = c.decide(agent=CODER, tool="shell.exec", args={"command": "rm -rf /"})
    assert unary.outcome == by_id["s-deny"].outcome and unary.deciding_rule == by_id["s-deny"].deciding_rule


def test_every_decision_is_recorded_before_its_reply(server: ServerProcess) -> None:
    reqs = [build_request(agent=CODER, tool="fs.write", args={"path": f"/workspace/d{i}"}, request_id=f"d-{i}")
            for i in range(20)]
    with grpc.insecure_channel(server.target) as ch:
        call = ch.stream_stream(STREAM, request_serializer=pb.DecideRequest.SerializeToString,
                                response_deserializer=pb.DecideResponse.FromString)
        for reply in call(iter(reqs), timeout=30):
            # Read straight from the database file the moment the reply arrives.
            assert _stored(server, reply.decision_id) == ("ALLOW", reply.request_id)


def test_a_bad_message_gets_an_error_reply_and_the_stream_goes_on(server: ServerProcess) -> None:
    good1 = build_request(agent=CODER, tool="fs.write", args={"path": "/workspace/a"}, request_id="g-1")
    no_tool = pb.DecideRequest(agent=pb.Agent(id="coder-7"), request=pb.Request(id="bad-1"))
    undecodable = b"\x0a\xff\xff\xff\xff\x0f"  # field 1 (agent) with an impossible length
    good2 = build_request(agent=CODER, tool="fs.write", args={"path": "/workspace/b"}, request_id="g-2")
    replies = _stream(server, [good1.SerializeToString(), no_tool.SerializeToString(), undecodable,
                               good2.SerializeToString()])
    assert len(replies) == 4
    by_id = {r.request_id: r for r in replies if r.request_id}
    assert by_id["g-1"].outcome == pb.ALLOW and by_id["g-2"].outcome == pb.ALLOW
    bad = by_id["bad-1"]
    assert bad.error.code == grpc.StatusCode.INVALID_ARGUMENT.value[0]
    assert bad.error.message.startswith("tool") and not bad.decision_id
    (garbled,) = [r for r in replies if not r.request_id]
    assert garbled.error.code == grpc.StatusCode.INVALID_ARGUMENT.value[0] and not garbled.decision_id
    assert _stored(server, bad.decision_id) is None


def test_a_caller_that_cancels_mid_stream_leaves_the_server_serving(server: ServerProcess) -> None:
    import threading

    release = threading.Event()

    def messages():  # ten requests, then hold the stream open until the test lets go
        for i in range(10):
            yield build_request(agent=CODER, tool="fs.write", args={"path": f"/workspace/c{i}"},
                                request_id=f"c-{i}").SerializeToString()
        release.wait(30)

    with grpc.insecure_channel(server.target) as ch:
        call = ch.stream_stream(STREAM, request_serializer=None, response_deserializer=pb.DecideResponse.FromString)
        stream = call(messages(), timeout=30)
        got = [next(stream) for _ in range(3)]
        stream.cancel()
        release.set()
    assert all(_stored(server, r.decision_id) == ("ALLOW", r.request_id) for r in got)
    # The server is unharmed: a new stream and a unary call are answered.
    again = _stream(server, [build_request(agent=CODER, tool="fs.write", args={"path": "/workspace/z"},
                                           request_id="after").SerializeToString()])
    assert [r.request_id for r in again] == ["after"] and again[0].outcome == pb.ALLOW
    with server.client() as c:
        assert c.decide(agent=CODER, tool="fs.write", args={"path": "/workspace/y"}).outcome == pb.ALLOW
