"""The `decisions` table: one row per decision (SPEC §5), and the queries over it."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import (
    Boolean,
    Column,
    DateTime,
    Engine,
    Float,
    Index,
    Integer,
    String,
    Table,
    Text,
    insert,
    select,
    update,
)

from decider.store.db import metadata

__all__ = ["decisions", "DecisionStore", "LogFilter"]

decisions = Table(
    "decisions",
    metadata,
    Column("decision_id", String(26), primary_key=True),
    Column("time", DateTime(timezone=True), nullable=False),
    Column("request_id", String(256), nullable=False, default=""),
    Column("agent_id", String(256), nullable=False),
    Column("instance_id", String(256), nullable=False, default=""),
    Column("owner", String(256), nullable=False, default=""),
    Column("team", String(256), nullable=False, default=""),
    Column("workflow", String(256), nullable=False, default=""),
    Column("model", String(256), nullable=False, default=""),
    Column("session_id", String(256), nullable=False, default=""),
    Column("agent_labels", Text, nullable=False, default="{}"),
    Column("agent_capabilities", Text, nullable=False, default="[]"),
    Column("tool_name", String(256), nullable=False),
    Column("tool_server", String(256), nullable=False, default=""),
    Column("call_id", String(256), nullable=False, default=""),
    Column("args", Text, nullable=False, default="{}"),          # JSON, masked
    Column("args_hash", String(64), nullable=False),
    Column("context", Text, nullable=False, default="{}"),       # JSON, masked
    Column("risk_tier", Integer, nullable=False),
    Column("environment", String(256), nullable=False, default=""),
    Column("estimated_cost", Float, nullable=False, default=0.0),
    Column("outcome", String(20), nullable=False),               # ALLOW | DENY | REQUIRE_APPROVAL
    Column("reasons", Text, nullable=False),                     # JSON list of {rule_id, text, policy, effect}
    Column("matched_rules", Text, nullable=False),               # JSON list of rule ids
    Column("deciding_rule", String(256), nullable=False),
    Column("errors", Text, nullable=False, default="[]"),
    Column("kill_switch_id", String(64)),
    Column("bundle_name", String(256), nullable=False),
    Column("bundle_version", String(256), nullable=False),
    Column("bundle_revision", String(64), nullable=False),
    Column("shadow_outcome", String(20)),
    Column("shadow_rules", Text),
    Column("shadow_bundle_revision", String(64)),                # DecisionRecord.shadow_bundle.revision
    Column("eval_us", Integer, nullable=False),
    Column("dry_run", Boolean, nullable=False, default=False),
    Column("approval_state", String(16)),                        # pending | approved | rejected | expired | consumed
    Column("approval_id", String(64)),
    Column("approvers", Text),
    Column("approval_expires_at", DateTime(timezone=True)),
    Column("resolved_by", String(256)),
    Column("resolved_at", DateTime(timezone=True)),
    Column("comment", Text),                                     # Approval.comment
    Column("actual_cost", Float),
    Column("outcome_status", String(64)),
    # The authenticated principal that asked (SPEC §9; Alembic revision 0004).
    Column("caller", String(256), nullable=False, default="", server_default=""),   # the calling principal
    Column("labels", Text, nullable=False, default="[]", server_default="[]"),  # JSON list (SPEC §10)
    # (agent, id): one agent's newest page is an index range, not a sort of all its records (0007).
    Index("ix_decisions_agent", "agent_id", "decision_id"),
    Index("ix_decisions_tool", "tool_name"),
)


@dataclass(frozen=True, slots=True)
class LogFilter:
    agent_id: str | None = None
    team: str | None = None
    tool_name: str | None = None
    outcome: str | None = None
    bundle_revision: str | None = None
    since: datetime | None = None
    until: datetime | None = None
    limit: int | None = None
    newest_first: bool = False   # `decider log`: with a limit, the newest N


class DecisionStore:
    """Reads and (unbatched) writes of decision records. Batched writes go through GroupCommitWriter."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine

    def insert_many(self, rows: Sequence[dict[str, Any]]) -> None:
        from decider.store.writer import row_completer  # the same normalisation as the group-commit writer

        complete = row_completer(decisions)
        with self.engine.begin() as conn:
            conn.execute(insert(decisions), [complete(r) for r in rows])

    def get(self, decision_id: str) -> dict[str, Any] | None:
        with self.engine.connect() as conn:
            row = conn.execute(select(decisions).where(decisions.c.decision_id == decision_id)).mappings().first()
        return dict(row) if row else None

    def session_calls(self, session_id: str, limit: int, since: datetime, by_agent: bool = False) -> list[dict[str, Any]]:
        """The newest `limit` recorded calls of a session since `since`, newest first (not dry
        runs). Served by ix_decisions_session (session_id, decision_id): decision ids sort by
        time, so this reads `limit` index entries however long the ledger is. `by_agent`:
        `session_id` is an agent id (`spec.session.key: agent`), served by ix_decisions_agent."""
        c = decisions.c
        column = c.agent_id if by_agent else c.session_id
        q = (select(c.decision_id, c.time, c.tool_name, c.tool_server, c.args, c.outcome, c.labels,
                    c.outcome_status)
             .where(column == session_id, c.dry_run.is_(False), c.time >= since)
             .order_by(c.decision_id.desc()).limit(limit))
        with self.engine.connect() as conn:
            return [dict(r) for r in conn.execute(q).mappings()]

    def add_labels(self, decision_id: str, labels: Sequence[str]) -> tuple[str, ...]:
        """Add labels to a record (ReportOutcome); returns the record's labels after."""
        import json

        c = decisions.c
        with self.engine.begin() as conn:
            cur = conn.execute(select(c.labels).where(c.decision_id == decision_id)).scalar()
            have = list(json.loads(cur or "[]"))
            merged = tuple(dict.fromkeys([*have, *labels]))
            if len(merged) != len(have):
                conn.execute(update(decisions).where(c.decision_id == decision_id)
                             .values(labels=json.dumps(list(merged), separators=(",", ":"))))
        return merged

    def ids(self) -> set[str]:
        with self.engine.connect() as conn:
            return set(conn.execute(select(decisions.c.decision_id)).scalars())

    def query(self, f: LogFilter) -> Iterator[dict[str, Any]]:
        c = decisions.c
        q = select(decisions).order_by(c.decision_id.desc() if f.newest_first else c.decision_id)
        if f.agent_id:
            q = q.where(c.agent_id == f.agent_id)
        if f.team:
            q = q.where(c.team == f.team)
        if f.tool_name:
            q = q.where(c.tool_name == f.tool_name)
        if f.outcome:
            q = q.where(c.outcome == f.outcome.upper())
        if f.bundle_revision:
            q = q.where(c.bundle_revision.startswith(f.bundle_revision))
        if f.since:
            q = q.where(c.time >= f.since)
        if f.until:
            q = q.where(c.time < f.until)
        if f.limit:
            q = q.limit(f.limit)
        with self.engine.connect() as conn:
            for row in conn.execute(q).mappings():
                yield dict(row)
