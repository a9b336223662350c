"""Serve the console with uvicorn (`decider console`)."""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path

import uvicorn

from decider.console.app import build_app
from decider.console.config import ConsoleConfig
from decider.errors import DeciderError
from decider.server.auth import is_loopback

__all__ = ["run", "serve", "ConsoleRefused"]

log = logging.getLogger("decider.console")


class ConsoleRefused(DeciderError):
    pass


def _check(cfg: ConsoleConfig) -> tuple[str, int]:
    if cfg.tokens is None and not is_loopback(cfg.listen):
        raise ConsoleRefused(f"refusing to listen on {cfg.listen} without --tokens: anyone reaching it would act "
                             "with the console's own (token-less) access; give the token file, or listen on 127.0.0.1")
    if bool(cfg.tls_cert) != bool(cfg.tls_key):
        raise ConsoleRefused("--tls-cert and --tls-key go together")
    host, _, port = cfg.listen.rpartition(":")
    if not host or not port.isdigit():
        raise ConsoleRefused(f"--listen: expected HOST:PORT, got {cfg.listen!r}")
    return host.strip("[]"), int(port)


async def serve(cfg: ConsoleConfig) -> None:
    host, port = _check(cfg)
    config = uvicorn.Config(build_app(cfg), host=host, port=port, log_level="info", lifespan="on", log_config=None,
                            ssl_certfile=cfg.tls_cert, ssl_keyfile=cfg.tls_key, proxy_headers=False,
                            # Open event streams must not hold a shutdown for long.
                            timeout_graceful_shutdown=2)
    server = uvicorn.Server(config)
    task = asyncio.create_task(server.serve())
    while not server.started and not task.done():
        await asyncio.sleep(0.05)
    if server.started:
        bound = server.servers[0].sockets[0].getsockname()[1]
        log.info("console serving", extra={"address": f"{host}:{bound}", "decider": cfg.decider,
                                           "login": "token" if cfg.tokens else "token when decider requires one (checked by decider)",
                                           "tls": bool(cfg.tls_cert)})
        if cfg.port_file:
            Path(cfg.port_file).write_text(str(bound))
    await task


def run(cfg: ConsoleConfig) -> None:
    asyncio.run(serve(cfg))
