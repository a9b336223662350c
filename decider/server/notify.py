"""Approval notifications: a webhook POST (Slack-compatible JSON, with a link into the console) for
every new pending approval, retried with exponential back-off, delivered at least once.

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
import urllib.error
import urllib.request
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from typing import Any
from urllib.parse import urlsplit

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
    timeout_s: float = 10.0
    claim_s: float = 30.0             # how long one replica holds a delivery it is attempting


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
        self.delivered = 0

    async def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="decider-approval-webhook")
        log.info("approval webhook on", extra={"webhook": redact_url(self.settings.url),
                                               "console_url": self.settings.console_url})

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    async def _run(self) -> None:
        while True:
            try:
                await self.tick()
            except Exception as exc:  # noqa: BLE001 - the database may be briefly away; try again
                log.error("approval webhook tick failed", extra={"error": str(exc)})
            await asyncio.sleep(self.settings.poll_interval_s)

    async def tick(self) -> None:
        await asyncio.to_thread(self._discover)
        now = datetime.now(timezone.utc)
        for row in await asyncio.to_thread(self.outbox.due, now):
            await self._deliver(row)

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
            await asyncio.to_thread(self._post, body, decision_id)
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

    def _post(self, body: bytes, decision_id: str) -> None:
        req = urllib.request.Request(self.settings.url, data=body, method="POST", headers={
            "Content-Type": "application/json", "User-Agent": "decider-approval-webhook",
            # Receivers that dedupe (delivery is at least once) key on this.
            "Idempotency-Key": decision_id, "X-Decider-Decision-Id": decision_id})
        try:
            with urllib.request.urlopen(req, timeout=self.settings.timeout_s) as resp:  # noqa: S310 - operator's URL
                if not 200 <= resp.status < 300:
                    raise OSError(f"HTTP {resp.status}")
        except urllib.error.HTTPError as e:
            raise OSError(f"HTTP {e.code}") from None
        except urllib.error.URLError as e:
            # Never the URL itself in the error: it may hold the webhook's secret.
            raise OSError(f"cannot reach the webhook: {e.reason}") from None
