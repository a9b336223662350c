"""Paths shared by the trace-reader tests."""

from __future__ import annotations

from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
FIXTURES = REPO / "tests" / "fixtures" / "traces"
# The recorded real traces live next to the repository, never inside it (see their README).
# A checkout in a worktree folder (`wt/<name>`) finds them one level further up.
SHARED = next((p for p in ((REPO / ".." / "shared" / "traces").resolve(),
                           (REPO / ".." / ".." / "shared" / "traces").resolve()) if p.is_dir()),
              (REPO / ".." / "shared" / "traces").resolve())


@pytest.fixture(scope="session")
def shared_traces() -> Path:
    if not SHARED.is_dir():
        pytest.skip(f"REAL TRACES MISSING: {SHARED} does not exist; the end-to-end reader tests need it")
    return SHARED
