"""Reader for Claude Code session transcripts (`~/.claude/projects/<project>/<session>.jsonl`).

One JSON record per line, told apart by `type`: `user` and `assistant` lines carry an Anthropic
`message`; `progress`, `system`, `summary`, `file-history-snapshot`, `queue-operation` and others
are bookkeeping and are skipped. A call is a `tool_use` block of an assistant message; its result is
the `tool_result` block, in a later user line, whose `tool_use_id` is the call's id.

The fields are what `decider hook claude-code` sends for the same call (SPEC §8), so a transcript
replays as the hook enforced it: `mcp__<server>__<tool>` → tool `<tool>` on server `<server>`
(replay sends `mcp://<server>`, as the hook does), `sessionId` → the session, the `tool_use` id →
`call_id`, `cwd` and the session's `permissionMode` → `context.cwd` / `context.permission_mode`.
The first user prompt is `context.user_request` (SPEC §10).

Claude Code writes one line per content block, so the lines of one model response share
`message.id` and repeat its `usage`: tokens are counted on the response's first call only.
A resumed session copies earlier lines into the new file; a `tool_use` id seen before is skipped.
Subagent transcripts (`<session>/subagents/agent-*.jsonl`, `isSidechain: true`) carry the parent's
`sessionId`, so their calls join the parent's session, as the hook sees them.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from decider.replay.traces._parse import parse_arguments, parse_time, split_mcp_name, text_or_none, to_int
from decider.replay.traces._records import ObjOrLines, iter_records
from decider.replay.traces.model import TraceCall, new_call

__all__ = ["read_claude_code", "looks_like_claude_code"]

FORMAT = "claude-code"

# Record types Claude Code writes besides messages: any of them identifies the file, and together
# with `sessionId` + `uuid` on message lines they are what no other format has.
_BOOKKEEPING = frozenset({"summary", "file-history-snapshot", "queue-operation", "progress", "system"})
_MESSAGE_TYPES = frozenset({"user", "assistant"})


def looks_like_claude_code(record: object) -> bool:
    """A transcript line: a message or bookkeeping record of a Claude Code session."""
    if isinstance(record, list):
        return bool(record) and looks_like_claude_code(record[0])
    if not isinstance(record, dict):
        return False
    kind = record.get("type")
    if kind == "summary":
        return "leafUuid" in record
    if kind == "file-history-snapshot":
        return isinstance(record.get("snapshot"), dict)
    if not isinstance(record.get("sessionId"), str):
        return False
    return kind == "queue-operation" or ((kind in _MESSAGE_TYPES or kind in _BOOKKEEPING) and "uuid" in record)


def _blocks(record: dict[str, Any]) -> list[Any]:
    message = record.get("message")
    content = message.get("content") if isinstance(message, dict) else None
    return content if isinstance(content, list) else []


def _prompt_text(record: dict[str, Any]) -> str | None:
    """A user line's typed prompt: string content, or its text blocks; not tool results, not
    the meta lines Claude Code injects (hook output, command caveats)."""
    if record.get("isMeta") or record.get("toolUseResult") is not None:
        return None
    message = record.get("message")
    content = message.get("content") if isinstance(message, dict) else None
    if isinstance(content, str):
        return content.strip() or None
    if isinstance(content, list):
        texts = [b.get("text") for b in content if isinstance(b, dict) and b.get("type") == "text"]
        joined = "\n".join(t for t in texts if isinstance(t, str) and t.strip())
        return joined.strip() or None
    return None


def read_claude_code(obj_or_lines: ObjOrLines, source: str) -> Iterator[TraceCall]:
    """Tool calls of one Claude Code session transcript, in the order the model made them."""
    calls: list[dict[str, Any]] = []
    by_id: dict[str, dict[str, Any]] = {}
    counted: set[str] = set()
    user_request: str | None = None
    permission_mode: str | None = None
    for record, where in iter_records(obj_or_lines, source):
        if not isinstance(record, dict):
            continue
        kind = record.get("type")
        if kind == "user":
            mode = text_or_none(record.get("permissionMode"))
            permission_mode = mode or permission_mode
            if user_request is None:
                user_request = _prompt_text(record)
            for block in _blocks(record):
                if isinstance(block, dict) and block.get("type") == "tool_result":
                    call = by_id.get(str(block.get("tool_use_id")))
                    if call is not None and call["result"] is None:
                        call["result"] = block.get("content")
                        call["is_error"] = bool(block.get("is_error"))
                        call["ended_at"] = parse_time(record.get("timestamp"))
            continue
        if kind != "assistant":
            continue
        message = record.get("message") if isinstance(record.get("message"), dict) else {}
        usage = message.get("usage") if isinstance(message.get("usage"), dict) else {}
        response_id = text_or_none(message.get("id"))
        for block in _blocks(record):
            if not (isinstance(block, dict) and block.get("type") == "tool_use"):
                continue
            call_id = text_or_none(block.get("id"))
            if call_id is not None and call_id in by_id:
                continue  # a resumed session's copy of a call already read
            server, name = split_mcp_name(text_or_none(block.get("name")) or "")
            args, why = parse_arguments(block.get("input"))
            first = response_id is None or response_id not in counted
            if response_id is not None:
                counted.add(response_id)
            context = {k: v for k, v in (("cwd", text_or_none(record.get("cwd"))),
                                         ("permission_mode", permission_mode)) if v}
            call: dict[str, Any] = {
                "tool_name": name, "arguments": args, "raw_arguments": block.get("input"),
                "indeterminate": why if name else "tool name missing" + (f"; {why}" if why else ""),
                "call_id": call_id, "server": server, "model": text_or_none(message.get("model")),
                "session_id": text_or_none(record.get("sessionId")),
                # SPEC §10: without a session id, the file is the session.
                "trace_id": None if record.get("sessionId") else source,
                "tokens_in": _tokens_in(usage) if first else 0,
                "tokens_out": to_int(usage.get("output_tokens")) if first else 0,
                "started_at": parse_time(record.get("timestamp")), "ended_at": None,
                "result": None, "is_error": None, "context": context or None,
                "source": where, "format": FORMAT,
            }
            calls.append(call)
            if call_id is not None:
                by_id[call_id] = call
    for call in calls:
        if user_request is not None:
            call["context"] = {**(call["context"] or {}), "user_request": user_request}
        yield new_call(call)


def _tokens_in(usage: dict[str, Any]) -> int | None:
    """The prompt's size: Anthropic reports cached input apart from `input_tokens`."""
    parts = [to_int(usage.get(k)) for k in ("input_tokens", "cache_creation_input_tokens", "cache_read_input_tokens")]
    known = [p for p in parts if p is not None]
    return sum(known) if known else None
