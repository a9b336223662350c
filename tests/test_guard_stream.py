"""The runtime guard's stream transport (decider/guard/stream.py, issue 27) against a real server and a
real SQLite file, seen through a recording pass-through proxy in front of it (the proxy forwards every
byte to the real server and writes down which RPCs it was asked for):

- a guarded call (decide + report) is two messages on one DecideBatchStream the guard keeps open, with
  the answers, the record's outcome and the budget exactly as over the unary RPCs;
- a call made inside an OpenTelemetry span goes unary, carrying its traceparent;
- against a server without DecideBatchStream, or without outcomes on it, the guard falls back to the
  unary RPCs (deciding once, settling once);
- a stream that breaks fails the call closed, and the next call opens a new stream.
"""

from __future__ import annotations

import collections
import threading
import time
from collections.abc import Iterator
from concurrent import futures
from typing import Any

import grpc
import pytest
from opentelemetry import trace
from opentelemetry.trace import NonRecordingSpan, SpanContext, TraceFlags

from decider.guard import DeciderUnavailable, Guard
from decider.v1 import decider_pb2 as pb

from .helpers import ServerProcess, start_server
from .stateful import write_bundle, write_tokens
from .test_budgets import usage

SERVICE = "decider.v1.Decider"
TOKEN = "gw-token"


class RecordingProxy:
    """A grpc server on 127.0.0.1 that passes Decide, ReportOutcome and (unless `batch` is None)
    DecideBatchStream on to `upstream`, bytes unchanged, counting what it was asked. `batch="old"`:
    a server from before `DecideBatch.outcomes`, which drops the outcomes of every message;
    `batch="stall"`: a stream that takes messages and never answers."""

    def __init__(self, upstream: str, *, batch: str | None = "current", port: int = 0) -> None:
        self.calls: collections.Counter[str] = collections.Counter()
        self.traceparents: list[str] = []
        self._lock = threading.Lock()
        self._channel = grpc.insecure_channel(upstream)
        handlers = {
            "Decide": grpc.unary_unary_rpc_method_handler(self._unary("Decide")),
            "ReportOutcome": grpc.unary_unary_rpc_method_handler(self._unary("ReportOutcome")),
        }
        if batch == "stall":
            handlers["DecideBatchStream"] = grpc.stream_stream_rpc_method_handler(self._stall)
        elif batch is not None:
            handlers["DecideBatchStream"] = grpc.stream_stream_rpc_method_handler(self._batch(batch == "old"))
        self._server = grpc.server(futures.ThreadPoolExecutor(max_workers=8))
        self._server.add_generic_rpc_handlers([grpc.method_handlers_generic_handler(SERVICE, handlers)])
        self.port = self._server.add_insecure_port(f"127.0.0.1:{port}")
        self._server.start()
        self.target = f"127.0.0.1:{self.port}"

    def _count(self, what: str) -> None:
        with self._lock:
            self.calls[what] += 1

    @staticmethod
    def _meta(context: grpc.ServicerContext) -> tuple[tuple[str, str], ...]:
        return tuple((k, v) for k, v in context.invocation_metadata() if k in ("authorization", "traceparent"))

    def _unary(self, name: str) -> Any:
        call = self._channel.unary_unary(f"/{SERVICE}/{name}")

        def handle(raw: bytes, context: grpc.ServicerContext) -> bytes:
            self._count(name)
            meta = self._meta(context)
            self.traceparents += [v for k, v in meta if k == "traceparent"]
            try:
                return call(raw, metadata=meta, timeout=10)
            except grpc.RpcError as e:   # the real server's refusal, passed on as it is
                context.abort(e.code(), e.details())
        return handle

    def _batch(self, drop_outcomes: bool) -> Any:
        call = self._channel.stream_stream(f"/{SERVICE}/DecideBatchStream")

        def handle(messages: Iterator[bytes], context: grpc.ServicerContext) -> Iterator[bytes]:
            self._count("DecideBatchStream")

            def forward() -> Iterator[bytes]:
                try:
                    for raw in messages:
                        batch = pb.DecideBatch.FromString(raw)
                        self._count("decisions")
                        with self._lock:
                            self.calls["decisions"] += len(batch.requests) - 1
                            self.calls["outcomes"] += len(batch.outcomes)
                        if drop_outcomes:
                            del batch.outcomes[:]
                            raw = batch.SerializeToString()
                        yield raw
                finally:
                    self._count("ended")   # the client closed or cancelled its side
            return call(forward(), metadata=self._meta(context), timeout=60)
        return handle

    def _stall(self, messages: Iterator[bytes], context: grpc.ServicerContext) -> Iterator[bytes]:
        # Takes every message and never answers (a server hung mid-stream).
        self._count("DecideBatchStream")
        for _ in messages:
            self._count("unanswered")
        yield from ()

    def stop(self) -> None:
        self._server.stop(grace=None).wait(10)
        self._channel.close()


@pytest.fixture(scope="module")
def srv(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    tmp = tmp_path_factory.mktemp("guard-stream")
    s = start_server(tmp, write_bundle(tmp), None, "--tokens", str(write_tokens(tmp)))
    try:
        yield s
    finally:
        s.stop()


@pytest.fixture()
def proxy(srv: ServerProcess, request: pytest.FixtureRequest) -> Iterator[RecordingProxy]:
    p = RecordingProxy(srv.target, batch=getattr(request, "param", "current"))
    try:
        yield p
    finally:
        p.stop()


def _asked(proxy: RecordingProxy) -> dict[str, int]:
    """What the proxy was asked (a stream's end is counted when the proxy's thread gets to it)."""
    return {k: v for k, v in proxy.calls.items() if k != "ended"}


def _guarded_call(g: Guard, agent_id: str) -> tuple[str, str]:
    """A call with an estimated cost of 20 whose tool reports an actual cost of 5: (outcome, decision id)."""
    v = g.check("work.do", {"n": 1}, estimated_cost=20)
    if v.allowed:
        g.report(v.decision_id, "ok", actual_cost=5)
    return v.outcome, v.decision_id


def _record(srv: ServerProcess, decision_id: str) -> pb.DecisionRecord:
    from decider.client import DeciderClient
    with DeciderClient(srv.target, token=TOKEN) as c:
        return c.get_decision(decision_id)


def test_a_guarded_call_is_two_messages_on_one_stream(srv: ServerProcess, proxy: RecordingProxy) -> None:
    with Guard(proxy.target, agent={"id": "stream-bot", "team": "ops"}, token=TOKEN) as g:
        first = _guarded_call(g, "stream-bot")
        second = _guarded_call(g, "stream-bot")
    assert first[0] == second[0] == "ALLOW"
    # One stream for both calls; each decision and each outcome a message on it; no unary RPC.
    assert _asked(proxy) == {"DecideBatchStream": 1, "decisions": 2, "outcomes": 2}
    rec = _record(srv, second[1])
    assert (rec.outcome_status, rec.actual_cost) == ("ok", 5.0)
    # Both estimates (20 each) were settled at the actual cost: 10 spent, nothing left reserved.
    assert usage(srv.db_url)[("agent", "stream-bot")] == (10.0, 0.0)


def test_the_unary_transport_sends_two_rpcs_with_the_same_answers(srv: ServerProcess, proxy: RecordingProxy) -> None:
    with Guard(proxy.target, agent={"id": "unary-bot", "team": "ops"}, token=TOKEN, transport="unary") as g:
        outcome, decision_id = _guarded_call(g, "unary-bot")
        refused = g.check("payments.refund", {"amount": 1})
    assert outcome == "ALLOW" and refused.outcome == "REQUIRE_APPROVAL"
    assert proxy.calls == {"Decide": 2, "ReportOutcome": 1}
    assert _record(srv, decision_id).outcome_status == "ok"
    assert usage(srv.db_url)[("agent", "unary-bot")] == (5.0, 0.0)


def test_a_refusal_and_an_invalid_call_read_the_same_on_the_stream(srv: ServerProcess,
                                                                    proxy: RecordingProxy) -> None:
    answers = {}
    for transport in ("stream", "unary"):
        with Guard(proxy.target, agent={"id": f"same-{transport}", "team": "ops"}, token=TOKEN,
                   transport=transport) as g:
            v = g.check("payments.refund", {"amount": 1})
            with pytest.raises(DeciderUnavailable) as bad:
                g.check("", {})   # no tool name: INVALID_ARGUMENT naming the field, fail closed
            answers[transport] = (v.outcome, v.response.deciding_rule if v.response else "",
                                  str(bad.value).replace(f"same-{transport}", "X"))
    assert answers["stream"] == answers["unary"]
    assert answers["stream"][:2] == ("REQUIRE_APPROVAL", "refunds-need-finance")
    assert "INVALID_ARGUMENT" in answers["stream"][2] and "tool.name" in answers["stream"][2]


def test_a_call_inside_a_span_goes_unary_with_its_traceparent(srv: ServerProcess, proxy: RecordingProxy) -> None:
    trace_id, span_id = 0x4BF92F3577B34DA6A3CE929D0E0E4736, 0x00F067AA0BA902B7
    span = NonRecordingSpan(SpanContext(trace_id, span_id, is_remote=False, trace_flags=TraceFlags(1)))
    with Guard(proxy.target, agent={"id": "traced-bot", "team": "ops"}, token=TOKEN) as g:
        with trace.use_span(span):
            traced = g.check("work.do", {"n": 1})
        untraced = g.check("work.do", {"n": 2})
    assert traced.outcome == untraced.outcome == "ALLOW"
    assert proxy.calls["Decide"] == 1 and proxy.calls["decisions"] == 1
    assert proxy.traceparents == [f"00-{trace_id:032x}-{span_id:016x}-01"]


@pytest.mark.parametrize("proxy", [None], indirect=True)
def test_a_server_without_the_batch_stream_gets_unary_calls(srv: ServerProcess, proxy: RecordingProxy) -> None:
    with Guard(proxy.target, agent={"id": "old-bot", "team": "ops"}, token=TOKEN) as g:
        first = _guarded_call(g, "old-bot")
        second = _guarded_call(g, "old-bot")
    assert first[0] == second[0] == "ALLOW"
    # The first decision was asked on the stream (UNIMPLEMENTED, nothing decided), then unary for good.
    assert proxy.calls == {"Decide": 2, "ReportOutcome": 2}
    assert usage(srv.db_url)[("agent", "old-bot")] == (10.0, 0.0)


@pytest.mark.parametrize("proxy", ["old"], indirect=True)
def test_a_server_without_outcomes_on_the_stream_gets_them_unary(srv: ServerProcess, proxy: RecordingProxy) -> None:
    with Guard(proxy.target, agent={"id": "older-bot", "team": "ops"}, token=TOKEN) as g:
        first = _guarded_call(g, "older-bot")
        second = _guarded_call(g, "older-bot")
    assert first[0] == second[0] == "ALLOW"
    # Decisions stay on the stream; the first outcome was answered with none (dropped), so it and every
    # later one go unary, each settled once.
    assert _asked(proxy) == {"DecideBatchStream": 1, "decisions": 2, "outcomes": 1, "ReportOutcome": 2}
    assert usage(srv.db_url)[("agent", "older-bot")] == (10.0, 0.0)
    assert _record(srv, first[1]).outcome_status == _record(srv, second[1]).outcome_status == "ok"


def test_a_broken_stream_fails_closed_and_the_next_call_opens_a_new_one(srv: ServerProcess) -> None:
    proxy = RecordingProxy(srv.target)
    port = proxy.port
    with Guard(proxy.target, agent={"id": "restart-bot", "team": "ops"}, token=TOKEN, timeout=3) as g:
        assert g.check("work.do", {"n": 1}).outcome == "ALLOW"
        proxy.stop()
        with pytest.raises(DeciderUnavailable, match="UNAVAILABLE|DEADLINE_EXCEEDED|CANCELLED"):
            g.check("work.do", {"n": 2})
        proxy = RecordingProxy(srv.target, port=port)
        try:
            # Within the channels' reconnect backoff a call may fail closed, or go unary when its
            # message never left (nothing decided yet); then the guard is back on a stream.
            deadline, outcomes = time.monotonic() + 20, []
            while not proxy.calls["decisions"] and time.monotonic() < deadline:
                try:
                    outcomes.append(g.check("work.do", {"n": 3}).outcome)
                except DeciderUnavailable:
                    time.sleep(0.2)
            assert outcomes and set(outcomes) == {"ALLOW"}
            assert proxy.calls["DecideBatchStream"] >= 1 and proxy.calls["decisions"] == 1
        finally:
            proxy.stop()


@pytest.mark.parametrize("proxy", ["stall"], indirect=True)
def test_a_stream_that_never_answers_fails_the_call_closed_at_the_guards_timeout(proxy: RecordingProxy) -> None:
    with Guard(proxy.target, agent={"id": "stalled-bot", "team": "ops"}, token=TOKEN, timeout=1) as g:
        with pytest.raises(DeciderUnavailable, match="DEADLINE_EXCEEDED"):
            g.check("work.do", {"n": 1})
    assert proxy.calls["unanswered"] == 1


def test_a_guard_dropped_without_close_ends_its_stream(srv: ServerProcess, proxy: RecordingProxy) -> None:
    import gc

    g = Guard(proxy.target, agent={"id": "dropped-bot", "team": "ops"}, token=TOKEN)
    assert g.check("work.do", {"n": 1}).outcome == "ALLOW"
    del g
    gc.collect()
    deadline = time.monotonic() + 10
    while not proxy.calls["ended"] and time.monotonic() < deadline:
        time.sleep(0.05)
    assert proxy.calls["ended"] == 1


def test_an_unknown_transport_is_refused() -> None:
    with pytest.raises(ValueError, match="transport"):
        Guard("127.0.0.1:1", agent={"id": "x"}, transport="carrier-pigeon")


def test_threads_sharing_one_guard_each_get_their_own_decision(srv: ServerProcess, proxy: RecordingProxy) -> None:
    """16 threads × 8 guarded calls on one Guard: every call decided and settled once, on one stream
    (calls that meet in the client go in one message; how many meet is up to the scheduler)."""
    from concurrent.futures import ThreadPoolExecutor

    def call(g: Guard, i: int) -> tuple[str, str]:
        v = g.check("work.do", {"n": i})
        g.report(v.decision_id, f"ok-{i}")
        return v.outcome, v.decision_id

    with Guard(proxy.target, agent={"id": "crowd-bot", "team": "ops"}, token=TOKEN) as g:
        with ThreadPoolExecutor(16) as pool:
            results = list(pool.map(lambda i: call(g, i), range(128)))
        decider = g.stream._stream.decider if g.stream is not None else None
        assert decider is not None
        sent = (decider.calls_sent, decider.outcomes_sent)
    assert {outcome for outcome, _ in results} == {"ALLOW"}
    assert len({decision_id for _, decision_id in results}) == 128
    assert sent == (128, 128)
    assert proxy.calls["DecideBatchStream"] == 1 and proxy.calls["decisions"] == proxy.calls["outcomes"] == 128
    assert "Decide" not in proxy.calls and "ReportOutcome" not in proxy.calls
    # Each call's outcome landed on its own record (no reply handed to another thread's call).
    for i, (_, decision_id) in enumerate(results):
        assert _record(srv, decision_id).outcome_status == f"ok-{i}"


class _NoThreads(futures.ThreadPoolExecutor):
    """A default executor that refuses work: an async guard call on the stream must not need one."""

    def submit(self, *args: Any, **kwargs: Any) -> Any:
        raise AssertionError("an async guard call went to a worker thread")


def test_async_calls_are_awaited_on_the_stream_without_worker_threads(srv: ServerProcess,
                                                                      proxy: RecordingProxy) -> None:
    import asyncio

    async def run(g: Guard) -> list[tuple[str, str]]:
        asyncio.get_running_loop().set_default_executor(_NoThreads(max_workers=1))

        async def call(i: int) -> tuple[str, str]:
            v = await g.acheck("work.do", {"n": i})
            await g.areport(v.decision_id, f"ok-{i}")
            return v.outcome, v.decision_id
        # More at once than asyncio's default pool has threads (min(32, CPUs + 4)).
        return await asyncio.gather(*(call(i) for i in range(40)))

    with Guard(proxy.target, agent={"id": "async-bot", "team": "ops"}, token=TOKEN) as g:
        results = asyncio.run(run(g))
    assert {outcome for outcome, _ in results} == {"ALLOW"}
    assert _asked(proxy) == {"DecideBatchStream": 1, "decisions": 40, "outcomes": 40}
    for i, (_, decision_id) in enumerate(results):
        assert _record(srv, decision_id).outcome_status == f"ok-{i}"


@pytest.mark.parametrize("proxy", [None], indirect=True)
def test_async_calls_fall_back_to_unary_too(srv: ServerProcess, proxy: RecordingProxy) -> None:
    import asyncio

    async def run(g: Guard) -> str:
        v = await g.acheck("work.do", {"n": 1}, estimated_cost=20)
        await g.areport(v.decision_id, "ok", actual_cost=5)
        return v.outcome

    with Guard(proxy.target, agent={"id": "async-old-bot", "team": "ops"}, token=TOKEN) as g:
        assert asyncio.run(run(g)) == "ALLOW"
    assert proxy.calls == {"Decide": 1, "ReportOutcome": 1}
    assert usage(srv.db_url)[("agent", "async-old-bot")] == (5.0, 0.0)
