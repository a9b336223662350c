"""Reader for model-message transcripts (README format A and the related shapes).

Accepts, as a JSON document or JSONL:

- tau-bench: an array of runs `{task_id, trial, reward, info{task{user_id}}, traj[messages]}`;
- LiveMCPBench: an array of runs `{task_id, category, messages[]}`, where the gateway tool
  `execute-tool {server_name, tool_name, params}` is read as the MCP call it stands for;
- any `{messages[...]}` object (a request body), a chat completion `{choices[...]}`, a Responses
  object `{output[...]}` or request `{input[...]}`, a SWE-agent `.traj` (`history[...]`);
- a bare list (or JSONL) of messages / Responses items, read as one conversation.

Each call's result is the later tool message that answers its id (first unanswered call first,
because tau-bench reuses ids within a run). Records carry no model, so the caller may pass the one
named in the file name.
"""

from __future__ import annotations

import json
import re
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from decider.replay.traces._gc import gc_paused
from decider.replay.traces._messages import calls_in_message, results_in_message
from decider.replay.traces._parse import parse_arguments, split_mcp_name, text_or_none, to_int
from decider.replay.traces._records import ObjOrLines, iter_records
from decider.replay.traces._user_request import user_request_in, with_user_request
from decider.replay.traces.errors import TraceFormatError
from decider.replay.traces.model import TraceCall, blank_fields, call_from_fields

__all__ = ["read_openai", "looks_like_openai"]

FORMAT = "openai"
_ITEM_TYPES = frozenset({"function_call", "function_call_output", "message", "mcp_call", "reasoning",
                         "custom_tool_call", "custom_tool_call_output"})
_CALL_ROLES = frozenset({None, "assistant", "model"})
_TEXT_ROLES = frozenset({"user", "system", "developer"})
_MCP_REPR_ERROR = re.compile(r"isError=(True|False)\s*$")
_MCP_INNER_ERROR = re.compile(r'"isError":\s*true')


@dataclass(slots=True)
class _Run:
    """What a container says about all the calls of one conversation."""

    model: str | None = None
    session_id: str | None = None
    label: dict[str, Any] | None = None
    context: dict[str, Any] | None = None
    tokens_in: int | None = None
    tokens_out: int | None = None
    # tau-bench's environment answers a failed action with the text "Error: ...".
    error_prefix: str | None = None
    # Where the conversation is in the input (a file, or a run in it): SPEC §10 makes a conversation
    # one session, so it keys the session when the run names no session id.
    conversation: str | None = None


def _is_message(record: dict[str, Any]) -> bool:
    return "role" in record or record.get("type") in _ITEM_TYPES or "toolCallId" in record


def _history_is_messages(history: object) -> bool:
    return isinstance(history, list) and any(isinstance(m, dict) and "role" in m for m in history[:3])


def looks_like_openai(record: object) -> bool:
    """Content sniffing for `read_traces`: a run, response, request or message of format A."""
    if isinstance(record, list):
        return bool(record) and looks_like_openai(record[0])
    if not isinstance(record, dict):
        return False
    if isinstance(record.get("traj"), list) or isinstance(record.get("messages"), list):
        return True
    if isinstance(record.get("choices"), list) or _history_is_messages(record.get("history")):
        return True
    if isinstance(record.get("output"), list) and record.get("object") == "response":
        return True
    items = record.get("input")
    if isinstance(items, list) and items and isinstance(items[0], dict) and _is_message(items[0]):
        return True  # a Responses API request body
    return _is_message(record)


def _swe_agent_model(record: dict[str, Any]) -> str | None:
    config = record.get("replay_config")
    if isinstance(config, str):
        try:
            config = json.loads(config)
        except ValueError:
            return None
    try:
        return text_or_none(config["agent"]["model"]["name"])  # type: ignore[index]
    except (KeyError, TypeError):
        return None


def _container(record: dict[str, Any], model: str | None) -> tuple[list[Any], str, _Run] | None:
    """The conversation a record holds, the key it is under, and the run's shared fields."""
    run = _Run(model=text_or_none(record.get("model")) or model)
    traj = record.get("traj")
    if isinstance(traj, list):
        task_id, trial = record.get("task_id"), record.get("trial")
        run.session_id = f"task-{task_id}-trial-{trial}" if trial is not None else text_or_none(task_id)
        if "reward" in record:
            run.label = {"reward": record["reward"]}
        info = record.get("info")
        task = info.get("task") if isinstance(info, dict) else None
        if isinstance(task, dict) and task.get("user_id") is not None:
            run.context = {"user_id": task["user_id"]}
        run.error_prefix = "Error: "
        return traj, "traj", run
    messages = record.get("messages")
    if isinstance(messages, list):
        run.session_id = text_or_none(record.get("task_id")) or text_or_none(record.get("session_id"))
        context = {k: record[k] for k in ("task_id", "category", "user") if record.get(k) is not None}
        run.context = context or None
        return messages, "messages", run
    if _history_is_messages(record.get("history")):
        run.model = _swe_agent_model(record) or run.model
        return record["history"], "history", run
    usage = record.get("usage") if isinstance(record.get("usage"), dict) else {}
    choices = record.get("choices")
    if isinstance(choices, list):
        run.tokens_in = to_int(usage.get("prompt_tokens"))
        run.tokens_out = to_int(usage.get("completion_tokens"))
        return [c.get("message") if isinstance(c, dict) else None for c in choices], "choices", run
    if isinstance(record.get("output"), list) and record.get("object") == "response":
        run.tokens_in, run.tokens_out = to_int(usage.get("input_tokens")), to_int(usage.get("output_tokens"))
        return record["output"], "output", run
    if isinstance(record.get("input"), list) and not _is_message(record):
        return record["input"], "input", run
    return None


def _mcp_result_error(content: object) -> bool | None:
    """`isError` of the Python repr of an MCP CallToolResult (LiveMCPBench tool messages).

    The gateway's own result says `isError=False` even when the server it called failed; that
    inner result is embedded as JSON text, so an inner `"isError": true` counts as well.
    """
    if not isinstance(content, str) or "isError=" not in content[-40:]:
        return None  # cheap test first: every tool result passes through here
    m = _MCP_REPR_ERROR.search(content, max(len(content) - 40, 0))
    if m is None:
        return None
    return m.group(1) == "True" or _MCP_INNER_ERROR.search(content) is not None


def _call_fields(name: str, raw: object, call_id: str | None, server: str | None, source: str,
                 run: _Run) -> dict[str, Any]:
    if name == "execute-tool":
        # LiveMCPBench gateway: the effective call is `tools/call` of `tool_name` on `server_name`.
        outer, why = parse_arguments(raw)
        inner_name = outer.get("tool_name") if outer is not None else None
        if isinstance(inner_name, str) and inner_name:
            name, server = inner_name, text_or_none(outer.get("server_name")) or server  # type: ignore[union-attr]
            if "params" in outer:  # type: ignore[operator]
                args, why = parse_arguments(outer["params"])  # type: ignore[index]
            else:
                args, why = None, "execute-tool call has no params"
        else:
            args, why = outer, why or "execute-tool call names no tool_name"
    else:
        args, why = parse_arguments(raw)
        if server is None:
            server, name = split_mcp_name(name)
    if not name:
        why = "tool name missing" + (f"; {why}" if why else "")
    kw = blank_fields()  # complete, so the call is built without merging in the defaults
    kw["tool_name"], kw["arguments"], kw["raw_arguments"], kw["indeterminate"] = name, args, raw, why
    kw["call_id"], kw["server"], kw["model"], kw["session_id"] = call_id, server, run.model, run.session_id
    kw["label"], kw["context"], kw["source"], kw["format"] = run.label, run.context, source, FORMAT
    kw["trace_id"] = None if run.session_id else run.conversation
    return kw


def _answer(kw: dict[str, Any], content: object, is_error: bool | None, run: _Run) -> None:
    kw["result"] = content
    if is_error is None:
        is_error = _mcp_result_error(content)
    if is_error is None and run.error_prefix and isinstance(content, str):
        is_error = content.startswith(run.error_prefix)
    kw["is_error"] = is_error


def _conversation(messages: list[Any], base: str | list[str], run: _Run) -> list[TraceCall]:
    """The calls of one conversation, built in one step with the cyclic collector paused (_gc.py)."""
    with gc_paused():
        return _build_conversation(messages, base, run)


def _build_conversation(messages: list[Any], base: str | list[str], run: _Run) -> list[TraceCall]:
    built: list[dict[str, Any]] = []
    by_id: dict[str, deque[dict[str, Any]]] = {}
    by_name: dict[str, deque[dict[str, Any]]] = {}  # legacy `function` results carry only a name
    for j, m in enumerate(messages):
        if not isinstance(m, dict):
            continue
        role = m.get("role")
        tool_calls = m.get("tool_calls")
        if (role == "assistant" and type(tool_calls) is list and not isinstance(m.get("content"), list)
                and "function_call" not in m):
            # The OpenAI chat shape, most of every transcript: read inline rather than through the
            # general `calls_in_message`, which costs a third of the reading time here.
            where = base[j] if isinstance(base, list) else f"{base}[{j}]"
            for k, tc in enumerate(tool_calls):
                if not isinstance(tc, dict):
                    continue
                fn = tc.get("function")
                if not isinstance(fn, dict):
                    fn = tc
                call_id = tc.get("id")
                kw = _call_fields(text_or_none(fn.get("name")) or "", fn.get("arguments"),
                                  call_id if call_id is None or type(call_id) is str else str(call_id), None,
                                  f"{where}.tool_calls[{k}]", run)
                built.append(kw)
                if kw["call_id"]:
                    by_id.setdefault(kw["call_id"], deque()).append(kw)
            continue
        if role == "tool" and "tool_call_id" in m:
            queue = by_id.get(m["tool_call_id"])
            if queue:
                _answer(queue.popleft(), m.get("content"), None, run)
            continue
        if role in _CALL_ROLES:
            found = calls_in_message(m)
            if found:
                where = base[j] if isinstance(base, list) else f"{base}[{j}]"
                for f in found:
                    kw = _call_fields(f.name or "", f.raw_arguments, f.call_id, f.server,
                                      f"{where}.{f.where}" if f.where else where, run)
                    built.append(kw)
                    if f.has_result:
                        kw["result"], kw["is_error"] = f.result, f.is_error
                    elif f.call_id:
                        by_id.setdefault(f.call_id, deque()).append(kw)
                    elif f.name:
                        by_name.setdefault(f.name, deque()).append(kw)
        if role in ("assistant", "model"):
            continue
        if role in _TEXT_ROLES and not isinstance(m.get("content"), list) and "parts" not in m:
            continue  # plain text: cannot carry a tool result
        for r in results_in_message(m):
            queue = by_id.get(r.call_id) if r.call_id else by_name.get(r.name) if r.name else None
            if queue:
                _answer(queue.popleft(), r.content, r.is_error, run)
    if built and (run.tokens_in is not None or run.tokens_out is not None):
        # One response, many calls: its tokens are counted once, on the first call.
        for kw in built:
            kw["tokens_in"], kw["tokens_out"] = 0, 0
        built[0]["tokens_in"], built[0]["tokens_out"] = run.tokens_in, run.tokens_out
    return [call_from_fields(kw) for kw in built]


def _swe_agent_actions(record: dict[str, Any], where: str, run: _Run) -> Iterator[TraceCall]:
    """SWE-agent outside function-calling mode records only a raw command string per step."""
    steps = record.get("trajectory")
    for i, step in enumerate(steps if isinstance(steps, list) else ()):
        action = step.get("action") if isinstance(step, dict) else None
        if not isinstance(action, str) or not action.strip():
            continue
        yield TraceCall(
            action.split(None, 1)[0], raw_arguments=action, model=run.model, format=FORMAT,
            indeterminate="SWE-agent action is a command string, not structured arguments",
            source=f"{where}.trajectory[{i}]",
        )


def read_openai(obj_or_lines: ObjOrLines, source: str, *, model: str | None = None) -> Iterator[TraceCall]:
    """Tool calls of OpenAI / Anthropic / Responses transcripts; `model` is used where records
    name none (tau-bench, LiveMCPBench: the file name says which model ran)."""
    loose: list[Any] = []
    loose_where: list[str] = []
    for record, where in iter_records(obj_or_lines, source):
        if not isinstance(record, dict):
            raise TraceFormatError(where, f"expected a JSON object, got {type(record).__name__}")
        if "role" in record and "messages" not in record and "traj" not in record:
            loose.append(record)  # the common case in a JSONL transcript: one message per line
            loose_where.append(where)
            continue
        conv = _container(record, model)
        if conv is None:
            if not _is_message(record):
                raise TraceFormatError(where, "not a message transcript, run or model response "
                                              f"(keys: {', '.join(sorted(record)[:8])})")
            loose.append(record)
            loose_where.append(where)
            continue
        messages, key, run = conv
        run.conversation = where
        # SPEC §10: the user's first message is `context.user_request`.
        run.context = with_user_request(run.context, user_request_in(messages))
        calls = _conversation(messages, f"{where}.{key}", run)
        if not calls and key == "history":
            calls = list(_swe_agent_actions(record, where, run))
        yield from calls
    if loose:
        run = _Run(model=model, context=with_user_request(None, user_request_in(loose)), conversation=source)
        yield from _conversation(loose, loose_where, run)
