"""Reader for MCP JSON-RPC 2.0 logs (README format D): a JSON array or JSONL of messages.

A call is a `tools/call` request; its response (same `id`, same session, from the other side) gives
the result and `isError`. The protocol carries no identity in `tools/call`, so the session's
`initialize` supplies it: `params.clientInfo` is the agent, `result.serverInfo.name` the server.

Besides bare JSON-RPC messages, capture tools wrap each message with what they observed; a record
`{"message" | "msg" | "payload": <message or its JSON text>, "timestamp" | "time" | "ts",
"direction", "session_id" | "sessionId" | "mcp_session_id"}` is read as that message with those
facts. A JSON-RPC batch (an array of messages) is read message by message.

Calls are yielded in request order; a call is held back only until its response arrives, so
memory is bounded by the requests in flight. Requests never answered are yielded without a result,
at the end of the log or once 10,000 later requests are waiting behind them.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from decider.replay.traces._parse import decode_json_text, parse_arguments, parse_time, split_mcp_name, text_or_none
from decider.replay.traces._records import ObjOrLines, iter_records
from decider.replay.traces.errors import TraceFormatError
from decider.replay.traces.model import TraceCall, new_call

__all__ = ["read_mcp", "looks_like_mcp"]

FORMAT = "mcp"
_WRAPPER_KEYS = ("message", "msg", "payload")
_TIME_KEYS = ("timestamp", "time", "ts")
_SESSION_KEYS = ("session_id", "sessionId", "mcp_session_id", "Mcp-Session-Id")
# A request never answered would hold back every later call; past this many in flight the oldest
# is yielded without its result, so memory stays bounded on an endless log.
_MAX_IN_FLIGHT = 10_000


def _is_jsonrpc(m: object) -> bool:
    if not isinstance(m, dict):
        return False
    if m.get("jsonrpc") == "2.0":
        return True
    # Some loggers drop the `jsonrpc` member; the shape still says request or response.
    return ("method" in m and ("id" in m or "params" in m)) or ("id" in m and ("result" in m or "error" in m))


def _unwrap(record: object) -> tuple[object, dict[str, Any] | None]:
    """(the JSON-RPC message, the capture wrapper around it or None)."""
    if not isinstance(record, dict) or _is_jsonrpc(record):
        return record, None
    for key in _WRAPPER_KEYS:
        inner = record.get(key)
        if isinstance(inner, str):
            inner, reason = decode_json_text(inner)
            if reason is not None:
                continue
        if _is_jsonrpc(inner) or (isinstance(inner, list) and inner and _is_jsonrpc(inner[0])):
            return inner, record
    return record, None


def looks_like_mcp(record: object) -> bool:
    if isinstance(record, list):
        return bool(record) and looks_like_mcp(record[0])
    message, _ = _unwrap(record)
    if isinstance(message, list):
        return bool(message) and _is_jsonrpc(message[0])
    return _is_jsonrpc(message)


@dataclass(slots=True)
class _Session:
    agent: str | None = None
    server: str | None = None
    initialize_ids: set[Any] = field(default_factory=set)


@dataclass(slots=True, eq=False)  # compared by identity in the queues
class _Pending:
    fields: dict[str, Any]
    direction: str | None
    key: tuple[str | None, Any] | None  # where it waits in `waiting`; None for a notification
    done: bool = False


def _first(d: dict[str, Any] | None, keys: tuple[str, ...]) -> Any:
    if d is None:
        return None
    for k in keys:
        if d.get(k) is not None:
            return d[k]
    return None


def read_mcp(obj_or_lines: ObjOrLines, source: str) -> Iterator[TraceCall]:
    sessions: dict[str | None, _Session] = {}
    # Requests in flight by (session, JSON-RPC id); a queue because ids may be reused later.
    waiting: dict[tuple[str | None, Any], deque[_Pending]] = {}
    order: deque[_Pending] = deque()

    for record, where in iter_records(obj_or_lines, source):
        message, wrapper = _unwrap(record)
        session_key: str | None = None
        when: Any = None
        direction: str | None = None
        if wrapper is not None:
            session_key = text_or_none(_first(wrapper, _SESSION_KEYS))
            when = parse_time(_first(wrapper, _TIME_KEYS))
            direction = text_or_none(wrapper.get("direction"))
        session = sessions.get(session_key)
        if session is None:
            session = sessions[session_key] = _Session()
        batch = message if isinstance(message, list) else (message,)
        for k, m in enumerate(batch):
            at = where if len(batch) == 1 else f"{where}[{k}]"
            if not _is_jsonrpc(m):
                raise TraceFormatError(at, "not a JSON-RPC 2.0 message")
            method = m.get("method")
            if method == "initialize":
                params = m.get("params") if isinstance(m.get("params"), dict) else {}
                info = params.get("clientInfo")
                if isinstance(info, dict):
                    session.agent = text_or_none(info.get("name"))
                session.initialize_ids.add(m.get("id"))
            elif method == "tools/call":
                key = (session_key, m["id"]) if "id" in m else None
                pending = _Pending(_request_fields(m, at, session, session_key, when), direction, key)
                order.append(pending)
                if key is not None:
                    waiting.setdefault(key, deque()).append(pending)
                else:  # a notification: nothing will answer it
                    pending.done = True
            elif method is None and "id" in m:
                _answer(m, session, session_key, when, direction, waiting)
        while order and (order[0].done or len(order) > _MAX_IN_FLIGHT):
            yield _finish(order.popleft(), waiting)
    while order:
        yield _finish(order.popleft(), waiting)


def _request_fields(m: dict[str, Any], where: str, session: _Session, session_key: str | None,
                    when: Any) -> dict[str, Any]:
    params = m.get("params") if isinstance(m.get("params"), dict) else {}
    name = text_or_none(params.get("name")) or ""
    server, name = split_mcp_name(name)
    raw = params.get("arguments")
    if "arguments" in params:
        args, why = parse_arguments(raw)
    else:
        # `arguments` is optional in the protocol: a request without it calls the tool with none,
        # and the log records the request completely, so this is {} rather than indeterminate.
        args, why = {}, None
    if not name:
        why = "tool name missing" + (f"; {why}" if why else "")
    # Identity as the session stood when the call was made (a log may re-initialize later).
    return {
        "tool_name": name, "arguments": args, "raw_arguments": raw, "indeterminate": why,
        "call_id": text_or_none(m.get("id")), "server": server or session.server,
        "agent": session.agent, "session_id": session_key,
        "started_at": when, "source": where, "format": FORMAT,
    }


def _answer(m: dict[str, Any], session: _Session, session_key: str | None, when: Any,
            direction: str | None, waiting: dict[tuple[str | None, Any], deque[_Pending]]) -> None:
    rid = m.get("id")
    result = m.get("result")
    if rid in session.initialize_ids and isinstance(result, dict):
        info = result.get("serverInfo")
        if isinstance(info, dict):
            session.server = text_or_none(info.get("name"))
        session.initialize_ids.discard(rid)
        return
    queue = waiting.get((session_key, rid))
    if not queue:
        return
    # With directions recorded, a response answers a request that went the other way.
    pick = next((p for p in queue if direction is None or p.direction is None or p.direction != direction),
                None)
    if pick is None:
        return
    queue.remove(pick)
    if not queue:
        del waiting[(session_key, rid)]
    if "error" in m:
        pick.fields["result"], pick.fields["is_error"] = m["error"], True
    else:
        pick.fields["result"] = result
        pick.fields["is_error"] = bool(result.get("isError")) if isinstance(result, dict) else False
    pick.fields["ended_at"] = when
    pick.done = True


def _finish(pending: _Pending, waiting: dict[tuple[str | None, Any], deque[_Pending]]) -> TraceCall:
    if not pending.done and pending.key is not None:
        # Yielded unanswered (end of log, or too many requests in flight): stop waiting for it.
        queue = waiting.get(pending.key)
        if queue is not None and pending in queue:
            queue.remove(pending)
            if not queue:
                del waiting[pending.key]
    return new_call(pending.fields)
