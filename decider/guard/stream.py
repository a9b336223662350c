"""A runtime guard's decisions and outcomes as messages of one `DecideBatchStream` (issue 27).

Why: a guarded call is a decision and then its outcome. As two unary RPCs the server pays grpc's
per-call cost twice, and that cost is most of a unary decision's (docs/performance.md, round four).
On a stream the guard keeps open, each is one message: the decision as a batch of one, the outcome as
`DecideBatch.outcomes` (settled by the same `report_outcome` as the unary RPC, before the reply).
Threads sharing one guard have their calls coalesced into one message (`BatchingDecider`).

The streams run on one background event loop per process, shared by every guard: a daemon thread
started on first use (again in a forked child). Sync callers (agent code in its threads) wait for
it; async callers (`Guard.adecide`, `areport`, `acheck`) await it from their own loop, with no
worker thread per call (asyncio's default pool has min(32, CPUs + 4) threads, which parallel tool
calls would queue behind).

Falls back to the unary RPCs, with the same answers:
- for a call made inside an OpenTelemetry span: the server takes a stream's trace context once, when
  the stream opens, so only a unary call makes the decision's span the caller's child;
- for good, against a server without `DecideBatchStream` (UNIMPLEMENTED) or without outcomes on it;
- for one call whose message never left the client (a broken stream): nothing was decided yet.
"""

from __future__ import annotations

import asyncio
import atexit
import os
import threading
import weakref
from collections.abc import Callable, Coroutine
from typing import Any, TypeVar

import grpc

from decider.batching import BatchingDecider, DecisionError, OutcomesUnsupported
from decider.client import DeciderClient, with_trace_context
from decider.v1 import decider_pb2 as pb

__all__ = ["StreamTransport", "NoDecision"]

T = TypeVar("T")


class NoDecision(Exception):
    """The stream gave no answer: `status` is "CODE: message", as a unary call's error would read."""

    def __init__(self, status: str) -> None:
        super().__init__(status)
        self.status = status


class _Loop:
    """The process's one background event loop for guard streams."""

    _lock = threading.Lock()
    _loop: asyncio.AbstractEventLoop | None = None
    _thread: threading.Thread | None = None
    _pid = 0

    @classmethod
    def get(cls) -> asyncio.AbstractEventLoop:
        with cls._lock:
            # A forked child inherits the loop object but not its thread: it makes its own.
            if cls._loop is None or cls._pid != os.getpid() or cls._thread is None or not cls._thread.is_alive():
                loop = asyncio.new_event_loop()
                thread = threading.Thread(target=loop.run_forever, name="decider-guard-stream", daemon=True)
                thread.start()
                cls._loop, cls._thread, cls._pid = loop, thread, os.getpid()
            return cls._loop

    @classmethod
    def run(cls, coro: Coroutine[Any, Any, T], timeout: float) -> T:
        future = asyncio.run_coroutine_threadsafe(coro, cls.get())
        try:
            return future.result(timeout)
        except TimeoutError:
            future.cancel()
            raise


_open: weakref.WeakSet[StreamTransport] = weakref.WeakSet()


@atexit.register
def _close_all() -> None:
    # Guards never closed: end their streams (nothing is waiting: every report was answered).
    for transport in list(_open):
        transport.close()


class StreamTransport:
    """`decide` and `report` of one guard over its own `DecideBatchStream` (the client's target,
    credentials and token). Raises NoDecision when the stream gave no answer."""

    def __init__(self, client: DeciderClient, timeout: float) -> None:
        self.client = client
        self.timeout = timeout
        self.streaming = True            # False once the server has no DecideBatchStream
        self.outcomes_streaming = True   # False once the server takes no outcomes on it
        self._stream = _Stream()
        _open.add(self)
        # A guard dropped without close() must not leave its stream open on the server. At exit the
        # guards still alive are closed (and waited for) by _close_all, not by this finalizer.
        weakref.finalize(self, self._stream.abandon).atexit = False

    async def _get(self) -> BatchingDecider:
        # Made on the loop's thread: a grpc.aio channel belongs to the loop it was made on.
        st = self._stream
        if st.decider is None or st.pid != os.getpid():
            st.channel = self.client.aio_channel()
            # outcome_delay_s=0: the guard waits for its report, so nothing else would carry it.
            st.decider = BatchingDecider(st.channel, metadata=self.client.metadata,
                                         timeout=self.timeout, outcome_delay_s=0.0)
            st.pid = os.getpid()
        return st.decider

    async def _decide(self, request: pb.DecideRequest) -> pb.DecideResponse:
        return await (await self._get()).decide(request)

    async def _report(self, request: pb.ReportOutcomeRequest) -> pb.ReportOutcomeReply:
        return await (await self._get()).report(request)

    def decide(self, request: pb.DecideRequest) -> pb.DecideResponse:
        if not self.streaming or _in_span():
            return self.client.decide(request)
        return self._ask(self._decide(request), lambda: self.client.decide(request))

    def report(self, request: pb.ReportOutcomeRequest) -> None:
        if not (self.streaming and self.outcomes_streaming):
            self.client.report_request(request)
            return
        self._ask(self._report(request), lambda: self.client.report_request(request))

    def _ask(self, on_stream: Coroutine[Any, Any, Any], unary: Callable[[], Any]) -> Any:
        """The stream's answer; `unary()`'s where the unary RPC must answer instead; else NoDecision."""
        try:
            return _Loop.run(on_stream, self.timeout + 1.0)
        except Exception as e:  # noqa: BLE001 - sorted out by _after_failure
            self._after_failure(e)
        return unary()

    # ---- the same from async code: awaited across loops, no worker thread per call ----------
    async def adecide(self, request: pb.DecideRequest) -> pb.DecideResponse:
        if not self.streaming or _in_span():
            return await asyncio.to_thread(self.client.decide, request)
        return await self._aask(self._decide(request), lambda: self.client.decide(request))

    async def areport(self, request: pb.ReportOutcomeRequest) -> None:
        if not (self.streaming and self.outcomes_streaming):
            await asyncio.to_thread(self.client.report_request, request)
            return
        await self._aask(self._report(request), lambda: self.client.report_request(request))

    async def _aask(self, on_stream: Coroutine[Any, Any, Any], unary: Callable[[], Any]) -> Any:
        try:
            future = asyncio.run_coroutine_threadsafe(on_stream, _Loop.get())
            # Cancelled here (the caller's task, the timeout) → cancelled on the stream's loop too.
            return await asyncio.wait_for(asyncio.wrap_future(future), self.timeout + 1.0)
        except Exception as e:  # noqa: BLE001 - sorted out by _after_failure
            self._after_failure(e)
        return await asyncio.to_thread(unary)

    def _after_failure(self, e: Exception) -> None:
        """Returns when the unary RPC must answer instead; raises NoDecision otherwise."""
        if isinstance(e, OutcomesUnsupported):
            self.outcomes_streaming = False   # the outcome settled nothing: report the unary way
            return
        if isinstance(e, DecisionError):
            if self._unary_instead(e):
                return
            raise NoDecision(f"{e.code.name}: {e.message}") from None
        if isinstance(e, TimeoutError):
            raise NoDecision(f"DEADLINE_EXCEEDED: no answer in {self.timeout:g} s") from None
        raise NoDecision(f"UNKNOWN: {type(e).__name__}: {e}") from None   # still no answer: fail closed

    def _unary_instead(self, e: DecisionError) -> bool:
        """Ask the unary way instead, when that cannot act on the call twice: the server has no
        DecideBatchStream (UNIMPLEMENTED: for good), or the call's message never left this client
        (e.g. its write lost the race with the stream's end, which grpc then reports as INTERNAL)."""
        if e.refused:
            return False
        if e.code == grpc.StatusCode.UNIMPLEMENTED:
            self.streaming = False
            return True
        return e.unsent

    def close(self) -> None:
        """End the stream: wait for what is in flight, then close it and its channel."""
        _open.discard(self)
        end = self._stream.take()
        if end is not None:
            try:
                _Loop.run(end, self.timeout + 1.0)
            except Exception:  # noqa: BLE001 - closing a broken stream: nothing is left to save
                pass


class _Stream:
    """One guard's stream and channel (apart from the guard, so a finalizer can end them)."""

    def __init__(self) -> None:
        self.decider: BatchingDecider | None = None
        self.channel: grpc.aio.Channel | None = None
        self.pid = 0

    def take(self) -> Coroutine[Any, Any, None] | None:
        """The coroutine that ends the stream (None: nothing open in this process); forgets it."""
        decider, channel, self.decider, self.channel = self.decider, self.channel, None, None
        if decider is None or channel is None or self.pid != os.getpid():
            return None

        async def end() -> None:
            try:
                await decider.close()
            finally:
                await channel.close()
        return end()

    def abandon(self) -> None:
        # From the garbage collector, on whatever thread (the loop's own included): never block.
        end = self.take()
        # The loop the stream was made on (take() checked it is this process's). Not _Loop.get():
        # the collector may run while this thread holds _Loop's lock.
        loop = _Loop._loop
        if end is not None and loop is not None:

            def start() -> None:
                task = loop.create_task(end)
                _ending.add(task)   # the loop keeps tasks weakly: hold it until it is done
                task.add_done_callback(_ending.discard)
            loop.call_soon_threadsafe(start)
        elif end is not None:
            end.close()   # no loop left to run it on


_ending: set[asyncio.Task[None]] = set()


def _in_span() -> bool:
    """True inside an OpenTelemetry span (a trace context to pass on with this very call)."""
    return bool(with_trace_context(None))
