"""Bounded, shared live streams for the console.

An open approvals page used to poll `ListApprovals` once a second on its own, so one approver with
40 tabs (or a script opening 40 `/events/approvals` streams) multiplied decider's load by 40. Here
every stream of one bearer token reads the same poll (`SharedApprovals`: one query per tick per
token, whatever the number of streams; one token is one principal, so they may all see the same
list), and each session holds at most `limit` open streams (`StreamSlots`). The poll stops when its
last stream closes.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from starlette.responses import StreamingResponse
from starlette.types import Receive, Scope, Send

__all__ = ["SharedApprovals", "StreamSlots", "SlotStream", "Problem"]

log = logging.getLogger("decider.console")


@dataclass(frozen=True, slots=True)
class Problem:
    """What a poll got instead of a list; every stream shows `message` and the poll tries again."""

    message: str


@dataclass(eq=False)
class _Poll:
    """One token's poll: the newest result (a list, or a Problem), numbered."""

    version: int = 0
    result: Any = None
    started: int = 0          # fetches begun
    result_started: int = 0   # which of them the current result came from
    refs: int = 0
    cond: asyncio.Condition = field(default_factory=asyncio.Condition)
    task: asyncio.Task[None] | None = None

    async def after(self, seen: int, fresh_after: int = 0) -> tuple[int, Any]:
        """The first result newer than `seen` whose fetch began after fetch number `fresh_after`.

        A stream passes `started` as it was when it joined: its page was just rendered from a fresh
        read, so a result fetched before that (an approval since resolved, say) must not be shown as
        if it were news."""
        async with self.cond:
            await self.cond.wait_for(lambda: self.version > seen and self.result_started > fresh_after)
            return self.version, self.result


class SharedApprovals:
    def __init__(self, fetch: Callable[[str], Awaitable[Any]], poll_s: float,
                 explain: Callable[[Exception], str | None]) -> None:
        self._fetch = fetch
        self._poll_s = poll_s
        self._explain = explain   # an expected failure's message for the page; None: unexpected
        self._polls: dict[str, _Poll] = {}
        self.queries = 0   # calls made, for tests and metrics

    @contextlib.asynccontextmanager
    async def watch(self, token: str) -> AsyncIterator[_Poll]:
        poll = self._polls.get(token)
        if poll is None:
            poll = self._polls[token] = _Poll()
            poll.task = asyncio.create_task(self._run(token, poll), name="decider-console-approvals-poll")
        poll.refs += 1
        try:
            yield poll
        finally:
            poll.refs -= 1
            if poll.refs == 0:
                self._polls.pop(token, None)
                if poll.task is not None:
                    poll.task.cancel()

    async def _run(self, token: str, poll: _Poll) -> None:
        while True:
            delay = self._poll_s
            poll.started += 1
            this = poll.started
            try:
                self.queries += 1
                result: Any = await self._fetch(token)
            except Exception as e:  # noqa: BLE001 - a poll that died would leave its streams waiting forever
                message = self._explain(e)
                if message is None:
                    log.exception("console approvals poll failed")
                    message = "could not read the approvals queue; retrying"
                result, delay = Problem(message), self._poll_s * 5
            async with poll.cond:
                poll.version += 1
                poll.result = result
                poll.result_started = this
                poll.cond.notify_all()
            await asyncio.sleep(delay)


class StreamSlots:
    """Open streams per session id, at most `limit` each."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self._open: dict[str, int] = {}

    def take(self, sid: str) -> bool:
        if self._open.get(sid, 0) >= self.limit:
            return False
        self._open[sid] = self._open.get(sid, 0) + 1
        return True

    def give_back(self, sid: str) -> None:
        left = self._open.get(sid, 0) - 1
        if left > 0:
            self._open[sid] = left
        else:
            self._open.pop(sid, None)


class SlotStream(StreamingResponse):
    """A streaming response that gives its slot back however it ends: a closed browser, an error,
    shutdown, or a client gone before the first byte (when the body generator never even starts)."""

    def __init__(self, content: AsyncIterator[str], on_close: Callable[[], None], **kw: Any) -> None:
        super().__init__(content, **kw)
        self._on_close = on_close

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            self._on_close()
