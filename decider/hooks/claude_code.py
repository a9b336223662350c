"""Claude Code hooks (SPEC §8 "Coding-agent hooks"): a hook event in, what Claude Code should do out.

Claude Code runs a command hook with the event JSON on stdin and acts on the JSON printed on stdout
and the exit code (0: read stdout; 2: blocked, stderr is the reason). `handle_event` is that
contract as a function (the command `decider hook claude-code` is a thin shell around it):

- `PreToolUse` → Decide: `tool_name` → `tool.name` (`mcp__<server>__<tool>` → `tool.name = <tool>`,
  `tool.server = mcp://<server>`), `tool_input` → `tool.args`, `session_id` → `agent.session_id`,
  `tool_use_id` → `tool.call_id`, `cwd` and `permission_mode` → `context`. The answer is
  `hookSpecificOutput.permissionDecision` allow / deny / ask with a reason naming the decision id.
  REQUIRE_APPROVAL → `ask` (the person at the terminal decides), or with `on_approval="wait"` the
  hook waits for an approver in decider and answers allow or deny.
- `PostToolUse` / `PostToolUseFailure` → ReportOutcome on that call's decision (status, labels).
  The hook is a new process per event, so PreToolUse leaves `tool_use_id → decision id` in a small
  per-session file under `state_dir` for the PostToolUse that follows.
- decider unreachable (or refusing the request) on PreToolUse → exit 2 with the reason: Claude Code
  blocks the call (fail closed). Any other event is answered with exit 0 and no output.
"""

from __future__ import annotations

import fnmatch
import hashlib
import json
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc

from decider.client import DeciderClient
from decider.guard.core import DeciderUnavailable, Guard
from decider.v1 import decider_pb2 as pb
from decider.v1 import decider_pb2_grpc as pb_grpc

__all__ = ["HookConfig", "HookResult", "default_state_dir", "handle_event", "tool_of"]

EXIT_OK, EXIT_NON_BLOCKING, EXIT_BLOCK = 0, 1, 2
MCP_PREFIX = "mcp__"


@dataclass(frozen=True, slots=True)
class HookConfig:
    target: str                                      # decider's gRPC address, host:port
    agent: Mapping[str, Any]                         # identity decider sees (session_id comes from the event)
    token: str | None = None                         # bearer token (an enforcer's)
    timeout_s: float = 5.0                           # every RPC; no answer in time = no decision (fail closed)
    on_approval: str = "ask"                         # ask | wait
    wait_s: float = 30.0                             # on_approval=wait: how long to wait for an approver
    state_dir: Path = field(default_factory=lambda: default_state_dir())
    outcome_labels: tuple[tuple[str, str], ...] = ()  # (tool-name glob, label) added by ReportOutcome
    tls_ca: bytes | None = None                      # PEM: TLS to decider (the gateway's decider options)
    tls_cert: bytes | None = None
    tls_key: bytes | None = None

    def channel(self) -> grpc.Channel:
        if self.tls_ca is not None or self.tls_cert is not None:
            creds = grpc.ssl_channel_credentials(root_certificates=self.tls_ca, private_key=self.tls_key,
                                                 certificate_chain=self.tls_cert)
            return grpc.secure_channel(self.target, creds)
        return grpc.insecure_channel(self.target)

    def client(self) -> DeciderClient:
        return DeciderClient(self.target, timeout=self.timeout_s, token=self.token, tls_ca=self.tls_ca,
                             tls_cert=self.tls_cert, tls_key=self.tls_key)


@dataclass(frozen=True, slots=True)
class HookResult:
    exit_code: int
    stdout: str = ""
    stderr: str = ""


def default_state_dir() -> Path:
    base = os.environ.get("XDG_STATE_HOME") or str(Path.home() / ".local" / "state")
    return Path(base) / "decider" / "claude-code"


def tool_of(tool_name: str) -> tuple[str, str]:
    """(tool.name, tool.server) of a Claude Code tool name: `mcp__<server>__<tool>` is an MCP
    server's tool (the server name ends at the first `__`); any other name is a built-in tool
    (Bash, Edit, Write, WebFetch, …) with no server."""
    if tool_name.startswith(MCP_PREFIX):
        server, sep, tool = tool_name[len(MCP_PREFIX):].partition("__")
        if sep and server and tool:
            return tool, f"mcp://{server}"
    return tool_name, ""


def handle_event(event: Any, cfg: HookConfig) -> HookResult:
    if not isinstance(event, Mapping):
        return HookResult(EXIT_BLOCK, stderr="decider hook: the event on stdin is not a JSON object; blocked")
    name = event.get("hook_event_name")
    if name == "PreToolUse":
        return _pre_tool_use(event, cfg)
    if name in ("PostToolUse", "PostToolUseFailure"):
        return _post_tool_use(event, cfg)
    return HookResult(EXIT_OK)


def _pre_tool_use(event: Mapping[str, Any], cfg: HookConfig) -> HookResult:
    tool_name = event.get("tool_name")
    args = event.get("tool_input", {})
    if not isinstance(tool_name, str) or not tool_name:
        return HookResult(EXIT_BLOCK, stderr="decider hook: PreToolUse without tool_name; blocked")
    if not isinstance(args, Mapping):
        return HookResult(EXIT_BLOCK, stderr="decider hook: tool_input is not an object; blocked")
    tool, server = tool_of(tool_name)
    session = str(event.get("session_id") or "")
    call_id = str(event.get("tool_use_id") or "")
    agent = {**dict(cfg.agent), **({"session_id": session} if session else {})}
    context = {k: event[k] for k in ("cwd", "permission_mode") if isinstance(event.get(k), str)}
    try:
        # One call per process: one unary RPC is cheaper than opening a stream for it.
        with Guard(cfg.client(), agent=agent, context=context, timeout=cfg.timeout_s, transport="unary") as guard:
            verdict = first = guard.decide(tool, args, call_id=call_id, tool_server=server)
            if verdict.outcome == "REQUIRE_APPROVAL" and cfg.on_approval == "wait":
                verdict = guard.resume(verdict, args, call_id=call_id, wait=cfg.wait_s, tool_server=server)
    except DeciderUnavailable as e:
        return HookResult(EXIT_BLOCK, stderr=f"{e} (decider hook fails closed)")
    if session and call_id:
        _remember(cfg.state_dir, session, call_id, verdict.decision_id)
    if verdict.allowed:
        why = verdict.reason if first.outcome == "ALLOW" else f"approved ({first.decision_id})"
        return _decision("allow", f"decider allowed {tool_name}: {why} (decision {verdict.decision_id})")
    if verdict.outcome == "REQUIRE_APPROVAL" and verdict.approval_state == "pending" and cfg.on_approval == "ask":
        return _decision("ask", verdict.refusal())
    return _decision("deny", verdict.refusal())


def _decision(decision: str, reason: str) -> HookResult:
    out = {"hookSpecificOutput": {"hookEventName": "PreToolUse", "permissionDecision": decision,
                                  "permissionDecisionReason": reason}}
    return HookResult(EXIT_OK, stdout=json.dumps(out))


def _post_tool_use(event: Mapping[str, Any], cfg: HookConfig) -> HookResult:
    session = str(event.get("session_id") or "")
    call_id = str(event.get("tool_use_id") or "")
    decision_id = _recall(cfg.state_dir, session, call_id) if session and call_id else None
    if decision_id is None:   # no PreToolUse decision for this call (e.g. a matcher that skipped it)
        return HookResult(EXIT_OK)
    status = "error" if event.get("hook_event_name") == "PostToolUseFailure" or _failed(event.get("tool_response")) \
        else "ok"
    tool_name = str(event.get("tool_name") or "")
    labels = sorted({label for glob, label in cfg.outcome_labels if fnmatch.fnmatchcase(tool_name, glob)})
    metadata = (("authorization", f"Bearer {cfg.token}"),) if cfg.token else None
    try:
        with cfg.channel() as channel:
            # no actual_cost (DeciderClient.report_outcome always sends one): the hook knows no cost
            pb_grpc.DeciderStub(channel).ReportOutcome(
                pb.ReportOutcomeRequest(decision_id=decision_id, status=status, labels=labels),
                timeout=cfg.timeout_s, metadata=metadata)
    except grpc.RpcError as e:
        # the tool already ran: a non-blocking error (shown in Claude Code's verbose output)
        return HookResult(EXIT_NON_BLOCKING, stderr=f"decider hook: outcome of decision {decision_id} not "
                          f"reported ({e.code().name}: {e.details()})")  # type: ignore[attr-defined]
    return HookResult(EXIT_OK)


def _failed(response: Any) -> bool:
    """A tool_response that says the tool failed (MCP isError, a success: false, an interrupted run)."""
    if not isinstance(response, Mapping):
        return False
    return bool(response.get("isError") or response.get("is_error") or response.get("interrupted")
                or response.get("success") is False)


def _session_file(state_dir: Path, session: str) -> Path:
    # the session id comes from the event: hashed, so it can never name a path outside state_dir
    return state_dir / f"{hashlib.sha256(session.encode()).hexdigest()[:32]}.jsonl"


def _remember(state_dir: Path, session: str, call_id: str, decision_id: str) -> None:
    state_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    line = json.dumps({"tool_use_id": call_id, "decision_id": decision_id}) + "\n"
    # one O_APPEND write per line: parallel tool calls run parallel hooks on the same file
    fd = os.open(_session_file(state_dir, session), os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    try:
        os.write(fd, line.encode())
    finally:
        os.close(fd)


def _recall(state_dir: Path, session: str, call_id: str) -> str | None:
    path = _session_file(state_dir, session)
    if not path.exists():
        return None
    found = None
    for line in path.read_text().splitlines():
        try:
            entry = json.loads(line)
        except ValueError:
            continue
        if isinstance(entry, dict) and entry.get("tool_use_id") == call_id:
            found = str(entry.get("decision_id") or "") or None   # the last one wins (an approved retry)
    return found
