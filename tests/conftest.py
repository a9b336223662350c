from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from .helpers import ServerProcess, start_server
from .pg import PostgresServer, PostgresUnavailable, start_postgres


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
