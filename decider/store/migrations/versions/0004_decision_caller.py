"""decisions.caller: the principal that asked for the decision (SPEC §9, bound callers).

"" for the rows already there (they were made before the caller was recorded). `recreate="never"`:
adding a column with a constant default is a native `ALTER TABLE … ADD COLUMN` on SQLite and
PostgreSQL, which neither rewrites a large decision log nor drops the journal triggers (0003).

Revision ID: 0004_decision_caller
Revises: 0003_console_ops_core_tables
Create Date: 2026-12-02
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0004_decision_caller"
down_revision = "0003_console_ops_core_tables"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("decisions", recreate="never") as batch:
        batch.add_column(sa.Column("caller", sa.String(256), server_default="", nullable=False))


def downgrade() -> None:
    with op.batch_alter_table("decisions", recreate="never") as batch:
        batch.drop_column("caller")
