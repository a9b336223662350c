"""Baseline: the schema every release before migrations made with `metadata.create_all`.

A database with these tables and no `alembic_version` table is recognised as this revision and
stamped (`decider.store.migrate`). The definitions are frozen here on purpose: later revisions
change the schema, never this file.

Revision ID: 0001_baseline
Revises:
Create Date: 2026-12-02
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0001_baseline"
down_revision = None
branch_labels = None
depends_on = None

TZ = sa.DateTime(timezone=True)
OPEN = sa.text("approval_state IN ('pending', 'approved')")
PENDING = sa.text("approval_state = 'pending'")


def upgrade() -> None:
    op.create_table(
        "decisions",
        sa.Column("decision_id", sa.String(26), primary_key=True),
        sa.Column("time", TZ, nullable=False),
        sa.Column("request_id", sa.String(256), nullable=False),
        sa.Column("agent_id", sa.String(256), nullable=False),
        sa.Column("instance_id", sa.String(256), nullable=False),
        sa.Column("owner", sa.String(256), nullable=False),
        sa.Column("team", sa.String(256), nullable=False),
        sa.Column("workflow", sa.String(256), nullable=False),
        sa.Column("model", sa.String(256), nullable=False),
        sa.Column("session_id", sa.String(256), nullable=False),
        sa.Column("agent_labels", sa.Text, nullable=False),
        sa.Column("agent_capabilities", sa.Text, nullable=False),
        sa.Column("tool_name", sa.String(256), nullable=False),
        sa.Column("tool_server", sa.String(256), nullable=False),
        sa.Column("call_id", sa.String(256), nullable=False),
        sa.Column("args", sa.Text, nullable=False),
        sa.Column("args_hash", sa.String(64), nullable=False),
        sa.Column("context", sa.Text, nullable=False),
        sa.Column("risk_tier", sa.Integer, nullable=False),
        sa.Column("environment", sa.String(256), nullable=False),
        sa.Column("estimated_cost", sa.Float, nullable=False),
        sa.Column("outcome", sa.String(20), nullable=False),
        sa.Column("reasons", sa.Text, nullable=False),
        sa.Column("matched_rules", sa.Text, nullable=False),
        sa.Column("deciding_rule", sa.String(256), nullable=False),
        sa.Column("errors", sa.Text, nullable=False),
        sa.Column("kill_switch_id", sa.String(64)),
        sa.Column("bundle_name", sa.String(256), nullable=False),
        sa.Column("bundle_version", sa.String(256), nullable=False),
        sa.Column("bundle_revision", sa.String(64), nullable=False),
        sa.Column("shadow_outcome", sa.String(20)),
        sa.Column("shadow_rules", sa.Text),
        sa.Column("shadow_revision", sa.String(64)),
        sa.Column("eval_us", sa.Integer, nullable=False),
        sa.Column("dry_run", sa.Boolean, nullable=False),
        sa.Column("approval_state", sa.String(16)),
        sa.Column("approval_id", sa.String(64)),
        sa.Column("approvers", sa.Text),
        sa.Column("approval_expires_at", TZ),
        sa.Column("resolved_by", sa.String(256)),
        sa.Column("resolved_at", TZ),
        sa.Column("resolution_comment", sa.Text),
        sa.Column("actual_cost", sa.Float),
        sa.Column("outcome_status", sa.String(64)),
    )
    op.create_index("ix_decisions_agent", "decisions", ["agent_id"])
    op.create_index("ix_decisions_tool", "decisions", ["tool_name"])
    call = ["agent_id", "tool_name", "tool_server", "args_hash"]
    op.create_index("ix_decisions_open_approval", "decisions", call, sqlite_where=OPEN, postgresql_where=OPEN)
    op.create_index("ux_decisions_pending_call", "decisions", call, unique=True,
                    sqlite_where=PENDING, postgresql_where=PENDING)
    op.create_index("ix_decisions_approval_state", "decisions", ["approval_state", "approval_expires_at"])

    op.create_table(
        "auth_events",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("time", TZ, nullable=False),
        sa.Column("method", sa.String(256), nullable=False),
        sa.Column("code", sa.String(32), nullable=False),
        sa.Column("principal", sa.String(256), nullable=False),
        sa.Column("peer", sa.String(256), nullable=False),
        sa.Column("detail", sa.Text, nullable=False),
    )

    op.create_table(
        "budget_usage",
        sa.Column("budget_key", sa.String(700), primary_key=True),
        sa.Column("scope", sa.String(16), nullable=False),
        sa.Column("scope_key", sa.String(256), nullable=False),
        sa.Column("window", sa.String(8), nullable=False),
        sa.Column("window_start", sa.Integer, nullable=False),
        sa.Column("spent", sa.Float, nullable=False),
        sa.Column("reserved", sa.Float, nullable=False),
    )
    op.create_table(
        "budget_reservations",
        sa.Column("decision_id", sa.String(26), primary_key=True),
        sa.Column("budget_key", sa.String(700), primary_key=True),
        sa.Column("amount", sa.Float, nullable=False),
        sa.Column("state", sa.String(10), nullable=False),
        sa.Column("created_at", TZ, nullable=False),
        sa.Column("expires_at", TZ, nullable=False),
        sa.Column("actual", sa.Float),
    )
    op.create_index("ix_budget_reservations_state", "budget_reservations", ["state", "expires_at"])

    op.create_table(
        "bundles",
        sa.Column("revision", sa.String(64), primary_key=True),
        sa.Column("name", sa.String(256), nullable=False),
        sa.Column("version", sa.String(256), nullable=False),
        sa.Column("source", sa.Text, nullable=False),
        sa.Column("signed", sa.Boolean, nullable=False),
        sa.Column("archive", sa.LargeBinary, nullable=False),
        sa.Column("stored_at", TZ, nullable=False),
    )
    op.create_table(
        "bundle_activations",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("role", sa.String(8), nullable=False),
        sa.Column("revision", sa.String(64)),
        sa.Column("action", sa.String(16), nullable=False),
        sa.Column("instance", sa.String(256), nullable=False),
        sa.Column("at", TZ, nullable=False),
    )
    op.create_index("ix_bundle_activations_role_id", "bundle_activations", ["role", "id"])

    op.create_table(
        "kill_switches",
        sa.Column("id", sa.String(26), primary_key=True),
        sa.Column("scope", sa.String(16), nullable=False),
        sa.Column("value", sa.String(256), nullable=False),
        sa.Column("reason", sa.Text, nullable=False),
        sa.Column("created_by", sa.String(256), nullable=False),
        sa.Column("created_at", TZ, nullable=False),
        sa.Column("cleared_at", TZ),
        sa.Column("cleared_by", sa.String(256)),
    )
    op.create_index("ix_kill_switches_active", "kill_switches", ["cleared_at"])


def downgrade() -> None:
    for table in ("kill_switches", "bundle_activations", "bundles", "budget_reservations", "budget_usage",
                  "auth_events", "decisions"):
        op.drop_table(table)
