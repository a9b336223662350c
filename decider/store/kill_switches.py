"""The `kill_switches` table: set, clear and list switches; every replica reads the active ones."""

from __future__ import annotations

from datetime import datetime, timezone
from typing import Any

from sqlalchemy import Column, DateTime, Engine, Index, String, Table, Text, insert, select, update

from decider.store.db import metadata

__all__ = ["kill_switches", "KillSwitchStore"]

kill_switches = Table(
    "kill_switches",
    metadata,
    Column("id", String(26), primary_key=True),
    Column("scope", String(16), nullable=False),
    Column("value", String(256), nullable=False, default=""),
    Column("reason", Text, nullable=False, default=""),
    Column("created_by", String(256), nullable=False, default=""),
    Column("created_at", DateTime(timezone=True), nullable=False),
    Column("cleared_at", DateTime(timezone=True)),
    Column("cleared_by", String(256)),
    Index("ix_kill_switches_active", "cleared_at"),
)


class KillSwitchStore:
    def __init__(self, engine: Engine) -> None:
        self.engine = engine

    def set(self, row: dict[str, Any]) -> dict[str, Any]:
        with self.engine.begin() as conn:
            conn.execute(insert(kill_switches), [row])
        return row

    def active(self) -> list[dict[str, Any]]:
        q = select(kill_switches).where(kill_switches.c.cleared_at.is_(None)).order_by(kill_switches.c.id)
        with self.engine.connect() as conn:
            return [dict(r) for r in conn.execute(q).mappings()]

    def list(self, include_cleared: bool) -> list[dict[str, Any]]:
        q = select(kill_switches).order_by(kill_switches.c.id)
        if not include_cleared:
            q = q.where(kill_switches.c.cleared_at.is_(None))
        with self.engine.connect() as conn:
            return [dict(r) for r in conn.execute(q).mappings()]

    def clear(self, *, switch_id: str = "", scope: str = "", value: str = "", by: str = "") -> list[dict[str, Any]]:
        """Clear the active switch with this id, or every active one with this scope + value."""
        c = kill_switches.c
        where = [c.cleared_at.is_(None)]
        if switch_id:
            where.append(c.id == switch_id)
        else:
            where += [c.scope == scope, c.value == value]
        now = datetime.now(timezone.utc)
        with self.engine.begin() as conn:
            ids = list(conn.execute(select(c.id).where(*where)).scalars())
            if not ids:
                return []
            conn.execute(update(kill_switches).where(c.id.in_(ids), c.cleared_at.is_(None))
                         .values(cleared_at=now, cleared_by=by))
            return [dict(r) for r in conn.execute(select(kill_switches).where(c.id.in_(ids))).mappings()]
