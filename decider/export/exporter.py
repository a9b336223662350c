"""The export loop: read after the cursor, send one batch, and only once the receiver acknowledged
it move the cursor (committed in the database) past it.

Hence the guarantee: kill the exporter anywhere and the restarted one resends from the last
acknowledged position, so every record arrives at least once, in commit order, none missing; what
may arrive twice is at most the one batch that was in flight. A receiver that is down or answers
an error gets the same batch again, with a growing pause, until it takes it: the stream never
skips ahead.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from typing import Any, Protocol

from sqlalchemy import Engine

from decider.export.naming import cursor_name, migrate
from decider.store.journal import CursorStore, JournalReader

__all__ = ["Exporter", "Sink", "SendFailed"]

log = logging.getLogger("decider.export")


class SendFailed(Exception):
    """The receiver did not acknowledge a batch; it will be sent again."""


class Sink(Protocol):
    def send(self, lines: Sequence[dict[str, Any]]) -> None:
        """Deliver `lines` (stream lines, oldest first); return only once the receiver acknowledged
        them all, raise SendFailed otherwise."""


class Exporter:
    def __init__(self, engine: Engine, sink: Sink, name: str, batch: int = 100, poll_s: float = 0.5,
                 max_backoff_s: float = 10.0, sleep: Callable[[float], None] = time.sleep) -> None:
        self.reader = JournalReader(engine)
        self.cursors = CursorStore(engine)
        self.sink = sink
        # Never a URL's secret part in a stored name; names earlier versions stored are renamed
        # first, keeping their positions (export/naming.py).
        for _old, new in migrate(self.cursors):
            log.info("export cursor renamed: its name held a URL's path or query", extra={"cursor": new})
        self.name = cursor_name(name)
        self.batch = batch
        self.poll_s = poll_s
        self.max_backoff_s = max_backoff_s
        self._sleep = sleep
        self.cursor = self.cursors.get(self.name) or 0
        self.sent = 0
        self.stopping = False

    def start_at(self, seq: int) -> None:
        """Where a cursor that does not exist yet starts (an existing one is never moved back)."""
        if self.cursors.get(self.name) is None:
            self.cursor = seq
            self.cursors.set(self.name, seq)

    def run(self, once: bool = False) -> int:
        """Export until stopped (or, with `once`, until caught up). Returns the records sent."""
        from decider.record.lines import line_of

        backoff = 0.0
        while not self.stopping:
            rows = self.reader.after(self.cursor, self.batch)
            if not rows:
                if once:
                    break
                self._sleep(self.poll_s)
                continue
            lines = [line_of(r) for r in rows]
            try:
                self.sink.send(lines)
            except SendFailed as exc:
                backoff = min(self.max_backoff_s, max(0.1, backoff * 2))
                log.warning("export batch not acknowledged; will resend",
                            extra={"exporter": self.name, "first_seq": lines[0]["seq"], "records": len(lines),
                                   "error": str(exc), "retry_in_s": backoff})
                self._sleep(backoff)
                continue
            backoff = 0.0
            self.cursor = lines[-1]["seq"]
            self.cursors.set(self.name, self.cursor)   # durable before the next batch is read
            self.sent += len(lines)
            log.debug("exported", extra={"exporter": self.name, "cursor": self.cursor, "records": len(lines)})
        return self.sent
