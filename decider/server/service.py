"""The `decider.v1.Decider` service: decode → validate → decide → record (durably) → answer."""

from __future__ import annotations

import asyncio
import logging
import time
from bisect import insort
from collections.abc import Awaitable, Callable
from datetime import datetime, timezone
from typing import Any, NamedTuple

import grpc

from decider.api.validate import decode_request
from decider.bundle.compile import Bundle
from decider.engine.controls import needs_approvals, settle
from decider.engine.decision import Decision
from decider.engine.procedure import admit, evaluate_call, intake
from decider.engine.state import SessionCall, State
from decider.errors import InvalidRequest
from decider.record.ids import new_id
from decider.record.record import DecisionRecord, build_record, record_to_proto, set_timestamp
from decider.server.auth import ANONYMOUS, Principal, current_principal
from decider.server.controls import Applied, Controls
from decider.server.reach import refuse_unreached
from decider.server.sessions import session_call_of
from decider.store import DecisionStore, GroupCommitWriter
from decider.store.writer import WriteGroup
from decider.v1 import decider_pb2 as pb

__all__ = ["BundleHolder", "DeciderService", "DecisionFailed", "SERVICE_NAME"]

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

    @staticmethod
    def of(exc: Exception) -> DecisionFailed:
        """What a call that raised `exc` gets: the DecisionFailed itself, or INTERNAL for anything
        else (one bad call must not fail its batch's or stream's other calls)."""
        return exc if isinstance(exc, DecisionFailed) else DecisionFailed(
            grpc.StatusCode.INTERNAL, f"decision failed: {exc}")


class _Prepared(NamedTuple):
    """A decision made and its record built, not yet written (DeciderService._prepare)."""

    req: pb.DecideRequest
    decision: Decision
    record: DecisionRecord
    row: dict[str, Any]
    applied: Applied
    bundle: Bundle
    started: float


def _first(item: tuple[Any, ...]) -> Any:
    return item[0]


class BundleHolder:
    """The active bundle. Swapped as one reference, so each decision sees exactly one revision."""

    shadow: Bundle | None = None

    def __init__(self, bundle: Bundle) -> None:
        self.active = bundle

    # Hooks for the bundle lifecycle (issue 4): `server.bundles.LiveBundles` evaluates the shadow
    # bundle into the record and counts outcomes for Status; a plain holder does neither.
    def shadow_into(self, record: DecisionRecord, shadow: Bundle, decision: Decision) -> None:
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

    async def state_for(self, req: pb.DecideRequest, bundle: Bundle, now: datetime,
                        earlier: tuple[SessionCall, ...] = ()) -> State:
        """The state `bundle` reads for this call. Kill switches from the in-memory cache; budget
        usage read only when a budget can matter; session history only when a policy this tool
        meets reads `session` (server/sessions.py), plus `earlier`: calls of this session decided
        before it in the same batch, whose records are not durable yet."""
        state = await self.controls.state_for(req, bundle, now)
        if bundle.reads_session and bundle.reads_session_for(req.tool.name):
            history = await self.controls.sessions.history(bundle.history_key(req.agent), bundle.session_max_calls,
                                                           bundle.session_window_s, now, bundle.session_key)
            if earlier:
                seen = {c.decision_id for c in history}
                history = history + tuple(c for c in earlier if c.decision_id not in seen)
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

    async def decide_bytes(self, raw: bytes | pb.DecideRequest, carrier: dict[str, str] | None = None,
                           method: str = "Decide") -> pb.DecideResponse:
        """One decision from wire bytes, recorded durably before it returns. Shared by the unary
        `Decide` and `DecideStream`; failures raise DecisionFailed with the status to report.
        ExtMcp, which builds its request itself, passes the message (it is the decision's own: the
        procedure fills in its defaults)."""
        self._enter(1)
        try:
            return await self._decide_bytes(raw, carrier, method)
        finally:
            self.in_flight -= 1

    async def _decide_bytes(self, raw: bytes | pb.DecideRequest, carrier: dict[str, str] | None,
                            method: str) -> pb.DecideResponse:
        prepared = await self._prepare(raw, method)
        if isinstance(prepared, pb.DecideResponse):
            return prepared
        commit_started = time.perf_counter()
        written = False
        try:
            alone = self._alone()
            if alone:
                # Let every other ready task run first: a decision still alone after that may be
                # committed on the loop (see GroupCommitWriter.write).
                await asyncio.sleep(0)
                alone = self._alone()
            await self.writer.write(prepared.row, alone=alone)
            written = True
        except Exception as exc:  # noqa: BLE001
            raise self._unrecorded(prepared, exc) from None
        finally:
            if not written:
                prepared.applied.done(False)
        return self._finish(prepared, carrier, commit_started)

    async def decide_many(self, raws: list[bytes], carrier: dict[str, str] | None = None,
                          method: str = "DecideBatchStream") -> list[pb.DecideResponse | DecisionFailed]:
        """Several decisions from wire bytes, one result per call in order (a response, or the
        DecisionFailed that call alone gets). The procedure of `decide_bytes`, applied call by call
        in the batch's order: each call decides exactly as it would have had the calls come one
        by one — session history and labels, budgets, approvals, kill switches (tests/parity).

        Where a call cannot depend on the others, its steps run early, a stage at a time over the
        batch (below), which gives the same answers for less CPU. A call that reads the session
        sees the batch's earlier calls of its session (staged, not yet durable) and no later one.
        Records are staged for the group-commit writer together and awaited together. A call that
        reads approvals holds its call's lock until its record is written; a later call that must
        wait for a lock first has the records staged so far committed (the holder may be an
        identical call earlier in this batch, which it then finds), so one commit serves the
        whole batch otherwise."""
        n = len(raws)
        self._enter(n)
        results: list[Any] = [None] * n
        # The records staged and not yet awaited: (call index, prepared, its index in `group`).
        staged: list[tuple[int, _Prepared, int]] = []
        group = WriteGroup()
        # The batch's own session history: per session id, (index, call) of each staged record in
        # batch order (staged out of order: the early pass first, then the rest).
        earlier: dict[str, list[tuple[int, SessionCall]]] = {}

        async def write_staged() -> None:
            nonlocal staged, group
            await self._settle_staged(staged, group, results, carrier)
            staged, group = [], WriteGroup()   # after the wait: cancelled during it, the finally below still gives them back

        def stage(i: int, prepared: _Prepared) -> None:
            try:
                slot = self.writer.stage(prepared.row, group)
            except Exception as exc:  # noqa: BLE001 - e.g. the writer is shut down
                prepared.applied.done(False)
                results[i] = self._unrecorded(prepared, exc)
                return
            staged.append((i, prepared, slot))
            if prepared.bundle.reads_session and not prepared.record.dry_run:
                sid = prepared.bundle.history_key(prepared.record.agent)
                if sid:
                    insort(earlier.setdefault(sid, []), (i, session_call_of(prepared.record)), key=_first)

        def before(i: int, req: pb.DecideRequest) -> tuple[SessionCall, ...]:
            calls = earlier.get(bundle.history_key(req.agent)) if earlier else None
            return tuple(c for j, c in calls if j < i) if calls else ()

        try:
            bundle = self.bundles.active   # read once: the whole batch uses this revision
            caller = current_principal()
            # Decision ids in the batch's order (time-sortable: the session's order on reload too).
            ids = [new_id() for _ in range(n)]
            # One stage at a time over the whole batch, where the calls do not depend on each other:
            # each stage's code and data (CEL's above all) stay in the CPU's caches, ~25% less CPU
            # per call than taking each call through every stage in turn (docs/performance.md).
            # 1. Every call: decode, validate, admit; the rules, when its state needs no store read.
            calls: list[Any] = [None] * n
            early = self.bundles.shadow is None   # a shadow reads state of its own: each in its turn
            # 1a. decode, validate, admit (each call's bytes are read once, back to back);
            for i, raw in enumerate(raws):
                started = time.perf_counter()
                try:
                    req, now = self._intake(raw)
                    refused = admit(bundle, req)
                    state = self._state_at_hand(req, bundle, now) if early else None
                except Exception as e:  # noqa: BLE001 - one bad call must not fail the rest of its batch
                    results[i] = DecisionFailed.of(e)
                    continue
                calls[i] = (req, now, state, None, started, refused)
            # 1b. then the rules of every call whose state is at hand, back to back.
            for i, call in enumerate(calls):
                if call is None or call[2] is None:
                    continue
                req, now, state, _none, started, refused = call
                try:
                    evaluated = evaluate_call(bundle, req, state, refused)
                except Exception as e:  # noqa: BLE001 - one bad call must not fail the rest of its batch
                    results[i] = DecisionFailed.of(e)
                    calls[i] = None
                    continue
                calls[i] = (req, now, state, evaluated, started, refused)
            # 2. The calls the controls settle without the store (no approval to read, no budget to
            # charge, an unbound caller): nothing another call of the batch does can change them.
            if early and not (caller.agents or caller.teams):
                for i, call in enumerate(calls):
                    if call is None or call[3] is None:
                        continue
                    req, now, state, evaluated, started, _refused = call
                    try:
                        applied = self.controls.settle_at_hand(req, evaluated, bundle, state)
                        if applied is None:
                            continue
                        calls[i] = None
                        prepared = self._record(req, now, bundle, applied, ids[i], caller, started, None)
                    except Exception as e:  # noqa: BLE001 - one bad call must not fail the rest of its batch
                        results[i] = DecisionFailed.of(e)
                        continue
                    stage(i, prepared)
            # 3. The others in the batch's order: budgets are charged, approvals read and opened,
            # the session's earlier calls seen, as if the calls had come one by one.
            for i, call in enumerate(calls):
                if call is None:
                    continue
                req, now, state, evaluated, started, refused = call
                try:
                    prior = before(i, req)
                    if evaluated is None:
                        state = await self.state_for(req, bundle, now, prior)
                        evaluated = evaluate_call(bundle, req, state, refused)
                    prepared = await self._settle(req, now, bundle, state, evaluated, started, method, write_staged,
                                                  ids[i], prior)
                except Exception as e:  # noqa: BLE001 - one bad call must not fail the rest of its batch
                    results[i] = DecisionFailed.of(e)
                    continue
                if isinstance(prepared, pb.DecideResponse):
                    results[i] = prepared
                else:
                    stage(i, prepared)
            await write_staged()
        finally:
            self.in_flight -= n
            for _i, prepared, _slot in staged:   # cancelled mid-batch: give back what was held
                prepared.applied.done(False)
        return results

    async def _settle_staged(self, staged: list[tuple[int, _Prepared, int]], group: WriteGroup,
                             results: list[Any], carrier: dict[str, str] | None) -> None:
        if not staged:
            return
        commit_started = time.perf_counter()
        await group.wait()   # one wake-up for the batch's records, not a future each
        # In the batch's order: the session buffers get the calls as they were decided.
        errors = group.errors
        for i, prepared, slot in sorted(staged, key=_first):
            exc = errors[slot]
            if exc is not None:
                prepared.applied.done(False)
                results[i] = self._unrecorded(prepared, exc)
            else:
                results[i] = self._finish(prepared, carrier, commit_started)

    async def _prepare(self, raw: bytes | pb.DecideRequest, method: str,
                       before_wait: Callable[[], Awaitable[None]] | None = None) -> _Prepared | pb.DecideResponse:
        """Everything before the record is written: decode, validate, admit, decide, apply the
        controls, build the record. A response when the call is answered with an earlier decision.
        `before_wait`: see Controls.settle."""
        started = time.perf_counter()
        req, now = self._intake(raw)
        bundle = self.bundles.active  # read once: the whole decision uses this revision
        refused = admit(bundle, req)
        state = await self.state_for(req, bundle, now)
        # engine.decide in two halves: the rules, then (with the call's approvals read only when the
        # rules ask for approval) the stateful controls, whose effects the store applies.
        evaluated = evaluate_call(bundle, req, state, refused)
        return await self._settle(req, now, bundle, state, evaluated, started, method, before_wait, new_id())

    @staticmethod
    def _intake(raw: bytes | pb.DecideRequest) -> tuple[pb.DecideRequest, datetime]:
        """Decode and validate a call, and stamp its time (DecisionFailed naming the field)."""
        if isinstance(raw, bytes):
            try:
                req = decode_request(raw)
            except InvalidRequest as e:
                raise DecisionFailed(grpc.StatusCode.INVALID_ARGUMENT, str(e)) from None
        else:
            req = raw
        try:
            intake(req)
        except InvalidRequest as e:
            raise DecisionFailed(grpc.StatusCode.INVALID_ARGUMENT, str(e), req.request.id) from None
        now = datetime.now(timezone.utc)
        if not req.request.HasField("time"):
            set_timestamp(req.request.time, now)
        return req, now

    def _state_at_hand(self, req: pb.DecideRequest, bundle: Bundle, now: datetime) -> State | None:
        """The call's state when it needs nothing from the store (no budget can matter, no policy
        it meets reads the session), else None: `state_for` reads it, in the call's turn."""
        if bundle.reads_session and bundle.reads_session_for(req.tool.name):
            return None
        return self.controls.state_at_hand(req, bundle, now)

    async def _settle(self, req: pb.DecideRequest, now: datetime, bundle: Bundle, state: State,
                      evaluated: Decision, started: float, method: str,
                      before_wait: Callable[[], Awaitable[None]] | None, decision_id: str,
                      earlier: tuple[SessionCall, ...] = ()) -> _Prepared | pb.DecideResponse:
        """From the rules' decision on: the caller's binding, the shadow, the stateful controls, the record."""
        caller = current_principal()
        if caller.agents or caller.teams:
            # A bound caller (SPEC §9), checked on the identity the decision saw (the manifest may
            # have filled the team): evaluate changed nothing, so refusing here leaves no trace
            # but the auth event.
            refusal = caller.refuses(evaluated.agent or req.agent)
            if refusal:
                await self._refused(method, caller.name, refusal)
                raise DecisionFailed(grpc.StatusCode.PERMISSION_DENIED, refusal, req.request.id)
        # The shadow reads the state before this decision's effects are applied (an approval it
        # consumes, a reservation it makes), as the active bundle did.
        shadow = await self._shadow(req, now, bundle, state, earlier) if self.bundles.shadow is not None else None
        # `applied.done(written)` must run on every path from here.
        try:
            applied = await self.controls.settle(req, evaluated, bundle, state, decision_id, now, before_wait)
        except Exception as exc:  # noqa: BLE001 - e.g. a replica won the race for the same approval
            log.error("stateful controls failed", extra={"decision_id": decision_id, "error": str(exc)})
            raise DecisionFailed(grpc.StatusCode.UNAVAILABLE, f"decision could not be made: {exc}",
                                 req.request.id) from None
        if applied.existing is not None:
            applied.existing.request_id = req.request.id
            return applied.existing
        if applied.raced and shadow is not None:
            # Concurrent calls took the budget's room between the read and the reservation: the
            # shadow decides again on the state the reservation found (this call left nothing).
            # (A shadow of another revision reads its own state in `_shadow`: no read here for it.)
            fresh = await self.state_for(req, bundle, now, earlier) if self.bundles.shadow is bundle else state
            shadow = await self._shadow(req, now, bundle, fresh, earlier)
        return self._record(req, now, bundle, applied, decision_id, caller, started, shadow)

    async def _shadow(self, req: pb.DecideRequest, now: datetime, active: Bundle, state: State,
                      earlier: tuple[SessionCall, ...]) -> tuple[Bundle, Decision] | None:
        """The shadow bundle's decision on its own view of the same state: what it reads of the
        store (budgets, the session, and the call's approvals when it asks for approval) as the
        active bundle would read it. Its effects are never applied; a failure is logged and never
        fails the call."""
        shadow = self.bundles.shadow   # read once, like the active bundle
        if shadow is None:
            return None
        try:
            own = state if shadow is active else await self.state_for(req, shadow, now, earlier)
            refused = ""
            if shadow.costs and not req.request.estimated_cost:
                # Admitted by the shadow's own tool costs (a copy: the active request is recorded).
                # An estimate the active bundle filled in stands for the shadow too.
                mine = pb.DecideRequest()
                mine.CopyFrom(req)
                refused, req = admit(shadow, mine), mine
            evaluated = evaluate_call(shadow, req, own, refused)
            if needs_approvals(req, evaluated):
                own = own.with_approvals(await self.controls.approvals_of(req))
            return shadow, settle(shadow, req, evaluated, own)
        except Exception as e:  # noqa: BLE001 - the shadow must never affect the real decision
            log.warning("shadow evaluation failed", extra={"error": str(e), "revision": shadow.revision})
            return None

    def _record(self, req: pb.DecideRequest, now: datetime, bundle: Bundle, applied: Applied,
                decision_id: str, caller: Principal, started: float,
                shadow: tuple[Bundle, Decision] | None) -> _Prepared:
        """The settled decision's record and row (`applied.done(False)` if building them fails)."""
        try:
            decision = applied.decision
            record = build_record(decision_id, req, decision, bundle, now, self.controls.binding_key,
                                  applied.args_hash, caller.name if caller is not ANONYMOUS else "")
            if applied.approval is not None:
                record.approval = applied.approval   # the approval this ALLOW consumed
            if shadow is not None:
                self.bundles.shadow_into(record, *shadow)  # into the record only, never the response
            row = record.to_row()
        except BaseException:
            applied.done(False)
            raise
        return _Prepared(req, decision, record, row, applied, bundle, started)

    def _unrecorded(self, prepared: _Prepared, exc: BaseException) -> DecisionFailed:
        # No durable record, no answer: the enforcement point must treat this as a deny.
        decision_id = prepared.record.decision_id
        log.error("decision not recorded", extra={"decision_id": decision_id, "error": str(exc)})
        return DecisionFailed(grpc.StatusCode.UNAVAILABLE, f"decision could not be recorded: {exc}",
                              prepared.req.request.id)

    def _finish(self, prepared: _Prepared, carrier: dict[str, str] | None, commit_started: float) -> pb.DecideResponse:
        """After the record is durable: release what the controls held, count, answer."""
        req, decision, record = prepared.req, prepared.decision, prepared.record
        if prepared.bundle.reads_session:
            self.controls.sessions.add(record)   # durable now: later calls of the session see it
        prepared.applied.done(True)
        commit_ended = time.perf_counter()
        self.bundles.count(decision.outcome_name)  # Status counts
        if log.isEnabledFor(logging.DEBUG):
            log.debug("decided", extra={"decision_id": record.decision_id, "outcome": decision.outcome_name,
                                        "tool": req.tool.name, "agent": req.agent.id})
        resp = record.response(req)
        if self.observe is not None:
            self.observe(req, resp, decision.outcome_name, prepared.started, commit_started, commit_ended, carrier)
        return resp

    async def _refused(self, method: str, principal: str, detail: str) -> None:
        row = {"time": datetime.now(timezone.utc), "method": f"/{SERVICE_NAME}/{method}",
               "code": grpc.StatusCode.PERMISSION_DENIED.name, "principal": principal, "peer": "", "detail": detail}
        log.warning("refused", extra={"method": row["method"], "code": row["code"], "principal": principal})
        try:
            await asyncio.to_thread(self.controls.auth_events.record, row)
        except Exception as exc:  # noqa: BLE001 - refusing must not depend on the audit write
            log.error("auth event not recorded", extra={"error": str(exc)})

    def _enter(self, n: int) -> None:
        """`n` decisions start (the caller takes them off `in_flight` when they end)."""
        self.in_flight += n
        if self.in_flight > 1:
            self._concurrent_until = time.monotonic() + CONCURRENCY_MEMORY_S

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
        await refuse_unreached(row, req.decision_id, f"/{SERVICE_NAME}/GetDecision", context,
                               self.controls.auth_events)
        return record_to_proto(row)
