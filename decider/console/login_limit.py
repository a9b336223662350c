"""A rate limit on console log-in, per client address.

A bearer token is the only credential, so log-in is where guessing happens: each address gets a
bucket of `attempts` tries that refills over `window_s`; an empty bucket answers 429 before the
token is even looked at. IPv6 clients are counted per /64, the block one host usually holds, so
rotating addresses inside it buys nothing. Behind a reverse proxy every client shares the proxy's
address (the console does not trust forwarded headers), so the limit then applies to all together.
A log-in that succeeds gives its try back: people who know their token are never slowed down by
their own log-ins, while guesses, which fail, use the bucket up.
"""

from __future__ import annotations

import ipaddress
import math
import time
from collections.abc import Callable

__all__ = ["LoginLimiter", "client_key"]


def client_key(address: str) -> str:
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return address[:64]   # a Unix socket peer or no address: one shared bucket per such name
    if isinstance(ip, ipaddress.IPv6Address):
        if ip.ipv4_mapped is not None:
            return str(ip.ipv4_mapped)
        return str(ipaddress.ip_network(f"{ip}/64", strict=False))
    return str(ip)


class LoginLimiter:
    MAX_CLIENTS = 100_000   # buckets kept; full ones (idle clients) are dropped first

    def __init__(self, attempts: int = 10, window_s: float = 60.0, clock: Callable[[], float] = time.monotonic) -> None:
        self.attempts = attempts
        self.rate = attempts / window_s      # tries regained per second
        self._clock = clock
        self._buckets: dict[str, tuple[float, float]] = {}   # key -> (tries left, when counted)

    def take(self, address: str) -> float:
        """Spend one try for `address`: 0 when allowed, else the seconds until one is free."""
        key = client_key(address)
        now = self._clock()
        left, then = self._buckets.get(key, (float(self.attempts), now))
        left = min(float(self.attempts), left + (now - then) * self.rate)
        if left < 1:
            self._buckets[key] = (left, now)
            return max(0.001, (1 - left) / self.rate)
        self._buckets[key] = (left - 1, now)
        if len(self._buckets) > self.MAX_CLIENTS:
            self._forget_idle(now)
        return 0.0

    def refund(self, address: str) -> None:
        """Give back the try a successful log-in spent."""
        key = client_key(address)
        if key in self._buckets:
            left, then = self._buckets[key]
            self._buckets[key] = (min(float(self.attempts), left + 1), then)

    def _forget_idle(self, now: float) -> None:
        full = [k for k, (left, then) in self._buckets.items() if left + (now - then) * self.rate >= self.attempts]
        for k in full:
            del self._buckets[k]
        # Never drop a bucket that is still counting (that would hand its client fresh tries): when
        # every one is, the table simply grows; it shrinks again as they refill.


def retry_after(seconds: float) -> str:
    return str(max(1, math.ceil(seconds)))
