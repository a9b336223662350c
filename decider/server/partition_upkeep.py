"""PostgreSQL: the monthly partitions of `decisions` and `decision_journal` made ahead, by every
server (store/partitions.py): once before the server takes its first call, then every hour.

Every replica runs it; the partition maker's advisory lock and its look-before-create make that
safe and idempotent. A failure is logged and tried again an hour later; inserts never depend on it
(a row whose month has no partition yet goes to the DEFAULT partition and is moved out when its
month's partition is made).
"""

from __future__ import annotations

import asyncio
import logging

from sqlalchemy import Engine

from decider.server.periodic import PeriodicJob
from decider.store.partitions import ensure_partitions

__all__ = ["PartitionUpkeep", "UPKEEP_INTERVAL_S"]

log = logging.getLogger("decider.partitions")

UPKEEP_INTERVAL_S = 3600.0


class PartitionUpkeep:
    def __init__(self, engine: Engine, months_ahead: int, interval_s: float = UPKEEP_INTERVAL_S) -> None:
        self.engine = engine
        self.months_ahead = months_ahead
        self.interval_s = interval_s
        self._rounds = PeriodicJob("decider-partitions", self.run_once, interval_s, log,
                                   "partitions: could not create the months ahead; trying again later",
                                   first_now=False)

    def run_once(self) -> list[str]:
        made = ensure_partitions(self.engine, self.months_ahead)
        if made:
            log.info("partitions created", extra={"partitions": made})
        return made

    async def first_round(self) -> None:
        """Before the server takes calls. A failure (a lock not granted in time) is logged, not
        fatal: DEFAULT takes the rows meanwhile, and the hourly rounds try again."""
        try:
            await asyncio.to_thread(self.run_once)
        except Exception:   # noqa: BLE001 - see above
            log.exception("partitions: could not create the months ahead at start; trying again within the hour")

    async def start(self) -> None:
        """The hourly rounds (the server ran `run_once` itself before taking calls). A failed round
        is logged; inserts fall back to DEFAULT meanwhile."""
        self._rounds.start()

    async def stop(self) -> None:
        await self._rounds.stop()
