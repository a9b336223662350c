from __future__ import annotations

import os
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from .helpers import ServerProcess, start_server
from .pg import PostgresServer, PostgresUnavailable, start_postgres

# Every `decider serve` needs the args_hash key from outside its database (issue 24 item 12): one
# test key, in the environment every server a test starts inherits.
os.environ.setdefault("DECIDER_BINDING_KEY", "7e" * 32)


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    """One real server per test module, on the example bundle, with its own SQLite file."""
    tmp: Path = tmp_path_factory.mktemp("server")
    srv = start_server(tmp)
    try:
        yield srv
    finally:
        srv.stop()


@pytest.fixture(scope="session")
def postgres() -> Iterator[PostgresServer]:
    """A real PostgreSQL server for the whole session (installed by tools/scripts/ensure-postgres.sh)."""
    try:
        srv = start_postgres()
    except PostgresUnavailable as e:
        msg = f"\n{'!' * 78}\n!!! PostgreSQL UNAVAILABLE — PostgreSQL tests SKIPPED: {e}\n{'!' * 78}"
        print(msg, file=sys.stderr)
        pytest.skip(msg)
    try:
        yield srv
    finally:
        srv.stop()


# ---- one database per test, on each backend (PostgreSQL parity, issue 10) ----

BACKENDS = ["sqlite", "postgresql"]


def fresh_database(request: pytest.FixtureRequest, tmp: Path) -> str:
    """A new, empty database on the backend named by the fixture's param: an SQLite file in `tmp`,
    or a new database on the session's PostgreSQL server (skipped when it is unavailable)."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp / 'decider.db'}"
    pg: PostgresServer = request.getfixturevalue("postgres")
    return pg.create_database(f"t_{uuid.uuid4().hex[:16]}")


@pytest.fixture(params=BACKENDS)
def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """A fresh database for this test, once on SQLite and once on PostgreSQL."""
    return fresh_database(request, tmp_path)


@pytest.fixture(scope="module", params=BACKENDS)
def module_db_url(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> str:
    """A fresh database for a module's shared server, once on SQLite and once on PostgreSQL."""
    return fresh_database(request, tmp_path_factory.mktemp("db"))
