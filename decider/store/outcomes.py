"""ReportOutcome's one transaction: read the decision, check it may get an outcome, settle its
budgets, store the outcome, and hand back the updated row.

One read and one write transaction per report (it used to be two reads and two write transactions
over four thread hops). On an SQLite file `OutcomeOp` runs inside the group-commit writer's
transaction (store/writer.py `GroupCommitWriter.run`), batched with decision records and committed
before the reply, on the stdlib driver; elsewhere (PostgreSQL) `settle_outcome` runs the same steps
in one SQLAlchemy transaction. The checks run inside the write transaction, so two reports of one
decision racing each other cannot both pass them.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable, Sequence
from typing import Any

from sqlalchemy import Engine, select, update

from decider.engine.budgets import BudgetKey
from decider.store.budgets import AlreadySettled, BudgetStore, budget_reservations
from decider.store.decisions import decisions
from decider.store.sqlite_raw import RawInsert, RawSelect
from decider.times import utc

__all__ = ["OutcomeRefused", "OutcomeOp", "settle_outcome", "check_reportable", "charged_cost"]

# The budgets that applied to a recorded decision (computed from the row and the active bundle).
BudgetsOf = Callable[[dict[str, Any]], Sequence[BudgetKey]]


class OutcomeRefused(Exception):
    """The report is refused and nothing changed. `kind`: not_found | precondition."""

    def __init__(self, kind: str, message: str) -> None:
        super().__init__(message)
        self.kind = kind
        self.message = message


def check_reportable(decision_id: str, row: dict[str, Any] | None) -> dict[str, Any]:
    """The row, if this decision may get an outcome; else OutcomeRefused naming why."""
    if row is None:
        raise OutcomeRefused("not_found", f"decision_id: no decision {decision_id!r}")
    if row["outcome"] == "DENY":
        raise OutcomeRefused("precondition",
                             f"decision {decision_id} was DENY: the call did not run, so it has no outcome")
    if row.get("outcome_status"):
        raise OutcomeRefused("precondition",
                             f"decision {decision_id}: outcome already reported ({row['outcome_status']})")
    return row


def _already(decision_id: str) -> OutcomeRefused:
    return OutcomeRefused("precondition", f"decision {decision_id}: outcome already reported")


class OutcomeOp:
    """The report as statements on a raw sqlite3 connection inside an open transaction.

    Built once per server (the SQL and the column converters); `bind` gives the callable the
    writer runs for one report. Raises OutcomeRefused (the writer rolls back to its savepoint).
    """

    def __init__(self, engine: Engine) -> None:
        self._get = RawSelect(engine, decisions, '"decision_id" = ?')
        self._settled_row = RawInsert(engine, budget_reservations)

    def bind(self, decision_id: str, actual: float | None, status: str,
             budgets_of: BudgetsOf) -> Callable[[sqlite3.Connection], dict[str, Any]]:
        def op(conn: sqlite3.Connection) -> dict[str, Any]:
            return self.run(conn, decision_id, actual, status, budgets_of)
        return op

    def run(self, conn: sqlite3.Connection, decision_id: str, actual: float | None, status: str,
            budgets_of: BudgetsOf) -> dict[str, Any]:
        rows = self._get.run(conn, (decision_id,))
        row = check_reportable(decision_id, rows[0] if rows else None)
        held = conn.execute('SELECT "budget_key", "amount", "state" FROM "budget_reservations" '
                            'WHERE "decision_id" = ? ORDER BY "budget_key"', (decision_id,)).fetchall()
        if held and all(state == "settled" for _, _, state in held):
            raise _already(decision_id)
        if not held and actual is not None:
            # Nothing reserved (estimate 0): charge the actual cost on the budgets that applied,
            # unconditionally, with a settled row per budget so a second report is refused.
            when = utc(row["time"])
            for b in sorted(budgets_of(row)):
                conn.execute('INSERT INTO "budget_usage" ("budget_key", "scope", "scope_key", "window", '
                             '"window_start", "spent", "reserved") VALUES (?, ?, ?, ?, ?, 0.0, 0.0) '
                             'ON CONFLICT DO NOTHING', (b.key, b.scope, b.scope_key, b.window, b.window_start))
                conn.execute('UPDATE "budget_usage" SET "spent" = "spent" + ? WHERE "budget_key" = ?',
                             (actual, b.key))
                conn.execute(self._settled_row.sql, self._settled_row.params(
                    {"decision_id": decision_id, "budget_key": b.key, "amount": 0.0, "state": "settled",
                     "created_at": when, "expires_at": when, "actual": actual}))
        for key, amount, state in held:
            if state == "settled":
                continue
            charged = amount if actual is None else actual   # no cost reported: the estimate stands
            done = conn.execute('UPDATE "budget_reservations" SET "state" = \'settled\', "actual" = ? '
                                'WHERE "decision_id" = ? AND "budget_key" = ? AND "state" = ?',
                                (charged, decision_id, key, state))
            if done.rowcount != 1:
                raise _already(decision_id)
            was_held = amount if state == "reserved" else 0.0   # a released reservation no longer holds
            conn.execute('UPDATE "budget_usage" SET "reserved" = "reserved" - ?, "spent" = "spent" + ? '
                         'WHERE "budget_key" = ?', (was_held, charged, key))
        cost = charged_cost(row, actual)
        conn.execute('UPDATE "decisions" SET "actual_cost" = ?, "outcome_status" = ? WHERE "decision_id" = ?',
                     (cost, status, decision_id))
        row["actual_cost"] = cost
        row["outcome_status"] = status
        return row


def charged_cost(row: dict[str, Any], actual: float | None) -> float:
    """The cost the record keeps: the one reported, else the estimate (SPEC §11: absent, the estimate stands)."""
    return float(row.get("estimated_cost") or 0.0) if actual is None else actual


def settle_outcome(engine: Engine, decision_id: str, actual: float | None, status: str,
                   budgets_of: BudgetsOf) -> dict[str, Any]:
    """The report in one SQLAlchemy transaction (PostgreSQL, or an in-memory SQLite database).

    `SELECT … FOR UPDATE` on PostgreSQL holds the decision's row until commit, so a concurrent
    report of the same decision waits and then sees the outcome already stored.
    """
    c = decisions.c
    store = BudgetStore(engine)
    with engine.begin() as conn:
        q = select(decisions).where(c.decision_id == decision_id)
        if engine.dialect.name == "postgresql":
            q = q.with_for_update()
        found = conn.execute(q).mappings().first()
        row = check_reportable(decision_id, dict(found) if found else None)
        try:
            store.settle_in(conn, decision_id, actual, budgets_of(row), utc(row["time"]))
        except AlreadySettled:
            raise _already(decision_id) from None
        cost = charged_cost(row, actual)
        conn.execute(update(decisions).where(c.decision_id == decision_id)
                     .values(actual_cost=cost, outcome_status=status))
    row["actual_cost"] = cost
    row["outcome_status"] = status
    return row
