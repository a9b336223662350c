"""Approval notifications: a webhook POST (Slack-compatible JSON, with a link into the console) for
every new pending approval, retried with exponential back-off, delivered at least once.

Delivery is hostile-receiver safe: a redirect is a failed attempt (never followed: a 302 would turn
the POST into a GET elsewhere and "deliver" nothing), each attempt has one deadline for the whole
exchange (a receiver dribbling bytes cannot hold it), and at most `concurrency` attempts are in flight
while the poll loop keeps going, so one slow receiver response never serialises the others.

It runs in the server, not the console: the console holds no state, while the server owns the
database where the outbox and its cursor live (store/notifications.py), so a crash or a restart
loses nothing and resends at most what was not acknowledged. Replicas share the outbox: each
delivery is claimed by one of them at a time.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import socket
import time
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from typing import Any
from urllib.parse import urlsplit

import httpx2
from sqlalchemy import Engine

from decider.record.ids import new_id
from decider.server import mrkdwn
from decider.store.decisions import DecisionStore
from decider.store.notifications import NotificationStore

__all__ = ["WebhookSettings", "ApprovalNotifier", "slack_message", "redact_url"]

log = logging.getLogger("decider.server.notify")
CURSOR = "approval-webhook"


@dataclass(frozen=True, slots=True)
class WebhookSettings:
    url: str
    console_url: str = ""
    poll_interval_s: float = 0.5
    lookback_s: float = 5.0           # a decision committed this late after its id was made is still found
    backoff_base_s: float = 0.5
    backoff_max_s: float = 60.0
    timeout_s: float = 10.0           # one attempt, connect to last byte
    concurrency: int = 4              # attempts in flight at once, per process

    @property
    def claim_s(self) -> float:
        """How long one replica holds a delivery it is attempting: past its deadline, so no other
        replica sends it while this attempt may still succeed."""
        return self.timeout_s + 20.0


def redact_url(url: str) -> str:
    """Scheme and host only: a webhook URL's path is often its secret (Slack's are)."""
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.hostname or ''}{':' + str(parts.port) if parts.port else ''}/…"


def slack_message(row: dict[str, Any], console_url: str) -> dict[str, Any]:
    """A Slack incoming-webhook message (`text` + `blocks`); other chat tools read `text`.

    Every value that came with the call (agent, team, tool, session, arguments, reasons, which may
    quote arguments) is escaped for mrkdwn and set as code (server/mrkdwn.py): only the console
    link, which decider builds from `--console-url` and a decision id it made, is a live link."""
    decision_id = row["decision_id"]
    reasons = json.loads(row.get("reasons") or "[]")
    why = "; ".join(r.get("text") or r.get("rule_id", "") for r in reasons) or row.get("deciding_rule") or ""
    who = mrkdwn.code(row["agent_id"]) + (f" (team {mrkdwn.code(row['team'])})" if row.get("team") else "")
    tool = mrkdwn.code(row["tool_name"])
    reason = mrkdwn.code(why, limit=1000) if why else ""
    link = f"{console_url.rstrip('/')}/decisions/{decision_id}" if console_url else ""
    expires = row.get("approval_expires_at")
    if isinstance(expires, datetime):
        # SQLite hands back naive datetimes; every stored time is UTC.
        expires = expires if expires.tzinfo else expires.replace(tzinfo=timezone.utc)
        expires_text = expires.astimezone(timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC")
    else:
        expires_text = mrkdwn.escape(str(expires or ""))
    text = f"Approval needed: {tool} by {who}" + (f": {reason}." if reason else ".")
    text += f" <{mrkdwn.escape_link(link)}|Open in the decider console>" if link else f" Decision {decision_id}."
    blocks: list[dict[str, Any]] = [
        {"type": "section", "text": {"type": "mrkdwn", "text": f"*Approval needed*: {tool} by {who}\n{reason}"}},
        {"type": "section", "text": {"type": "mrkdwn", "text": mrkdwn.code_block(row.get("args") or "{}")}},
        {"type": "context", "elements": [{"type": "mrkdwn", "text":
            f"decision `{decision_id}` · rule {mrkdwn.code(row.get('deciding_rule') or '-')} · session "
            f"{mrkdwn.code(row.get('session_id') or '-')} · expires {expires_text}"}]},
    ]
    if link:
        blocks.append({"type": "actions", "elements": [
            {"type": "button", "text": {"type": "plain_text", "text": "Review in console"}, "url": link}]})
    return {"text": text, "blocks": blocks}


class ApprovalNotifier:
    def __init__(self, engine: Engine, settings: WebhookSettings) -> None:
        self.settings = settings
        self.outbox = NotificationStore(engine)
        self.decisions = DecisionStore(engine)
        self.me = f"{socket.gethostname()}:{os.getpid()}"
        self._task: asyncio.Task[None] | None = None
        self._inflight: dict[str, asyncio.Task[None]] = {}
        self._http: httpx2.AsyncClient | None = None
        self.delivered = 0

    async def start(self) -> None:
        # httpx logs each request with its full URL at info; the webhook's path is its secret, and
        # this module's own lines name the host only.
        logging.getLogger("httpx2").setLevel(logging.WARNING)
        # Redirects are never followed (httpx's default, stated here because it is the point);
        # proxies from the environment still apply, as they did with urllib.
        self._http = httpx2.AsyncClient(follow_redirects=False, timeout=self.settings.timeout_s,
                                        limits=httpx2.Limits(max_connections=self.settings.concurrency))
        self._task = asyncio.create_task(self._run(), name="decider-approval-webhook")
        log.info("approval webhook on", extra={"webhook": redact_url(self.settings.url),
                                               "console_url": self.settings.console_url})

    async def stop(self) -> None:
        tasks = [t for t in (self._task, *self._inflight.values()) if t is not None]
        for t in tasks:
            t.cancel()
        for t in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await t
        if self._http is not None:
            await self._http.aclose()

    async def _run(self) -> None:
        while True:
            try:
                await self.tick()
            except Exception as exc:  # noqa: BLE001 - the database may be briefly away; try again
                log.error("approval webhook tick failed", extra={"error": str(exc)})
            await asyncio.sleep(self.settings.poll_interval_s)

    async def tick(self) -> None:
        """Find new approvals and start deliveries into free slots; never waits for a delivery."""
        await asyncio.to_thread(self._discover)
        free = self.settings.concurrency - len(self._inflight)
        if free <= 0:
            return
        now = datetime.now(timezone.utc)
        for row in await asyncio.to_thread(self.outbox.due, now, free + len(self._inflight)):
            if free <= 0:
                break
            decision_id = row["decision_id"]
            if decision_id in self._inflight:
                continue
            task = asyncio.create_task(self._deliver(row), name=f"decider-approval-webhook-{decision_id}")
            self._inflight[decision_id] = task
            task.add_done_callback(lambda _t, k=decision_id: self._inflight.pop(k, None))
            free -= 1

    def _discover(self) -> None:
        now = datetime.now(timezone.utc)
        floor = new_id(int(time.time() * 1000) - int(self.settings.lookback_s * 1000))[:10] + "0" * 16
        cursor = self.outbox.cursor(CURSOR)
        start = floor if cursor is None else min(cursor, floor)
        ids = self.outbox.new_approvals(start)
        if ids:
            self.outbox.enqueue(ids, now)
        newest = max([cursor or "", *ids])
        if newest:
            self.outbox.set_cursor(CURSOR, newest, now)
        elif cursor is None:
            self.outbox.set_cursor(CURSOR, floor, now)

    async def _deliver(self, item: dict[str, Any]) -> None:
        try:
            await self._attempt(item)
        except Exception as exc:  # noqa: BLE001 - the database may be briefly away; the claim expires
            log.error("approval webhook delivery failed", extra={"decision_id": item["decision_id"],
                                                                  "error": str(exc)[:200]})

    async def _attempt(self, item: dict[str, Any]) -> None:
        s = self.settings
        decision_id = item["decision_id"]
        now = datetime.now(timezone.utc)
        if not await asyncio.to_thread(self.outbox.claim, decision_id, self.me, now, now + timedelta(seconds=s.claim_s)):
            return
        row = await asyncio.to_thread(self.decisions.get, decision_id)
        if row is None:
            return
        body = json.dumps(slack_message(row, s.console_url)).encode()
        try:
            await self._post(body, decision_id)
        except Exception as exc:  # noqa: BLE001 - any failure is retried
            attempts = item["attempts"] + 1
            delay = min(s.backoff_max_s, s.backoff_base_s * 2 ** (attempts - 1))
            await asyncio.to_thread(self.outbox.failed, decision_id, str(exc),
                                    datetime.now(timezone.utc) + timedelta(seconds=delay))
            log.warning("approval webhook failed; will retry", extra={
                "decision_id": decision_id, "attempt": attempts, "retry_in_s": delay,
                "webhook": redact_url(s.url), "error": str(exc)[:200]})
            return
        await asyncio.to_thread(self.outbox.delivered, decision_id, datetime.now(timezone.utc))
        self.delivered += 1
        log.info("approval webhook delivered", extra={"decision_id": decision_id, "attempt": item["attempts"] + 1})

    async def _post(self, body: bytes, decision_id: str) -> None:
        assert self._http is not None, "start() first"
        headers = {"Content-Type": "application/json", "User-Agent": "decider-approval-webhook",
                   # Receivers that dedupe (delivery is at least once) key on this.
                   "Idempotency-Key": decision_id, "X-Decider-Decision-Id": decision_id}
        timeout = self.settings.timeout_s
        try:
            # httpx's timeout is per socket operation; this one bounds the whole exchange.
            async with asyncio.timeout(timeout):
                # Streamed and never read: only the status counts, and a receiver answering with an
                # endless body must not fill memory or hold the attempt.
                async with self._http.stream("POST", self.settings.url, content=body, headers=headers) as resp:
                    status = resp.status_code
        except TimeoutError:
            raise OSError(f"timed out after {timeout:g} s") from None
        except httpx2.TimeoutException:
            raise OSError(f"timed out after {timeout:g} s") from None
        except httpx2.HTTPError as e:
            # Never the URL itself in the error: it may hold the webhook's secret.
            raise OSError(f"cannot reach the webhook: {type(e).__name__}: {_without_url(str(e), self.settings.url)}") \
                from None
        if 300 <= status < 400:
            raise OSError(f"HTTP {status}: redirect not followed (the webhook URL must answer 2xx itself)")
        if not 200 <= status < 300:
            raise OSError(f"HTTP {status}")


def _without_url(text: str, url: str) -> str:
    parts = urlsplit(url)
    for secret in (url, parts.path, parts.query):
        if secret and secret != "/":
            text = text.replace(secret, "…")
    return text
