"""`Decider/DecideStream`: many decisions over one bidirectional stream, for gateways.

A unary call costs ~400 µs of server CPU inside grpcio before any work (PERF-NOTES); a message on an
open stream costs a fraction of that. The contract per message is the unary one:

- one `DecideResponse` per `DecideRequest`, carrying `request_id` (the echo of `request.id`) so the
  caller can match replies; several requests of one stream are decided concurrently (up to
  `STREAM_WINDOW` in flight), so replies may come back in a different order;
- a request that gets no decision (bad input, record not written) gets a reply whose `error` holds
  the status code and the message the unary call would have aborted with; the stream goes on;
- each decision is committed (group commit) before its reply is sent, exactly as for `Decide`.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator

import grpc

from decider.api.wire import frame_entries, split_batch_parts
from decider.errors import InvalidRequest
from decider.server.service import DeciderService, DecisionFailed
from decider.server.stream_outcomes import report_outcomes
from decider.v1 import decider_pb2 as pb

__all__ = ["BATCH_WINDOW", "STREAM_WINDOW", "decide_batch_stream", "decide_batch_stream_handler", "decide_stream",
           "decide_stream_handler"]

# Requests of one stream decided at once. Enough to keep group commit batches full; bounded so a
# client that never reads replies cannot make the server hold an unbounded backlog (a slot is
# freed only once its reply has been handed to the transport).
STREAM_WINDOW = 64

log = logging.getLogger("decider.server")


def _error_reply(e: DecisionFailed) -> pb.DecideResponse:
    return pb.DecideResponse(request_id=e.request_id, error=pb.StreamError(code=e.code.value[0], message=e.message))


async def _decide_one(svc: DeciderService, raw: bytes, carrier: dict[str, str] | None,
                      method: str) -> pb.DecideResponse:
    """One call's reply on a stream: its decision, or the error the unary call would abort with."""
    try:
        return await svc.decide_bytes(raw, carrier, method)
    except Exception as e:  # noqa: BLE001 - one bad message must not end everyone's stream
        return _error_reply(DecisionFailed.of(e))


async def decide_stream(svc: DeciderService, context: grpc.aio.ServicerContext) -> None:
    """Serve one DecideStream with grpc's read/write calls (cheaper per message than an async
    generator handler: measured ~120 vs ~140 µs of server CPU per message on an echo stream)."""
    window = asyncio.Semaphore(STREAM_WINDOW)
    write_lock = asyncio.Lock()   # one write at a time on a stream
    in_flight: set[asyncio.Task[None]] = set()

    # The stream's traceparent (sent once, with the call) is the parent of each decision's span.
    carrier = None
    if svc.wants_trace:
        from decider.server.telemetry import trace_headers

        carrier = trace_headers(context.invocation_metadata())

    async def one(raw: bytes) -> None:
        try:
            reply = await _decide_one(svc, raw, carrier, "DecideStream")
            async with write_lock:
                await context.write(reply)
        except Exception as e:  # noqa: BLE001 - the caller went away; its decision is recorded regardless
            log.debug("stream reply not delivered", extra={"error": str(e)})
        finally:
            window.release()

    svc.open_streams += 1
    try:
        while (raw := await context.read()) is not grpc.aio.EOF:
            await window.acquire()
            task = asyncio.create_task(one(raw))
            in_flight.add(task)
            task.add_done_callback(in_flight.discard)
        # Half-close from the client: answer what is in flight, then end the stream.
        while in_flight:
            await asyncio.wait(set(in_flight))
    finally:
        svc.open_streams -= 1
        # Cancelled (the client went away): decisions already handed to the writer are still
        # committed; their replies have nowhere to go.
        for task in list(in_flight):
            task.cancel()


# Batches of one DecideBatchStream decided at once (each holds up to MAX_BATCH calls).
BATCH_WINDOW = 8


def _frame(replies: list[pb.DecideResponse]) -> bytes:
    """A `DecideBatchResponse` on the wire, framed from its responses' own bytes."""
    return frame_entries([reply.SerializeToString() for reply in replies])


async def _decide_batch(svc: DeciderService, raw: bytes, carrier: dict[str, str] | None,
                        context: grpc.aio.ServicerContext) -> bytes:
    """One batch → one reply message, `responses[i]` for `requests[i]`, decided in the batch's
    order (`DeciderService.decide_many`); the records share group commits, each is durable before
    the reply. The batch's `outcomes` are settled first (`outcomes[i]` answers each): a call's
    outcome reported with the next call is in its session and budgets before that call is decided,
    as it would be had the report come first on its own."""
    try:
        parts, outcomes = split_batch_parts(raw)
    except InvalidRequest as e:
        # No way to know how many calls it held: one response carrying the error.
        return _frame([_error_reply(DecisionFailed(grpc.StatusCode.INVALID_ARGUMENT, str(e)))])
    settled = frame_entries(await report_outcomes(svc.controls, outcomes, context), 2) if outcomes else b""
    if not parts:
        return settled
    if len(parts) == 1:
        return _frame([await _decide_one(svc, parts[0], carrier, "DecideBatchStream")]) + settled
    return _frame([r if isinstance(r, pb.DecideResponse) else _error_reply(r)
                   for r in await svc.decide_many(parts, carrier)]) + settled


async def decide_batch_stream(svc: DeciderService, context: grpc.aio.ServicerContext) -> None:
    """Serve one DecideBatchStream: batches decided concurrently (up to BATCH_WINDOW), replies
    written in the order the batches arrived, so a client matches them by position."""
    carrier = None
    if svc.wants_trace:
        from decider.server.telemetry import trace_headers

        carrier = trace_headers(context.invocation_metadata())
    order: asyncio.Queue[asyncio.Task[bytes] | None] = asyncio.Queue(maxsize=BATCH_WINDOW)
    in_flight: set[asyncio.Task[bytes]] = set()

    async def write_in_order() -> None:
        deliver = True
        while (task := await order.get()) is not None:
            reply = await task
            if deliver:
                try:
                    await context.write(reply)
                except Exception as e:  # noqa: BLE001 - the caller went away; its decisions are recorded
                    log.debug("batch reply not delivered", extra={"error": str(e)})
                    deliver = False

    svc.open_streams += 1
    writer = asyncio.create_task(write_in_order())
    try:
        while (raw := await context.read()) is not grpc.aio.EOF:
            task = asyncio.create_task(_decide_batch(svc, raw, carrier, context))
            in_flight.add(task)
            task.add_done_callback(in_flight.discard)
            await order.put(task)   # waits while BATCH_WINDOW batches are undelivered
        await order.put(None)
        await writer
    finally:
        svc.open_streams -= 1
        if not writer.done():
            # Cancelled (the client went away): decisions already handed to the writer are
            # still committed; their replies have nowhere to go.
            writer.cancel()
            for task in list(in_flight):
                task.cancel()


def decide_batch_stream_handler(svc: DeciderService) -> grpc.RpcMethodHandler:
    async def handler(requests: AsyncIterator[bytes], context: grpc.aio.ServicerContext) -> None:
        await decide_batch_stream(svc, context)

    # Raw bytes both ways: each call is decoded as a unary Decide's bytes are, and the reply is
    # framed from the responses' bytes (`_frame`).
    return grpc.stream_stream_rpc_method_handler(handler, request_deserializer=None, response_serializer=None)


def decide_stream_handler(svc: DeciderService) -> grpc.RpcMethodHandler:
    async def handler(requests: AsyncIterator[bytes], context: grpc.aio.ServicerContext) -> None:
        await decide_stream(svc, context)

    # Raw bytes in, as for the unary Decide: an undecodable message gets an error reply naming the
    # field instead of failing the whole stream in grpc's deserialiser.
    return grpc.stream_stream_rpc_method_handler(
        handler, request_deserializer=None, response_serializer=pb.DecideResponse.SerializeToString
    )
