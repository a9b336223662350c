"""The approval-notification outbox: one row per approval to announce, claimed by one replica at a
time, marked delivered only after the receiver said 2xx (at least once), retried with back-off.

`notifier_cursors` bounds the scan for new approvals: it is the newest approval id already put in
the outbox, so a restart resumes where the last run stopped instead of announcing all history.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import Column, DateTime, Engine, Index, Integer, String, Table, Text, insert, select, update

from decider.store.db import metadata
from decider.store.decisions import decisions

__all__ = ["approval_notifications", "notifier_cursors", "NotificationStore"]

approval_notifications = Table(
    "approval_notifications",
    metadata,
    Column("decision_id", String(26), primary_key=True),
    Column("state", String(10), nullable=False),                 # pending | delivered
    Column("attempts", Integer, nullable=False, default=0),
    Column("next_attempt_at", DateTime(timezone=True), nullable=False),
    Column("claimed_by", String(128)),
    Column("claimed_until", DateTime(timezone=True)),
    Column("last_error", Text),
    Column("created_at", DateTime(timezone=True), nullable=False),
    Column("delivered_at", DateTime(timezone=True)),
    Index("ix_approval_notifications_due", "state", "next_attempt_at"),
)

notifier_cursors = Table(
    "notifier_cursors",
    metadata,
    Column("name", String(64), primary_key=True),
    Column("after_id", String(26), nullable=False),
    Column("updated_at", DateTime(timezone=True), nullable=False),
)

n = approval_notifications.c
d = decisions.c


class NotificationStore:
    def __init__(self, engine: Engine) -> None:
        self.engine = engine

    def cursor(self, name: str) -> str | None:
        with self.engine.connect() as conn:
            return conn.execute(select(notifier_cursors.c.after_id)
                                .where(notifier_cursors.c.name == name)).scalar_one_or_none()

    def set_cursor(self, name: str, after_id: str, now: datetime) -> None:
        with self.engine.begin() as conn:
            done = conn.execute(update(notifier_cursors).where(notifier_cursors.c.name == name,
                                                               notifier_cursors.c.after_id < after_id)
                                .values(after_id=after_id, updated_at=now))
            if done.rowcount == 0 and self.cursor_in(conn, name) is None:
                conn.execute(insert(notifier_cursors).values(name=name, after_id=after_id, updated_at=now))

    @staticmethod
    def cursor_in(conn: Any, name: str) -> str | None:
        return conn.execute(select(notifier_cursors.c.after_id)
                            .where(notifier_cursors.c.name == name)).scalar_one_or_none()

    def new_approvals(self, after_id: str, limit: int = 500) -> list[str]:
        """Approval decisions (the ones that opened an approval) after `after_id` not yet in the outbox."""
        q = (select(d.decision_id)
             .where(d.decision_id > after_id, d.approval_state.is_not(None), d.approval_id == d.decision_id,
                    d.decision_id.not_in(select(n.decision_id).where(n.decision_id > after_id)))
             .order_by(d.decision_id).limit(limit))
        with self.engine.connect() as conn:
            return list(conn.execute(q).scalars())

    def enqueue(self, ids: list[str], now: datetime) -> int:
        added = 0
        for decision_id in ids:
            try:
                with self.engine.begin() as conn:
                    conn.execute(insert(approval_notifications).values(
                        decision_id=decision_id, state="pending", attempts=0, next_attempt_at=now, created_at=now))
                added += 1
            except Exception:  # noqa: BLE001 - another replica queued it first (primary key)
                continue
        return added

    def due(self, now: datetime, limit: int = 20) -> list[dict[str, Any]]:
        """Pending deliveries whose time has come and that no replica is attempting now (attempts
        in flight must not crowd the ones waiting out of `limit`)."""
        q = (select(approval_notifications)
             .where(n.state == "pending", n.next_attempt_at <= now,
                    (n.claimed_until.is_(None)) | (n.claimed_until < now))
             .order_by(n.decision_id).limit(limit))
        with self.engine.connect() as conn:
            return [dict(r) for r in conn.execute(q).mappings()]

    def claim(self, decision_id: str, me: str, now: datetime, until: datetime) -> bool:
        """Take one delivery for this replica; False when another replica holds it or it is done."""
        with self.engine.begin() as conn:
            res = conn.execute(update(approval_notifications)
                               .where(n.decision_id == decision_id, n.state == "pending",
                                      (n.claimed_until.is_(None)) | (n.claimed_until < now))
                               .values(claimed_by=me, claimed_until=until))
            return res.rowcount == 1

    def delivered(self, decision_id: str, now: datetime) -> None:
        with self.engine.begin() as conn:
            conn.execute(update(approval_notifications).where(n.decision_id == decision_id)
                         .values(state="delivered", delivered_at=now, attempts=n.attempts + 1,
                                 claimed_until=None, last_error=None))

    def failed(self, decision_id: str, error: str, next_attempt_at: datetime) -> None:
        with self.engine.begin() as conn:
            conn.execute(update(approval_notifications).where(n.decision_id == decision_id)
                         .values(attempts=n.attempts + 1, next_attempt_at=next_attempt_at,
                                 claimed_until=None, last_error=error[:2000]))

    def get(self, decision_id: str) -> dict[str, Any] | None:
        with self.engine.connect() as conn:
            row = conn.execute(select(approval_notifications)
                               .where(n.decision_id == decision_id)).mappings().first()
        return dict(row) if row else None
