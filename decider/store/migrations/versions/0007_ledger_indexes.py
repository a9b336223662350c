"""Indexes for a ledger at size (issue 25): the journal by decision id, one agent's records by id.

- `ix_decision_journal_decision` (new): retention deletes a pruned record's journal entries with it,
  and `decider log --follow --after DECISION_ID` / `decider export --after DECISION_ID` look up where
  a record was committed. Both scanned the whole journal before (at 100,000 records a prune's delete
  batch held SQLite's write lock for tens of milliseconds doing so).
- `ix_decisions_agent` becomes (agent_id, decision_id), like `ix_decisions_session`: the console's
  newest page of one agent is an index range read backwards, not a sort of every record of that
  agent (p50 38.6 ms at 60,000 records on SQLite before; tools/bench/retention_bench.py).

Plain DROP/CREATE INDEX, never a batch (a batch that copied a table would drop the journal's
triggers on SQLite).

Revision ID: 0007_ledger_indexes
Revises: 0006_partial_approval_index
Create Date: 2026-12-07
"""

from __future__ import annotations

from alembic import op

revision = "0007_ledger_indexes"
down_revision = "0006_partial_approval_index"
branch_labels = None
depends_on = None

JOURNAL = "ix_decision_journal_decision"
AGENT = "ix_decisions_agent"


def upgrade() -> None:
    op.create_index(JOURNAL, "decision_journal", ["decision_id"])
    op.drop_index(AGENT, table_name="decisions")
    op.create_index(AGENT, "decisions", ["agent_id", "decision_id"])


def downgrade() -> None:
    op.drop_index(AGENT, table_name="decisions")
    op.create_index(AGENT, "decisions", ["agent_id"])
    op.drop_index(JOURNAL, table_name="decision_journal")
