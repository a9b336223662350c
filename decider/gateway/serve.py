"""Run the gateway: connect the upstreams, serve clients over stdio or streamable HTTP, stop cleanly.

On SIGTERM / SIGINT or when a stdio client closes its end, the gateway stops serving, closes every
upstream connection (stdio upstream subprocesses are terminated, then killed if they linger) and
the decider stream.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import signal
from collections.abc import Callable
from pathlib import Path
from typing import Any

import anyio
from starlette.types import ASGIApp, Receive, Scope, Send

from decider.gateway.config import GatewayConfig
from decider.gateway.decisions import DeciderLink
from decider.gateway.proxy import Gateway
from decider.gateway.stdio import serve_stdio
from decider.gateway.upstreams import UpstreamConnection

__all__ = ["BearerAuth", "run_gateway"]

log = logging.getLogger("decider.gateway")


class BearerAuth:
    """ASGI middleware: an HTTP client must present a bearer token listed in `clients`; else 401.
    Identity is never read from any other header."""

    def __init__(self, app: ASGIApp, cfg: GatewayConfig) -> None:
        self.app = app
        self.cfg = cfg

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            auth = ""
            for k, v in scope.get("headers", []):
                if k == b"authorization":
                    auth = v.decode("latin-1")
            scheme, _, token = auth.partition(" ")
            if scheme.lower() != "bearer" or self.cfg.agent_for_token(token.strip()) is None:
                digest = hashlib.sha256(token.encode()).hexdigest()[:12] if token else "none"
                log.warning("client refused: unknown bearer token", extra={"token_sha256_12": digest})
                body = b'{"error": "unauthorized: send Authorization: Bearer <a token from the gateway config>"}'
                await send({"type": "http.response.start", "status": 401,
                            "headers": [(b"content-type", b"application/json"),
                                        (b"www-authenticate", b'Bearer realm="decider-gateway"')]})
                await send({"type": "http.response.body", "body": body})
                return
        await self.app(scope, receive, send)


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
    app: Any = gw.server.streamable_http_app(streamable_http_path=path, host=host)
    config = uvicorn.Config(BearerAuth(app, cfg), host=host, port=port, log_level="warning", lifespan="on")
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
