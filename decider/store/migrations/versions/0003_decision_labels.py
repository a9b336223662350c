"""decisions.labels: the labels of a decision (rules' `labels:` that held, then ReportOutcome's; SPEC §10).

A JSON list in a Text column, "[]" for the rows already there. `recreate="never"`: adding a column
with a constant default is a native `ALTER TABLE … ADD COLUMN` on SQLite and PostgreSQL, which
does not rewrite a large decision log.

Chains after 0002 (the head on main when this was written); another branch adds its own 0003 for
other tables: on merge, re-chain this one after it (rename to 0004, `down_revision` = that 0003).

Revision ID: 0003_decision_labels
Revises: 0002_api_field_names
Create Date: 2026-12-02
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0003_decision_labels"
down_revision = "0002_api_field_names"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("decisions", recreate="never") as batch:
        batch.add_column(sa.Column("labels", sa.Text(), server_default="[]", nullable=False))


def downgrade() -> None:
    with op.batch_alter_table("decisions", recreate="never") as batch:
        batch.drop_column("labels")
