"""Budget counters and reservations: `budget_usage` (one row per budget scope key and window) and
`budget_reservations` (what each allowed decision holds against which counter).

Atomicity: a reservation is a *conditional* UPDATE — `reserved = reserved + cost WHERE spent +
reserved + cost <= limit` — so the check and the increment are one statement. On PostgreSQL the
UPDATE takes the row lock and re-checks the condition against the latest committed row; on SQLite
the first write takes the database write lock (waiting on busy_timeout), so the whole transaction
is serialised with every other writer, in this process or another one sharing the file. Several
budgets are reserved in one transaction, always in key order (no lock-order deadlock on
PostgreSQL); if any one fails the transaction rolls back and nothing is held.
"""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any

from sqlalchemy import (
    Column,
    DateTime,
    Engine,
    Float,
    Index,
    Integer,
    String,
    Table,
    and_,
    select,
    update,
)
from sqlalchemy import insert as sa_insert
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert

from decider.engine.budgets import EPSILON, BudgetKey
from decider.store.db import metadata
from decider.store.sqlite_raw import LOOP_BUSY_TIMEOUT_MS, connect_raw, is_busy, sqlite_file

__all__ = ["budget_usage", "budget_reservations", "BudgetStore", "BudgetKey", "Exceeded", "AlreadySettled"]

budget_usage = Table(
    "budget_usage",
    metadata,
    Column("budget_key", String(700), primary_key=True),   # scope|window|window_start|scope_key
    Column("scope", String(16), nullable=False),
    Column("scope_key", String(256), nullable=False),
    Column("window", String(8), nullable=False),
    Column("window_start", Integer, nullable=False),        # epoch seconds; 0 for `total`
    Column("spent", Float, nullable=False, default=0.0),
    Column("reserved", Float, nullable=False, default=0.0),
)

budget_reservations = Table(
    "budget_reservations",
    metadata,
    Column("decision_id", String(26), primary_key=True),
    Column("budget_key", String(700), primary_key=True),
    Column("amount", Float, nullable=False),
    Column("state", String(10), nullable=False),             # reserved | settled | released
    Column("created_at", DateTime(timezone=True), nullable=False),
    Column("expires_at", DateTime(timezone=True), nullable=False),
    Column("actual", Float),
    Index("ix_budget_reservations_state", "state", "expires_at"),
)


@dataclass(frozen=True, slots=True)
class Exceeded:
    """Why a reservation failed: the first budget that had no room."""

    budget: BudgetKey
    spent: float
    reserved: float


class AlreadySettled(Exception):
    pass


class BudgetStore:
    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self._insert = pg_insert if engine.dialect.name == "postgresql" else sqlite_insert
        if engine.dialect.name not in ("postgresql", "sqlite"):
            self._insert = None
        # On an SQLite file the usage read (every call a budget applies to) is one primary-key read
        # on the stdlib driver, cheap enough for the event loop (`usage_inline`), as the approvals'.
        self._file = sqlite_file(engine)
        self._local = threading.local()

    def usage_inline(self, keys: Sequence[str]) -> dict[str, tuple[float, float]] | None:
        """`usage` on the stdlib driver, for the event loop; None when not an SQLite file or the
        database is locked beyond LOOP_BUSY_TIMEOUT_MS (then ask `usage` from a thread)."""
        if self._file is None:
            return None
        if not keys:
            return {}
        try:
            conn = getattr(self._local, "conn", None)
            if conn is None:
                conn = self._local.conn = connect_raw(self._file, busy_timeout_ms=LOOP_BUSY_TIMEOUT_MS)
            marks = ", ".join("?" * len(keys))
            rows = conn.execute(f'SELECT "budget_key", "spent", "reserved" FROM "budget_usage" '
                                f'WHERE "budget_key" IN ({marks})', tuple(keys)).fetchall()
            return {k: (s, r) for k, s, r in rows}
        except sqlite3.OperationalError as exc:
            if is_busy(exc):
                return None
            raise

    def usage(self, keys: Sequence[str]) -> dict[str, tuple[float, float]]:
        """(spent, reserved) per budget key; absent keys have used nothing."""
        if not keys:
            return {}
        c = budget_usage.c
        with self.engine.connect() as conn:
            rows = conn.execute(select(c.budget_key, c.spent, c.reserved).where(c.budget_key.in_(list(keys))))
            return {k: (s, r) for k, s, r in rows}

    def _ensure(self, conn: Any, b: BudgetKey) -> None:
        values = {"budget_key": b.key, "scope": b.scope, "scope_key": b.scope_key, "window": b.window,
                  "window_start": b.window_start, "spent": 0.0, "reserved": 0.0}
        if self._insert is not None:
            conn.execute(self._insert(budget_usage).values(**values).on_conflict_do_nothing())
        elif conn.execute(select(budget_usage.c.budget_key).where(budget_usage.c.budget_key == b.key)).first() is None:
            conn.execute(sa_insert(budget_usage).values(**values))

    def reserve(self, decision_id: str, budgets: Sequence[BudgetKey], amount: float, now: datetime,
                expires_at: datetime) -> Exceeded | None:
        """Hold `amount` against every budget, or against none. None when held; else the budget that had no room."""
        c = budget_usage.c
        ordered = sorted(budgets)
        with self.engine.begin() as conn:
            for b in ordered:
                self._ensure(conn, b)
                res = conn.execute(
                    update(budget_usage)
                    .where(c.budget_key == b.key, c.spent + c.reserved + amount <= b.limit + EPSILON)
                    .values(reserved=c.reserved + amount)
                )
                if res.rowcount != 1:
                    spent, reserved = conn.execute(
                        select(c.spent, c.reserved).where(c.budget_key == b.key)).one()
                    conn.rollback()
                    return Exceeded(b, spent, reserved)
            conn.execute(sa_insert(budget_reservations), [
                {"decision_id": decision_id, "budget_key": b.key, "amount": amount, "state": "reserved",
                 "created_at": now, "expires_at": expires_at} for b in ordered
            ])
        return None

    def settle(self, decision_id: str, actual: float | None, budgets: Sequence[BudgetKey] = (),
               now: datetime | None = None) -> int:
        """Replace the estimate with the actual cost. Returns how many budgets were settled.

        A decision that reserved nothing (its estimate was 0) is charged its actual cost on
        `budgets` (those that applied to it), unconditionally: the money is spent, and spend beyond
        the limit shows in the usage and denies the next call that needs budget.
        """
        with self.engine.begin() as conn:
            return self.settle_in(conn, decision_id, actual, budgets, now)

    def settle_in(self, conn: Any, decision_id: str, actual: float | None, budgets: Sequence[BudgetKey] = (),
                  now: datetime | None = None) -> int:
        """`settle` inside the caller's open transaction (store/outcomes.py). `actual` None: the
        estimate stands (each reservation is charged what it held; nothing reserved, nothing charged)."""
        r = budget_reservations.c
        u = budget_usage.c
        rows = conn.execute(select(r.budget_key, r.amount, r.state).where(r.decision_id == decision_id)
                            .order_by(r.budget_key)).all()
        if rows and all(state == "settled" for _, _, state in rows):
            raise AlreadySettled(decision_id)
        if not rows:
            if actual is None:
                return 0
            when = now or utcnow()
            for b in sorted(budgets):
                self._ensure(conn, b)
                conn.execute(update(budget_usage).where(u.budget_key == b.key).values(spent=u.spent + actual))
            if budgets:
                # A settled row per budget: a second report finds them and is refused.
                conn.execute(sa_insert(budget_reservations), [
                    {"decision_id": decision_id, "budget_key": b.key, "amount": 0.0, "state": "settled",
                     "created_at": when, "expires_at": when, "actual": actual} for b in sorted(budgets)])
            return len(budgets)
        n = 0
        for key, amount, state in rows:
            if state == "settled":
                continue
            # Conditional on the state we read, so a concurrent release/settle cannot double-count.
            charged = amount if actual is None else actual
            done = conn.execute(update(budget_reservations)
                                .where(r.decision_id == decision_id, r.budget_key == key, r.state == state)
                                .values(state="settled", actual=charged))
            if done.rowcount != 1:
                raise AlreadySettled(decision_id)
            held = amount if state == "reserved" else 0.0   # a released reservation no longer holds
            conn.execute(update(budget_usage).where(u.budget_key == key)
                         .values(reserved=u.reserved - held, spent=u.spent + charged))
            n += 1
        return n

    def release(self, decision_id: str) -> int:
        """Give back what a decision holds (its record could not be written, or it expired)."""
        return self._release(and_(budget_reservations.c.decision_id == decision_id))

    def release_expired(self, now: datetime) -> int:
        r = budget_reservations.c
        return self._release(and_(r.state == "reserved", r.expires_at < now))

    def _release(self, cond: Any) -> int:
        r = budget_reservations.c
        u = budget_usage.c
        with self.engine.connect() as conn:
            rows = conn.execute(select(r.decision_id, r.budget_key, r.amount)
                                .where(cond, r.state == "reserved").limit(500)).all()
        n = 0
        for decision_id, key, amount in rows:
            with self.engine.begin() as conn:
                done = conn.execute(update(budget_reservations)
                                    .where(r.decision_id == decision_id, r.budget_key == key, r.state == "reserved")
                                    .values(state="released"))
                if done.rowcount == 1:
                    conn.execute(update(budget_usage).where(u.budget_key == key)
                                 .values(reserved=u.reserved - amount))
                    n += 1
        return n

    def all_usage(self) -> list[dict[str, Any]]:
        """Every budget counter (Status shows them, with the limit from the active bundle)."""
        with self.engine.connect() as conn:
            return [dict(x) for x in conn.execute(select(budget_usage).order_by(budget_usage.c.budget_key))
                    .mappings()]

    def reservations(self, decision_id: str) -> list[dict[str, Any]]:
        r = budget_reservations.c
        with self.engine.connect() as conn:
            return [dict(x) for x in conn.execute(select(budget_reservations).where(r.decision_id == decision_id))
                    .mappings()]


def utcnow() -> datetime:
    return datetime.now(timezone.utc)
