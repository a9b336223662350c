"""PostgreSQL: `decisions` and `decision_journal` partitioned by month of the decision id (issue 25 item 3).

On PostgreSQL (SQLite: nothing changes):

- each table is renamed to `*_p0` and becomes the one partition of every id before the month after
  the later of now and its newest record (no row is copied: the old table is attached as it is; the
  attach reads it once to check the bound, and the journal's primary key, which must now include
  the partition key, is built again as (seq, decision_id)); an empty table is dropped instead;
- a DEFAULT partition each; the monthly partitions are made by the servers (store/partitions.py);
- the unique partial index `ux_decisions_pending_call` becomes the primary key (same name, same
  columns) of the unpartitioned side table `decision_pending_calls`, filled with the pending
  approvals and kept by triggers on `decisions` in the same transaction as the row;
- the journal's two triggers move from the old table to the partitioned one.

Everything runs in the migration's one transaction, under ACCESS EXCLUSIVE locks on both tables
(servers are stopped: they refuse an older schema). Its time is the attach's scan of each table and
the journal's index build: seconds per few million rows (docs/operations.md).

Downgrade copies every row back into unpartitioned tables (a full copy, unlike the upgrade).

The DDL is a frozen copy of decider/store/partitions.py's (what `create_all` makes on a new
database); tests/test_migrations.py compares the two schemas, triggers included.

Revision ID: 0009_partitioned_ledger
Revises: 0008_approval_askers
Create Date: 2026-12-07
"""

from __future__ import annotations

import re
from datetime import datetime, timezone

from alembic import op
from sqlalchemy import Connection, text

from decider.record.ids import first_id_at, id_time_ms

revision = "0009_partitioned_ledger"
down_revision = "0008_approval_askers"
branch_labels = None
depends_on = None

PG_PENDING_DDL = (
    """CREATE TABLE decision_pending_calls (
        agent_id VARCHAR(256) NOT NULL, tool_name VARCHAR(256) NOT NULL, tool_server VARCHAR(256) NOT NULL,
        args_hash VARCHAR(64) NOT NULL, decision_id VARCHAR(26) NOT NULL,
        CONSTRAINT ux_decisions_pending_call PRIMARY KEY (agent_id, tool_name, tool_server, args_hash))""",
    """CREATE OR REPLACE FUNCTION decider_pending_call() RETURNS trigger LANGUAGE plpgsql AS $$
        BEGIN
          IF TG_OP <> 'INSERT' AND OLD.approval_state = 'pending' THEN
            DELETE FROM decision_pending_calls WHERE agent_id = OLD.agent_id AND tool_name = OLD.tool_name
              AND tool_server = OLD.tool_server AND args_hash = OLD.args_hash AND decision_id = OLD.decision_id;
          END IF;
          IF TG_OP <> 'DELETE' AND NEW.approval_state = 'pending' THEN
            INSERT INTO decision_pending_calls(agent_id, tool_name, tool_server, args_hash, decision_id)
              VALUES (NEW.agent_id, NEW.tool_name, NEW.tool_server, NEW.args_hash, NEW.decision_id);
          END IF;
          RETURN NULL;
        END $$""",
    """CREATE TRIGGER decision_pending_insert AFTER INSERT ON decisions FOR EACH ROW
        WHEN (NEW.approval_state = 'pending') EXECUTE FUNCTION decider_pending_call()""",
    """CREATE TRIGGER decision_pending_update AFTER UPDATE ON decisions FOR EACH ROW
        WHEN (OLD.approval_state = 'pending' OR NEW.approval_state = 'pending')
        EXECUTE FUNCTION decider_pending_call()""",
    """CREATE TRIGGER decision_pending_delete AFTER DELETE ON decisions FOR EACH ROW
        WHEN (OLD.approval_state = 'pending') EXECUTE FUNCTION decider_pending_call()""",
)
_JOURNAL_TRIGGERS = (
    """CREATE TRIGGER decision_journal_order BEFORE INSERT OR UPDATE ON decisions
        FOR EACH STATEMENT EXECUTE FUNCTION decider_journal_order()""",
    """CREATE TRIGGER decision_journal_row AFTER INSERT OR UPDATE ON decisions
        FOR EACH ROW EXECUTE FUNCTION decider_journal_row()""",
)
# pg_get_indexdef of this partial index reads its IN list back in a form that differs in text from
# what 0006 made: the downgrade makes it from the original words.
_OPEN_INDEX = ("CREATE INDEX ix_decisions_open_approval ON decisions (agent_id, tool_name, tool_server, args_hash) "
               "WHERE approval_state IN ('pending', 'approved', 'rejected')")
_PENDING_INDEX = ("CREATE UNIQUE INDEX ux_decisions_pending_call ON decisions "
                  "(agent_id, tool_name, tool_server, args_hash) WHERE approval_state = 'pending'")


def _month_after(t: datetime) -> str:
    y, m = (t.year + 1, 1) if t.month == 12 else (t.year, t.month + 1)
    return first_id_at(int(datetime(y, m, 1, tzinfo=timezone.utc).timestamp() * 1000))


def _indexes(conn: Connection, table: str) -> list[tuple[str, str, bool]]:
    return [tuple(r) for r in conn.execute(text(  # type: ignore[misc]
        "SELECT i.relname, pg_get_indexdef(i.oid), x.indisprimary FROM pg_index x "
        "JOIN pg_class i ON i.oid = x.indexrelid JOIN pg_class t ON t.oid = x.indrelid "
        "WHERE t.relname = :t AND t.relnamespace = current_schema()::regnamespace ORDER BY i.relname"),
        {"t": table}).all()]


def _on(ddl: str, table: str) -> str:
    return re.sub(r" ON (ONLY )?(\w+\.)?" + table + " ", f" ON {table} ", ddl, count=1)


def upgrade() -> None:
    conn = op.get_bind()
    if conn.dialect.name != "postgresql":
        return
    now = datetime.now(timezone.utc)
    conn.execute(text("LOCK TABLE decisions, decision_journal IN ACCESS EXCLUSIVE MODE"))
    newest = conn.execute(text("SELECT greatest((SELECT max(decision_id) FROM decisions), "
                               "(SELECT max(decision_id) FROM decision_journal))")).scalar()
    last = max(now, datetime.fromtimestamp(id_time_ms(newest) / 1000, timezone.utc)) if newest else now
    bound = _month_after(last)
    conn.execute(text("DROP TRIGGER decision_journal_order ON decisions"))
    conn.execute(text("DROP TRIGGER decision_journal_row ON decisions"))
    conn.execute(text("DROP INDEX ux_decisions_pending_call"))
    conn.execute(text(PG_PENDING_DDL[0]))
    conn.execute(text("INSERT INTO decision_pending_calls(agent_id, tool_name, tool_server, args_hash, decision_id) "
                      "SELECT agent_id, tool_name, tool_server, args_hash, decision_id FROM decisions "
                      "WHERE approval_state = 'pending'"))
    for table, key in (("decisions", "decision_id"), ("decision_journal", "seq, decision_id")):
        old = f"{table}_p0"
        indexes = _indexes(conn, table)
        conn.execute(text(f"ALTER TABLE {table} RENAME TO {old}"))
        for name, _, _ in indexes:
            conn.execute(text(f'ALTER INDEX "{name}" RENAME TO "{name}_p0"'))
        if table == "decision_journal":
            conn.execute(text(f"ALTER TABLE {old} DROP CONSTRAINT decision_journal_pkey_p0"))
        conn.execute(text(f"CREATE TABLE {table} (LIKE {old} INCLUDING DEFAULTS) PARTITION BY RANGE (decision_id)"))
        conn.execute(text(f"ALTER TABLE {table} ADD CONSTRAINT {table}_pkey PRIMARY KEY ({key})"))
        if table == "decision_journal":
            conn.execute(text("ALTER SEQUENCE decision_journal_seq_seq OWNED BY decision_journal.seq"))
        if conn.execute(text(f"SELECT 1 FROM {old} LIMIT 1")).scalar():
            conn.execute(text(f"ALTER TABLE {table} ATTACH PARTITION {old} FOR VALUES FROM (MINVALUE) TO ('{bound}')"))
        else:
            conn.execute(text(f"DROP TABLE {old}"))
        for _, ddl, primary in indexes:
            if not primary:
                conn.execute(text(_on(ddl, table)))
        conn.execute(text(f"CREATE TABLE {table}_default PARTITION OF {table} DEFAULT"))
    for stmt in (*_JOURNAL_TRIGGERS, *PG_PENDING_DDL[1:]):
        conn.execute(text(stmt))


def downgrade() -> None:
    conn = op.get_bind()
    if conn.dialect.name != "postgresql":
        return
    conn.execute(text("LOCK TABLE decisions, decision_journal IN ACCESS EXCLUSIVE MODE"))
    for table, key in (("decisions", "decision_id"), ("decision_journal", "seq")):
        indexes = _indexes(conn, table)
        flat = f"{table}_flat"
        conn.execute(text(f"CREATE TABLE {flat} (LIKE {table} INCLUDING DEFAULTS)"))
        conn.execute(text(f"INSERT INTO {flat} SELECT * FROM {table}"))
        if table == "decision_journal":
            conn.execute(text(f"ALTER SEQUENCE decision_journal_seq_seq OWNED BY {flat}.seq"))
        conn.execute(text(f"DROP TABLE {table}"))   # with its partitions, indexes and triggers
        conn.execute(text(f"ALTER TABLE {flat} RENAME TO {table}"))
        conn.execute(text(f"ALTER TABLE {table} ADD CONSTRAINT {table}_pkey PRIMARY KEY ({key})"))
        for name, ddl, primary in indexes:
            if not primary:
                conn.execute(text(_OPEN_INDEX if name == "ix_decisions_open_approval" else _on(ddl, table)))
    conn.execute(text("DROP TABLE decision_pending_calls"))
    conn.execute(text("DROP FUNCTION decider_pending_call()"))
    conn.execute(text(_PENDING_INDEX))
    for stmt in _JOURNAL_TRIGGERS:
        conn.execute(text(stmt))
