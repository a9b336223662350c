"""`POST /hooks/claude-code` on the gateway's HTTP listener: Claude Code's `"type": "http"` hooks.

The same contract as `decider hook claude-code` (decider/hooks/claude_code.py), over HTTP: the event
JSON is the request body, the answer is the response body. The identity is the agent the request's
bearer token maps to in the gateway config's `clients` (checked by BearerAuth in front of this), and
decider is asked with the gateway's own decider options. Claude Code treats a non-2xx answer of an
HTTP hook as a non-blocking error and lets the tool run, so every refusal here — decider unreachable,
a body that is not an event — is a 200 with `permissionDecision: "deny"`: fail closed.
`?on_approval=wait` waits up to the config's `approval_wait` for an approver instead of answering `ask`.
"""

from __future__ import annotations

import json
import logging
import tempfile
from pathlib import Path
from typing import Any

import anyio
from starlette.types import Receive, Scope, Send

from decider.gateway.config import GatewayConfig
from decider.hooks.claude_code import EXIT_BLOCK, HookConfig, handle_event

__all__ = ["HOOK_PATH", "ClaudeCodeHookEndpoint"]

log = logging.getLogger("decider.gateway")

HOOK_PATH = "/hooks/claude-code"
MAX_BODY = 1 << 20   # a hook event is small; a larger body is refused unread past this


class ClaudeCodeHookEndpoint:
    def __init__(self, cfg: GatewayConfig) -> None:
        self.cfg = cfg
        # PreToolUse → PostToolUse bookkeeping (tool_use_id → decision id), per gateway process
        self._state = Path(tempfile.mkdtemp(prefix="decider-hooks-"))

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope.get("method") != "POST":
            await _reply(send, 405, {"error": "POST the hook event JSON"}, [(b"allow", b"POST")])
            return
        body = b""
        while True:
            message = await receive()
            body += message.get("body", b"")
            if len(body) > MAX_BODY:
                await _reply(send, 200, _deny(f"decider hook: event larger than {MAX_BODY} bytes; blocked"))
                return
            if not message.get("more_body"):
                break
        try:
            event = json.loads(body or b"null")
        except ValueError as e:
            await _reply(send, 200, _deny(f"decider hook: the event is not JSON ({e}); blocked"))
            return
        auth = dict(scope.get("headers", [])).get(b"authorization", b"").decode("latin-1")
        agent = self.cfg.agent_for_token(auth.partition(" ")[2].strip())
        if agent is None:   # BearerAuth let no such request through; never borrow another identity
            await _reply(send, 401, {"error": "invalid token"})
            return
        wait = "on_approval=wait" in scope.get("query_string", b"").decode("latin-1").split("&")
        d = self.cfg.decider
        hook = HookConfig(target=d.target, agent=agent, token=d.token, timeout_s=d.deadline_s,
                          on_approval="wait" if wait else "ask", wait_s=self.cfg.approval_wait_s,
                          state_dir=self._state, tls_ca=d.tls_ca, tls_cert=d.tls_cert, tls_key=d.tls_key)
        result = await anyio.to_thread.run_sync(handle_event, event, hook)
        if result.exit_code == EXIT_BLOCK:
            await _reply(send, 200, _deny(result.stderr))
            return
        if result.stderr:   # e.g. an outcome that could not be reported: the tool already ran
            log.warning("claude-code hook", extra={"error": result.stderr})
        await _reply(send, 200, json.loads(result.stdout) if result.stdout else {})


def _deny(reason: str) -> dict[str, Any]:
    return {"hookSpecificOutput": {"hookEventName": "PreToolUse", "permissionDecision": "deny",
                                   "permissionDecisionReason": reason}}


async def _reply(send: Send, status: int, body: dict[str, Any],
                 headers: list[tuple[bytes, bytes]] | None = None) -> None:
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"), *(headers or [])]})
    await send({"type": "http.response.body", "body": json.dumps(body).encode()})
