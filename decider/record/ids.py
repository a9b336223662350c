"""Time-sortable decision ids: 48-bit milliseconds + 80 random bits, Crockford base32 (ULID layout).

Lexicographic order is time order, so `ORDER BY decision_id` is chronological and ids from
several replicas interleave correctly without coordination.
"""

from __future__ import annotations

import os
import time

__all__ = ["new_id", "id_time_ms", "first_id_at"]

_ALPHABET = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"
_INDEX = {c: i for i, c in enumerate(_ALPHABET)}
# Two characters per 10 bits: an id is 13 look-ups instead of 26 shifts (one is made per decision).
_PAIRS = [_ALPHABET[i >> 5] + _ALPHABET[i & 31] for i in range(1024)]


def new_id(now_ms: int | None = None) -> str:
    ms = time.time_ns() // 1_000_000 if now_ms is None else now_ms
    n = (ms << 80) | int.from_bytes(os.urandom(10), "big")   # 130 bits = 26 characters
    p = _PAIRS
    return "".join((p[n >> 120 & 1023], p[n >> 110 & 1023], p[n >> 100 & 1023], p[n >> 90 & 1023],
                    p[n >> 80 & 1023], p[n >> 70 & 1023], p[n >> 60 & 1023], p[n >> 50 & 1023],
                    p[n >> 40 & 1023], p[n >> 30 & 1023], p[n >> 20 & 1023], p[n >> 10 & 1023], p[n & 1023]))


def id_time_ms(decision_id: str) -> int:
    n = 0
    for c in decision_id[:10]:
        n = (n << 5) | _INDEX[c]
    return n


def first_id_at(ms: int) -> str:
    """The smallest id drawn at `ms` or later: `decision_id < first_id_at(ms)` selects exactly the
    decisions drawn before that millisecond, on the primary key (retention's horizon)."""
    n = ms << 80
    return "".join(_ALPHABET[n >> (125 - 5 * i) & 31] for i in range(26))
