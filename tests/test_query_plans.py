"""The hot-path reads probe the index they were built for, on a real SQLite file: a planner that picks
another index reads every record of an agent per decision, and that grows with the ledger."""

from __future__ import annotations

import sqlite3
from pathlib import Path

from decider.store import connect
from decider.store.approvals import _OPEN_FOR_CALL_WHERE, ApprovalStore


def test_the_identical_call_lookup_probes_the_partial_open_approval_index(tmp_path: Path) -> None:
    engine = connect(f"sqlite:///{tmp_path / 'plans.db'}")
    store = ApprovalStore(engine)
    assert store._open_raw is not None and _OPEN_FOR_CALL_WHERE in store._open_raw.sql
    with sqlite3.connect(tmp_path / "plans.db") as db:
        plan = db.execute("EXPLAIN QUERY PLAN " + store._open_raw.sql, ("h", "a", "t", "s")).fetchall()
    details = " | ".join(row[3] for row in plan)
    assert "USING INDEX ix_decisions_open_approval" in details, details
    assert "ix_decisions_agent" not in details, details
