"""approval_askers: every principal that joined a pending approval with an identical call (issue 24 item 3).

An identical call while one is pending gets that pending approval and is not recorded as a decision;
its caller is kept in this table so that no principal that asked for a call can resolve it. A new
table: nothing existing is rewritten.

Revision ID: 0008_approval_askers
Revises: 0007_ledger_indexes
Create Date: 2026-12-07
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0008_approval_askers"
down_revision = "0007_ledger_indexes"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "approval_askers",
        sa.Column("approval_id", sa.String(26), primary_key=True),
        sa.Column("principal", sa.String(256), primary_key=True),
        sa.Column("asked_at", sa.DateTime(timezone=True), nullable=False),
    )


def downgrade() -> None:
    op.drop_table("approval_askers")
