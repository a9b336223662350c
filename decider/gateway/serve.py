"""Run the gateway: connect the upstreams, serve clients over stdio or streamable HTTP, stop cleanly.

On SIGTERM / SIGINT or when a stdio client closes its end, the gateway stops serving, closes every
upstream connection (stdio upstream subprocesses are terminated, then killed if they linger) and
the decider stream.
"""

from __future__ import annotations

import contextlib
import gc
import hashlib
import json
import logging
import signal
from collections import OrderedDict
from collections.abc import Callable
from pathlib import Path
from typing import Any

import anyio
from starlette.types import ASGIApp, Receive, Scope, Send

from decider.gateway.config import GatewayConfig
from decider.gateway.decisions import DeciderLink
from decider.gateway.hook_endpoint import HOOK_PATH, ClaudeCodeHookEndpoint
from decider.gateway.proxy import Gateway
from decider.gateway.stdio import serve_stdio
from decider.gateway.upstreams import UpstreamConnection

__all__ = ["BearerAuth", "HostCheck", "run_gateway"]

log = logging.getLogger("decider.gateway")


LOOPBACK_NAMES = ("127.0.0.1", "localhost", "[::1]")


class HostCheck:
    """ASGI middleware in front of everything on a loopback listener (MCP and the hook endpoint):
    DNS-rebinding protection. A web page on attacker.example whose name is re-pointed at 127.0.0.1
    reaches the listener with `Host: attacker.example:<port>` and `Origin: http://attacker.example:…`;
    a page served by another local web server carries its own origin (another port).
    - Host must be a loopback name (127.0.0.1, localhost, [::1]) with the listener's bound port, else
      421 (the SDK's answer on the MCP path; it accepts any port there, and does not guard the hook path).
    - Origin, when sent (browsers send it; MCP clients and hooks do not), must be http://<one of those
      names>:<that port>, else 403 ("null" included).
    A listener on another address (e.g. 0.0.0.0 behind a proxy) is not checked here: there the
    bearer token is the guard, and the names it is reached by are the operator's."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        server = scope.get("server")
        port = server[1] if server else None
        hosts = [v.decode("latin-1") for k, v in scope.get("headers", []) if k == b"host"]
        origins = [v.decode("latin-1") for k, v in scope.get("headers", []) if k == b"origin"]
        allowed = {f"{name}:{port}" for name in LOOPBACK_NAMES}
        if len(hosts) != 1 or hosts[0].lower() not in allowed:
            log.warning("request refused: Host is not this loopback listener", extra={"host": hosts[:2]})
            await _refuse(send, 421, f"invalid Host header: this listener answers to {', '.join(sorted(allowed))} "
                          "only (DNS rebinding protection)")
            return
        if len(origins) > 1 or (origins and origins[0].lower() not in {f"http://{h}" for h in allowed}):
            log.warning("request refused: Origin is not this loopback listener", extra={"origin": origins[:2]})
            await _refuse(send, 403, "invalid Origin header: only pages of this listener itself may call it "
                          "(DNS rebinding protection)")
            return
        await self.app(scope, receive, send)


class BearerAuth:
    """ASGI middleware in front of the MCP endpoint.

    - Exactly one `Authorization: Bearer <token>` header with a token listed in `clients`, else 401
      (two headers could name two identities; the SDK and this layer might read different ones).
      The 401 carries `WWW-Authenticate: Bearer error="invalid_token"` (RFC 6750) and a JSON-RPC
      error body, so clients say "invalid token" instead of starting an OAuth flow.
    - An MCP session belongs to the token that opened it (the `Mcp-Session-Id` of its initialize
      response): a request with that session id and another token is refused with 403, so no
      caller can write into (or read the history of) another caller's session. A session id this
      layer never saw issued is refused with 404 (the spec's "session not found": re-initialize).
    Identity is never read from any other header."""

    MAX_SESSIONS = 100_000   # bound on remembered owners; the oldest are forgotten (their ids then get 404)

    def __init__(self, app: ASGIApp, cfg: GatewayConfig) -> None:
        self.app = app
        self.cfg = cfg
        self._owners: OrderedDict[str, str] = OrderedDict()   # MCP session id → sha256 of its token

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        auths = [v.decode("latin-1") for k, v in scope.get("headers", []) if k == b"authorization"]
        sids = [v.decode("latin-1") for k, v in scope.get("headers", []) if k == b"mcp-session-id"]
        scheme, _, token = (auths[0] if auths else "").partition(" ")
        token = token.strip()
        if len(auths) != 1 or scheme.lower() != "bearer" or self.cfg.agent_for_token(token) is None:
            why = ("several Authorization headers" if len(auths) > 1 else
                   "no Authorization header" if not auths else
                   "Authorization scheme is not Bearer" if scheme.lower() != "bearer" else
                   "unknown bearer token")
            digest = hashlib.sha256(token.encode()).hexdigest()[:12] if token else "none"
            log.warning("client refused", extra={"why": why, "token_sha256_12": digest})
            await _refuse(send, 401, f"invalid token: {why}; send one Authorization: Bearer <token> header "
                          "with a token from the gateway config's clients",
                          [(b"www-authenticate", f'Bearer realm="decider-gateway", error="invalid_token", '
                            f'error_description="{why}"'.encode("latin-1"))])
            return
        owner = hashlib.sha256(token.encode()).hexdigest()
        if len(sids) > 1:
            await _refuse(send, 400, "several Mcp-Session-Id headers")
            return
        if sids:
            bound = self._owners.get(sids[0])
            if bound is None:
                await _refuse(send, 404, f"MCP session {sids[0]} not found: initialize a new session", code=-32001)
                return
            if bound != owner:
                log.warning("client refused: MCP session of another client",
                            extra={"mcp_session_id": sids[0], "token_sha256_12": owner[:12]})
                await _refuse(send, 403, f"MCP session {sids[0]} belongs to another client: initialize your own "
                              "session (a request without Mcp-Session-Id)")
                return
            await self.app(scope, receive, self._forget_on_success(sids[0], send)
                           if scope.get("method") == "DELETE" else send)
            return
        await self.app(scope, receive, self._bind_issued_session(owner, send))

    def _bind_issued_session(self, owner: str, send: Send) -> Send:
        """The session id the SDK issues on this (initialize) response becomes this token's."""
        async def wrapped(message: Any) -> None:
            if message["type"] == "http.response.start":
                for k, v in message.get("headers", []):
                    if k.lower() == b"mcp-session-id":
                        self._owners[v.decode("latin-1")] = owner
                        while len(self._owners) > self.MAX_SESSIONS:
                            self._owners.popitem(last=False)
            await send(message)
        return wrapped

    def _forget_on_success(self, sid: str, send: Send) -> Send:
        async def wrapped(message: Any) -> None:
            if message["type"] == "http.response.start" and message.get("status", 500) < 300:
                self._owners.pop(sid, None)
            await send(message)
        return wrapped


async def _refuse(send: Send, status: int, message: str, extra_headers: list[tuple[bytes, bytes]] | None = None,
                  code: int = -32600) -> None:
    """An HTTP refusal whose body is a JSON-RPC error (id null: the request was not read), which MCP
    clients surface as the error's message."""
    body = json.dumps({"jsonrpc": "2.0", "id": None, "error": {"code": code, "message": message}}).encode()
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"), *(extra_headers or [])]})
    await send({"type": "http.response.body", "body": body})


async def run_gateway(cfg: GatewayConfig, *, port_file: str | None = None) -> None:
    link = DeciderLink(cfg.decider)
    ups = [UpstreamConnection(u) for u in cfg.upstreams]
    gw = Gateway(cfg, link, ups)
    try:
        async with anyio.create_task_group() as tg:
            for up in ups:   # connect in parallel; serve once each has connected or failed once
                tg.start_soon(up.run)
            for up in ups:
                await up.started.wait()
            # What start-up loaded (the MCP SDK, pydantic's models, grpc, protobuf) lives as long as
            # the gateway: out of the collector's full passes, each of which walked all of it while
            # every call in flight waited (66 ms once per ~3,000 calls at C=16; docs/performance.md).
            gc.collect()
            gc.freeze()
            stop: list[Callable[[], None]] = [tg.cancel_scope.cancel]
            tg.start_soon(_stop_on_signal, stop)
            try:
                if cfg.http is None:
                    async with serve_stdio() as (read, write):
                        await gw.server.run(read, write, gw.server.create_initialization_options())
                else:
                    await _serve_http(gw, cfg, port_file, stop)
            finally:
                for up in ups:
                    up.stop()
                tg.cancel_scope.cancel()
    finally:
        with anyio.CancelScope(shield=True):
            await link.close()
        log.info("gateway stopped")


async def _stop_on_signal(stop: list[Callable[[], None]]) -> None:
    """The first SIGTERM/SIGINT stops gracefully (stop[0]); a second one cancels everything."""
    with anyio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
        n = 0
        async for sig in signals:
            log.info("stopping", extra={"signal": signal.Signals(sig).name})
            stop[min(n, len(stop) - 1)]()
            n += 1


async def _serve_http(gw: Gateway, cfg: GatewayConfig, port_file: str | None,
                      stop: list[Callable[[], None]]) -> None:
    import uvicorn

    assert cfg.http is not None
    host, port, path = cfg.http
    mcp_app: Any = gw.server.streamable_http_app(streamable_http_path=path, host=host)
    hooks = ClaudeCodeHookEndpoint(cfg)

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        # Claude Code's "type": "http" hooks share the listener (and BearerAuth) with MCP
        if scope["type"] == "http" and scope.get("path") == HOOK_PATH:
            await hooks(scope, receive, send)
        else:
            await mcp_app(scope, receive, send)

    guarded: ASGIApp = BearerAuth(app, cfg)
    if host.strip("[]") in ("127.0.0.1", "localhost", "::1"):
        guarded = HostCheck(guarded)
    config = uvicorn.Config(guarded, host=host, port=port, log_level="warning", lifespan="on")
    server = uvicorn.Server(config)
    # uvicorn would replace the process's signal handlers; ours ask it to drain and exit instead.
    server.capture_signals = contextlib.nullcontext  # type: ignore[method-assign]
    stop.insert(0, lambda: setattr(server, "should_exit", True))

    async def announce() -> None:
        while not server.started:
            await anyio.sleep(0.02)
        bound = server.servers[0].sockets[0].getsockname()[1]
        log.info("gateway serving", extra={"listen": f"http://{host}:{bound}{path}", "upstreams": list(gw.upstreams)})
        if port_file:
            Path(port_file).write_text(str(bound))

    async with anyio.create_task_group() as tg:
        tg.start_soon(announce)
        try:
            await server.serve()
        finally:
            tg.cancel_scope.cancel()
