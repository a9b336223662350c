"""Session history on the server (SPEC §10): the earlier calls of an `agent.session_id`, for
conditions that read `session` — or, with the bundle's `spec.session.key: agent`, of an `agent.id`
(index (agent_id, decision_id)). Buffers are kept per (key kind, value), so one server can serve a
bundle and a shadow bundle that key history differently.

Served from memory, not a scan: a ring buffer per session (at most the bundle's `max_calls`
entries), kept in step with the writer (the service appends each call once its record is
durable), and filled on first use — or after a restart — by one indexed query on
(session_id, decision_id) that reads at most `max_calls` rows. A decision therefore costs the same
whether the session has made 10 calls or 10,000, and no SQL runs for a tool no `session`-reading
policy covers.

Replicas sharing one PostgreSQL: each replica keeps its own buffers. A session's calls decided by
another replica are seen when this replica (re)loads the session — on first use, and whenever the
buffer is older than `refresh_s` (default 1 s, the controls' poll interval) — so a session spread
over replicas sees the others' calls with at most that delay; route a session to one replica
(session affinity) where a sequence rule must see every call at once.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections import OrderedDict, deque
from datetime import datetime, timedelta
from typing import Any

from decider.engine.state import SessionCall
from decider.record.record import DecisionRecord
from decider.store.decisions import DecisionStore
from decider.times import utc

__all__ = ["SessionHistory", "DEFAULT_MAX_SESSIONS", "session_call_of"]

# Sessions kept in memory (least recently used dropped first; a dropped one reloads from the index).
DEFAULT_MAX_SESSIONS = 10_000


class _Buffer:
    __slots__ = ("calls", "loaded_at", "max_calls")

    def __init__(self, calls: deque[SessionCall], max_calls: int, loaded_at: float) -> None:
        self.calls = calls
        self.max_calls = max_calls
        self.loaded_at = loaded_at


def _call_of(row: dict[str, Any]) -> SessionCall:
    return SessionCall(tool=row["tool_name"], server=row["tool_server"] or "", args=json.loads(row["args"] or "{}"),
                       outcome=row["outcome"], at=utc(row["time"]), labels=tuple(json.loads(row["labels"] or "[]")),
                       status=row["outcome_status"] or "", decision_id=row["decision_id"])


def session_call_of(record: DecisionRecord) -> SessionCall:
    """A record as the later calls of its session see it."""
    return SessionCall(tool=record.tool_name, server=record.tool_server, args=record.args, outcome=record.outcome,
                       at=record.time, labels=record.labels, decision_id=record.decision_id)


class SessionHistory:
    def __init__(self, store: DecisionStore, *, max_sessions: int = DEFAULT_MAX_SESSIONS,
                 refresh_s: float | None = 1.0) -> None:
        self.store = store
        self.max_sessions = max_sessions
        self.refresh_s = refresh_s
        self._buffers: OrderedDict[tuple[str, str], _Buffer] = OrderedDict()
        self.loads = 0          # indexed queries made (tests and the benchmark read it)

    async def history(self, session_id: str, max_calls: int, window_s: int, now: datetime,
                      by: str = "session") -> tuple[SessionCall, ...]:
        """The session's earlier calls, oldest first (the engine applies the window and max_calls).
        `by="agent"`: `session_id` is an agent id, and the history is every call of that agent."""
        if not session_id:
            return ()   # no session id: no session to see
        slot = (by, session_id)
        buf = self._buffers.get(slot)
        fresh = buf is not None and buf.max_calls >= max_calls and (
            self.refresh_s is None or time.monotonic() - buf.loaded_at < self.refresh_s)
        if not fresh:
            buf = await self._load(slot, max_calls, window_s, now)
        else:
            self._buffers.move_to_end(slot)
        return tuple(buf.calls)  # type: ignore[union-attr]

    async def _load(self, slot: tuple[str, str], max_calls: int, window_s: int, now: datetime) -> _Buffer:
        since = now - timedelta(seconds=window_s)
        rows = await asyncio.to_thread(self.store.session_calls, slot[1], max_calls, since, slot[0] == "agent")
        self.loads += 1
        buf = _Buffer(deque((_call_of(r) for r in reversed(rows)), maxlen=max_calls), max_calls, time.monotonic())
        # Calls appended while the query ran are in the rows already, or appended below by `add`.
        self._buffers[slot] = buf
        self._buffers.move_to_end(slot)
        while len(self._buffers) > self.max_sessions:
            self._buffers.popitem(last=False)
        return buf

    def add(self, record: DecisionRecord) -> None:
        """A durable record: append it to its session's buffer, if that session is in memory."""
        if record.dry_run or not self._buffers:
            return
        call: SessionCall | None = None
        for slot in (("session", record.agent.session_id), ("agent", record.agent.id)):
            buf = self._buffers.get(slot) if slot[1] else None
            if buf is None:
                continue
            if any(c.decision_id == record.decision_id for c in list(buf.calls)[-8:]):
                continue   # already read by a load that ran after the write
            call = call or session_call_of(record)
            buf.calls.append(call)

    def reported(self, session_id: str, decision_id: str, status: str, labels: tuple[str, ...],
                 agent_id: str = "") -> None:
        """ReportOutcome: the call's status and labels, in the buffers too."""
        for slot in (("session", session_id), ("agent", agent_id)):
            buf = self._buffers.get(slot) if slot[1] else None
            if buf is None:
                continue
            for i in range(len(buf.calls) - 1, -1, -1):
                c = buf.calls[i]
                if c.decision_id == decision_id:
                    buf.calls[i] = SessionCall(c.tool, c.server, c.args, c.outcome, c.at, labels, status,
                                               c.decision_id)
                    break
