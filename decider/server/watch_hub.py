"""Who is watching which decision (WatchDecision, approval streams): local changes notify at once;
the controls' poller notifies the rest. Its own module so the store-backed state (server/controls.py)
and the approval RPCs (server/approvals.py) both use it without importing each other."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import Any

from decider.times import utc

__all__ = ["WatchHub", "normalise_version"]


def normalise_version(v: tuple[Any, ...]) -> tuple[Any, ...]:
    return (v[0], utc(v[1]), v[2], v[3])



@dataclass(eq=False)
class _Sub:
    event: asyncio.Event = field(default_factory=asyncio.Event)
    version: tuple[Any, ...] = ()


class WatchHub:
    """Who is watching which decision. Local changes notify at once; the poller notifies the rest."""

    def __init__(self) -> None:
        self._subs: dict[str, set[_Sub]] = {}

    def subscribe(self, decision_id: str) -> _Sub:
        sub = _Sub()
        self._subs.setdefault(decision_id, set()).add(sub)
        return sub

    def unsubscribe(self, decision_id: str, sub: _Sub) -> None:
        subs = self._subs.get(decision_id)
        if subs is not None:
            subs.discard(sub)
            if not subs:
                del self._subs[decision_id]

    def notify(self, decision_id: str) -> None:
        for sub in self._subs.get(decision_id, ()):
            sub.event.set()

    def watched(self) -> list[str]:
        return list(self._subs)

    def changed(self, versions: dict[str, tuple[Any, ...]]) -> None:
        """Wake every watcher whose last-seen version differs from the database's."""
        for decision_id, v in versions.items():
            v = normalise_version(v)
            for sub in self._subs.get(decision_id, ()):
                if sub.version != v:
                    sub.event.set()
