"""One form of an agent id (and of any kill-switch value) for matching, and the alphabet the API takes.

Issue 24 item 13: with no manifest in the bundle, `KILLME`, `"killme "`, `kіllme` (Cyrillic і) or
full-width `ｋｉｌｌｍｅ` walked past a kill switch on `killme`. Two guards, bundle or not:

- kill switches and manifests compare `match_key(value)`: NFKC (full-width and other
  compatibility forms become their plain letters), format characters (zero-width space, joiners)
  removed, case-folded, trimmed — so a kill switch or a manifest covers every such variant;
- the API refuses an `agent.id` outside `SAFE_ID` (ASCII letters, digits, `. _ : @ / + -`) with
  INVALID_ARGUMENT: look-alikes from other scripts (Cyrillic, Greek), which no normal form maps to
  Latin, never reach a decision.
"""

from __future__ import annotations

import re
import unicodedata

__all__ = ["SAFE_ID", "match_key", "unsafe_id"]

SAFE_ID = re.compile(r"[A-Za-z0-9._:@/+-]+")


def match_key(value: str) -> str:
    """The form two ids are compared in (kill switches, manifests)."""
    if value.isascii():
        return value.strip().lower()   # ASCII: casefold() is lower(); no compatibility forms
    value = unicodedata.normalize("NFKC", value)
    value = "".join(c for c in value if unicodedata.category(c) != "Cf")
    return unicodedata.normalize("NFKC", value.casefold()).strip()


def unsafe_id(value: str) -> str:
    """Why `value` is not an acceptable agent id ("" when it is); names the first bad character."""
    if SAFE_ID.fullmatch(value):
        return ""
    bad = next(c for c in value if not SAFE_ID.fullmatch(c))
    return (f"character {bad!r} (U+{ord(bad):04X}) at {value.index(bad)} is outside the agent-id alphabet: "
            "ASCII letters, digits and . _ : @ / + -")
