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
"""

from __future__ import annotations

import asyncio
import collections
from collections.abc import Sequence
from typing import Any

import grpc

from decider.api.wire import MAX_BATCH, frame_entries
from decider.v1 import decider_pb2 as pb

__all__ = ["BatchingDecider", "DecisionError"]

_METHOD = "/decider.v1.Decider/DecideBatchStream"


class DecisionError(Exception):
    """The call got no decision: `code` is a grpc.StatusCode (from the reply's `error`, or the
    stream's status when the stream broke). `refused`: decider answered this call with an error
    (e.g. INVALID_ARGUMENT naming the field), rather than being unreachable."""

    def __init__(self, code: grpc.StatusCode, message: str, refused: bool = False) -> None:
        super().__init__(f"{code.name}: {message}")
        self.code = code
        self.message = message
        self.refused = refused


_CODES = {c.value[0]: c for c in grpc.StatusCode}


class BatchingDecider:
    def __init__(self, target: str | grpc.aio.Channel, *, metadata: Sequence[tuple[str, str]] | None = None,
                 max_batch: int = 64, max_in_flight: int = 2, timeout: float = 10.0,
                 wait_for_ready: bool = False) -> None:
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
        self._sent: collections.deque[list[asyncio.Future[pb.DecideResponse]]] = collections.deque()
        self._wake = asyncio.Event()
        self._call: Any = None
        self._sender: asyncio.Task[None] | None = None
        self._reader: asyncio.Task[None] | None = None
        self._closed = False
        self.batches_sent = 0   # messages written
        self.calls_sent = 0     # calls in them

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

    def _open(self) -> None:
        # Raw bytes both ways: the batch is framed from the requests' bytes (no copy into a
        # DecideBatch), the reply split by position.
        self._call = self._channel.stream_stream(_METHOD, request_serializer=None,
                                                 response_deserializer=pb.DecideBatchResponse.FromString)(
            metadata=self._metadata, wait_for_ready=self._wait_for_ready)
        self._sender = asyncio.get_running_loop().create_task(self._send(self._call))
        self._reader = asyncio.get_running_loop().create_task(self._read(self._call))

    async def _send(self, call: Any) -> None:
        try:
            while not self._closed:
                await self._wake.wait()
                self._wake.clear()
                while self._buffer:
                    await self._slots.acquire()
                    # Everything that arrived while we waited for the slot goes in this batch.
                    batch, self._buffer = self._buffer[:self._max_batch], self._buffer[self._max_batch:]
                    self._sent.append([f for _, f in batch])
                    await call.write(frame_entries([b for b, _ in batch]))
                    self.batches_sent += 1
                    self.calls_sent += len(batch)
        except Exception as exc:  # noqa: BLE001 - the stream broke: fail what waits, reopen on next call
            self._fail(exc)

    async def _read(self, call: Any) -> None:
        try:
            while (reply := await call.read()) is not grpc.aio.EOF:
                futures = self._sent.popleft()
                self._slots.release()
                responses = reply.responses
                if len(responses) == 1 and len(futures) > 1 and responses[0].HasField("error"):
                    # The server could not split the batch: the error applies to every call.
                    responses = [responses[0]] * len(futures)
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

    def _fail(self, exc: BaseException) -> None:
        if not isinstance(exc, DecisionError):
            code = exc.code() if isinstance(exc, grpc.aio.AioRpcError) else grpc.StatusCode.UNAVAILABLE
            exc = DecisionError(code, str(exc.details() if isinstance(exc, grpc.aio.AioRpcError) else exc))
        waiting = [f for fs in self._sent for f in fs] + [f for _, f in self._buffer]
        self._sent.clear()
        self._buffer.clear()
        self._slots = asyncio.Semaphore(self._max_in_flight)   # a new stream starts with every slot free
        for future in waiting:
            if not future.done():
                future.set_exception(exc)
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
        pending = [f for fs in self._sent for f in fs] + [f for _, f in self._buffer]
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
