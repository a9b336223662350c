"""Tool calls and tool results inside model messages, whatever the vendor's message shape.

Shared by the OpenAI-messages reader (transcripts) and the OTel reader (the output messages of a
`chat` span, used when a trace has no tool spans). Shapes understood:

- OpenAI Chat Completions: `tool_calls[{id, function{name, arguments}}]`, legacy `function_call`,
  tool results as `role: "tool"` messages; a whole response `{choices[{message}]}`.
- OpenAI Responses / Agents SDK items: `function_call`, `function_call_output`, `mcp_call`;
  a whole response `{output[...]}`.
- Anthropic content blocks: `tool_use` / `server_tool_use` / `mcp_tool_use`, `tool_result`.
- OTel GenAI messages: `parts[{type: "tool_call", id, name, arguments}]`, `tool_call_response`.
- Google GenAI / ADK: `parts[{function_call{name, args, id}}]`, `function_response`.
- Vercel AI SDK: `{toolCallId, toolName, input | args}`.
"""

from __future__ import annotations

from typing import Any, NamedTuple

from decider.replay.traces._parse import decode_json_text, text_or_none

__all__ = ["Found", "FoundResult", "calls_in_message", "calls_in_value", "results_in_message"]


class Found(NamedTuple):
    """A tool call found in a message; `where` is its path inside the message (`tool_calls[0]`)."""

    name: str | None
    raw_arguments: object
    call_id: str | None
    where: str
    server: str | None = None
    # Responses `mcp_call` items carry their own output.
    result: object = None
    is_error: bool | None = None
    has_result: bool = False


class FoundResult(NamedTuple):
    call_id: str | None
    name: str | None
    content: object
    is_error: bool | None


def _blocks(m: dict[str, Any], key: str) -> list[Any]:
    value = m.get(key)
    return value if isinstance(value, list) else []


def _fn_call(d: dict[str, Any], where: str) -> Found | None:
    """Google GenAI `function_call` / `functionCall` part."""
    fc = d.get("function_call") or d.get("functionCall")
    if not isinstance(fc, dict):
        return None
    return Found(text_or_none(fc.get("name")), fc.get("args"), text_or_none(fc.get("id")), where)


def _item(d: dict[str, Any], where: str) -> Found | None:
    """One self-describing call object: a Responses item, a content block, a part, a tool_call."""
    t = d.get("type")
    if t == "function_call":
        call_id = text_or_none(d.get("call_id")) or text_or_none(d.get("id"))
        return Found(text_or_none(d.get("name")), d.get("arguments"), call_id, where)
    if t == "mcp_call":
        error = d.get("error")
        return Found(text_or_none(d.get("name")), d.get("arguments"), text_or_none(d.get("id")), where,
                     server=text_or_none(d.get("server_label")),
                     result=error if error else d.get("output"), is_error=bool(error),
                     has_result="output" in d or bool(error))
    if t in ("tool_use", "server_tool_use", "mcp_tool_use"):
        return Found(text_or_none(d.get("name")), d.get("input"), text_or_none(d.get("id")), where,
                     server=text_or_none(d.get("server_name")))
    if t == "custom_tool_call":
        call_id = text_or_none(d.get("call_id")) or text_or_none(d.get("id"))
        return Found(text_or_none(d.get("name")), d.get("input"), call_id, where)
    if t == "tool_call":
        return Found(text_or_none(d.get("name")), d.get("arguments"), text_or_none(d.get("id")), where)
    if "toolCallId" in d and "toolName" in d:
        raw = d["input"] if "input" in d else d.get("args")
        return Found(text_or_none(d.get("toolName")), raw, text_or_none(d.get("toolCallId")), where)
    fn = d.get("function")
    if t == "function" and isinstance(fn, dict):
        return Found(text_or_none(fn.get("name")), fn.get("arguments"), text_or_none(d.get("id")), where)
    return _fn_call(d, where)


def calls_in_message(m: dict[str, Any]) -> list[Found]:
    """Every tool call in one message (or one Responses item / content block)."""
    content = m.get("content")
    if (not m.get("tool_calls") and not isinstance(content, (list, dict)) and "parts" not in m
            and "type" not in m and "toolCallId" not in m and "function_call" not in m
            and "functionCall" not in m):
        return []  # the common case, a plain text message: answer it without building anything
    found: list[Found] = []
    for k, tc in enumerate(_blocks(m, "tool_calls")):
        if not isinstance(tc, dict):
            continue
        fn = tc.get("function") if isinstance(tc.get("function"), dict) else tc
        found.append(Found(text_or_none(fn.get("name")), fn.get("arguments"), text_or_none(tc.get("id")),
                           f"tool_calls[{k}]"))
    fc = m.get("function_call")
    if isinstance(fc, dict) and "name" in fc:
        found.append(Found(text_or_none(fc.get("name")), fc.get("arguments"), None, "function_call"))
    if isinstance(content, list):
        for k, block in enumerate(content):
            if isinstance(block, dict):
                hit = _item(block, f"content[{k}]")
                if hit is not None:
                    found.append(hit)
    elif isinstance(content, dict):
        found.extend(calls_in_message(content))
    for k, part in enumerate(_blocks(m, "parts")):
        if isinstance(part, dict):
            hit = _item(part, f"parts[{k}]")
            if hit is not None:
                found.append(hit)
    if not found:
        hit = _item(m, "")
        if hit is not None:
            found.append(hit)
    return found


def calls_in_value(value: object) -> list[Found]:
    """Tool calls in a model output of any shape: a message, a list of them, a whole response,
    or JSON text holding one of those."""
    if isinstance(value, str):
        value, reason = decode_json_text(value)
        if reason is not None:
            return []
    if isinstance(value, list):
        found: list[Found] = []
        for i, item in enumerate(value):
            if isinstance(item, dict):
                found.extend(f._replace(where=f"[{i}].{f.where}" if f.where else f"[{i}]")
                             for f in calls_in_message(item))
        return found
    if not isinstance(value, dict):
        return []
    choices = value.get("choices")
    if isinstance(choices, list):
        found = []
        for i, choice in enumerate(choices):
            msg = choice.get("message") if isinstance(choice, dict) else None
            if isinstance(msg, dict):
                found.extend(f._replace(where=f"choices[{i}].message.{f.where}")
                             for f in calls_in_message(msg))
        return found
    output = value.get("output")
    if isinstance(output, list):
        return [f._replace(where=f"output{f.where}") for f in calls_in_value(output)]
    return calls_in_message(value)


def results_in_message(m: dict[str, Any]) -> list[FoundResult]:
    """Tool results carried by one message or item, keyed by the call id they answer."""
    role = m.get("role")
    if role == "tool":
        ids = m.get("tool_call_ids")
        if "tool_call_id" not in m and isinstance(ids, list):  # SWE-agent: one message answers several
            return [FoundResult(text_or_none(i), None, m.get("content"), None) for i in ids]
        return [FoundResult(text_or_none(m.get("tool_call_id")), text_or_none(m.get("name")),
                            m.get("content"), None)]
    if role == "function":
        return [FoundResult(None, text_or_none(m.get("name")), m.get("content"), None)]
    if m.get("type") == "function_call_output":
        return [FoundResult(text_or_none(m.get("call_id")), None, m.get("output"), None)]
    out: list[FoundResult] = []
    content = m.get("content")
    for block in content if isinstance(content, list) else ():
        if isinstance(block, dict) and block.get("type") in ("tool_result", "mcp_tool_result"):
            err = block.get("is_error")
            out.append(FoundResult(text_or_none(block.get("tool_use_id")), None, block.get("content"),
                                   bool(err) if err is not None else False))
    for part in _blocks(m, "parts"):
        if not isinstance(part, dict):
            continue
        if part.get("type") == "tool_call_response":
            out.append(FoundResult(text_or_none(part.get("id")), None, part.get("response"), None))
        fr = part.get("function_response") or part.get("functionResponse")
        if isinstance(fr, dict):
            out.append(FoundResult(text_or_none(fr.get("id")), text_or_none(fr.get("name")),
                                   fr.get("response"), None))
    return out
