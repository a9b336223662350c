"""`ix_decision_journal_decision`: the journal's entries of one record, by decision id (issue 25).

Retention deletes a pruned record's journal entries with it, and `decider log --follow --after
DECISION_ID` / `decider export --after DECISION_ID` look up where a record was committed: both read
the journal by decision id, which scanned the whole journal before this index (at 100,000 records a
prune batch held SQLite's write lock for tens of milliseconds doing so; tools/bench/retention_bench.py).

A plain CREATE INDEX, never a batch (a batch that copied a table would drop the journal's triggers
on SQLite).

Revision ID: 0007_journal_decision_index
Revises: 0006_partial_approval_index
Create Date: 2026-12-07
"""

from __future__ import annotations

from alembic import op

revision = "0007_journal_decision_index"
down_revision = "0006_partial_approval_index"
branch_labels = None
depends_on = None

NAME = "ix_decision_journal_decision"


def upgrade() -> None:
    op.create_index(NAME, "decision_journal", ["decision_id"])


def downgrade() -> None:
    op.drop_index(NAME, table_name="decision_journal")
