"""The `decider.v1.Decider` service: decode → validate → decide → record (durably) → answer."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from datetime import datetime, timezone

import grpc

from decider.api.validate import decode_request, validate_request
from decider.bundle.compile import Bundle
from decider.engine.decide import evaluate
from decider.engine.state import State
from decider.errors import InvalidRequest
from decider.record.ids import new_id
from decider.record.record import DecisionRecord, build_record, record_to_proto, set_timestamp
from decider.server.auth import ANONYMOUS, current_principal
from decider.server.controls import Controls
from decider.store import DecisionStore, GroupCommitWriter
from decider.v1 import decider_pb2 as pb

__all__ = ["BundleHolder", "DeciderService", "DecisionFailed", "generic_handler", "SERVICE_NAME"]

log = logging.getLogger("decider.server")
SERVICE_NAME = "decider.v1.Decider"
# After two decisions overlapped, keep group commit on the writer thread this long.
CONCURRENCY_MEMORY_S = 0.25


class DecisionFailed(Exception):
    """A request that gets no decision: the status a unary call aborts with, or a stream reports
    in `DecideResponse.error` for that message alone."""

    def __init__(self, code: grpc.StatusCode, message: str, request_id: str = "") -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.request_id = request_id


class BundleHolder:
    """The active bundle. Swapped as one reference, so each decision sees exactly one revision."""

    shadow: Bundle | None = None

    def __init__(self, bundle: Bundle) -> None:
        self.active = bundle

    # Hooks for the bundle lifecycle (issue 4): `server.bundles.LiveBundles` evaluates the shadow
    # bundle into the record and counts outcomes for Status; a plain holder does neither.
    def shadow_into(self, record: DecisionRecord, req: pb.DecideRequest, state: State) -> None:
        return None

    def count(self, outcome: str) -> None:
        return None


class DeciderService:
    def __init__(self, bundles: BundleHolder, store: DecisionStore, writer: GroupCommitWriter,
                 controls: Controls) -> None:
        self.bundles = bundles
        self.store = store
        self.writer = writer
        self.controls = controls
        # Is this decision alone? (see `_alone`.) Counted on the event loop, so no locks.
        self.in_flight = 0          # decisions between decode and answer
        self.open_streams = 0       # DecideStream calls open
        self._concurrent_until = 0.0
        # Metrics and traces (server/metrics.py, server/telemetry.py): called once per recorded
        # decision as observe(req, resp, outcome, started, commit_started, commit_ended, trace
        # headers), perf_counter times. `wants_trace`: read traceparent from the call's metadata.
        self.observe: Callable[..., None] | None = None
        self.wants_trace = False

    async def state_for(self, req: pb.DecideRequest, bundle: Bundle, now: datetime) -> State:
        # Kill switches from the in-memory cache; budget usage read only when a budget can matter;
        # session history only when a policy this tool meets reads `session` (server/sessions.py).
        state = await self.controls.state_for(req, bundle, now)
        if bundle.reads_session and bundle.reads_session_for(req.tool.name):
            history = await self.controls.sessions.history(req.agent.session_id, bundle.session_max_calls,
                                                           bundle.session_window_s, now)
            state = state.with_history(history)
        return state

    async def decide(self, raw: bytes, context: grpc.aio.ServicerContext) -> pb.DecideResponse:
        carrier = None
        if self.wants_trace:
            from decider.server.telemetry import trace_headers

            carrier = trace_headers(context.invocation_metadata())
        try:
            return await self.decide_bytes(raw, carrier)
        except DecisionFailed as e:
            await context.abort(e.code, e.message)
            raise  # unreachable: abort raises

    async def decide_bytes(self, raw: bytes, carrier: dict[str, str] | None = None,
                           method: str = "Decide") -> pb.DecideResponse:
        """One decision from wire bytes, recorded durably before it returns. Shared by the unary
        `Decide` and `DecideStream`; failures raise DecisionFailed with the status to report."""
        self.in_flight += 1
        if self.in_flight > 1:
            self._concurrent_until = time.monotonic() + CONCURRENCY_MEMORY_S
        try:
            return await self._decide_bytes(raw, carrier, method)
        finally:
            self.in_flight -= 1

    async def _decide_bytes(self, raw: bytes, carrier: dict[str, str] | None, method: str) -> pb.DecideResponse:
        started = time.perf_counter()
        try:
            req = decode_request(raw)
        except InvalidRequest as e:
            raise DecisionFailed(grpc.StatusCode.INVALID_ARGUMENT, str(e)) from None
        try:
            validate_request(req)
        except InvalidRequest as e:
            raise DecisionFailed(grpc.StatusCode.INVALID_ARGUMENT, str(e), req.request.id) from None
        now = datetime.now(timezone.utc)
        if not req.request.HasField("time"):
            set_timestamp(req.request.time, now)
        bundle = self.bundles.active  # read once: the whole decision uses this revision
        state = await self.state_for(req, bundle, now)
        # engine.decide in two halves: the rules, then (with the call's approvals read only when the
        # rules ask for approval) the stateful controls, whose effects the store applies.
        evaluated = evaluate(bundle, req, state)
        caller = current_principal()
        if caller.agents or caller.teams:
            # A bound caller (SPEC §9), checked on the identity the decision saw (the manifest may
            # have filled the team): evaluate changed nothing, so refusing here leaves no trace
            # but the auth event.
            refusal = caller.refuses(evaluated.agent or req.agent)
            if refusal:
                await self._refused(method, caller.name, refusal)
                raise DecisionFailed(grpc.StatusCode.PERMISSION_DENIED, refusal, req.request.id)
        decision_id = new_id()
        # `applied.done(written)` must run on every path.
        try:
            applied = await self.controls.settle(req, evaluated, bundle, state, decision_id, now)
        except Exception as exc:  # noqa: BLE001 - e.g. a replica won the race for the same approval
            log.error("stateful controls failed", extra={"decision_id": decision_id, "error": str(exc)})
            raise DecisionFailed(grpc.StatusCode.UNAVAILABLE, f"decision could not be made: {exc}",
                                 req.request.id) from None
        if applied.existing is not None:
            applied.existing.request_id = req.request.id
            return applied.existing
        decision = applied.decision
        record = build_record(decision_id, req, decision, bundle, now, self.controls.binding_key, applied.args_hash,
                              caller.name if caller is not ANONYMOUS else "")
        if applied.approval is not None:
            record.approval = applied.approval   # the approval this ALLOW consumed
        self.bundles.shadow_into(record, req, state)  # into the record only, never the response
        row = record.to_row()
        written = False
        commit_started = time.perf_counter()
        try:
            alone = self._alone()
            if alone:
                # Let every other ready task run first: a decision still alone after that may be
                # committed on the loop (see GroupCommitWriter.write).
                await asyncio.sleep(0)
                alone = self._alone()
            await self.writer.write(row, alone=alone)
            written = True
            if bundle.reads_session:
                self.controls.sessions.add(record)   # durable now: later calls of the session see it
        except Exception as exc:  # noqa: BLE001
            # No durable record, no answer: the enforcement point must treat this as a deny.
            log.error("decision not recorded", extra={"decision_id": decision_id, "error": str(exc)})
            raise DecisionFailed(grpc.StatusCode.UNAVAILABLE, f"decision could not be recorded: {exc}",
                                 req.request.id) from None
        finally:
            applied.done(written)
        commit_ended = time.perf_counter()
        # --- end stateful controls
        self.bundles.count(decision.outcome_name)  # Status counts
        if log.isEnabledFor(logging.DEBUG):
            log.debug("decided", extra={"decision_id": decision_id, "outcome": decision.outcome_name,
                                        "tool": req.tool.name, "agent": req.agent.id})
        resp = record.response(req)
        if self.observe is not None:
            self.observe(req, resp, decision.outcome_name, started, commit_started, commit_ended, carrier)
        return resp

    async def _refused(self, method: str, principal: str, detail: str) -> None:
        row = {"time": datetime.now(timezone.utc), "method": f"/{SERVICE_NAME}/{method}",
               "code": grpc.StatusCode.PERMISSION_DENIED.name, "principal": principal, "peer": "", "detail": detail}
        log.warning("refused", extra={"method": row["method"], "code": row["code"], "principal": principal})
        try:
            await asyncio.to_thread(self.controls.auth_events.record, row)
        except Exception as exc:  # noqa: BLE001 - refusing must not depend on the audit write
            log.error("auth event not recorded", extra={"error": str(exc)})

    def _alone(self) -> bool:
        """Nothing else in flight now, no other stream open, and no concurrency seen lately: then
        there is no batch to wait for. Under load the answer stays False, so a burst that
        arrives one message at a time still forms group-commit batches."""
        return (self.in_flight == 1 and self.open_streams <= 1
                and time.monotonic() > self._concurrent_until)

    def alone_outside_decisions(self) -> bool:
        """For a write that is not a decision (ReportOutcome): no decision in flight, at most one
        stream open, no concurrency seen lately."""
        return (self.in_flight == 0 and self.open_streams <= 1
                and time.monotonic() > self._concurrent_until)

    async def get_decision(self, req: pb.GetDecisionRequest, context: grpc.aio.ServicerContext) -> pb.DecisionRecord:
        if not req.decision_id:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, "decision_id: is required")
        row = await asyncio.to_thread(self.store.get, req.decision_id)
        if row is None:
            await context.abort(grpc.StatusCode.NOT_FOUND, f"decision_id: no decision {req.decision_id!r}")
        return record_to_proto(row)


def generic_handler(svc: DeciderService) -> grpc.GenericRpcHandler:
    from decider.server.stream import decide_batch_stream_handler, decide_stream_handler  # builds on this module

    return grpc.method_handlers_generic_handler(
        SERVICE_NAME,
        {
            # Raw bytes in: a request that does not even decode still gets INVALID_ARGUMENT naming
            # the field, instead of grpc's generic INTERNAL deserialisation failure.
            "Decide": grpc.unary_unary_rpc_method_handler(
                svc.decide, request_deserializer=None, response_serializer=pb.DecideResponse.SerializeToString
            ),
            "DecideStream": decide_stream_handler(svc),
            "DecideBatchStream": decide_batch_stream_handler(svc),
            "GetDecision": grpc.unary_unary_rpc_method_handler(
                svc.get_decision,
                request_deserializer=pb.GetDecisionRequest.FromString,
                response_serializer=pb.DecisionRecord.SerializeToString,
            ),
        },
    )
