"""Sessions without server-side state: an AES-GCM encrypted, authenticated cookie that holds the
user's bearer token, a CSRF token and what decider said about the user (principal, roles).

Encrypted rather than only signed because it carries the bearer token: a stolen cookie file must not
reveal it. The cookie is `HttpOnly` (no script reads it), `SameSite=Strict` (no other site sends
it) and `Secure` when the console is served over TLS. The CSRF token is compared on every
state-changing request (double protection with SameSite).

Each session has a random id (`sid`) inside the cookie. Logging out revokes it server-side: the
id goes on this process's denylist (`Revocations`) until the cookie would have expired anyway, so a
copy of the cookie taken before the log-out is refused afterwards.
"""

from __future__ import annotations

import base64
import hmac
import json
import os
import secrets
import time
from dataclasses import dataclass, field
from pathlib import Path

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

__all__ = ["Session", "SessionCodec", "Revocations", "COOKIE", "load_secret"]

COOKIE = "decider_console"
_AAD = b"decider-console-session-v1"


@dataclass(slots=True)
class Session:
    csrf: str = field(default_factory=lambda: secrets.token_urlsafe(32))
    sid: str = field(default_factory=lambda: secrets.token_urlsafe(16))   # what a log-out revokes
    token: str = ""                      # the bearer token decider is called with ("" = none)
    principal: str = ""                  # "" = not logged in
    roles: tuple[str, ...] = ()
    expires: float = 0.0

    @property
    def logged_in(self) -> bool:
        return bool(self.principal)

    def has_role(self, *roles: str) -> bool:
        return any(r in self.roles for r in roles)

    def csrf_ok(self, sent: str | None) -> bool:
        return bool(sent) and hmac.compare_digest(sent.encode(), self.csrf.encode())


def load_secret(path: str | None) -> bytes:
    """32 bytes from a file (64 hex characters or 32 raw bytes), or fresh random bytes."""
    if not path:
        return os.urandom(32)
    raw = Path(path).read_bytes().strip()
    try:
        key = bytes.fromhex(raw.decode("ascii"))
    except (UnicodeDecodeError, ValueError):
        key = raw
    if len(key) != 32:
        raise ValueError(f"{path}: the console secret must be 32 bytes (64 hex characters)")
    return key


class Revocations:
    """Session ids logged out, each kept until its cookie's own expiry (after which the cookie is
    refused anyway), so the set holds at most the log-outs of one session lifetime."""

    def __init__(self) -> None:
        self._until: dict[str, float] = {}
        self._next_prune = 0.0

    def revoke(self, sid: str, expires: float) -> None:
        self._prune()
        self._until[sid] = max(expires, self._until.get(sid, 0.0))

    def revoked(self, sid: str) -> bool:
        return sid in self._until

    def __len__(self) -> int:
        return len(self._until)

    def _prune(self) -> None:
        now = time.time()
        if now >= self._next_prune:
            self._until = {k: v for k, v in self._until.items() if v >= now}
            self._next_prune = now + 60


class SessionCodec:
    def __init__(self, key: bytes, ttl_s: float, revocations: Revocations | None = None) -> None:
        self._aead = AESGCM(key)
        self.ttl_s = ttl_s
        self.revocations = revocations if revocations is not None else Revocations()

    def encode(self, s: Session) -> str:
        if not s.expires:
            s.expires = time.time() + self.ttl_s
        body = json.dumps({"c": s.csrf, "s": s.sid, "t": s.token, "p": s.principal, "r": list(s.roles), "e": s.expires},
                          separators=(",", ":")).encode()
        nonce = os.urandom(12)
        return base64.urlsafe_b64encode(nonce + self._aead.encrypt(nonce, body, _AAD)).decode().rstrip("=")

    def decode(self, value: str | None) -> Session | None:
        """The session in a cookie; None when absent, tampered with, expired or logged out."""
        if not value or len(value) > 8192:
            return None
        try:
            raw = base64.urlsafe_b64decode(value + "=" * (-len(value) % 4))
            body = json.loads(self._aead.decrypt(raw[:12], raw[12:], _AAD))
        except (ValueError, InvalidTag):
            return None
        sid = body.get("s")
        # A cookie without a session id predates revocation: it could not be logged out, so it is void.
        if body.get("e", 0) < time.time() or not isinstance(sid, str) or not sid or self.revocations.revoked(sid):
            return None
        return Session(csrf=body["c"], sid=sid, token=body["t"], principal=body["p"], roles=tuple(body["r"]),
                       expires=body["e"])

    def revoke(self, s: Session) -> None:
        self.revocations.revoke(s.sid, s.expires or time.time() + self.ttl_s)
