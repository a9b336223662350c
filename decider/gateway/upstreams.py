"""Connections to the upstream MCP servers: stdio subprocesses or streamable-HTTP URLs.

Each upstream has a supervisor task that owns its transport and `ClientSession` (anyio scopes must
be entered and left in one task). Calls use the session from any task. A broken connection (the
subprocess crashed, the URL went away) is noticed by the call that hits it; the supervisor then
closes the old transport (stopping what is left of the subprocess) and reconnects with a back-off,
so one crashed upstream never stops the gateway. `stop()` ends every subprocess: no orphans.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any, TextIO

import anyio
import httpx2
import mcp_types as types
from mcp import ClientSession, StdioServerParameters, stdio_client
from mcp.client.streamable_http import streamable_http_client
from mcp.shared.exceptions import MCPError

from decider.gateway.config import Upstream

__all__ = ["UpstreamConnection", "UpstreamUnavailable", "http_transport"]

log = logging.getLogger("decider.gateway")

ProgressFn = Callable[[float, float | None, str | None], Awaitable[None]]
_BROKEN = (anyio.ClosedResourceError, anyio.BrokenResourceError, anyio.EndOfStream, OSError)


@asynccontextmanager
async def http_transport(url: str, token: str | None) -> AsyncIterator[Any]:
    """streamable HTTP with an optional bearer token; the httpx client is closed with the transport."""
    headers = {"Authorization": f"Bearer {token}"} if token else None
    # no read timeout: a tool call may run long; cancellation (client or gateway) ends it instead.
    async with httpx2.AsyncClient(headers=headers, timeout=httpx2.Timeout(30.0, read=None)) as client, \
            streamable_http_client(url, http_client=client) as streams:
        yield streams


class UpstreamUnavailable(Exception):
    """The upstream is not connected, or its connection broke during the request."""


class UpstreamConnection:
    def __init__(self, spec: Upstream, *, connect_timeout: float = 30.0, errlog: TextIO | None = None) -> None:
        self.spec = spec
        self.session: ClientSession | None = None
        self.init: types.InitializeResult | None = None
        self.tools: dict[str, types.Tool] = {}
        self._ready = anyio.Event()
        self._broken = anyio.Event()
        self._stopping = False
        self.started = anyio.Event()   # set once the first connection attempt has ended either way
        self._connect_timeout = connect_timeout
        self._errlog = errlog or sys.stderr
        self.last_error = ""

    @property
    def name(self) -> str:
        return self.spec.name

    # ---- lifecycle (run in the gateway's task group) ----
    async def run(self) -> None:
        backoff = 0.2
        while not self._stopping:
            try:
                await self._connect_and_hold()
                backoff = 0.2
            except Exception as e:  # noqa: BLE001 - any transport failure: report it, retry with back-off
                self.last_error = f"{type(e).__name__}: {e}"
                log.warning("upstream connection failed", extra={"upstream": self.name, "error": self.last_error})
            finally:
                self.session = None
                if self._ready.is_set():   # keep an unset event: requests may already wait on it
                    self._ready = anyio.Event()
            # A first connection that failed does not stop the gateway: this upstream's calls fail
            # clearly until it comes up.
            self.started.set()
            if self._stopping:
                break
            await anyio.sleep(backoff)
            backoff = min(backoff * 2, 5.0)

    async def _connect_and_hold(self) -> None:
        self._broken = anyio.Event()
        async with self._transport() as (read, write), ClientSession(read, write) as session:
            with anyio.fail_after(self._connect_timeout):
                self.init = await session.initialize()
                if self.init.capabilities.tools is not None:
                    self.tools = {t.name: t for t in await self._list_all_tools(session)}
            self.session = session
            self._ready.set()
            self.last_error = ""
            log.info("upstream connected", extra={"upstream": self.name, "tools": len(self.tools)})
            self.started.set()
            await self._broken.wait()

    def _transport(self) -> Any:
        if self.spec.url:
            return http_transport(self.spec.url, self.spec.token)
        params = StdioServerParameters(command=self.spec.command[0], args=list(self.spec.command[1:]),
                                       env=self.spec.env or None, cwd=self.spec.cwd)
        return stdio_client(params, errlog=self._errlog)

    def stop(self) -> None:
        self._stopping = True
        self._broken.set()

    def mark_broken(self, why: str) -> None:
        """Called by the request that found the connection dead: later requests wait for the
        supervisor's reconnection instead of hitting the dead session."""
        self.last_error = why
        self.session = None
        if self._ready.is_set():
            self._ready = anyio.Event()
        self._broken.set()

    # ---- requests ----
    async def get(self, wait: float = 5.0) -> ClientSession:
        """The connected session, waiting up to `wait` seconds for a (re)connection."""
        with anyio.move_on_after(wait):
            await self._ready.wait()
        if self.session is None:
            detail = f": {self.last_error}" if self.last_error else ""
            raise UpstreamUnavailable(f"upstream '{self.name}' is not connected{detail}")
        return self.session

    async def call(self, fn: Callable[[ClientSession], Awaitable[Any]]) -> Any:
        """Run one request on the session; a broken connection becomes UpstreamUnavailable."""
        session = await self.get()
        try:
            return await fn(session)
        except MCPError as e:
            if e.code == types.CONNECTION_CLOSED:
                self.mark_broken(e.message)
                raise UpstreamUnavailable(f"upstream '{self.name}' closed the connection during the call") from None
            raise
        except _BROKEN as e:
            self.mark_broken(f"{type(e).__name__}: {e}")
            raise UpstreamUnavailable(f"upstream '{self.name}' closed the connection during the call") from None

    async def list_tools(self) -> list[types.Tool]:
        tools = await self.call(self._list_all_tools)
        self.tools = {t.name: t for t in tools}
        return tools

    @staticmethod
    async def _list_all_tools(session: ClientSession) -> list[types.Tool]:
        out: list[types.Tool] = []
        cursor: str | None = None
        for _ in range(1000):  # bounded: a server that pages forever is cut off
            res = await session.list_tools(params=types.PaginatedRequestParams(cursor=cursor) if cursor else None)
            out += res.tools
            cursor = res.next_cursor
            if not cursor:
                break
        return out

    def supports(self, capability: str) -> bool:
        caps = self.init.capabilities if self.init else None
        return caps is not None and getattr(caps, capability, None) is not None
