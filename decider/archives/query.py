"""`decider log --archive PATH`: the same filters and order over archive files as over the database
(`DecisionStore.query`), so a question older than the retention horizon gets the same answer."""

from __future__ import annotations

import os
from collections.abc import Iterable, Iterator
from typing import Any

from decider.archives.files import archive_files, read_file
from decider.store.decisions import LogFilter
from decider.times import utc

__all__ = ["query_archives", "matches"]


def matches(row: dict[str, Any], f: LogFilter) -> bool:
    """`row` passes `f` exactly as the WHERE clause of DecisionStore.query would let it."""
    if f.agent_id and row["agent_id"] != f.agent_id:
        return False
    if f.team and row["team"] != f.team:
        return False
    if f.tool_name and row["tool_name"] != f.tool_name:
        return False
    if f.outcome and row["outcome"] != f.outcome.upper():
        return False
    if f.bundle_revision and not str(row["bundle_revision"]).startswith(f.bundle_revision):
        return False
    t = utc(row["time"])
    if f.since and t < utc(f.since):
        return False
    return not (f.until and t >= utc(f.until))


def query_archives(paths: Iterable[str | os.PathLike[str]], f: LogFilter) -> Iterator[dict[str, Any]]:
    """The archived records that pass `f`, by decision id (newest first with `f.newest_first`), at
    most `f.limit`. A record archived more than once (held back, then archived again) counts once,
    in the state of its newest archive. Every file is checked against its manifest first."""
    rows: dict[str, dict[str, Any]] = {}
    for path in archive_files(paths):
        for row in read_file(path):
            # Files come oldest first, so a record's newest state is the one that decides; only
            # the records that pass are kept in memory.
            if matches(row, f):
                rows[row["decision_id"]] = row
            else:
                rows.pop(row["decision_id"], None)
    n = 0
    for decision_id in sorted(rows, reverse=f.newest_first):
        yield rows[decision_id]
        n += 1
        if f.limit and n >= f.limit:
            return
