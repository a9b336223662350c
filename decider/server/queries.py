"""The `decider.v1.Queries` service: the reads the operations console is built on (ListDecisions,
WatchDecisions, ListBudgets, ShadowDiff: approver or admin role; WhoAmI: any role; see auth.py).

WatchDecisions is fed by one poller per server process (`DecisionFeed`), however many streams are
open, and only while one is. It reads the ids committed after its cursor. Ids are made before the
record is committed (group commit), so a decision can become visible slightly after a later id: the
poller therefore re-reads the last `lookback_s` once every `sweep_s` and remembers what it already
published in that window, so a late commit is still delivered (within about a second), and once.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import threading
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import replace
from datetime import datetime, timezone
from typing import Any

import grpc

from decider.bundle.compile import Bundle
from decider.engine.budgets import window_start
from decider.engine.decide import outcome_name, outcome_value
from decider.record.ids import new_id
from decider.record.record import record_to_proto
from decider.server.auth import ANONYMOUS, current_principal
from decider.store.queries import DecisionQuery, QueryStore
from decider.v1 import decider_pb2 as pb

__all__ = ["QUERIES_SERVICE_NAME", "DecisionFeed", "handlers"]

log = logging.getLogger("decider.server.queries")
QUERIES_SERVICE_NAME = "decider.v1.Queries"
MAX_LIST = 1000
DEFAULT_LIST = 100
_ID = re.compile(r"[0-9A-HJKMNP-TV-Z]{1,26}")
_MAX_FILTER = 256


# A published row's DecisionRecord, serialised as one element of WatchDecisionsResponse.decisions
# (field 1, length-delimited): a stream's batch is these chunks joined, encoded once per record
# however many streams send it.
WIRE = "_wire"


def _field_1(payload: bytes) -> bytes:
    n = len(payload)
    out = bytearray(b"\x0a")
    while n > 0x7F:
        out.append((n & 0x7F) | 0x80)
        n >>= 7
    out.append(n)
    return bytes(out) + payload


def _floor_id(ms: int) -> str:
    """The smallest id a decision made at `ms` can have."""
    return new_id(ms)[:10] + "0" * 16


class _Subscriber:
    def __init__(self, backlog: int) -> None:
        self.queue: asyncio.Queue[list[dict[str, Any]]] = asyncio.Queue(maxsize=backlog)
        self.overflowed = False


class DecisionFeed:
    """Publishes every newly committed decision record to the open WatchDecisions streams."""

    def __init__(self, store: QueryStore, *, interval_s: float = 0.25, lookback_s: float = 3.0,
                 batch: int = 2000, backlog: int = 1000, sweep_s: float = 1.0) -> None:
        self.store = store
        self.backlog = backlog      # batches a stream may have queued before it is ended
        self.interval_s = interval_s
        self.lookback_ms = int(lookback_s * 1000)
        self.batch = batch
        self._subs: set[_Subscriber] = set()
        self._seen: dict[str, None] = {}       # ids published (or present at start) in the look-back window
        self._cursor = ""
        self._last_sweep_ms = 0
        self.sweep_ms = int(sweep_s * 1000)
        self._task: asyncio.Task[None] | None = None
        self._lock = asyncio.Lock()
        # A poll runs in a thread and may outlive the task that started it (cancelled on the last
        # unsubscribe): the window state is only touched under this lock.
        self._state_lock = threading.Lock()

    async def subscribe(self) -> _Subscriber:
        async with self._lock:
            if self._task is None:
                # Whatever is committed now is history (a stream asks for it with after_id): only
                # ids not seen here are published.
                await asyncio.to_thread(self.poll, False)
                self._task = asyncio.create_task(self._run(), name="decider-decision-feed")
            sub = _Subscriber(self.backlog)
            self._subs.add(sub)
            return sub

    async def unsubscribe(self, sub: _Subscriber) -> None:
        async with self._lock:
            self._subs.discard(sub)
            if not self._subs and self._task is not None:
                self._task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await self._task
                self._task = None
                with self._state_lock:
                    self._seen.clear()
                    self._cursor = ""

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self.interval_s)
            try:
                rows = await asyncio.to_thread(self.poll, True)
            except Exception as exc:  # noqa: BLE001 - a failed read is retried on the next tick
                log.warning("decision feed poll failed", extra={"error": str(exc)})
                continue
            if rows:
                self.publish(rows)

    def publish(self, rows: list[dict[str, Any]]) -> None:
        for sub in list(self._subs):
            try:
                sub.queue.put_nowait(rows)
            except asyncio.QueueFull:
                # That stream fell behind: drop what it has queued and wake it, so it ends and
                # tells the client to resume from the last id it received.
                sub.overflowed = True
                self._subs.discard(sub)
                while not sub.queue.empty():
                    sub.queue.get_nowait()
                sub.queue.put_nowait([])

    def poll(self, publish: bool) -> list[dict[str, Any]]:
        """Runs in a thread: the records committed since the last poll (not yet published)."""
        with self._state_lock:
            return self._poll_locked(publish)

    def _poll_locked(self, publish: bool) -> list[dict[str, Any]]:
        now_ms = int(time.time() * 1000)
        floor = _floor_id(now_ms - self.lookback_ms)
        # Most polls read only ids after the cursor; once a second one also re-reads the look-back
        # window for late commits (reading the window's ids on every poll cost more than the
        # records themselves under load).
        sweep = not self._cursor or now_ms - self._last_sweep_ms >= self.sweep_ms
        if sweep:
            self._last_sweep_ms = now_ms
        start = min(self._cursor, floor) if sweep and self._cursor else (self._cursor or floor)
        rows: list[dict[str, Any]] = []
        while True:
            ids = self.store.ids_after(start, self.batch)
            new = [i for i in ids if i not in self._seen]
            if publish and new:
                for row in self.store.by_ids(new):
                    # Encoded once here, off the event loop, and shared by every stream.
                    row[WIRE] = _field_1(record_to_proto(row).SerializeToString())
                    rows.append(row)
            for i in new:
                self._seen[i] = None
            if ids:
                self._cursor = max(self._cursor, ids[-1])
                start = ids[-1]
            if len(ids) < self.batch:
                break
        # Forget what fell out of the look-back window (dicts keep insertion order, ids ascend mostly).
        for i in [i for i in self._seen if i < floor]:
            del self._seen[i]
        return rows


# The outcomes a filter may name (OUTCOME_UNSPECIFIED, 0, means any).
_OUTCOMES = frozenset((pb.ALLOW, pb.DENY, pb.REQUIRE_APPROVAL))



def _value_of(name: str | None) -> int:
    """A stored outcome name as the enum; a missing or unknown one (no shadow) as UNSPECIFIED."""
    try:
        return outcome_value(name or "")
    except KeyError:
        return pb.OUTCOME_UNSPECIFIED


def _query(f: pb.DecisionFilter) -> DecisionQuery:
    return DecisionQuery(agent_id=f.agent_id, team=f.team, tool_name=f.tool_name,
                         outcome=outcome_name(f.outcome) if f.outcome in _OUTCOMES else "", rule_id=f.rule_id, session_id=f.session_id)


async def _check_filter(f: pb.DecisionFilter, context: grpc.aio.ServicerContext, prefix: str = "filter") -> None:
    if f.outcome and f.outcome not in _OUTCOMES:
        await context.abort(grpc.StatusCode.INVALID_ARGUMENT, f"{prefix}.outcome: unknown outcome {f.outcome}")
    for name in ("agent_id", "team", "tool_name", "rule_id", "session_id"):
        if len(getattr(f, name)) > _MAX_FILTER:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT,
                                f"{prefix}.{name}: longer than {_MAX_FILTER} characters")


async def _check_id(value: str, field: str, context: grpc.aio.ServicerContext) -> None:
    if value and not _ID.fullmatch(value):
        await context.abort(grpc.StatusCode.INVALID_ARGUMENT,
                            f"{field}: {value[:40]!r} is not a decision id (26 characters of Crockford base32)")


async def list_decisions(store: QueryStore, req: pb.ListDecisionsRequest,
                         context: grpc.aio.ServicerContext) -> pb.ListDecisionsResponse:
    await _check_filter(req.filter, context)
    await _check_id(req.after_id, "after_id", context)
    await _check_id(req.before_id, "before_id", context)
    if req.limit < 0:
        await context.abort(grpc.StatusCode.INVALID_ARGUMENT, "limit: must be >= 0")
    q = replace(_query(req.filter), after_id=req.after_id, before_id=req.before_id,
                limit=min(req.limit or DEFAULT_LIST, MAX_LIST), newest_first=req.newest_first)
    rows = await asyncio.to_thread(store.decisions, q)
    caller = current_principal()
    # A bound caller reads its own agents' decisions only (issue 24 item 2); the cursor still moves
    # past the page read, so paging goes on through the others' decisions without showing them.
    shown = [r for r in rows if caller.reaches(r)] if caller.bound else rows
    out = pb.ListDecisionsResponse(decisions=[record_to_proto(r) for r in shown])
    if rows and not req.newest_first:
        out.next_after_id = rows[-1]["decision_id"]
    return out


async def watch_decisions(store: QueryStore, feed: DecisionFeed, req: pb.WatchDecisionsRequest,
                          context: grpc.aio.ServicerContext) -> AsyncIterator[bytes]:
    """Serialised WatchDecisionsResponse batches: the catch-up in pages, then one batch per poll."""
    await _check_filter(req.filter, context)
    await _check_id(req.after_id, "after_id", context)
    q = _query(req.filter)
    caller = current_principal()
    reaches = caller.reaches if caller.bound else None   # a bound caller: its own agents' decisions only
    sub = await feed.subscribe()   # first, so nothing committed during the catch-up is missed
    try:
        sent: set[str] = set()
        last = req.after_id
        if req.after_id:
            while True:
                rows = await asyncio.to_thread(store.decisions, replace(q, after_id=last, limit=500))
                shown = [r for r in rows if reaches(r)] if reaches is not None else rows
                if shown:
                    sent.update(r["decision_id"] for r in shown)
                    yield pb.WatchDecisionsResponse(decisions=[record_to_proto(r) for r in shown]).SerializeToString()
                if len(rows) < 500:
                    break
                last = rows[-1]["decision_id"]
        while True:
            rows = await sub.queue.get()
            if sub.overflowed:
                await context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED,
                                    "this stream fell behind; watch again with after_id = the last id received")
            batch = [row[WIRE] for row in rows
                     if row["decision_id"] not in sent and not (req.after_id and row["decision_id"] <= req.after_id)
                     and q.matches(row) and (reaches is None or reaches(row))]
            if batch:
                yield b"".join(batch)
            if len(sent) > 10_000:
                sent.clear()   # the catch-up is long past the look-back window by now
    finally:
        await feed.unsubscribe(sub)


def list_budgets(store: QueryStore, bundle: Bundle, scope: str) -> pb.ListBudgetsResponse:
    """The counters of the current window of every budget the active bundle declares."""
    now = datetime.now(timezone.utc)
    limits = {(b.scope, b.window): float(b.limit) for b in bundle.budgets}
    current = {(b.scope, b.window): window_start(b.window, now) for b in bundle.budgets}
    out = pb.ListBudgetsResponse()
    for row in store.budget_counters(scope):
        key = (row["scope"], row["window"])
        if key not in limits or row["window_start"] != current[key]:
            continue
        limit = limits[key]
        b = out.budgets.add(scope=row["scope"], scope_key=row["scope_key"], window=row["window"], limit=limit,
                            spent=row["spent"], reserved=row["reserved"],
                            remaining=max(0.0, limit - row["spent"] - row["reserved"]))
        if row["window_start"]:
            b.window_start.FromDatetime(datetime.fromtimestamp(row["window_start"], timezone.utc))
    return out


def shadow_diff(store: QueryStore, active: Bundle, shadow: Bundle | None, limit: int,
                examples: int) -> pb.ShadowDiffResponse:
    out = pb.ShadowDiffResponse(active=pb.BundleRef(name=active.name, version=active.version,
                                                    revision=active.revision))
    if shadow is not None:
        out.shadow.CopyFrom(pb.BundleRef(name=shadow.name, version=shadow.version, revision=shadow.revision))
    counts: dict[tuple[str, str], int] = {}
    changed: list[str] = []
    for decision_id, outcome, shadow_outcome in store.shadow_outcomes(limit):
        counts[(outcome, shadow_outcome)] = counts.get((outcome, shadow_outcome), 0) + 1
        if outcome != shadow_outcome:
            changed.append(decision_id)
    out.compared = sum(counts.values())
    out.changed = len(changed)
    for (outcome, shadow_outcome), n in sorted(counts.items(), key=lambda kv: -kv[1]):
        out.counts.add(outcome=_value_of(outcome),
                       shadow_outcome=_value_of(shadow_outcome), count=n)
    rows = store.by_ids(changed[:examples])
    out.examples.extend(record_to_proto(r) for r in sorted(rows, key=lambda r: r["decision_id"], reverse=True))
    return out


async def _refuse_bound(context: grpc.aio.ServicerContext, method: str) -> None:
    """Budgets and the shadow diff span every agent: a bound caller may read neither (issue 24 item 2)."""
    caller = current_principal()
    if caller.bound:
        await context.abort(grpc.StatusCode.PERMISSION_DENIED,
                            f"{method}: {caller.name}'s token is bound to agents or teams; {method} covers every agent")


def handlers(store: QueryStore, feed: DecisionFeed, active: Callable[[], Bundle],
             shadow: Callable[[], Bundle | None],
             groups_of: Callable[[str], frozenset[str]]) -> dict[str, grpc.RpcMethodHandler]:
    async def listing(req: pb.ListDecisionsRequest, ctx: grpc.aio.ServicerContext) -> pb.ListDecisionsResponse:
        return await list_decisions(store, req, ctx)

    async def watch(req: pb.WatchDecisionsRequest, ctx: grpc.aio.ServicerContext) -> AsyncIterator[bytes]:
        async for rec in watch_decisions(store, feed, req, ctx):
            yield rec

    async def budgets(req: pb.ListBudgetsRequest, ctx: grpc.aio.ServicerContext) -> pb.ListBudgetsResponse:
        await _refuse_bound(ctx, "ListBudgets")
        if len(req.scope) > _MAX_FILTER:
            await ctx.abort(grpc.StatusCode.INVALID_ARGUMENT, "scope: too long")
        return await asyncio.to_thread(list_budgets, store, active(), req.scope)

    async def diff(req: pb.ShadowDiffRequest, ctx: grpc.aio.ServicerContext) -> pb.ShadowDiffResponse:
        await _refuse_bound(ctx, "ShadowDiff")
        if req.limit < 0 or req.examples < 0:
            await ctx.abort(grpc.StatusCode.INVALID_ARGUMENT,
                            "limit: must be >= 0" if req.limit < 0 else "examples: must be >= 0")
        return await asyncio.to_thread(shadow_diff, store, active(), shadow(), min(req.limit or 1000, 100_000),
                                       min(req.examples or 20, 200))

    async def whoami(req: pb.WhoAmIRequest, ctx: grpc.aio.ServicerContext) -> pb.WhoAmIResponse:
        p = current_principal()
        groups = p.groups | (groups_of(p.name) if p is not ANONYMOUS else frozenset())
        return pb.WhoAmIResponse(principal=p.name, roles=sorted(p.roles), groups=sorted(groups),
                                 authenticated=p is not ANONYMOUS)

    return {
        "WhoAmI": grpc.unary_unary_rpc_method_handler(
            whoami, request_deserializer=pb.WhoAmIRequest.FromString,
            response_serializer=pb.WhoAmIResponse.SerializeToString),
        "ListDecisions": grpc.unary_unary_rpc_method_handler(
            listing, request_deserializer=pb.ListDecisionsRequest.FromString,
            response_serializer=pb.ListDecisionsResponse.SerializeToString),
        "WatchDecisions": grpc.unary_stream_rpc_method_handler(
            watch, request_deserializer=pb.WatchDecisionsRequest.FromString,
            response_serializer=None),   # already serialised (see watch_decisions)
        "ListBudgets": grpc.unary_unary_rpc_method_handler(
            budgets, request_deserializer=pb.ListBudgetsRequest.FromString,
            response_serializer=pb.ListBudgetsResponse.SerializeToString),
        "ShadowDiff": grpc.unary_unary_rpc_method_handler(
            diff, request_deserializer=pb.ShadowDiffRequest.FromString,
            response_serializer=pb.ShadowDiffResponse.SerializeToString),
    }
