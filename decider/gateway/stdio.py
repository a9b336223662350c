"""The gateway's stdio listener without a thread per line.

The SDK's `stdio_server()` reads and writes stdin/stdout through anyio's file wrappers: three
worker-thread hops per message (readline, write, flush) — measured ~12 per tools/call, a large share
of the gateway's CPU per call. When both ends are pipes or sockets (how MCP clients start servers),
this serves them with asyncio's pipe transports instead, and otherwise falls back to the SDK.
Like the SDK, it points fd 0 at /dev/null and fd 1 at stderr while serving, so a stray print (ours
or a library's) cannot corrupt the JSON-RPC stream, and restores them on exit.
"""

from __future__ import annotations

import asyncio
import os
import stat
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from mcp.server.stdio import stdio_server

__all__ = ["serve_stdio"]

# One JSON-RPC message per line; a tool result may carry a whole file.
MAX_LINE = 64 * 1024 * 1024


class _Lines:
    """`async for line in stdin` over an asyncio StreamReader."""

    def __init__(self, reader: asyncio.StreamReader) -> None:
        self._reader = reader

    def __aiter__(self) -> _Lines:
        return self

    async def __anext__(self) -> str:
        line = await self._reader.readline()
        if not line:
            raise StopAsyncIteration
        return line.decode("utf-8", errors="replace")


class _Writer:
    def __init__(self, writer: asyncio.StreamWriter) -> None:
        self._writer = writer

    async def write(self, text: str) -> None:
        self._writer.write(text.encode("utf-8"))

    async def flush(self) -> None:
        await self._writer.drain()


def _is_pipe(fd: int) -> bool:
    try:
        mode = os.fstat(fd).st_mode
    except OSError:
        return False
    return stat.S_ISFIFO(mode) or stat.S_ISSOCK(mode)


@asynccontextmanager
async def serve_stdio() -> AsyncIterator[Any]:
    """(read_stream, write_stream) for `Server.run`, like `mcp.server.stdio.stdio_server()`."""
    if not (_is_pipe(0) and _is_pipe(1)):
        async with stdio_server() as streams:
            yield streams
        return
    in_fd, out_fd = os.dup(0), os.dup(1)
    saved_in, saved_out = os.dup(0), os.dup(1)
    devnull = os.open(os.devnull, os.O_RDONLY)
    os.dup2(devnull, 0)
    os.dup2(2, 1)
    os.close(devnull)
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader(limit=MAX_LINE)
    r_transport, _ = await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader),
                                                  os.fdopen(in_fd, "rb", buffering=0))
    w_transport, w_protocol = await loop.connect_write_pipe(asyncio.streams.FlowControlMixin,
                                                            os.fdopen(out_fd, "wb", buffering=0))
    writer = asyncio.StreamWriter(w_transport, w_protocol, None, loop)
    try:
        async with stdio_server(stdin=_Lines(reader), stdout=_Writer(writer)) as streams:  # type: ignore[arg-type]
            yield streams
    finally:
        r_transport.close()
        w_transport.close()
        os.dup2(saved_in, 0)
        os.dup2(saved_out, 1)
        os.close(saved_in)
        os.close(saved_out)
