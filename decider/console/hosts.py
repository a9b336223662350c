"""DNS-rebinding guard for a console without `--tokens`.

Without tokens there is no log-in: whoever reaches the console acts with its (token-less) access,
which is why it listens on loopback only. A web page on an attacker's host can still reach it
through the victim's browser by re-pointing its own DNS name at 127.0.0.1 (DNS rebinding): the
browser then treats the console as the attacker's origin and sends `Host: rebind.attacker.example`.
So such a console answers only requests whose Host names loopback itself; anything else, a missing
Host included, is refused before any page, cookie or CSRF token is made.
"""

from __future__ import annotations

import ipaddress
import re

from starlette.types import ASGIApp, Receive, Scope, Send

__all__ = ["LoopbackHostOnly", "is_loopback_host"]

# host[:port] or [v6]:port, nothing else (no user info, path, spaces or a second port).
_HOST = re.compile(r"(?:\[(?P<v6>[0-9A-Fa-f:.]{2,45})\]|(?P<name>[A-Za-z0-9.-]{1,253}))(?::[0-9]{1,5})?\Z")


def is_loopback_host(header: str) -> bool:
    """True for `localhost`, a 127.0.0.0/8 address or `[::1]`, each with an optional port."""
    m = _HOST.match(header)
    if m is None:
        return False
    host = m.group("v6") or m.group("name")
    if host.lower() == "localhost":
        return True
    if m.group("name") and not re.fullmatch(r"[0-9]{1,3}(?:\.[0-9]{1,3}){3}", host):
        return False     # a name other than localhost, or a number browsers read loosely (0x7f.1, 2130706433)
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


class LoopbackHostOnly:
    """ASGI middleware: 400 for every HTTP request whose Host header is not loopback."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] in ("http", "websocket"):
            hosts = [v for k, v in scope.get("headers", []) if k == b"host"]
            host = hosts[0].decode("latin-1") if len(hosts) == 1 else ""
            if not is_loopback_host(host):
                body = (b"Host not allowed: a console without --tokens answers only localhost, 127.0.0.1 and [::1] "
                        b"(DNS rebinding guard).\n")
                await send({"type": "http.response.start", "status": 400, "headers": [
                    (b"content-type", b"text/plain; charset=utf-8"), (b"content-length", str(len(body)).encode()),
                    (b"cache-control", b"no-store")]})
                await send({"type": "http.response.body", "body": body})
                return
        await self.app(scope, receive, send)
