"""`session` as conditions see it (SPEC §10): the session's earlier calls, bounded by the bundle's
`spec.session` (at most `max_calls`, none older than `window` before the decision), and the union
of their labels.

Every caller (server, `decider test` steps, replay) hands the engine the history it has; the bounds
are applied here, once, so all three see the same calls.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

from google.protobuf.timestamp_pb2 import Timestamp

from decider.engine.state import SessionCall

__all__ = ["session_view", "bounded"]


def bounded(history: tuple[SessionCall, ...], max_calls: int, window_s: int, now: datetime) -> list[SessionCall]:
    """The last `max_calls` calls not older than `window_s` before `now`, oldest first."""
    start = now - timedelta(seconds=window_s)
    calls = history[-max_calls:] if len(history) > max_calls else history
    return [c for c in calls if c.at >= start]


def session_view(history: tuple[SessionCall, ...], max_calls: int, window_s: int, now: datetime) -> dict[str, Any]:
    """`{"calls": [...], "labels": [...]}` for the CEL activation."""
    calls = []
    labels: dict[str, None] = {}   # ordered set: first seen first
    for c in bounded(history, max_calls, window_s, now):
        at = Timestamp()   # CEL takes a protobuf Timestamp for `timestamp`, not a datetime
        at.FromDatetime(c.at)
        calls.append({"tool": c.tool, "server": c.server, "args": dict(c.args), "outcome": c.outcome,
                      "labels": list(c.labels), "status": c.status, "at": at})
        for label in c.labels:
            labels[label] = None
    return {"calls": calls, "labels": list(labels)}
