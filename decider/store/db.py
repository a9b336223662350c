"""Open a database by URL, with the settings decider relies on."""

from __future__ import annotations

from typing import Any

from sqlalchemy import Engine, MetaData, create_engine, event

__all__ = ["metadata", "connect", "sqlite_url", "apply_sqlite_settings"]

metadata = MetaData()


def sqlite_url(path: str) -> str:
    return f"sqlite:///{path}"


def connect(url: str, *, create: bool = True) -> Engine:
    """An Engine for `url` (`sqlite:///file.db` or `postgresql+psycopg://…`), tables created."""
    if "://" not in url:  # a bare path means an SQLite file
        url = sqlite_url(url)
    kwargs: dict[str, Any] = {}
    if url.startswith("sqlite"):
        kwargs["connect_args"] = {"check_same_thread": False, "timeout": 30}
    engine = create_engine(url, **kwargs)
    if engine.dialect.name == "sqlite":
        event.listen(engine, "connect", _sqlite_pragmas)
    if create:
        # Import for the side effect of registering every table group on `metadata`.
        from decider.store import approvals, auth_events, budgets, bundles, decisions, kill_switches, secrets  # noqa: F401

        metadata.create_all(engine)
    return engine


def _sqlite_pragmas(dbapi_conn: Any, _record: Any) -> None:
    apply_sqlite_settings(dbapi_conn)


def apply_sqlite_settings(dbapi_conn: Any, busy_timeout_ms: int = 30_000) -> None:
    """The settings every decider connection to an SQLite file runs with (SQLAlchemy's and the
    stdlib-driver ones of sqlite_raw alike)."""
    cur = dbapi_conn.cursor()
    # WAL: readers never block the writer; several server processes can share one file.
    cur.execute("PRAGMA journal_mode=WAL")
    # FULL: a committed decision survives power loss, not only a process crash. Group commit
    # amortises the fsync over every decision in the batch.
    cur.execute("PRAGMA synchronous=FULL")
    cur.execute(f"PRAGMA busy_timeout={int(busy_timeout_ms)}")
    cur.close()
