"""Export cursor names without secrets.

`decider export` names its cursor `TO:URL` unless given `--name`. A webhook URL's path, query,
fragment and user info are often its secret (Slack's path is), and `export_cursors` is readable by
anyone with the database, so a URL in a cursor name keeps its origin and a fingerprint of the rest:
`webhook:https://hooks.slack.com sha256:9c1e0b7a2f44d3e1`. The fingerprint only tells two URLs on
one host apart; a secret that can be guessed in few tries can be guessed from it too, so such a
receiver wants an explicit `--name`.

Names written by earlier versions (`TO:URL`, secret included) are renamed on the next export run
(`migrate`), keeping their position, so an exporter resumes where it stopped.
"""

from __future__ import annotations

import hashlib
import re
from urllib.parse import urlsplit

from decider.store.journal import CursorStore

__all__ = ["cursor_name", "migrate"]

_URL = re.compile(r"https?://", re.IGNORECASE)
# A host worth keeping: a DNS name or IPv4 address, or an IPv6 address; anything else (spaces,
# quotes, a secret pasted where the host goes) is dropped with the rest.
_HOST = re.compile(r"[a-z0-9._~%-]{1,253}|[0-9a-f:.]{2,45}")
# What cursor_name makes: an origin and a fingerprint (kept as is, so a renamed cursor stays put).
_MADE = re.compile(r"https?://(?:[a-z0-9._~%-]{1,253}|\[[0-9a-f:.]{2,45}\])?(?::[0-9]{1,5})? sha256:[0-9a-f]{16}\Z")


def cursor_name(name: str) -> str:
    """`name` with any http(s) URL in it (from its scheme to the end) reduced to its origin and a
    fingerprint; a name whose URL holds nothing beyond `scheme://host[:port]` is kept as is."""
    m = _URL.search(name)
    if m is None:
        return name
    url = name[m.start():]
    if _MADE.match(url):
        return name
    scheme = url[:m.end() - m.start()].lower()
    try:
        parts = urlsplit(url)
        host, port = parts.hostname or "", parts.port
    except ValueError:   # a malformed port or bracket: nothing of it is kept
        host, port, parts = "", None, None
    if not _HOST.fullmatch(host):
        host, port = "", None
    origin = f"{scheme}{_netloc(host, port)}"
    if parts is not None and host and url in (origin, origin + "/"):
        return name      # nothing beyond the origin: nothing to hide
    digest = hashlib.sha256(url.encode("utf-8", "surrogatepass")).hexdigest()[:16]
    return f"{name[:m.start()]}{origin} sha256:{digest}"


def _netloc(host: str, port: int | None) -> str:
    host = f"[{host}]" if ":" in host else host
    return f"{host}:{port}" if port else host


def migrate(cursors: CursorStore) -> list[tuple[str, str]]:
    """Rename every stored cursor whose name holds a URL's secret part to its `cursor_name`,
    keeping its position. Returns (old, new) pairs."""
    done = []
    for old in cursors.names():
        new = cursor_name(old)
        if new != old:
            cursors.rename(old, new)
            done.append((old, new))
    return done
