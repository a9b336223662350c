from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from .helpers import ServerProcess, start_server


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    """One real server per test module, on the example bundle, with its own SQLite file."""
    tmp: Path = tmp_path_factory.mktemp("server")
    srv = start_server(tmp)
    try:
        yield srv
    finally:
        srv.stop()
