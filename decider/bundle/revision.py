"""A bundle's revision: the one definition, below both the compiler and the bundle-file reader."""

from __future__ import annotations

import hashlib

__all__ = ["revision_of"]


def revision_of(files: dict[str, bytes]) -> str:
    """sha256 over the sorted (path, content hash) pairs: same sources, same revision."""
    h = hashlib.sha256()
    for rel in sorted(files):
        h.update(rel.encode("utf-8") + b"\0" + hashlib.sha256(files[rel]).digest())
    return h.hexdigest()
