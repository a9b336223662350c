"""One asyncio lock per key, created on first use and dropped when nobody holds or waits for it.

Identical calls that may open an approval take the lock of their binding hash, so the second finds
the first one's record (server/controls.py). The count of holders and waiters is kept here rather
than read from asyncio's private `Lock._waiters`.
"""

from __future__ import annotations

import asyncio
from collections.abc import Hashable

__all__ = ["KeyedLocks"]


class KeyedLocks:
    def __init__(self) -> None:
        self._locks: dict[Hashable, tuple[asyncio.Lock, list[int]]] = {}   # key → (lock, [holders + waiters])

    def __len__(self) -> int:
        return len(self._locks)

    def busy(self, key: Hashable) -> bool:
        """Is the key's lock held, or promised to a waiter?"""
        return key in self._locks

    async def acquire(self, key: Hashable) -> None:
        entry = self._locks.get(key)
        if entry is None:
            entry = self._locks[key] = (asyncio.Lock(), [0])
        entry[1][0] += 1
        try:
            await entry[0].acquire()
        except BaseException:   # cancelled while waiting: no longer a user of the lock
            self._leave(key, entry)
            raise

    def release(self, key: Hashable) -> None:
        entry = self._locks[key]
        entry[0].release()
        self._leave(key, entry)

    def _leave(self, key: Hashable, entry: tuple[asyncio.Lock, list[int]]) -> None:
        entry[1][0] -= 1
        if entry[1][0] == 0:
            del self._locks[key]
