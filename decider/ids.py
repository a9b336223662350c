"""Time-sortable decision ids: 48-bit milliseconds + 80 random bits, Crockford base32 (ULID layout).

Lexicographic order is time order, so `ORDER BY decision_id` is chronological and ids from
several replicas interleave correctly without coordination.
"""

from __future__ import annotations

import os
import time

__all__ = ["new_id", "id_time_ms"]

_ALPHABET = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"
_INDEX = {c: i for i, c in enumerate(_ALPHABET)}


def new_id(now_ms: int | None = None) -> str:
    ms = time.time_ns() // 1_000_000 if now_ms is None else now_ms
    n = (ms << 80) | int.from_bytes(os.urandom(10), "big")
    out = []
    for _ in range(26):
        out.append(_ALPHABET[n & 31])
        n >>= 5
    return "".join(reversed(out))


def id_time_ms(decision_id: str) -> int:
    n = 0
    for c in decision_id[:10]:
        n = (n << 5) | _INDEX[c]
    return n
