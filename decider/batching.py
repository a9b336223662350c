"""An asyncio client that coalesces concurrent Decide calls into `DecideBatchStream` messages.

LLMs emit parallel tool calls and gateways see bursts: calls that arrive while a batch is being
sent or decided wait in a buffer and go together in the next message, so the per-message cost
(grpc's, and the server's task per message) is paid once per batch instead of once per call.
Nothing waits for a timer: a call that finds the stream idle is sent at once (the C=1 latency is a
single call's), and under load batches form by themselves, up to `max_in_flight` batches on the
wire at once.

    async with BatchingDecider("127.0.0.1:50051", metadata=(("authorization", "Bearer ..."),)) as d:
        resp = await d.decide(request)       # a DecideResponse; error replies raise DecisionError

Each call is decided and recorded on its own (one record each, durable before its reply). A
broken stream fails the calls in flight with DecisionError (the enforcement point denies) and
the next call opens a new stream.

Outcomes go on the same stream (issue 27): `await d.report(ReportOutcomeRequest(...))` queues the
report, which rides with the next batch message, or goes alone after `outcome_delay_s` when no
decision comes. The server settles it before that message's decisions, exactly as a unary
ReportOutcome. A server from before `DecideBatch.outcomes` answers none: `report` then raises
`OutcomesUnsupported` (this time and every later time), and the caller uses the unary RPC.
"""

from __future__ import annotations

import asyncio
import collections
from collections.abc import Sequence
from typing import Any

import grpc

from decider.api.wire import MAX_BATCH, frame_entries
from decider.v1 import decider_pb2 as pb

__all__ = ["BatchingDecider", "DecisionError", "OutcomesUnsupported"]

_METHOD = "/decider.v1.Decider/DecideBatchStream"


class DecisionError(Exception):
    """The call got no decision: `code` is a grpc.StatusCode (from the reply's `error`, or the
    stream's status when the stream broke). `refused`: decider answered this call with an error
    (e.g. INVALID_ARGUMENT naming the field), rather than being unreachable."""

    def __init__(self, code: grpc.StatusCode, message: str, refused: bool = False, unsent: bool = False) -> None:
        super().__init__(f"{code.name}: {message}")
        self.code = code
        self.message = message
        self.refused = refused
        # True: the call never left this client (its message was not written), so nothing was
        # decided and asking again, on any path, cannot decide it twice.
        self.unsent = unsent


class OutcomesUnsupported(DecisionError):
    """The server does not take outcomes on the batch stream (it answered none): report unary."""

    def __init__(self) -> None:
        super().__init__(grpc.StatusCode.UNIMPLEMENTED, "the server does not take outcomes on DecideBatchStream")


_CODES = {c.value[0]: c for c in grpc.StatusCode}


def _as_decision_error(exc: BaseException) -> DecisionError:
    if isinstance(exc, DecisionError):
        return exc
    if isinstance(exc, grpc.aio.AioRpcError):
        return DecisionError(exc.code(), str(exc.details()))
    return DecisionError(grpc.StatusCode.UNAVAILABLE, str(exc))


async def _final_status(call: Any, exc: Exception) -> Exception:
    """Why a write failed: the RPC's own status when it has one. A write can lose the race with the
    status it ended on (e.g. UNIMPLEMENTED from a server without the method), and then fails with
    grpc's generic INTERNAL "Internal error from Core", which would hide that status."""
    try:
        code = await asyncio.wait_for(call.code(), 1.0)
        if code is not None and code != grpc.StatusCode.OK:
            return DecisionError(code, await call.details() or code.name)
    except Exception:  # noqa: BLE001 - no status to be had: the write's own error stands
        pass
    return exc


class BatchingDecider:
    def __init__(self, target: str | grpc.aio.Channel, *, metadata: Sequence[tuple[str, str]] | None = None,
                 max_batch: int = 64, max_in_flight: int = 2, timeout: float = 10.0,
                 wait_for_ready: bool = False, outcome_delay_s: float = 0.005) -> None:
        if not 1 <= max_batch <= MAX_BATCH:
            raise ValueError(f"max_batch: {max_batch}; must be 1..{MAX_BATCH}")
        self._own_channel = isinstance(target, str)
        self._channel = grpc.aio.insecure_channel(target) if isinstance(target, str) else target
        self._metadata = tuple(metadata or ())
        self._max_batch = max_batch
        self._timeout = timeout
        self._max_in_flight = max_in_flight
        # True: a stream opened while the channel reconnects waits for it (within `timeout`) instead of
        # failing at once, so the first call after decider restarts is decided.
        self._wait_for_ready = wait_for_ready
        self._slots = asyncio.Semaphore(max_in_flight)
        self._buffer: list[tuple[bytes, asyncio.Future[pb.DecideResponse]]] = []
        # Outcomes waiting for a message; `_outcomes_due` once one has waited `outcome_delay_s`.
        self._outcomes: list[tuple[bytes, asyncio.Future[pb.ReportOutcomeReply]]] = []
        self._outcome_delay_s = outcome_delay_s
        self._outcomes_due = False
        self._outcome_timer: asyncio.TimerHandle | None = None
        self.outcomes_supported = True   # False once a server answered outcomes with none
        self._sent: collections.deque[tuple[list[asyncio.Future[pb.DecideResponse]],
                                            list[asyncio.Future[pb.ReportOutcomeReply]]]] = collections.deque()
        self._wake = asyncio.Event()
        self._call: Any = None
        self._sender: asyncio.Task[None] | None = None
        self._reader: asyncio.Task[None] | None = None
        self._closed = False
        self.batches_sent = 0   # messages written
        self.calls_sent = 0     # calls in them
        self.outcomes_sent = 0  # outcomes in them

    async def __aenter__(self) -> BatchingDecider:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def decide(self, request: pb.DecideRequest) -> pb.DecideResponse:
        """One decision; raises DecisionError when the call got none (fail closed: deny)."""
        if self._closed:
            raise DecisionError(grpc.StatusCode.CANCELLED, "the client is closed")
        future: asyncio.Future[pb.DecideResponse] = asyncio.get_running_loop().create_future()
        self._buffer.append((request.SerializeToString(), future))
        if self._sender is None or self._sender.done():
            self._open()
        self._wake.set()
        return await asyncio.wait_for(future, self._timeout)

    async def report(self, request: pb.ReportOutcomeRequest) -> pb.ReportOutcomeReply:
        """One outcome, settled by the server; raises DecisionError when it was not (`refused`: the
        server answered with the unary call's error, e.g. FAILED_PRECONDITION for a second report;
        otherwise the stream broke and the outcome may or may not have been settled: a retry is
        safe, as a second report of one decision is refused), OutcomesUnsupported for an old server."""
        if not self.outcomes_supported:
            raise OutcomesUnsupported()
        if self._closed:
            raise DecisionError(grpc.StatusCode.CANCELLED, "the client is closed")
        loop = asyncio.get_running_loop()
        future: asyncio.Future[pb.ReportOutcomeReply] = loop.create_future()
        self._outcomes.append((request.SerializeToString(), future))
        if self._outcome_timer is None and not self._outcomes_due:
            self._outcome_timer = loop.call_later(self._outcome_delay_s, self._outcomes_waited)
        return await asyncio.wait_for(future, self._timeout + self._outcome_delay_s)

    def _outcomes_waited(self) -> None:
        # No decision came to carry the outcomes: send them alone.
        self._outcome_timer = None
        self._outcomes_due = True
        if self._sender is None or self._sender.done():
            self._open()
        self._wake.set()

    def _open(self) -> None:
        # Raw bytes both ways: the batch is framed from the requests' bytes (no copy into a
        # DecideBatch), the reply split by position.
        self._call = self._channel.stream_stream(_METHOD, request_serializer=None,
                                                 response_deserializer=pb.DecideBatchResponse.FromString)(
            metadata=self._metadata, wait_for_ready=self._wait_for_ready)
        self._sender = asyncio.get_running_loop().create_task(self._send(self._call))
        self._reader = asyncio.get_running_loop().create_task(self._read(self._call))

    async def _send(self, call: Any) -> None:
        writing = False
        try:
            # Closed: what is still queued (the outcomes close() flushes) goes before the sender ends.
            while not self._closed or self._buffer or self._outcomes:
                await self._wake.wait()
                self._wake.clear()
                while self._buffer or (self._outcomes_due and self._outcomes):
                    await self._slots.acquire()
                    # Everything that arrived while we waited for the slot goes in this batch, the
                    # outcomes waiting too (the server settles them before the batch's decisions).
                    batch, self._buffer = self._buffer[:self._max_batch], self._buffer[self._max_batch:]
                    outs, self._outcomes = self._outcomes[:self._max_batch], self._outcomes[self._max_batch:]
                    if not self._outcomes:
                        self._outcomes_due = False
                        if self._outcome_timer is not None:
                            self._outcome_timer.cancel()
                            self._outcome_timer = None
                    self._sent.append(([f for _, f in batch], [f for _, f in outs]))
                    writing = True
                    message = frame_entries([b for b, _ in batch])
                    if outs:
                        message += frame_entries([b for b, _ in outs], 2)
                    # Counted before the write: the reply can be read, and the caller resumed, before
                    # this task runs again after the write (seen under load).
                    self.batches_sent += 1
                    self.calls_sent += len(batch)
                    self.outcomes_sent += len(outs)
                    await call.write(message)
                    writing = False
        except Exception as exc:  # noqa: BLE001 - the stream broke: fail what waits, reopen on next call
            if writing and self._sent:
                # The message being written (the newest) did not go out: its calls fail as unsent
                # at once (before anything else can fail them as possibly decided).
                futures, outcome_futures = self._sent.pop()
                unsent = _as_decision_error(exc)
                for future in (*futures, *outcome_futures):
                    if not future.done():
                        future.set_exception(DecisionError(unsent.code, unsent.message, unsent=True))
            self._fail(await _final_status(call, exc))

    async def _read(self, call: Any) -> None:
        try:
            while (reply := await call.read()) is not grpc.aio.EOF:
                futures, outcome_futures = self._sent.popleft()
                self._slots.release()
                responses = reply.responses
                if len(responses) == 1 and len(futures) != 1 and responses[0].HasField("error"):
                    # The server could not split the batch: the error applies to every call and outcome.
                    self._settle_outcomes(outcome_futures,
                                          [pb.ReportOutcomeReply(error=responses[0].error)] * len(outcome_futures))
                    responses = [responses[0]] * len(futures)
                elif outcome_futures:
                    self._settle_outcomes(outcome_futures, reply.outcomes)
                for future, resp in zip(futures, responses, strict=False):
                    if future.done():
                        continue
                    if resp.HasField("error"):
                        code = _CODES.get(resp.error.code, grpc.StatusCode.UNKNOWN)
                        future.set_exception(DecisionError(code, resp.error.message, refused=True))
                    else:
                        future.set_result(resp)
                for future in futures[len(responses):]:
                    if not future.done():
                        future.set_exception(DecisionError(grpc.StatusCode.INTERNAL, "no reply for this call"))
            self._fail(DecisionError(grpc.StatusCode.UNAVAILABLE, "the stream ended"))
        except Exception as exc:  # noqa: BLE001
            self._fail(exc)

    def _settle_outcomes(self, futures: list[asyncio.Future[pb.ReportOutcomeReply]],
                         replies: Sequence[pb.ReportOutcomeReply]) -> None:
        if not replies:
            # A server from before `DecideBatch.outcomes` skipped them as an unknown field.
            self.outcomes_supported = False
        for i, future in enumerate(futures):
            if future.done():
                continue
            if not replies:
                future.set_exception(OutcomesUnsupported())
            elif i >= len(replies):
                future.set_exception(DecisionError(grpc.StatusCode.INTERNAL, "no reply for this outcome"))
            elif replies[i].HasField("error"):
                code = _CODES.get(replies[i].error.code, grpc.StatusCode.UNKNOWN)
                future.set_exception(DecisionError(code, replies[i].error.message, refused=True))
            else:
                future.set_result(replies[i])

    def _fail(self, exc: BaseException) -> None:
        """Fail every call and outcome waiting: those written with `exc`, those still queued as unsent."""
        exc = _as_decision_error(exc)
        waiting: list[asyncio.Future[Any]] = [f for fs, os in self._sent for f in (*fs, *os)]
        unsent: list[asyncio.Future[Any]] = [f for _, f in self._buffer] + [f for _, f in self._outcomes]
        self._sent.clear()
        self._buffer.clear()
        self._outcomes.clear()
        self._outcomes_due = False
        if self._outcome_timer is not None:
            self._outcome_timer.cancel()
            self._outcome_timer = None
        self._slots = asyncio.Semaphore(self._max_in_flight)   # a new stream starts with every slot free
        for future in waiting:
            if not future.done():
                future.set_exception(exc)
        for future in unsent:
            if not future.done():
                future.set_exception(DecisionError(exc.code, exc.message, exc.refused, unsent=True))
        call, self._call = self._call, None
        if call is not None:
            call.cancel()
        for task in (self._sender, self._reader):
            if task is not None and task is not asyncio.current_task():
                task.cancel()
        self._sender = self._reader = None

    async def close(self) -> None:
        """Wait for the calls in flight, then end the stream (and the channel, if it is ours)."""
        self._closed = True
        if self._outcomes:
            # Nothing accepted is lost: the waiting outcomes go now, not after their delay.
            if self._outcome_timer is not None:
                self._outcome_timer.cancel()
            self._outcomes_waited()
        pending: list[asyncio.Future[Any]] = [f for fs, os in self._sent for f in (*fs, *os)]
        pending += [f for _, f in self._buffer] + [f for _, f in self._outcomes]
        if pending:
            await asyncio.wait(pending, timeout=self._timeout)
        call = self._call
        if call is not None:
            try:
                await call.done_writing()
            except Exception:  # noqa: BLE001 - already broken
                pass
        for task in (self._sender, self._reader):
            if task is not None:
                task.cancel()
        if self._own_channel:
            await self._channel.close()
