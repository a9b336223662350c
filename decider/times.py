"""The one `utc()` helper: every time decider stores or compares is UTC.

SQLite hands back naive datetimes for UTC columns; PostgreSQL and the protos give aware ones.
"""

from __future__ import annotations

from datetime import datetime, timezone
from typing import overload

__all__ = ["utc", "utcnow"]


@overload
def utc(t: datetime) -> datetime: ...
@overload
def utc(t: None) -> None: ...


def utc(t: datetime | None) -> datetime | None:
    """`t` as an aware UTC datetime (a naive one is read as UTC); None stays None."""
    if t is None:
        return None
    return t if t.tzinfo else t.replace(tzinfo=timezone.utc)


def utcnow() -> datetime:
    return datetime.now(timezone.utc)
