"""Approval queries over the `decisions` table (an approval *is* a decision awaiting a human).

State machine of `approval_state`: pending → approved → consumed, or pending → rejected | expired.
Every transition is a conditional UPDATE on the state it leaves, so two replicas (or an approver
and the expiry sweep) racing on one approval cannot both win.
"""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Callable, Sequence
from datetime import datetime
from typing import Any

from sqlalchemy import Column, DateTime, Engine, Index, String, Table, insert, select, text, update
from sqlalchemy.exc import IntegrityError

from decider.store.db import metadata
from decider.store.decisions import decisions
from decider.store.sqlite_raw import LOOP_BUSY_TIMEOUT_MS, RawSelect, connect_raw, is_busy, sqlite_file
from decider.values.agent_ids import match_key

__all__ = ["ApprovalStore", "SCOPE_COLUMNS", "approval_askers"]

c = decisions.c

# Finds the approvals that bind an identical call (agent, tool, server, binding hash — the hash
# covers the agent's whole identity, the environment and the arguments). Partial: only pending,
# approved and rejected rows are in it (a rejection binds until its ttl), so the look-up stays one
# index probe however often the same call was decided before.
OPEN = text("approval_state IN ('pending', 'approved', 'rejected')")
Index("ix_decisions_open_approval", c.agent_id, c.tool_name, c.tool_server, c.args_hash,
      sqlite_where=OPEN, postgresql_where=OPEN)
# At most one *pending* approval per call, even with several replicas deciding at once. On
# PostgreSQL, where `decisions` is partitioned and a unique index would hold per partition only,
# this index is not made: the primary key of the same name on `decision_pending_calls`, kept by
# triggers, is the guard (store/partitions.py).
Index("ux_decisions_pending_call", c.agent_id, c.tool_name, c.tool_server, c.args_hash, unique=True,
      sqlite_where=text("approval_state = 'pending'"), postgresql_where=text("approval_state = 'pending'"))
# Expiry scans and the approvals queue. Partial: a decision that opened no approval (most of them)
# costs this index nothing; every query on it names a state, which implies the condition.
HAS_APPROVAL = text("approval_state IS NOT NULL")
Index("ix_decisions_approval_state", c.approval_state, c.approval_expires_at,
      sqlite_where=HAS_APPROVAL, postgresql_where=HAS_APPROVAL)

# Every principal that asked for a pending call besides the one whose call opened it: an identical
# call joins the pending approval instead of opening another (and is not recorded as a decision),
# so its caller is kept here; none of them may resolve that approval (SPEC §9, issue 24 item 3).
approval_askers = Table(
    "approval_askers",
    metadata,
    Column("approval_id", String(26), primary_key=True),
    Column("principal", String(256), primary_key=True),
    Column("asked_at", DateTime(timezone=True), nullable=False),
)

# Kill-switch scope → the decisions column holding the request's value for it.
SCOPE_COLUMNS = {
    "instance": c.instance_id, "session": c.session_id, "workflow": c.workflow, "agent": c.agent_id,
    "owner": c.owner, "team": c.team, "tool": c.tool_name, "model": c.model, "server": c.tool_server,
}


# No ORDER BY in the query, the few rows are sorted here (`_oldest_first`): asked to order by
# decision_id, SQLite's planner walks `ix_decisions_agent` (agent_id, decision_id) over every
# decision of the agent instead of probing this partial index, a cost that grows with the table
# (1.1 ms per look-up at 10k rows against 11 µs; issue 27, docs/performance.md).
_OPEN_FOR_CALL_WHERE = ("args_hash = ? AND agent_id = ? AND tool_name = ? AND tool_server = ? "
                        f"AND {OPEN.text} AND approval_id = decision_id")


def _oldest_first(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    if len(rows) > 1:
        rows.sort(key=lambda r: r["decision_id"])
    return rows


class ApprovalStore:
    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        # On an SQLite file the identical-call look-up (every require_approval decision) is one
        # indexed read on the stdlib driver: cheap enough to run on the event loop (`inline`),
        # with no SQLAlchemy and no thread hop. One connection per thread that asks.
        self._file = sqlite_file(engine)
        self.inline = self._file is not None
        self._open_raw = RawSelect(engine, decisions, _OPEN_FOR_CALL_WHERE) if self._file else None
        self._local = threading.local()
        # Told of every transition that happened: on_transition(decision_id, from, to, resolved_by)
        # (server/metrics.py counts resolutions with it).
        self.on_transition: Callable[[str, str, str, str], None] | None = None

    def open_for_call_inline(self, agent_id: str, tool_name: str, tool_server: str,
                             args_hash: str) -> list[dict[str, Any]] | None:
        """`open_for_call` on the stdlib driver, for the event loop; None when the database is
        locked beyond LOOP_BUSY_TIMEOUT_MS (then ask `open_for_call` from a thread)."""
        if self._open_raw is None or self._file is None:
            return None
        try:
            conn = getattr(self._local, "conn", None)
            if conn is None:
                conn = self._local.conn = connect_raw(self._file, busy_timeout_ms=LOOP_BUSY_TIMEOUT_MS)
            return _oldest_first(self._open_raw.run(conn, (args_hash, agent_id, tool_name, tool_server)))
        except sqlite3.OperationalError as exc:
            if is_busy(exc):
                return None
            raise

    def open_for_call(self, agent_id: str, tool_name: str, tool_server: str, args_hash: str) -> list[dict[str, Any]]:
        """Pending, approved (not yet consumed) and rejected approvals for exactly this call, oldest first."""
        q = (select(decisions)
             .where(c.args_hash == args_hash, c.agent_id == agent_id, c.tool_name == tool_name,
                    c.tool_server == tool_server, OPEN,  # the partial index's own term, literally
                    c.approval_id == c.decision_id))   # unordered: see _OPEN_FOR_CALL_WHERE
        with self.engine.connect() as conn:
            return _oldest_first([dict(r) for r in conn.execute(q).mappings()])

    def transition(self, decision_id: str, from_state: str, to_state: str, **values: Any) -> bool:
        """Move one approval from `from_state` to `to_state`; False when it was no longer in `from_state`."""
        with self.engine.begin() as conn:
            res = conn.execute(update(decisions)
                               .where(c.decision_id == decision_id, c.approval_state == from_state)
                               .values(approval_state=to_state, **values))
            moved = res.rowcount == 1
        if moved and self.on_transition is not None:
            self.on_transition(decision_id, from_state, to_state, str(values.get("resolved_by") or ""))
        return moved

    def add_asker(self, approval_id: str, principal: str, at: datetime) -> None:
        """Record that `principal` asked for the pending call `approval_id` (once; again is a no-op)."""
        try:
            with self.engine.begin() as conn:
                conn.execute(insert(approval_askers).values(approval_id=approval_id, principal=principal, asked_at=at))
        except IntegrityError:
            pass   # already recorded: by this replica before, or by another one at the same time

    def askers(self, approval_id: str) -> set[str]:
        """The principals that joined `approval_id` (its own caller is the decision's `caller`)."""
        q = select(approval_askers.c.principal).where(approval_askers.c.approval_id == approval_id)
        with self.engine.connect() as conn:
            return set(conn.execute(q).scalars())

    def due_for_expiry(self, now: datetime, limit: int = 500) -> list[str]:
        q = (select(c.decision_id)
             .where(c.approval_state == "pending", c.approval_expires_at < now).limit(limit))
        with self.engine.connect() as conn:
            return list(conn.execute(q).scalars())

    def pending_in_scope(self, scope: str, value: str) -> list[str]:
        """The pending approvals a kill switch covers, matched as the switch matches a call
        (`KillSwitch.hits`: `match_key` form), so `KILLME`'s approval is rejected with `killme`'s."""
        if scope == "platform":
            q = select(c.decision_id).where(c.approval_state == "pending")
            with self.engine.connect() as conn:
                return list(conn.execute(q).scalars())
        q = select(c.decision_id, SCOPE_COLUMNS[scope]).where(c.approval_state == "pending")
        key = match_key(value)
        with self.engine.connect() as conn:
            return [d for d, v in conn.execute(q) if v and (v == value or match_key(v) == key)]

    def list(self, state: str, limit: int) -> list[dict[str, Any]]:
        q = (select(decisions).where(c.approval_state == state, c.approval_id == c.decision_id)
             .order_by(c.decision_id).limit(limit))
        with self.engine.connect() as conn:
            return [dict(r) for r in conn.execute(q).mappings()]

    def versions(self, decision_ids: Sequence[str]) -> dict[str, tuple[Any, ...]]:
        """A fingerprint of each record's mutable columns: a change means watchers get a new record."""
        q = select(c.decision_id, c.approval_state, c.resolved_at, c.outcome_status, c.actual_cost).where(
            c.decision_id.in_(list(decision_ids)))
        with self.engine.connect() as conn:
            return {r[0]: tuple(r[1:]) for r in conn.execute(q)}
