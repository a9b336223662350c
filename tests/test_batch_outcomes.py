"""Outcomes carried on DecideBatchStream (`DecideBatch.outcomes`, issue 27) against a real server and a real
SQLite file: settled exactly as the unary ReportOutcome (absent cost keeps the estimate, 0 refunds), before
the message's decisions; a bad outcome gets its own error back and leaves the message's decisions alone; a
bound caller cannot report on another agent's decision this way either; and the coalescing client sends
outcomes with the next decision, alone after its delay, at close, and detects a server that ignores them."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest

from decider.api.wire import split_batch_parts
from decider.batching import BatchingDecider, DecisionError, OutcomesUnsupported
from decider.client import build_request
from decider.store import connect
from decider.store.auth_events import AuthEventStore
from decider.v1 import decider_pb2 as pb

from .helpers import ServerProcess, start_server
from .stateful import REFUND_BOT, client, write_bundle
from .test_budgets import usage

REPO = Path(__file__).resolve().parents[1]
BATCH = "/decider.v1.Decider/DecideBatchStream"
TOKENS = """\
tokens:
  - {token: gw-any, principal: "service:gateway", roles: [enforcer]}
  - {token: gw-a, principal: "service:gw-a", roles: [enforcer], agents: ["coder-*"]}
  - {token: ana-token, principal: "user:ana", roles: [approver]}
"""
INVALID, NOT_FOUND, PRECONDITION, DENIED = (c.value[0] for c in (
    grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.NOT_FOUND, grpc.StatusCode.FAILED_PRECONDITION,
    grpc.StatusCode.PERMISSION_DENIED))


@pytest.fixture(scope="module")
def srv(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    tmp = tmp_path_factory.mktemp("batch-outcomes")
    tokens = tmp / "tokens.yaml"
    tokens.write_text(TOKENS)
    s = start_server(tmp, write_bundle(tmp), None, "--tokens", str(tokens))
    try:
        yield s
    finally:
        s.stop()


def _stream(srv: ServerProcess, messages: list[pb.DecideBatch], token: str = "gw-any") -> list[pb.DecideBatchResponse]:
    with grpc.insecure_channel(srv.target) as ch:
        call = ch.stream_stream(BATCH, request_serializer=pb.DecideBatch.SerializeToString,
                                response_deserializer=pb.DecideBatchResponse.FromString)
        return list(call(iter(messages), timeout=30, metadata=(("authorization", f"Bearer {token}"),)))


def _outcome(decision_id: str, actual_cost: float | None = None, status: str = "ok",
             **kw: object) -> pb.ReportOutcomeRequest:
    req = pb.ReportOutcomeRequest(decision_id=decision_id, status=status, **kw)  # type: ignore[arg-type]
    if actual_cost is not None:
        req.actual_cost = actual_cost
    return req


def _work(agent_id: str, cost: float, request_id: str = "") -> pb.DecideRequest:
    return build_request(agent={"id": agent_id, "team": "ops"}, tool="work.do", estimated_cost=cost,
                         request_id=request_id or f"{agent_id}-{cost}")


def test_outcomes_on_the_stream_settle_budgets_exactly_as_unary_report_outcome(srv: ServerProcess) -> None:
    # The same three reports (absent cost, 0, 30 of 90 reserved) made twice, by stream and by unary call.
    cases = {"keep": None, "refund": 0.0, "actual": 30.0}
    ids: dict[str, str] = {}
    with client(srv, "gw-any") as c:
        for via in ("stream", "unary"):
            for name in cases:
                ids[f"{via}-{name}"] = c.decide(agent={"id": f"{via}-{name}", "team": "ops"}, tool="work.do",
                                                estimated_cost=90).decision_id
        for name, cost in cases.items():
            c.report_outcome(ids[f"unary-{name}"], cost, "ok")
    (reply,) = _stream(srv, [pb.DecideBatch(outcomes=[_outcome(ids[f"stream-{n}"], c) for n, c in cases.items()])])
    assert not reply.responses
    assert [(o.decision_id, o.HasField("error")) for o in reply.outcomes] == [
        (ids[f"stream-{n}"], False) for n in cases]
    used = usage(srv.db_url)
    assert used[("agent", "stream-keep")] == (90.0, 0.0)     # absent: the estimate stands
    assert used[("agent", "stream-refund")] == (0.0, 0.0)    # 0: refunded
    assert used[("agent", "stream-actual")] == (30.0, 0.0)
    with client(srv, "gw-any") as c:
        for name in cases:
            assert used[("agent", f"stream-{name}")] == used[("agent", f"unary-{name}")]
            s, u = c.get_decision(ids[f"stream-{name}"]), c.get_decision(ids[f"unary-{name}"])
            assert (s.actual_cost, s.outcome_status) == (u.actual_cost, u.outcome_status)
            assert s.outcome_status == "ok"


def test_a_messages_outcomes_are_settled_before_its_decisions(srv: ServerProcess) -> None:
    # Agent budget 100: 90 reserved, then one message refunding it and asking for 50 more. The refund
    # comes first, so the 50 fits (it would not, were the decision taken before the outcome).
    with client(srv, "gw-any") as c:
        first = c.decide(agent={"id": "order", "team": "ops"}, tool="work.do", estimated_cost=90).decision_id
    (reply,) = _stream(srv, [pb.DecideBatch(requests=[_work("order", 50, "after-refund")],
                                            outcomes=[_outcome(first, 0.0)])])
    assert not reply.outcomes[0].HasField("error")
    assert reply.responses[0].outcome == pb.ALLOW and reply.responses[0].request_id == "after-refund"
    assert usage(srv.db_url)[("agent", "order")] == (0.0, 50.0)


def test_a_bad_outcome_gets_its_error_back_and_the_messages_decisions_are_unaffected(srv: ServerProcess) -> None:
    with client(srv, "gw-any") as c:
        ok = c.decide(agent={"id": "bad-out", "team": "ops"}, tool="work.do", estimated_cost=10).decision_id
        again = c.decide(agent={"id": "bad-out", "team": "ops"}, tool="work.do", estimated_cost=10).decision_id
        denied = c.decide(agent={"id": "bad-out", "team": "ops"}, tool="nope.do").decision_id
        c.report_outcome(again, 1.0)
    outcomes = [_outcome(""), _outcome("no-such-decision"), _outcome(denied), _outcome(again),
                _outcome(ok, -1.0), _outcome(ok, labels=["not a label!"]), _outcome(ok, 4.0)]
    message = pb.DecideBatch(requests=[_work("bad-out-neighbour", 1, "n1"), _work("bad-out-neighbour", 2, "n2")],
                             outcomes=outcomes)
    # An outcome whose bytes do not decode gets INVALID_ARGUMENT naming the field, too.
    raw = message.SerializeToString() + b"\x12\x04\x0a\x02\xff\xfe"
    with grpc.insecure_channel(srv.target) as ch:
        call = ch.stream_stream(BATCH, request_serializer=None, response_deserializer=pb.DecideBatchResponse.FromString)
        (reply,) = list(call(iter([raw]), timeout=30, metadata=(("authorization", "Bearer gw-any"),)))
    got = [(o.error.code, o.error.message.split(":")[0]) for o in reply.outcomes]
    assert got[:3] == [(INVALID, "decision_id"), (NOT_FOUND, "decision_id"), (PRECONDITION, f"decision {denied} was DENY")]
    assert got[3] == (PRECONDITION, f"decision {again}")
    assert "already reported" in reply.outcomes[3].error.message
    assert got[4:6] == [(INVALID, "actual_cost"), (INVALID, "labels[0]")]
    assert not reply.outcomes[6].HasField("error") and reply.outcomes[6].decision_id == ok
    assert got[7] == (INVALID, "decision_id") and "cannot be decoded" in reply.outcomes[7].error.message
    assert [(r.request_id, r.outcome) for r in reply.responses] == [("n1", pb.ALLOW), ("n2", pb.ALLOW)]
    with client(srv, "gw-any") as c:
        assert (c.get_decision(ok).actual_cost, c.get_decision(ok).outcome_status) == (4.0, "ok")
    assert usage(srv.db_url)[("agent", "bad-out")] == (5.0, 0.0)   # 4 + the earlier unary 1


def test_a_bound_caller_cannot_report_on_another_agents_decision_through_the_stream(srv: ServerProcess) -> None:
    with client(srv, "gw-any") as c:
        theirs = c.decide(agent=REFUND_BOT, tool="work.build", estimated_cost=5).decision_id
    with client(srv, "gw-a") as c:
        mine = c.decide(agent={"id": "coder-7", "team": "platform"}, tool="work.build").decision_id
    (reply,) = _stream(srv, [pb.DecideBatch(outcomes=[_outcome(theirs, 1e9, labels=["secret-read"]),
                                                      _outcome(mine, 1.0)])], token="gw-a")
    refused, settled = reply.outcomes
    assert refused.error.code == DENIED and "refund-bot" not in refused.error.message
    assert not settled.HasField("error")
    with client(srv, "gw-any") as c:
        rec = c.get_decision(theirs)
        assert rec.actual_cost == 0 and not rec.outcome_status and "secret-read" not in rec.labels
        assert c.get_decision(mine).outcome_status == "ok"
    events = [e for e in AuthEventStore(connect(srv.db_url)).all() if e["principal"] == "service:gw-a"]
    assert [e["method"] for e in events] == ["/decider.v1.Decider/ReportOutcome"]
    assert events[0]["code"] == "PERMISSION_DENIED"


def test_outcomes_need_the_enforcer_role(srv: ServerProcess) -> None:
    with pytest.raises(grpc.RpcError) as err:
        _stream(srv, [pb.DecideBatch(outcomes=[_outcome("anything")])], token="ana-token")
    assert err.value.code() == grpc.StatusCode.PERMISSION_DENIED


def test_the_batching_client_sends_outcomes_with_the_next_decision_or_alone(srv: ServerProcess) -> None:
    md = (("authorization", "Bearer gw-any"),)

    async def run() -> tuple[list[int], list[int]]:
        counts: list[int] = []
        # A delay no test waits out: the outcome can only go with the next decision.
        async with BatchingDecider(srv.target, metadata=md, outcome_delay_s=60) as d:
            first = await d.decide(_work("client-out", 10, "c1"))
            report = asyncio.ensure_future(d.report(_outcome(first.decision_id, 0.0)))
            await asyncio.sleep(0)
            second = await d.decide(_work("client-out", 95, "c2"))   # fits only once the 10 is refunded
            await report
            counts += [d.batches_sent, d.calls_sent, d.outcomes_sent, second.outcome]
            refused = asyncio.ensure_future(d.report(_outcome(first.decision_id)))   # a second report
            await asyncio.sleep(0)
            await d.decide(_work("client-out-other", 1, "c3"))
            with pytest.raises(DecisionError) as err:
                await refused
            assert err.value.refused and err.value.code == grpc.StatusCode.FAILED_PRECONDITION
            last = asyncio.ensure_future(d.report(_outcome(second.decision_id, 7.0)))
            await asyncio.sleep(0)
        # close() sent the waiting outcome rather than leaving it behind.
        await last
        async with BatchingDecider(srv.target, metadata=md, outcome_delay_s=0.01) as d:
            alone = await d.decide(_work("client-alone", 3, "c4"))
            await d.report(_outcome(alone.decision_id, 2.0))   # no decision follows: sent after the delay
            return counts, [d.batches_sent, d.calls_sent, d.outcomes_sent]

    with_next, alone = asyncio.run(run())
    assert with_next == [2, 2, 1, pb.ALLOW]
    assert alone == [2, 1, 1]
    assert usage(srv.db_url)[("agent", "client-out")] == (7.0, 0.0)
    assert usage(srv.db_url)[("agent", "client-alone")] == (2.0, 0.0)


def test_split_batch_parts_finds_requests_and_outcomes_in_order() -> None:
    message = pb.DecideBatch(requests=[_work("a", 1, "r1"), _work("a", 2, "r2")],
                             outcomes=[_outcome("d1"), _outcome("d2"), _outcome("d3")])
    requests, outcomes = split_batch_parts(message.SerializeToString())
    assert [pb.DecideRequest.FromString(r).request.id for r in requests] == ["r1", "r2"]
    assert [pb.ReportOutcomeRequest.FromString(o).decision_id for o in outcomes] == ["d1", "d2", "d3"]


@pytest.fixture()
def old_server(tmp_path: Path) -> Iterator[str]:
    """tools/bench/floor_server.py: a real DecideBatchStream server that predates `outcomes` (it reads
    `requests` alone, as protobuf skips an unknown field)."""
    port_file = tmp_path / "floor.port"
    proc = subprocess.Popen([sys.executable, str(REPO / "tools/bench/floor_server.py"), "--listen", "127.0.0.1:0",
                             "--port-file", str(port_file)], cwd=REPO)
    try:
        for _ in range(200):
            if port_file.exists() and port_file.read_text().strip():
                break
            if proc.poll() is not None:
                raise RuntimeError("floor_server exited")
            time.sleep(0.05)
        yield f"127.0.0.1:{port_file.read_text().strip()}"
    finally:
        proc.terminate()
        proc.wait(timeout=10)
        port_file.unlink(missing_ok=True)


def test_the_batching_client_detects_a_server_that_ignores_outcomes(old_server: str) -> None:
    async def run() -> tuple[bool, bool]:
        async with BatchingDecider(old_server, outcome_delay_s=0.01) as d:
            await d.decide(build_request(agent={"id": "a"}, tool="fs.read", request_id="x"))
            with pytest.raises(OutcomesUnsupported):
                await d.report(_outcome("some-decision"))
            unsupported = not d.outcomes_supported
            with pytest.raises(OutcomesUnsupported):   # from now on at once, without a round trip
                await d.report(_outcome("another"))
            return unsupported, d.outcomes_sent == 1

    assert asyncio.run(run()) == (True, True)


async def _old_decider(real: str) -> tuple[grpc.aio.Server, str]:
    """A decider from before `DecideBatch.outcomes`, in front of the real one: its DecideBatchStream reads
    `requests` alone (as the old `split_batch` did) and answers no outcomes; ReportOutcome is passed on."""
    from decider.api.wire import split_batch

    channel = grpc.aio.insecure_channel(real)
    decide = channel.unary_unary("/decider.v1.Decider/Decide", request_serializer=None,
                                 response_deserializer=pb.DecideResponse.FromString)
    report = channel.unary_unary("/decider.v1.Decider/ReportOutcome",
                                 request_serializer=pb.ReportOutcomeRequest.SerializeToString,
                                 response_deserializer=pb.DecisionRecord.FromString)

    def auth(context: grpc.aio.ServicerContext) -> tuple[tuple[str, str], ...]:
        return tuple((k, v) for k, v in context.invocation_metadata() if k == "authorization")

    async def batch_stream(requests: object, context: grpc.aio.ServicerContext) -> None:
        while (raw := await context.read()) is not grpc.aio.EOF:
            replies = [await decide(part, metadata=auth(context), timeout=10) for part in split_batch(raw)]
            await context.write(pb.DecideBatchResponse(responses=replies))

    async def report_outcome(req: pb.ReportOutcomeRequest, context: grpc.aio.ServicerContext) -> pb.DecisionRecord:
        return await report(req, metadata=auth(context), timeout=10)

    server = grpc.aio.server()
    server.add_generic_rpc_handlers([grpc.method_handlers_generic_handler("decider.v1.Decider", {
        "DecideBatchStream": grpc.stream_stream_rpc_method_handler(
            batch_stream, request_deserializer=None, response_serializer=pb.DecideBatchResponse.SerializeToString),
        "ReportOutcome": grpc.unary_unary_rpc_method_handler(
            report_outcome, request_deserializer=pb.ReportOutcomeRequest.FromString,
            response_serializer=pb.DecisionRecord.SerializeToString),
    })])
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    return server, f"127.0.0.1:{port}"


def test_the_gateway_reports_on_the_decision_stream_and_falls_back_to_unary_for_an_old_server(
        srv: ServerProcess) -> None:
    from decider.gateway.config import DeciderTarget
    from decider.gateway.decisions import DeciderLink

    def call(agent_id: str) -> pb.DecideRequest:
        return build_request(agent={"id": agent_id, "team": "ops"}, tool="work.do", estimated_cost=20)

    async def run() -> tuple[list[str], int, list[str], int, bool]:
        link = DeciderLink(DeciderTarget(target=srv.target, token="gw-any", deadline_s=10))
        new = [(await link.decide(call("gw-new"))).decision_id for _ in range(2)]
        await link.report(new[0], "ok", 5.0)
        link.report_later(new[1], "error", result={"content": [{"type": "text", "text": "boom"}]})
        await link.close()
        new_sent = link._decisions.outcomes_sent
        old_server, target = await _old_decider(srv.target)
        try:
            link = DeciderLink(DeciderTarget(target=target, token="gw-any", deadline_s=10))
            old = [(await link.decide(call("gw-old"))).decision_id for _ in range(2)]
            await link.report(old[0], "ok", 5.0)   # answered with no outcome: sent again, unary
            link.report_later(old[1], "error")     # unary at once: the link knows now
            await link.close()
            return new, new_sent, old, link._decisions.outcomes_sent, link._decisions.outcomes_supported
        finally:
            await old_server.stop(None)

    new, new_sent, old, old_sent, old_supported = asyncio.run(run())
    assert new_sent == 2 and old_sent == 1 and not old_supported
    with client(srv, "gw-any") as c:
        for ids, agent_id in ((new, "gw-new"), (old, "gw-old")):
            first, second = (c.get_decision(d) for d in ids)
            assert (first.actual_cost, first.outcome_status) == (5.0, "ok")
            assert (second.actual_cost, second.outcome_status) == (20.0, "error")   # no cost: the estimate stands
            assert usage(srv.db_url)[("agent", agent_id)] == (25.0, 0.0)
