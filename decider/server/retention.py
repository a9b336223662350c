"""`decider serve --retain 90d --archive-dir DIR`: the prune of archives/prune.py, at start and then
every `--prune-interval`, in a thread beside the event loop.

A prune that cannot run says why in the log and leaves everything in place: an exporter cursor
behind the horizon (the server never forces: run `decider db prune --force` to accept the loss),
another prune holding the lock (another worker or replica), or an archive that could not be
written (nothing of that day is deleted). Stopping the server mid-prune loses nothing either: each
delete batch is its own transaction, and records are deleted only once their archive is complete.
"""

from __future__ import annotations

import logging
from datetime import datetime, timedelta, timezone

from sqlalchemy import Engine

from decider.archives.prune import CursorBehind, PruneBusy, Pruner, PruneResult
from decider.server.periodic import PeriodicJob

__all__ = ["Retention"]

log = logging.getLogger("decider.retention")


class Retention:
    def __init__(self, engine: Engine, retain_s: float, archive_dir: str, fmt: str, interval_s: float) -> None:
        self.pruner = Pruner(engine, archive_dir, fmt)
        self.retain = timedelta(seconds=retain_s)
        self.interval_s = interval_s
        self._rounds = PeriodicJob("decider-retention", self.prune_once, interval_s, log,
                                   "retention: prune failed; the day being archived was not deleted",
                                   first_now=True)

    def prune_once(self) -> PruneResult | None:
        try:
            result = self.pruner.run(datetime.now(timezone.utc) - self.retain)
        except CursorBehind as e:
            log.error("retention: prune refused, nothing deleted", extra={"reason": str(e), "cursors": e.cursors})
            return None
        except PruneBusy as e:
            log.info("retention: another prune is running", extra={"reason": str(e)})
            return None
        log.info("retention: pruned", extra=result.to_json())
        return result

    async def start(self) -> None:
        # An archive that failed: logged, nothing of its day deleted; the next round tries again.
        self._rounds.start()

    async def stop(self) -> None:
        await self._rounds.stop()
