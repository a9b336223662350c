"""DecideBatchStream and the coalescing client against real servers: one reply message per batch,
responses in the batch's order, one durable record per call, per-call errors that leave the rest
of the batch alone, the same answers as the unary Decide, and the enforcer role."""

from __future__ import annotations

import asyncio
import sqlite3
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest

from decider.api.wire import MAX_BATCH, split_batch
from decider.batching import BatchingDecider, DecisionError
from decider.client import DeciderClient, build_request
from decider.errors import InvalidRequest
from decider.v1 import decider_pb2 as pb

from .helpers import ServerProcess, start_server
from .stateful import write_bundle, write_tokens
from .test_lifecycle import free_port

CODER = {"id": "coder-7", "team": "platform", "model": "claude-opus-4", "capabilities": ["shell"]}
FINANCE = {"id": "refund-bot", "team": "finance", "model": "gpt-5", "owner": "user:ana"}
BATCH = "/decider.v1.Decider/DecideBatchStream"


def _batches(target: str, batches: list[bytes], token: str | None = None) -> list[pb.DecideBatchResponse]:
    """Send raw batch messages on one stream (half-close after the last), collect every reply."""
    metadata = (("authorization", f"Bearer {token}"),) if token else None
    with grpc.insecure_channel(target) as ch:
        call = ch.stream_stream(BATCH, request_serializer=None,
                                response_deserializer=pb.DecideBatchResponse.FromString)
        return list(call(iter(batches), timeout=30, metadata=metadata))


def _batch(*reqs: pb.DecideRequest) -> bytes:
    return pb.DecideBatch(requests=list(reqs)).SerializeToString()


def _stored(srv: ServerProcess, decision_id: str) -> tuple[str, str] | None:
    with sqlite3.connect(srv.db_url.removeprefix("sqlite:///")) as db:
        return db.execute("select outcome, request_id from decisions where decision_id = ?", (decision_id,)).fetchone()


def test_one_reply_per_batch_in_order_one_record_per_call(server: ServerProcess) -> None:
    allow = build_request(agent=CODER, tool="fs.write", args={"path": "/workspace/a.txt"}, request_id="b-allow")
    deny = build_request(agent=CODER, tool="shell.exec", args={"command": "rm -rf /"}, request_id="b-deny")
    approve = build_request(agent=FINANCE, tool="payments.refund", args={"amount": 2500}, estimated_cost=5.0,
                            request_id="b-approve")
    no_tool = pb.DecideRequest(agent=pb.Agent(id="coder-7"), request=pb.Request(id="b-bad"))
    (reply,) = _batches(server.target, [_batch(allow, deny, approve, no_tool, allow)])
    got = list(reply.responses)
    assert [r.request_id for r in got] == ["b-allow", "b-deny", "b-approve", "b-bad", "b-allow"]
    assert [r.outcome for r in got[:3]] == [pb.ALLOW, pb.DENY, pb.REQUIRE_APPROVAL]
    # The bad call alone gets the error the unary call would abort with; its neighbours are decided.
    assert got[3].error.code == grpc.StatusCode.INVALID_ARGUMENT.value[0] and got[3].error.message.startswith("tool")
    assert not got[3].decision_id and got[4].outcome == pb.ALLOW
    decided = [r for r in got if r.decision_id]
    assert len({r.decision_id for r in decided}) == 4   # one record per call, the repeated call too
    for r in decided:
        assert _stored(server, r.decision_id) == (pb.Outcome.Name(r.outcome), r.request_id)
    # The same answers as the unary Decide for the same requests.
    with server.client() as c:
        for r, req in zip(got[:3], (allow, deny, approve), strict=True):
            unary = c.decide(req)
            assert (unary.outcome, unary.deciding_rule) == (r.outcome, r.deciding_rule)


def test_replies_to_several_batches_on_one_stream_come_in_batch_order(server: ServerProcess) -> None:
    sizes = [1, 7, 3, 20, 2, 12]
    batches, expected = [], []
    for b, n in enumerate(sizes):
        reqs = [build_request(agent=CODER, tool="fs.write", args={"path": f"/workspace/{b}-{i}"},
                              request_id=f"o-{b}-{i}") for i in range(n)]
        batches.append(_batch(*reqs))
        expected.append([f"o-{b}-{i}" for i in range(n)])
    replies = _batches(server.target, batches)
    assert [[r.request_id for r in reply.responses] for reply in replies] == expected
    assert all(r.outcome == pb.ALLOW for reply in replies for r in reply.responses)


def test_a_malformed_or_oversized_batch_gets_one_error_and_the_stream_goes_on(server: ServerProcess) -> None:
    ok = build_request(agent=CODER, tool="fs.write", args={"path": "/workspace/ok"}, request_id="after")
    garbled = b"\x0a\xff\xff\xff\xff\x0f"   # field 1 with an impossible length
    too_many = _batch(*[ok] * (MAX_BATCH + 1))
    replies = _batches(server.target, [garbled, too_many, _batch(ok)])
    assert len(replies) == 3
    for reply, text in ((replies[0], "requests: cannot be decoded"), (replies[1], f"more than {MAX_BATCH}")):
        (only,) = reply.responses
        assert only.error.code == grpc.StatusCode.INVALID_ARGUMENT.value[0] and text in only.error.message
        assert not only.decision_id
    assert [r.request_id for r in replies[2].responses] == ["after"] and replies[2].responses[0].outcome == pb.ALLOW


def test_split_batch_finds_each_request_and_names_the_field() -> None:
    reqs = [build_request(agent=CODER, tool=f"t{i}", request_id=f"r{i}") for i in range(3)]
    raw = _batch(*reqs)
    assert [pb.DecideRequest.FromString(p).tool.name for p in split_batch(raw)] == ["t0", "t1", "t2"]
    with pytest.raises(InvalidRequest, match="^requests: cannot be decoded"):
        split_batch(raw[:-2])
    with pytest.raises(InvalidRequest, match="more than 2"):
        split_batch(raw, limit=2)


def test_the_batching_client_coalesces_concurrent_calls_and_matches_them(server: ServerProcess) -> None:
    reqs = [build_request(agent=CODER, tool="fs.write" if i % 3 else "shell.exec",
                          args={"path": f"/workspace/c{i}"} if i % 3 else {"command": "rm -rf /"},
                          request_id=f"c-{i}") for i in range(40)]
    bad = pb.DecideRequest(agent=pb.Agent(id="coder-7"), request=pb.Request(id="c-bad"))

    async def run() -> tuple[list[pb.DecideResponse], BaseException, int, int]:
        async with BatchingDecider(server.target) as client:
            results = await asyncio.gather(*(client.decide(r) for r in reqs), client.decide(bad),
                                           return_exceptions=True)
            return list(results[:-1]), results[-1], client.batches_sent, client.calls_sent  # type: ignore[return-value]

    replies, error, batches, calls = asyncio.run(run())
    assert [r.request_id for r in replies] == [r.request.id for r in reqs]
    assert [r.outcome for r in replies] == [pb.ALLOW if i % 3 else pb.DENY for i in range(40)]
    assert isinstance(error, DecisionError) and error.code == grpc.StatusCode.INVALID_ARGUMENT
    # 41 calls made at once went in far fewer messages (the first may go alone).
    assert calls == 41 and batches <= 3


def test_the_batching_client_fails_closed_when_decider_is_unreachable() -> None:
    async def run() -> None:
        async with BatchingDecider("127.0.0.1:1", timeout=5) as client:
            await client.decide(build_request(agent=CODER, tool="fs.write", request_id="x"))

    with pytest.raises(DecisionError) as err:
        asyncio.run(run())
    assert err.value.code == grpc.StatusCode.UNAVAILABLE


@pytest.fixture(scope="module")
def authed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    tmp: Path = tmp_path_factory.mktemp("batch-auth")
    metrics = free_port()
    s = start_server(tmp, write_bundle(tmp), None, "--tokens", str(write_tokens(tmp)),
                     "--metrics-listen", f"127.0.0.1:{metrics}")
    METRICS_PORT[s.port] = metrics
    try:
        yield s
    finally:
        s.stop()


METRICS_PORT: dict[int, int] = {}   # server port -> its /metrics port


def _commits(srv: ServerProcess) -> float:
    """How many commits the server's decision writer has made (its batch-size histogram's count)."""
    port = METRICS_PORT[srv.port]
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as resp:
        text = resp.read().decode()
    return sum(float(line.split()[-1]) for line in text.splitlines()
               if line.startswith("decider_writer_batch_size_count"))


def test_batches_need_the_enforcer_role(authed: ServerProcess) -> None:
    req = build_request(agent={"id": "a"}, tool="work.do", request_id="role")
    (reply,) = _batches(authed.target, [_batch(req)], token="gw-token")
    assert reply.responses[0].decision_id and not reply.responses[0].HasField("error")
    with pytest.raises(grpc.RpcError) as err:
        _batches(authed.target, [_batch(req)], token="ana-token")   # an approver, not an enforcer
    assert err.value.code() == grpc.StatusCode.PERMISSION_DENIED


def test_identical_approval_calls_in_one_batch_share_one_pending_decision(authed: ServerProcess) -> None:
    # The first opens the approval and holds its call's lock until its record is written; the
    # second, later in the same batch, must find that record (and not wait on the lock forever).
    refund = {"id": "refund-bot", "team": "finance", "owner": "user:olga", "model": "gpt-5"}
    a = build_request(agent=refund, tool="payments.refund", args={"amount": 5, "order": "b-1"}, request_id="a1")
    b = build_request(agent=refund, tool="payments.refund", args={"amount": 5, "order": "b-1"}, request_id="a2")
    work = build_request(agent={"id": "w"}, tool="work.do", request_id="w1")
    other = build_request(agent=refund, tool="payments.refund", args={"amount": 5, "order": "b-2"}, request_id="o1")
    before = _commits(authed)
    (reply,) = _batches(authed.target, [_batch(a, work, b, other)], token="gw-token")
    first, allowed, second, third = reply.responses
    assert first.outcome == second.outcome == third.outcome == pb.REQUIRE_APPROVAL and allowed.outcome == pb.ALLOW
    assert second.decision_id == first.decision_id and second.request_id == "a2"
    assert third.decision_id != first.decision_id
    # The second call had to wait for the first one's lock: the records staged before it were
    # committed then (the second call itself writes none), and the last call's after.
    assert _commits(authed) - before == 2


def test_a_batch_that_opens_approvals_is_written_in_one_commit(authed: ServerProcess) -> None:
    # Records are committed early only when a call must wait for a lock; calls that open
    # approvals of their own do not split the batch's write.
    refund = {"id": "refund-bot", "team": "finance", "owner": "user:olga", "model": "gpt-5"}
    reqs = [build_request(agent=refund, tool="payments.refund", args={"amount": 5, "order": f"one-commit-{i}"},
                          request_id=f"oc{i}") for i in range(3)]
    reqs.insert(1, build_request(agent={"id": "w"}, tool="work.do", request_id="oc-work"))
    before = _commits(authed)
    (reply,) = _batches(authed.target, [_batch(*reqs)], token="gw-token")
    assert [r.outcome for r in reply.responses] == [pb.REQUIRE_APPROVAL, pb.ALLOW, pb.REQUIRE_APPROVAL,
                                                     pb.REQUIRE_APPROVAL]
    assert len({r.decision_id for r in reply.responses}) == 4
    assert _commits(authed) - before == 1


def test_a_batch_after_a_kill_switch_is_denied_by_it_for_every_call_it_covers(authed: ServerProcess) -> None:
    # The rules of a batch's calls run before any of them settles, against the kill switches in
    # force when the batch arrives; a call from a budgeted agent is evaluated in its turn.
    with DeciderClient(authed.target, token="admin-token") as admin:
        ks = admin.set_kill_switch("agent", "batch-killed", "incident 17")
        try:
            killed = build_request(agent={"id": "batch-killed"}, tool="work.do", request_id="k1")
            spender = build_request(agent={"id": "batch-killed"}, tool="work.do", estimated_cost=1.0,
                                    request_id="k2")
            other = build_request(agent={"id": "batch-alive"}, tool="work.do", request_id="k3")
            (reply,) = _batches(authed.target, [_batch(killed, other, spender)], token="gw-token")
        finally:
            admin.clear_kill_switch(ks.id)
    assert [r.deciding_rule for r in reply.responses] == ["killed", "work-allowed", "killed"]
    (after,) = _batches(authed.target, [_batch(killed)], token="gw-token")
    assert after.responses[0].outcome == pb.ALLOW


def test_budgets_are_charged_call_by_call_within_a_batch(authed: ServerProcess) -> None:
    # Agent budget 100 in total: four calls of 30 in one batch, the fourth does not fit.
    agent = {"id": "batch-spender", "team": "ops"}
    reqs = [build_request(agent=agent, tool="work.do", estimated_cost=30.0, request_id=f"c{i}") for i in range(4)]
    (reply,) = _batches(authed.target, [_batch(*reqs)], token="gw-token")
    assert [r.outcome for r in reply.responses] == [pb.ALLOW, pb.ALLOW, pb.ALLOW, pb.DENY]
    assert reply.responses[3].reasons[0].rule_id == "budget_exceeded"
