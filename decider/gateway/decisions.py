"""The gateway's link to decider: one long-lived `DecideBatchStream` for every tools/call and its
outcome, plus `WatchDecision` for approvals. Uses only the public API.

A message on an open stream costs the server a fraction of a unary call (PERF-NOTES), and a batch of
calls costs about what one message does: decisions go through `decider.batching.BatchingDecider`,
which sends a call at once when the stream is idle and coalesces the calls that arrive meanwhile
(an LLM's parallel tool calls, several clients at once) into one message (issue 17). The stream is
opened lazily and re-opened after a failure; any failure or a reply later than `deadline_s` fails
closed (`DecisionUnavailable`), and the caller turns that into a refusal, never a forwarded call.

Outcomes go on that stream too (issue 27): a call costs one round trip to decider, not two (a unary
ReportOutcome used to follow each decision). A server from before `DecideBatch.outcomes`, or a stream
that broke with the outcome in flight, gets the unary ReportOutcome instead (a second report of one
decision is refused, so the retry never settles twice).
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import os
from collections.abc import AsyncIterator
from typing import Any

import grpc
from google.protobuf import json_format

from decider.batching import BatchingDecider, DecisionError, OutcomesUnsupported
from decider.gateway.config import DeciderTarget
from decider.v1 import decider_pb2 as pb
from decider.v1 import decider_pb2_grpc as pb_grpc

__all__ = ["DecisionUnavailable", "DeciderLink"]

log = logging.getLogger("decider.gateway")

REPLY_FIRST_TURNS = 3   # event-loop turns a ReportOutcome yields to the reply it follows (report_later)


# grpc's default reconnect backoff grows to 120 s (1 s, 1.6 s, 2.6 s, ...): after decider was down a few
# seconds, the gateway refused calls for seconds after it came back. Retry at most every second, and
# let a call wait for the reconnect within its deadline (wait_for_ready above).
RECONNECT = (("grpc.initial_reconnect_backoff_ms", 100), ("grpc.min_reconnect_backoff_ms", 100),
             ("grpc.max_reconnect_backoff_ms", 1000))


class DecisionUnavailable(Exception):
    """decider could not be asked or did not answer in time: the call must not be forwarded."""


class DeciderLink:
    def __init__(self, target: DeciderTarget) -> None:
        self._cfg = target
        if target.tls_ca is not None or target.tls_cert is not None:
            creds = grpc.ssl_channel_credentials(root_certificates=target.tls_ca, private_key=target.tls_key,
                                                 certificate_chain=target.tls_cert)
            self._channel = grpc.aio.secure_channel(target.target, creds, options=RECONNECT)
        else:
            self._channel = grpc.aio.insecure_channel(target.target, options=RECONNECT)
        self._stub = pb_grpc.DeciderStub(self._channel)
        self._metadata = (("authorization", f"Bearer {target.token}"),) if target.token else None
        self._decisions = BatchingDecider(self._channel, metadata=self._metadata, timeout=target.deadline_s,
                                          wait_for_ready=True)
        # request ids: unique per gateway process, cheap to make (no uuid per call)
        self._prefix = f"gw-{os.getpid()}-{os.urandom(3).hex()}-"
        self._seq = itertools.count(1)
        self._reports: set[asyncio.Task[None]] = set()

    @property
    def deadline_s(self) -> float:
        return self._cfg.deadline_s

    async def decide(self, req: pb.DecideRequest) -> pb.DecideResponse:
        """One decision, or DecisionUnavailable (unreachable, refused, late). Never forwards on doubt."""
        req.request.id = f"{self._prefix}{next(self._seq)}"   # the record's correlation id
        try:
            return await self._decisions.decide(req)
        except TimeoutError:
            raise DecisionUnavailable(f"decider did not answer within {self._cfg.deadline_s:g}s") from None
        except DecisionError as e:
            if e.refused:
                raise DecisionRefused(e.code, e.message) from None
            raise DecisionUnavailable(f"decider is unavailable ({e.code.name}: {e.message})") from None

    async def watch(self, decision_id: str, timeout: float) -> AsyncIterator[pb.DecisionRecord]:
        """The decision's record now and at every change, for at most `timeout` seconds."""
        call = self._stub.WatchDecision(pb.GetDecisionRequest(decision_id=decision_id), timeout=timeout,
                                        metadata=self._metadata)
        try:
            async for rec in call:
                yield rec
        except grpc.aio.AioRpcError as e:
            if e.code() != grpc.StatusCode.DEADLINE_EXCEEDED:
                raise DecisionUnavailable(f"watching {decision_id} failed ({e.code().name}: {e.details()})") from None
        finally:
            call.cancel()

    async def get(self, decision_id: str) -> pb.DecisionRecord:
        return await self._stub.GetDecision(pb.GetDecisionRequest(decision_id=decision_id),
                                            timeout=self._cfg.deadline_s, metadata=self._metadata)

    async def report(self, decision_id: str, status: str, actual_cost: float | None = None,
                     result: dict[str, Any] | None = None) -> None:
        """The outcome, with the tool's result (bounded, see `result_for_report`) for the bundle's
        `on: outcome` rules, on the decision stream (unary ReportOutcome as the fallback); a failure
        is logged, not raised (the call already happened). The actual cost is sent only when the
        config names one (else decider's estimate stands)."""
        req = pb.ReportOutcomeRequest(decision_id=decision_id, status=status)
        if actual_cost is not None:
            req.actual_cost = actual_cost
        if result is not None:
            json_format.ParseDict(result, req.result)
        if self._decisions.outcomes_supported:
            try:
                await self._decisions.report(req)
                return
            except OutcomesUnsupported:
                pass   # an old server skipped the field: unary, now and from now on
            except DecisionError as e:
                if e.refused:
                    log.warning("outcome not reported", extra={"decision_id": decision_id, "error": e.message})
                    return
                # The stream broke with the outcome in flight: settled or not, the unary call below
                # settles it or is refused as a second report.
            except TimeoutError:
                pass
        try:
            await self._stub.ReportOutcome(req, timeout=max(self._cfg.deadline_s, 5.0), metadata=self._metadata)
        except grpc.aio.AioRpcError as e:
            log.warning("outcome not reported", extra={"decision_id": decision_id, "error": e.details()})

    def report_later(self, decision_id: str, status: str, actual_cost: float | None = None,
                     result: dict[str, Any] | None = None) -> None:
        """ReportOutcome off the response path: the client gets its result without waiting for the
        bookkeeping, and the report is sent only after that reply is written (it costs the gateway
        ~0.3 ms of gRPC). `close()` waits for these."""
        task = asyncio.get_running_loop().create_task(
            self._report_after_reply(decision_id, status, actual_cost, result))
        self._reports.add(task)
        task.add_done_callback(self._reports.discard)

    async def _report_after_reply(self, decision_id: str, status: str, actual_cost: float | None,
                                  result: dict[str, Any] | None) -> None:
        # Queued while the handler is still returning its result: a report sent in this task's first
        # step went out before the SDK wrote the reply (measured with tools/bench/gateway_hops.py).
        # Over stdio the reply is written within two loop turns; over HTTP it takes more hops and a
        # report may still be sent first (no worse than before).
        for _ in range(REPLY_FIRST_TURNS):
            await asyncio.sleep(0)
        await self.report(decision_id, status, actual_cost, result)

    async def close(self, drain_s: float = 10.0) -> None:
        if self._reports:
            await asyncio.wait(set(self._reports), timeout=drain_s)
        await self._decisions.close()
        await self._channel.close()


class DecisionRefused(DecisionUnavailable):
    """decider answered this request with an error (e.g. INVALID_ARGUMENT naming the field)."""

    def __init__(self, code: grpc.StatusCode, message: str) -> None:
        self.code = code
        super().__init__(f"decider refused the request ({code.name}: {message})")

