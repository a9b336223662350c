"""The decision journal: one row per committed change of a decision record, numbered in commit order.

Why not order the stream by `decision_id`? Ids are time-sortable, but they are drawn before the
record is committed: a decision batched by the writer thread can commit after a later id that was
committed inline, and a reader that had already moved past the later id would never see the earlier
one. Nor does a record stop changing when it is written: an approval is resolved, expires or is
consumed, an outcome is reported. So the stream reads this journal instead:

- `seq` is assigned *inside* the transaction that writes the decision row, by database triggers
  (every writer — the group-commit writer, the inline commit, an approval transition, another
  replica — goes through them, so no code path can forget it);
- on SQLite writers are serialised by the database lock, so the row id the journal gets
  (max + 1, read under that lock) grows in commit order;
- on PostgreSQL a statement-level trigger first takes one transaction-scoped advisory lock, held
  until commit: transactions that change decisions commit one at a time, so the identity values they
  draw also grow in commit order. The price is that replicas' decision commits are serialised
  (each group-commit batch is one transaction, so it is paid per batch, not per decision).

A reader that has seen every entry up to `seq` N never later finds a new entry ≤ N: resuming after
N loses nothing. Entries point at the record, whose *current* state is what readers return.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime, timezone
from typing import Any

from sqlalchemy import (
    BigInteger,
    Column,
    DateTime,
    Engine,
    Index,
    Integer,
    String,
    Table,
    delete,
    event,
    func,
    select,
    text,
)
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.engine import Connection

from decider.store.db import metadata
from decider.store.decisions import decisions

__all__ = ["journal", "export_cursors", "JournalReader", "CursorStore", "DECIDED", "UPDATED"]

DECIDED, UPDATED = "decided", "updated"

journal = Table(
    "decision_journal",
    metadata,
    # INTEGER PRIMARY KEY on SQLite is the row id itself (max + 1 under the write lock, no
    # sqlite_sequence bookkeeping per insert); BIGINT identity on PostgreSQL.
    Column("seq", BigInteger().with_variant(Integer, "sqlite"), primary_key=True, autoincrement=True),
    Column("decision_id", String(26), nullable=False),
    Column("change", String(16), nullable=False),   # decided | updated
    # A record's entries (revision 0007): what retention deletes with the record, and where
    # `--after DECISION_ID` resumes; without it both scan the whole journal.
    Index("ix_decision_journal_decision", "decision_id"),
)

# Durable positions of exporters (`decider export`): the last seq a receiver acknowledged.
export_cursors = Table(
    "export_cursors",
    metadata,
    Column("name", String(512), primary_key=True),
    Column("seq", BigInteger, nullable=False),
    Column("updated_at", DateTime(timezone=True), nullable=False),
)

_SQLITE_TRIGGERS = (
    f"""CREATE TRIGGER IF NOT EXISTS decision_journal_insert AFTER INSERT ON decisions BEGIN
        INSERT INTO decision_journal(decision_id, change) VALUES (NEW.decision_id, '{DECIDED}'); END""",
    f"""CREATE TRIGGER IF NOT EXISTS decision_journal_update AFTER UPDATE ON decisions BEGIN
        INSERT INTO decision_journal(decision_id, change) VALUES (NEW.decision_id, '{UPDATED}'); END""",
)
# Any constant: the advisory lock that orders commits of the decisions table.
_PG_LOCK_KEY = 0x6465636964657201
_PG_TRIGGERS = (
    f"""CREATE OR REPLACE FUNCTION decider_journal_order() RETURNS trigger LANGUAGE plpgsql AS $$
        BEGIN PERFORM pg_advisory_xact_lock({_PG_LOCK_KEY}); RETURN NULL; END $$""",
    f"""CREATE OR REPLACE FUNCTION decider_journal_row() RETURNS trigger LANGUAGE plpgsql AS $$
        BEGIN
          INSERT INTO decision_journal(decision_id, change)
            VALUES (NEW.decision_id, CASE TG_OP WHEN 'INSERT' THEN '{DECIDED}' ELSE '{UPDATED}' END);
          RETURN NULL;
        END $$""",
    # BEFORE STATEMENT: the lock is taken before any decisions row is locked, so a transaction
    # never waits for the advisory lock while holding a row another one needs (no deadlock).
    """CREATE TRIGGER decision_journal_order BEFORE INSERT OR UPDATE ON decisions
        FOR EACH STATEMENT EXECUTE FUNCTION decider_journal_order()""",
    """CREATE TRIGGER decision_journal_row AFTER INSERT OR UPDATE ON decisions
        FOR EACH ROW EXECUTE FUNCTION decider_journal_row()""",
)


@event.listens_for(metadata, "after_create")
def _install_triggers(_target: Any, connection: Connection, **kw: Any) -> None:
    """Once, when `create_all` makes the journal table (a new database): the triggers, and an entry
    for every record that already exists. A database from before the journal gets the same from
    revision 0003_console_ops_core_tables, whose copy of these statements tests/test_migrations.py
    compares with what this installs: change one, change (a new revision for) the other."""
    if journal not in kw.get("tables", ()):
        return
    name = connection.dialect.name
    statements = _SQLITE_TRIGGERS if name == "sqlite" else _PG_TRIGGERS if name == "postgresql" else ()
    for stmt in statements:
        connection.execute(text(stmt))
    connection.execute(text(f"INSERT INTO decision_journal(decision_id, change) "
                            f"SELECT decision_id, '{DECIDED}' FROM decisions ORDER BY decision_id"))
    if name == "postgresql":   # both tables partitioned by month (store/partitions.py)
        from decider.store.partitions import convert

        convert(connection)


class JournalReader:
    """Committed changes after a position, oldest first, with each record's current row."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine

    def after(self, seq: int, limit: int = 500) -> list[dict[str, Any]]:
        """Up to `limit` entries with a seq above `seq`: each the decision's row plus `seq` and `change`."""
        q = (select(journal.c.seq, journal.c.change, decisions)
             .join(decisions, decisions.c.decision_id == journal.c.decision_id)
             .where(journal.c.seq > seq).order_by(journal.c.seq).limit(limit))
        with self.engine.connect() as conn:
            return [dict(r) for r in conn.execute(q).mappings()]

    def seq_of(self, decision_id: str) -> int | None:
        """The position at which `decision_id` was committed (its first entry); None if unknown."""
        q = select(func.min(journal.c.seq)).where(journal.c.decision_id == decision_id)
        with self.engine.connect() as conn:
            return conn.execute(q).scalar()

    def last_seq(self) -> int:
        with self.engine.connect() as conn:
            return conn.execute(select(func.max(journal.c.seq))).scalar() or 0


class CursorStore:
    """Exporter positions, committed only after the receiver acknowledged everything up to them."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine

    def get(self, name: str) -> int | None:
        with self.engine.connect() as conn:
            return conn.execute(select(export_cursors.c.seq).where(export_cursors.c.name == name)).scalar()

    def set(self, name: str, seq: int) -> None:
        now = datetime.now(timezone.utc)
        ins = (pg_insert if self.engine.dialect.name == "postgresql" else sqlite_insert)(export_cursors)
        stmt = ins.values(name=name, seq=seq, updated_at=now).on_conflict_do_update(
            index_elements=[export_cursors.c.name], set_={"seq": seq, "updated_at": now})
        with self.engine.begin() as conn:
            conn.execute(stmt)

    def rename(self, old: str, new: str) -> None:
        """Move `old`'s position to `new` and drop `old`, in one transaction. When `new` exists
        already it is the one in use and keeps its position."""
        with self.engine.begin() as conn:
            seq = conn.execute(select(export_cursors.c.seq).where(export_cursors.c.name == old)).scalar()
            if seq is None:
                return
            # Two exporters starting at once may both rename: the first insert wins, the other is a no-op.
            ins = (pg_insert if self.engine.dialect.name == "postgresql" else sqlite_insert)(export_cursors)
            conn.execute(ins.values(name=new, seq=seq, updated_at=datetime.now(timezone.utc))
                         .on_conflict_do_nothing(index_elements=[export_cursors.c.name]))
            conn.execute(delete(export_cursors).where(export_cursors.c.name == old))

    def names(self) -> Sequence[str]:
        with self.engine.connect() as conn:
            return list(conn.execute(select(export_cursors.c.name)).scalars())
