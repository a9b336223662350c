"""The two statements on Decide's hot path, run on the stdlib `sqlite3` driver directly.

SQLAlchemy costs ~0.5 ms of CPU to begin, insert one row and commit (tools/bench/writer_bench.py),
and its Python runs while holding the GIL that the event loop needs. For an SQLite file the
group-commit insert and the identical-call approval look-up go straight to `sqlite3` instead;
every other statement, and every statement on PostgreSQL, stays on SQLAlchemy.

Values cross with SQLAlchemy's own bind and result processors for each column type, so a row
written here reads back through SQLAlchemy exactly as if SQLAlchemy had written it (and the
other way round); tests/test_store.py checks both directions.
"""

from __future__ import annotations

import operator
import sqlite3
from collections.abc import Callable, Sequence
from typing import Any

from sqlalchemy import Engine, Table

from decider.store.db import apply_sqlite_settings

__all__ = ["sqlite_file", "connect_raw", "is_busy", "LOOP_BUSY_TIMEOUT_MS", "RawInsert", "RawSelect"]

Convert = Callable[[Any], Any]


def sqlite_file(engine: Engine) -> str | None:
    """The database file behind `engine`, or None when it is not an SQLite file (PostgreSQL,
    an in-memory database): those keep the SQLAlchemy path."""
    if engine.dialect.name != "sqlite":
        return None
    path = engine.url.database
    if not path or path == ":memory:" or path.startswith("file:"):
        return None
    return path


def connect_raw(path: str, *, autocheckpoint: bool = True, busy_timeout_ms: int = 30_000) -> sqlite3.Connection:
    """A connection with the settings of `store.db.connect`: WAL, synchronous=FULL, busy timeout.

    Autocommit mode (`isolation_level=None`): transactions are the explicit BEGIN/COMMIT below.
    `autocheckpoint=False`: this connection's commits never run a WAL checkpoint themselves (the
    group-commit writer runs them on its thread instead, off the event loop).
    `busy_timeout_ms`: how long a statement waits for a lock another connection holds. Connections
    used on the event loop wait briefly and hand the work to a thread instead (`is_busy`).
    """
    conn = sqlite3.connect(path, timeout=busy_timeout_ms / 1000, isolation_level=None, check_same_thread=False)
    apply_sqlite_settings(conn, busy_timeout_ms)
    if not autocheckpoint:
        conn.execute("PRAGMA wal_autocheckpoint=0")
    return conn


# How long a statement on the event loop waits for another connection's lock before giving up
# (and going to a thread): long enough for a neighbour's commit, short enough not to stall the loop.
LOOP_BUSY_TIMEOUT_MS = 50


def is_busy(exc: BaseException) -> bool:
    """SQLITE_BUSY / SQLITE_LOCKED: another connection holds the lock; nothing was done."""
    return isinstance(exc, sqlite3.OperationalError) and (
        getattr(exc, "sqlite_errorcode", None) in (sqlite3.SQLITE_BUSY, sqlite3.SQLITE_LOCKED)
        or "locked" in str(exc) or "busy" in str(exc))


class RawInsert:
    """`INSERT INTO table (every column) VALUES (…)` for batches of row dicts.

    A missing key takes the column's scalar default (else NULL), as `writer.row_completer` does.
    """

    def __init__(self, engine: Engine, table: Table) -> None:
        dialect = engine.dialect
        self._defaults: list[tuple[str, Any]] = []
        self._convs: list[tuple[int, Convert]] = []   # only the columns whose type converts (datetimes, bools)
        for i, col in enumerate(table.columns):
            default = col.default.arg if col.default is not None and not callable(col.default.arg) else None
            self._defaults.append((col.name, default))
            conv = col.type.dialect_impl(dialect).bind_processor(dialect)
            if conv is not None:
                self._convs.append((i, conv))
        names = ", ".join(f'"{name}"' for name, _ in self._defaults)
        marks = ", ".join("?" for _ in self._defaults)
        self.sql = f'INSERT INTO "{table.name}" ({names}) VALUES ({marks})'
        # A decision's row (DecisionRecord.to_row) names every column: one C-level look-up of all
        # of them in column order (half the cost of a get per column, on the writer thread
        # that holds the GIL meanwhile).
        self._all = operator.itemgetter(*(name for name, _ in self._defaults))

    def params(self, row: dict[str, Any]) -> list[Any]:
        try:
            values = list(self._all(row))
        except KeyError:   # a partial row: the missing columns take their defaults
            get = row.get
            values = [get(name, default) for name, default in self._defaults]
        for i, conv in self._convs:
            if values[i] is not None:
                values[i] = conv(values[i])
        return values

    def run(self, conn: sqlite3.Connection, rows: Sequence[dict[str, Any]]) -> None:
        """Insert `rows` in one transaction; on any error nothing of it is committed."""
        params = [self.params(r) for r in rows]
        conn.execute("BEGIN IMMEDIATE")
        try:
            conn.executemany(self.sql, params)
            conn.execute("COMMIT")
        except BaseException:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            raise


class RawSelect:
    """`SELECT every column FROM table WHERE <where>`, rows as dicts typed as SQLAlchemy types them."""

    def __init__(self, engine: Engine, table: Table, where: str) -> None:
        dialect = engine.dialect
        self._names = [c.name for c in table.columns]
        self._convs: list[tuple[int, Convert]] = []
        for i, col in enumerate(table.columns):
            conv = col.type.dialect_impl(dialect).result_processor(dialect, None)
            if conv is not None:
                self._convs.append((i, conv))
        names = ", ".join(f'"{n}"' for n in self._names)
        self.sql = f'SELECT {names} FROM "{table.name}" WHERE {where}'

    def run(self, conn: sqlite3.Connection, params: Sequence[Any]) -> list[dict[str, Any]]:
        out = []
        for raw in conn.execute(self.sql, params).fetchall():
            values = list(raw)
            for i, conv in self._convs:
                if values[i] is not None:
                    values[i] = conv(values[i])
            out.append(dict(zip(self._names, values, strict=True)))
        return out
