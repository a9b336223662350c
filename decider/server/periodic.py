"""A blocking job run in a thread beside the event loop, again and again at an interval, until the
server stops: the shared loop of the server's upkeep tasks (retention.py, partition_upkeep.py).

A round that raises is logged with `failed` and the next round tries again; cancelling (`stop`)
ends the loop, also mid-sleep.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable

__all__ = ["PeriodicJob"]


class PeriodicJob:
    def __init__(self, name: str, job: Callable[[], object], interval_s: float, log: logging.Logger,
                 failed: str, *, first_now: bool) -> None:
        self.name = name
        self.job = job
        self.interval_s = interval_s
        self.log = log
        self.failed = failed
        self.first_now = first_now      # a round at once, or only after the first interval
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name=self.name)

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass

    async def _run(self) -> None:
        if not self.first_now:
            await asyncio.sleep(self.interval_s)
        while True:
            try:
                await asyncio.to_thread(self.job)
            except asyncio.CancelledError:
                raise
            except Exception:   # noqa: BLE001 - logged; the next round tries again
                self.log.exception(self.failed)
            await asyncio.sleep(self.interval_s)
