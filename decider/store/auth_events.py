"""The `auth_events` table: every refused call (UNAUTHENTICATED, PERMISSION_DENIED), for the auditor."""

from __future__ import annotations

from typing import Any

from sqlalchemy import Column, DateTime, Engine, Integer, String, Table, Text, insert, select

from decider.store.db import metadata

__all__ = ["auth_events", "AuthEventStore"]

auth_events = Table(
    "auth_events",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("time", DateTime(timezone=True), nullable=False),
    Column("method", String(256), nullable=False),
    Column("code", String(32), nullable=False),          # UNAUTHENTICATED | PERMISSION_DENIED
    Column("principal", String(256), nullable=False, default=""),
    Column("peer", String(256), nullable=False, default=""),
    Column("detail", Text, nullable=False, default=""),
)


class AuthEventStore:
    def __init__(self, engine: Engine) -> None:
        self.engine = engine

    def record(self, row: dict[str, Any]) -> None:
        with self.engine.begin() as conn:
            conn.execute(insert(auth_events), [row])

    def all(self) -> list[dict[str, Any]]:
        with self.engine.connect() as conn:
            return [dict(r) for r in conn.execute(select(auth_events).order_by(auth_events.c.id)).mappings()]
