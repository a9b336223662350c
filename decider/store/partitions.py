"""PostgreSQL: `decisions` and `decision_journal` range-partitioned by month (SQLite: none of this).

Key: `decision_id`, in both tables. Decision ids are time-ordered (record/ids.py: `first_id_at(ms)`
is the smallest id drawn at `ms`), so a range of ids is a range of time, and every query that names
an id or an id range (a record, the pruner's horizon, `--after ID`) reads only its partitions. The
journal is partitioned by the id of the decision an entry is about, not by its own `seq`: every
entry of a month's decisions (an approval resolved weeks later too) is in that month's journal
partition, so retention drops the two partitions together and the journal follows the decisions.

Partitions: `decisions_pYYYYMM` / `decision_journal_pYYYYMM`, one per UTC month, created ahead by
every server (`ensure_partitions`: at start and every hour, the previous month, the current one and
the next `months_ahead`), idempotently, under an advisory lock so replicas starting at once create
each one once. A DEFAULT partition (`*_default`) takes a row no range partition covers (a clock
years off, a server down for longer than its months ahead): an insert never fails for a missing
partition. Creating a range partition whose months already have rows in DEFAULT would fail, so
those rows are moved into the new partition (same transaction) before it is attached.

A database converted from before partitioning (revision 0009) keeps its old tables as one partition
each, `*_p0` (every id below the first month the converted database had not yet reached).

Unique constraints on a partitioned table must include the partition key, so the one-pending-
approval-per-call guard (SQLite: the partial unique index `ux_decisions_pending_call`) is a small
unpartitioned table here, `decision_pending_calls`, whose primary key has that same name and
columns. Triggers on `decisions` keep it in the same transaction as the row: a pending decision
inserts its call (an identical pending call of another replica fails exactly as the unique index
failed), leaving `pending` (approve, reject, expire) deletes it. Only rows that are or were pending
fire them (WHEN clauses): an allow or a deny costs nothing more.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass
from datetime import date, datetime, timezone

from sqlalchemy import Connection, Engine, text

from decider.record.ids import first_id_at, id_time_ms

__all__ = ["PARTITIONED", "DEFAULT_MONTHS_AHEAD", "Partition", "partitions", "ensure_partitions",
           "month_bounds", "month_start", "PG_PENDING_DDL", "is_partitioned", "convert"]

log = logging.getLogger("decider.store.partitions")

PARTITIONED = ("decisions", "decision_journal")
DEFAULT_MONTHS_AHEAD = 3
ENSURE_LOCK_TIMEOUT = "5s"
# Any constant other than the journal's, the schema's and the pruner's: one partition maker at a time.
_PG_PARTITION_LOCK_KEY = 0x6465636964657203

# The side table and its triggers (what create_all installs on a new database; revision 0009 holds a
# frozen copy, compared by tests/test_migrations.py).
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

_BOUND = re.compile(r"FOR VALUES FROM \((MINVALUE|'([0-9A-Z]*)')\) TO \((MAXVALUE|'([0-9A-Z]*)')\)")


@dataclass(frozen=True, slots=True)
class Partition:
    table: str          # the partitioned table
    name: str
    lo: str | None      # first decision id in it; None: MINVALUE
    hi: str | None      # first decision id after it; None: MAXVALUE
    default: bool = False


def is_partitioned(conn: Connection, table: str = "decisions") -> bool:
    if conn.dialect.name != "postgresql":
        return False
    return bool(conn.execute(text("SELECT 1 FROM pg_partitioned_table p JOIN pg_class c ON c.oid = p.partrelid "
                                  "WHERE c.relname = :t AND c.relnamespace = current_schema()::regnamespace"),
                             {"t": table}).scalar())


def partitions(conn: Connection, table: str) -> list[Partition]:
    """`table`'s partitions, ranges in id order, the DEFAULT one last."""
    rows = conn.execute(text(
        "SELECT c.relname, pg_get_expr(c.relpartbound, c.oid) FROM pg_inherits i "
        "JOIN pg_class c ON c.oid = i.inhrelid JOIN pg_class p ON p.oid = i.inhparent "
        "WHERE p.relname = :t AND p.relnamespace = current_schema()::regnamespace"), {"t": table}).all()
    out: list[Partition] = []
    for name, bound in rows:
        if bound == "DEFAULT":
            out.append(Partition(table, name, None, None, default=True))
            continue
        m = _BOUND.fullmatch(bound)
        if m is None:
            raise RuntimeError(f"partition {name} of {table} has a bound decider did not make: {bound}")
        out.append(Partition(table, name, m.group(2) if m.group(1) != "MINVALUE" else None,
                             m.group(4) if m.group(3) != "MAXVALUE" else None))
    return sorted(out, key=lambda p: (p.default, p.lo or ""))


def month_start(year: int, month: int) -> datetime:
    """The first instant of `month` of `year` (months past 12 or below 1 roll into the next or previous years)."""
    return datetime(year + (month - 1) // 12, (month - 1) % 12 + 1, 1, tzinfo=timezone.utc)


def month_bounds(day: date) -> tuple[str, str, str]:
    """(suffix, first id, first id after) of `day`'s UTC month."""
    lo, hi = month_start(day.year, day.month), month_start(day.year, day.month + 1)
    return (f"p{lo:%Y%m}", first_id_at(int(lo.timestamp() * 1000)), first_id_at(int(hi.timestamp() * 1000)))


def _overlaps(p: Partition, lo: str, hi: str) -> bool:
    return not p.default and (p.lo is None or p.lo < hi) and (p.hi is None or lo < p.hi)


def _create_month(conn: Connection, table: str, suffix: str, lo: str, hi: str, default: str | None) -> None:
    """Create `table`'s partition [lo, hi); rows of that range already in DEFAULT move into it first."""
    name = f"{table}_{suffix}"
    moved = 0
    if default is not None and conn.execute(
            text(f"SELECT 1 FROM {default} WHERE decision_id >= :lo AND decision_id < :hi LIMIT 1"),
            {"lo": lo, "hi": hi}).scalar():
        # Attaching over rows in DEFAULT fails; inserts into DEFAULT wait while this runs (short: it
        # only happens after a gap in the months created ahead).
        conn.execute(text(f"LOCK TABLE {default} IN EXCLUSIVE MODE"))
        conn.execute(text(f"CREATE TABLE {name} (LIKE {table} INCLUDING DEFAULTS)"))
        moved = conn.execute(text(
            f"WITH m AS (DELETE FROM {default} WHERE decision_id >= :lo AND decision_id < :hi RETURNING *) "
            f"INSERT INTO {name} SELECT * FROM m"), {"lo": lo, "hi": hi}).rowcount or 0
        if table == "decisions":   # the delete above took the moved pending calls out: back in
            conn.execute(text(
                "INSERT INTO decision_pending_calls(agent_id, tool_name, tool_server, args_hash, decision_id) "
                f"SELECT agent_id, tool_name, tool_server, args_hash, decision_id FROM {name} "
                "WHERE approval_state = 'pending'"))
        conn.execute(text(f"ALTER TABLE {table} ATTACH PARTITION {name} FOR VALUES FROM ('{lo}') TO ('{hi}')"))
    else:
        # Made apart, then attached: CREATE TABLE … PARTITION OF would lock the parent ACCESS
        # EXCLUSIVE (every Decide waiting); ATTACH takes SHARE UPDATE EXCLUSIVE, which inserts pass.
        conn.execute(text(f"CREATE TABLE {name} (LIKE {table} INCLUDING DEFAULTS)"))
        conn.execute(text(f"ALTER TABLE {table} ATTACH PARTITION {name} FOR VALUES FROM ('{lo}') TO ('{hi}')"))
    log.info("partition created", extra={"partition": name, "from_id": lo, "to_id": hi, "moved_from_default": moved})


def ensure_partitions(engine: Engine | Connection, months_ahead: int = DEFAULT_MONTHS_AHEAD,
                      now: datetime | None = None, months_back: int = 1) -> list[str]:
    """Make sure each partitioned table has a DEFAULT partition and one for every month from
    `months_back` before `now`'s to `months_ahead` after it (skipping months an existing partition
    overlaps). Returns the partitions created. A no-op on SQLite or an unpartitioned database."""
    if isinstance(engine, Connection):
        return _ensure(engine, months_ahead, now, months_back)
    if engine.dialect.name != "postgresql":
        return []
    with engine.begin() as conn:
        return _ensure(conn, months_ahead, now, months_back)


def _ensure(conn: Connection, months_ahead: int, now: datetime | None, months_back: int) -> list[str]:
    if not is_partitioned(conn):
        return []
    conn.execute(text("SELECT pg_advisory_xact_lock(:k)"), {"k": _PG_PARTITION_LOCK_KEY})
    # Months are made ahead: one that cannot get its locks now (a long query on the table) is made
    # at the next round rather than making Decide's inserts queue behind it.
    conn.execute(text(f"SET LOCAL lock_timeout = '{ENSURE_LOCK_TIMEOUT}'"))
    now = now or datetime.now(timezone.utc)
    created: list[str] = []
    for table in PARTITIONED:
        have = partitions(conn, table)
        default = next((p.name for p in have if p.default), None)
        if default is None:
            default = f"{table}_default"
            conn.execute(text(f"CREATE TABLE {default} PARTITION OF {table} DEFAULT"))
            created.append(default)
        for k in range(-months_back, months_ahead + 1):
            suffix, lo, hi = month_bounds(month_start(now.year, now.month + k).date())
            if any(_overlaps(p, lo, hi) for p in have):
                continue
            _create_month(conn, table, suffix, lo, hi, default)
            created.append(f"{table}_{suffix}")
    return created


# The journal's two triggers on `decisions` (decider/store/journal.py's _PG_TRIGGERS, whose functions
# stay as they are): dropped from the old table before it becomes a partition, where the parent's
# clones would fire a second time, and made again on the partitioned parent.
_JOURNAL_TRIGGERS = (
    """CREATE TRIGGER decision_journal_order BEFORE INSERT OR UPDATE ON decisions
        FOR EACH STATEMENT EXECUTE FUNCTION decider_journal_order()""",
    """CREATE TRIGGER decision_journal_row AFTER INSERT OR UPDATE ON decisions
        FOR EACH ROW EXECUTE FUNCTION decider_journal_row()""",
)


def convert(conn: Connection, now: datetime | None = None) -> None:
    """Make the unpartitioned `decisions` and `decision_journal` partitioned (a new database's, from
    create_all; revision 0009 runs a frozen copy on an existing one). Each old table becomes the
    partition `*_p0` of every id before the month after the later of now and its newest record, or
    is dropped when empty; only the journal's primary key index is built again (it must now
    include the key); every row stays where it is."""
    now = now or datetime.now(timezone.utc)
    conn.execute(text("LOCK TABLE decisions, decision_journal IN ACCESS EXCLUSIVE MODE"))
    newest = conn.execute(text("SELECT greatest((SELECT max(decision_id) FROM decisions), "
                               "(SELECT max(decision_id) FROM decision_journal))")).scalar()
    last = max(now, datetime.fromtimestamp(id_time_ms(newest) / 1000, timezone.utc)) if newest else now
    bound = month_bounds(last.date())[2]
    conn.execute(text("DROP TRIGGER decision_journal_order ON decisions"))
    conn.execute(text("DROP TRIGGER decision_journal_row ON decisions"))
    conn.execute(text("DROP INDEX ux_decisions_pending_call"))   # its name goes to the side table's key
    conn.execute(text(PG_PENDING_DDL[0]))
    conn.execute(text("INSERT INTO decision_pending_calls(agent_id, tool_name, tool_server, args_hash, decision_id) "
                      "SELECT agent_id, tool_name, tool_server, args_hash, decision_id FROM decisions "
                      "WHERE approval_state = 'pending'"))
    for table, key in (("decisions", "decision_id"), ("decision_journal", "seq, decision_id")):
        old = f"{table}_p0"
        indexes = conn.execute(text(
            "SELECT i.relname, pg_get_indexdef(i.oid), x.indisprimary FROM pg_index x "
            "JOIN pg_class i ON i.oid = x.indexrelid JOIN pg_class t ON t.oid = x.indrelid "
            "WHERE t.relname = :t AND t.relnamespace = current_schema()::regnamespace ORDER BY i.relname"),
            {"t": table}).all()
        conn.execute(text(f"ALTER TABLE {table} RENAME TO {old}"))
        for name, _, _ in indexes:
            conn.execute(text(f'ALTER INDEX "{name}" RENAME TO "{name}_p0"'))
        if table == "decision_journal":   # (seq) alone cannot stay unique under a partitioned parent
            conn.execute(text(f"ALTER TABLE {old} DROP CONSTRAINT decision_journal_pkey_p0"))
        conn.execute(text(f"CREATE TABLE {table} (LIKE {old} INCLUDING DEFAULTS) PARTITION BY RANGE (decision_id)"))
        conn.execute(text(f"ALTER TABLE {table} ADD CONSTRAINT {table}_pkey PRIMARY KEY ({key})"))
        if table == "decision_journal":   # the identity's sequence now belongs to the new table
            conn.execute(text("ALTER SEQUENCE decision_journal_seq_seq OWNED BY decision_journal.seq"))
        if conn.execute(text(f"SELECT 1 FROM {old} LIMIT 1")).scalar():
            conn.execute(text(f"ALTER TABLE {table} ATTACH PARTITION {old} FOR VALUES FROM (MINVALUE) TO ('{bound}')"))
        else:
            conn.execute(text(f"DROP TABLE {old}"))
        # Made on the parent after the attach: each finds its twin on the old table and adopts it.
        for _, ddl, primary in indexes:
            if not primary:
                conn.execute(text(re.sub(r" ON (\w+\.)?" + table + " ", f" ON {table} ", ddl, count=1)))
        conn.execute(text(f"CREATE TABLE {table}_default PARTITION OF {table} DEFAULT"))
    for stmt in (*_JOURNAL_TRIGGERS, *PG_PENDING_DDL[1:]):
        conn.execute(text(stmt))
