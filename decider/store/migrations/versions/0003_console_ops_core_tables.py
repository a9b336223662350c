"""The tables the console, ops and core branches added with `create_all` only, now as a revision.

| table / object | for | module |
|---|---|---|
| `approval_notifications`, `notifier_cursors` | the approval-notification outbox (console) | decider/store/notifications.py |
| index `ix_decisions_session` on `decisions` | one session's timeline as an index range (console) | decider/store/queries.py |
| `decision_journal` + its triggers (SQLite) / functions and triggers (PostgreSQL) | the decision stream in commit order (ops) | decider/store/journal.py |
| `export_cursors` | exporters' acknowledged positions (ops) | decider/store/journal.py |
| `deployment_secrets` | the key of the approval binding hash (core) | decider/store/secrets.py |
| index `ix_decisions_open_approval`: partial condition gains `'rejected'` | a rejection binds the identical call until its ttl (core) | decider/store/approvals.py |

The journal is backfilled with one `decided` entry per existing decision, in `decision_id` order
(the order a new database's journal would have had), so the stream of an upgraded database starts
at its first decision. The secret itself is not made here: like on a new database, the first server
to start creates it (`decider.store.secrets.binding_key`), so no secret is ever written by a
migration (and so never into a migration log or a dump taken right after it).

The trigger and function texts are frozen copies of decider/store/journal.py's (what `create_all`
installs on a new database); tests/test_migrations.py compares the two schemas, triggers included.
The session index is a plain CREATE INDEX, never a batch: a batch that copied `decisions` would
drop the journal's triggers on SQLite.

Revision ID: 0003_console_ops_core_tables
Revises: 0002_api_field_names
Create Date: 2026-12-02
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0003_console_ops_core_tables"
down_revision = "0002_api_field_names"
branch_labels = None
depends_on = None

TZ = sa.DateTime(timezone=True)
CALL = ["agent_id", "tool_name", "tool_server", "args_hash"]
OPEN_BEFORE = sa.text("approval_state IN ('pending', 'approved')")
OPEN_AFTER = sa.text("approval_state IN ('pending', 'approved', 'rejected')")

SQLITE_TRIGGERS = (
    """CREATE TRIGGER IF NOT EXISTS decision_journal_insert AFTER INSERT ON decisions BEGIN
        INSERT INTO decision_journal(decision_id, change) VALUES (NEW.decision_id, 'decided'); END""",
    """CREATE TRIGGER IF NOT EXISTS decision_journal_update AFTER UPDATE ON decisions BEGIN
        INSERT INTO decision_journal(decision_id, change) VALUES (NEW.decision_id, 'updated'); END""",
)
PG_LOCK_KEY = 0x6465636964657201   # decider/store/journal.py's: orders commits of `decisions`
PG_TRIGGERS = (
    f"""CREATE OR REPLACE FUNCTION decider_journal_order() RETURNS trigger LANGUAGE plpgsql AS $$
        BEGIN PERFORM pg_advisory_xact_lock({PG_LOCK_KEY}); RETURN NULL; END $$""",
    """CREATE OR REPLACE FUNCTION decider_journal_row() RETURNS trigger LANGUAGE plpgsql AS $$
        BEGIN
          INSERT INTO decision_journal(decision_id, change)
            VALUES (NEW.decision_id, CASE TG_OP WHEN 'INSERT' THEN 'decided' ELSE 'updated' END);
          RETURN NULL;
        END $$""",
    """CREATE TRIGGER decision_journal_order BEFORE INSERT OR UPDATE ON decisions
        FOR EACH STATEMENT EXECUTE FUNCTION decider_journal_order()""",
    """CREATE TRIGGER decision_journal_row AFTER INSERT OR UPDATE ON decisions
        FOR EACH ROW EXECUTE FUNCTION decider_journal_row()""",
)
BACKFILL = ("INSERT INTO decision_journal(decision_id, change) "
            "SELECT decision_id, 'decided' FROM decisions ORDER BY decision_id")


def upgrade() -> None:
    op.create_table(
        "approval_notifications",
        sa.Column("decision_id", sa.String(26), primary_key=True),
        sa.Column("state", sa.String(10), nullable=False),
        sa.Column("attempts", sa.Integer, nullable=False),
        sa.Column("next_attempt_at", TZ, nullable=False),
        sa.Column("claimed_by", sa.String(128)),
        sa.Column("claimed_until", TZ),
        sa.Column("last_error", sa.Text),
        sa.Column("created_at", TZ, nullable=False),
        sa.Column("delivered_at", TZ),
    )
    op.create_index("ix_approval_notifications_due", "approval_notifications", ["state", "next_attempt_at"])
    op.create_table(
        "notifier_cursors",
        sa.Column("name", sa.String(64), primary_key=True),
        sa.Column("after_id", sa.String(26), nullable=False),
        sa.Column("updated_at", TZ, nullable=False),
    )
    op.create_index("ix_decisions_session", "decisions", ["session_id", "decision_id"])
    _open_approval_index(OPEN_AFTER)

    op.create_table(
        "decision_journal",
        # INTEGER PRIMARY KEY on SQLite is the row id (max + 1 under the write lock); BIGINT identity
        # on PostgreSQL.
        sa.Column("seq", sa.BigInteger().with_variant(sa.Integer, "sqlite"), primary_key=True, autoincrement=True),
        sa.Column("decision_id", sa.String(26), nullable=False),
        sa.Column("change", sa.String(16), nullable=False),
    )
    op.create_table(
        "export_cursors",
        sa.Column("name", sa.String(512), primary_key=True),
        sa.Column("seq", sa.BigInteger, nullable=False),
        sa.Column("updated_at", TZ, nullable=False),
    )
    name = op.get_bind().dialect.name
    for stmt in SQLITE_TRIGGERS if name == "sqlite" else PG_TRIGGERS if name == "postgresql" else ():
        op.execute(stmt)
    # In the same transaction as the triggers and under the schema lock (decider.store.migrate), so
    # no decision committed meanwhile can be journaled twice or skipped.
    op.execute(BACKFILL)

    op.create_table(
        "deployment_secrets",
        sa.Column("name", sa.String(64), primary_key=True),
        sa.Column("value", sa.String(128), nullable=False),
    )


def downgrade() -> None:
    op.drop_table("deployment_secrets")
    name = op.get_bind().dialect.name
    if name == "sqlite":
        op.execute("DROP TRIGGER IF EXISTS decision_journal_update")
        op.execute("DROP TRIGGER IF EXISTS decision_journal_insert")
    elif name == "postgresql":
        op.execute("DROP TRIGGER IF EXISTS decision_journal_row ON decisions")
        op.execute("DROP TRIGGER IF EXISTS decision_journal_order ON decisions")
        op.execute("DROP FUNCTION IF EXISTS decider_journal_row()")
        op.execute("DROP FUNCTION IF EXISTS decider_journal_order()")
    op.drop_table("export_cursors")
    op.drop_table("decision_journal")
    _open_approval_index(OPEN_BEFORE)
    op.drop_index("ix_decisions_session", table_name="decisions")
    op.drop_table("notifier_cursors")
    op.drop_index("ix_approval_notifications_due", table_name="approval_notifications")
    op.drop_table("approval_notifications")


def _open_approval_index(where: sa.TextClause) -> None:
    """Recreate the partial index of open approvals with another condition (Alembic's autogenerate
    does not compare partial-index conditions; the schema test in tests/test_migrations.py does)."""
    op.drop_index("ix_decisions_open_approval", table_name="decisions")
    op.create_index("ix_decisions_open_approval", "decisions", CALL, sqlite_where=where, postgresql_where=where)
