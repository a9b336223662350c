"""`ix_decisions_approval_state` holds only the decisions that opened an approval (issue 17).

Every decision used to get an entry in this index, although only the ~one in five that opened an
approval has an `approval_state`: the others were NULL entries no query reads (every query on the
index names a state, or `approval_state IS NOT NULL`, and both imply the index's condition on
SQLite and PostgreSQL alike). Made partial, the index costs nothing to a decision without an
approval: one B-tree insert fewer on the hot path (~5 µs of the writer's CPU per decision,
tools/bench/pipeline_bench.py and docs/performance.md).

A plain DROP/CREATE INDEX, never a batch: a batch that copied `decisions` would drop the journal's
triggers on SQLite.

Revision ID: 0006_partial_approval_index
Revises: 0005_decision_labels
Create Date: 2026-12-03
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0006_partial_approval_index"
down_revision = "0005_decision_labels"
branch_labels = None
depends_on = None

NAME = "ix_decisions_approval_state"
COLUMNS = ["approval_state", "approval_expires_at"]
HAS_APPROVAL = sa.text("approval_state IS NOT NULL")


def upgrade() -> None:
    op.drop_index(NAME, table_name="decisions")
    op.create_index(NAME, "decisions", COLUMNS, sqlite_where=HAS_APPROVAL, postgresql_where=HAS_APPROVAL)


def downgrade() -> None:
    op.drop_index(NAME, table_name="decisions")
    op.create_index(NAME, "decisions", COLUMNS)
