"""Which schema a database has, and bringing it to the code's (Alembic, `decider db upgrade`).

Three kinds of database meet a decider process:

- empty (a new file, a new PostgreSQL database): created at the head revision — the tables from
  `metadata`, then stamped — so `decider serve` and `make run` work on a fresh machine;
- made by a release before migrations (the baseline tables, no `alembic_version`): recognised as
  revision `BASELINE`;
- versioned by Alembic.

`ensure_schema(engine)` (every `connect`) creates an empty database and otherwise only checks:
a database older than the code raises `SchemaOutdated`, whose message names the command to run.
Only `upgrade(engine)` (`decider db upgrade`) changes an existing schema. Both run in one
transaction holding a database-wide lock (PostgreSQL advisory lock, SQLite write lock), so
several servers starting at once on a new database create it once.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from sqlalchemy import Connection, Engine, MetaData, inspect, text

from decider.errors import DeciderError

if TYPE_CHECKING:
    from alembic.config import Config

__all__ = ["HEAD", "BASELINE", "REVISIONS", "BASELINE_TABLES", "SchemaOutdated", "SchemaUnknown", "SchemaState",
           "ensure_schema", "upgrade", "schema_state", "target_metadata", "alembic_config"]

MIGRATIONS = Path(__file__).with_name("migrations")
# The revision chain, oldest first. Kept here so that checking a database needs no Alembic import
# (a server start, `decider log`); tests/test_migrations.py checks it against the scripts.
REVISIONS = ("0001_baseline", "0002_api_field_names", "0003_console_ops_core_tables", "0004_decision_caller",
             "0005_decision_labels", "0006_partial_approval_index", "0007_ledger_indexes",
             "0008_approval_askers", "0009_partitioned_ledger")
BASELINE, HEAD = REVISIONS[0], REVISIONS[-1]
# What `create_all` made in every release before migrations.
BASELINE_TABLES = frozenset({"decisions", "auth_events", "budget_usage", "budget_reservations", "bundles",
                             "bundle_activations", "kill_switches"})
VERSION_TABLE = "alembic_version"
# pg_advisory_xact_lock key ("deci" in ASCII): serialises schema work between processes.
_PG_LOCK_KEY = 0x64656369


class SchemaOutdated(DeciderError):
    """The database's schema is older than this code; `decider db upgrade` brings it up."""


class SchemaUnknown(DeciderError):
    """The database holds something this code cannot take as its schema (a newer release's
    revision, a partial set of tables)."""


@dataclass(frozen=True, slots=True)
class SchemaState:
    revision: str | None      # None: no alembic_version row
    tables: frozenset[str]    # decider's tables present (baseline or newer)

    @property
    def empty(self) -> bool:
        return self.revision is None and not self.tables

    @property
    def pre_migrations(self) -> bool:
        """Made by a release before migrations: every baseline table, never stamped."""
        return self.revision is None and self.tables >= BASELINE_TABLES


def target_metadata() -> MetaData:
    """The tables the code uses, every table group registered (what the head revision makes)."""
    from decider.store import (  # noqa: F401
        approvals,
        auth_events,
        budgets,
        bundles,
        decisions,
        journal,
        kill_switches,
        notifications,
        queries,
        secrets,
    )
    from decider.store.db import metadata

    return metadata


def alembic_config(conn: Connection | None = None) -> Config:
    """An Alembic Config for the packaged migrations, running on `conn` (no alembic.ini)."""
    from alembic.config import Config

    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS))
    cfg.set_main_option("file_template", "%%(rev)s")   # versions/0003_add_x.py: the id is the file name
    cfg.attributes["connection"] = conn
    return cfg


def schema_state(conn: Connection) -> SchemaState:
    names = set(inspect(conn).get_table_names())
    revision = None
    if VERSION_TABLE in names:
        revision = conn.execute(text(f"SELECT version_num FROM {VERSION_TABLE}")).scalar()
    return SchemaState(revision, frozenset(names & (BASELINE_TABLES | set(target_metadata().tables))))


def _where(engine: Engine) -> str:
    return engine.url.render_as_string(hide_password=True)


def _upgrade_hint(engine: Engine) -> str:
    return f"run `decider db upgrade --db {_where(engine)}`"


def _check(engine: Engine, state: SchemaState) -> None:
    """Raise unless `state` is the head revision (or empty, which the caller creates)."""
    if state.revision == HEAD or state.empty:
        return
    if state.revision is not None and state.revision not in REVISIONS:
        raise SchemaUnknown(f"database {_where(engine)} is at schema revision {state.revision!r}, which this "
                            f"decider does not know (made by a newer release?); its newest is {HEAD!r}")
    if state.revision is None and not state.pre_migrations:
        missing = ", ".join(sorted(BASELINE_TABLES - state.tables))
        raise SchemaUnknown(f"database {_where(engine)} has some of decider's tables but not {missing}, and no "
                            "schema revision: not a database decider made")
    was = state.revision or f"{BASELINE} (made before schema migrations)"
    raise SchemaOutdated(f"database {_where(engine)} has schema revision {was}, older than this decider's "
                         f"{HEAD}: {_upgrade_hint(engine)}")


@contextmanager
def _locked(engine: Engine) -> Iterator[Connection]:
    """One transaction holding the database-wide schema lock; committed when the block ends."""
    with engine.connect() as conn:
        if engine.dialect.name == "postgresql":
            conn.execute(text("SELECT pg_advisory_xact_lock(:k)"), {"k": _PG_LOCK_KEY})
        elif engine.dialect.name == "sqlite":
            # The stdlib driver would open the transaction only at the first INSERT; DDL before it
            # would each commit alone. BEGIN IMMEDIATE takes the write lock now, for all of it.
            conn.exec_driver_sql("BEGIN IMMEDIATE")
        try:
            yield conn
        except BaseException:
            conn.rollback()
            raise
        conn.commit()


def _create_at_head(conn: Connection) -> None:
    from alembic import command

    target_metadata().create_all(conn)
    command.stamp(alembic_config(conn), HEAD)


def ensure_schema(engine: Engine) -> SchemaState:
    """Create an empty database at head; otherwise require it to be at head (`SchemaOutdated`
    naming `decider db upgrade` when it is older). Returns the state found."""
    with engine.connect() as conn:
        state = schema_state(conn)
    if state.revision == HEAD:   # the usual case: one read, no lock
        return state
    _check(engine, state)
    with _locked(engine) as conn:
        state = schema_state(conn)   # another process may have created it meanwhile
        if state.empty:
            _create_at_head(conn)
        else:
            _check(engine, state)
    return state


def _require_baseline_columns(engine: Engine, conn: Connection) -> None:
    """Before stamping an unversioned database as the baseline: it must have every baseline column
    (one made by an even older release would otherwise be taken for what it is not)."""
    from alembic import command
    from sqlalchemy import create_engine

    scratch = create_engine("sqlite://")   # the baseline revision, made in memory, is the reference
    with scratch.begin() as ref:
        command.upgrade(alembic_config(ref), BASELINE)
        want = {t: {c["name"] for c in inspect(ref).get_columns(t)} for t in BASELINE_TABLES}
    scratch.dispose()
    insp = inspect(conn)
    missing = [f"{t}.{c}" for t in sorted(want) for c in sorted(want[t] - {x["name"] for x in insp.get_columns(t)})]
    if missing:
        raise SchemaUnknown(f"database {_where(engine)} has no schema revision and lacks columns of the "
                            f"baseline ({', '.join(missing)}): not a database decider made, or one from a "
                            "release older than the one before migrations")


def upgrade(engine: Engine) -> tuple[str | None, str]:
    """Bring the database to head: create an empty one, stamp one made before migrations as the
    baseline, then run every migration it lacks. Returns (revision before, revision after)."""
    from alembic import command

    with _locked(engine) as conn:
        state = schema_state(conn)
        if state.revision is not None and state.revision not in REVISIONS:
            _check(engine, state)   # a newer release's database: never touch it
        if state.empty:
            _create_at_head(conn)
            return None, HEAD
        if state.revision is None:
            if not state.pre_migrations:
                _check(engine, state)
            _require_baseline_columns(engine, conn)
            command.stamp(alembic_config(conn), BASELINE)
        command.upgrade(alembic_config(conn), HEAD)
        return state.revision or BASELINE, HEAD
