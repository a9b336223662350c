"""decisions.labels: the labels of a decision (rules' `labels:` that held, then ReportOutcome's; SPEC §10).

A JSON list in a Text column, "[]" for the rows already there. `recreate="never"`: adding a column
with a constant default is a native `ALTER TABLE … ADD COLUMN` on SQLite and PostgreSQL, which
does not rewrite a large decision log.


Revision ID: 0005_decision_labels
Revises: 0004_decision_caller
Create Date: 2026-12-02
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0005_decision_labels"
down_revision = "0004_decision_caller"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("decisions", recreate="never") as batch:
        batch.add_column(sa.Column("labels", sa.Text(), server_default="[]", nullable=False))


def downgrade() -> None:
    with op.batch_alter_table("decisions", recreate="never") as batch:
        batch.drop_column("labels")
