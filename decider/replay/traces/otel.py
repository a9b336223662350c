"""Reader for OpenTelemetry GenAI traces (README format B): OTLP JSON, Jaeger JSON, Langfuse exports.

All three are first turned into the same `Span` (id, parent, attributes, times, status), so one
set of rules finds the calls:

- A tool span is a call: `gen_ai.operation.name == "execute_tool"`, or a span named
  `execute_tool X`, an MCP `tools/call` span, OpenInference `TOOL`, OpenLLMetry `tool`, LangSmith
  `tool`, Vercel `ai.toolCall`, a Langfuse `TOOL` observation, or a span that names
  `gen_ai.tool.name` (Koog's `tool.X`). A tool span nested in another tool span of the same name
  (an MCP client span inside the framework's span) is the same call and is not counted twice.
- A trace with no tool span at all had only its model calls instrumented: its calls are the tool
  calls in the `chat` spans' output (`gen_ai.output.messages`, the OpenLLMetry and OpenInference
  flattened keys, or the Langfuse generation output). When a trace has tool spans, model outputs
  are only used to find each call's model and tokens, because frameworks also put internal
  "output tools" there (pydantic-ai's `final_result`) that never run as tools.
- Model, tokens and cost come from the chat span that asked for the call (matched by call id,
  else by name and arguments, else the latest earlier chat span under the same agent); one
  response's tokens are counted on one call only.

A whole file is read before the first call is yielded: a tool span's agent and model live on
other spans of its trace, which OTLP exporters may write in any batch (line).
"""

from __future__ import annotations

from bisect import bisect_right
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any

from decider.replay.traces._messages import Found, calls_in_value
from decider.replay.traces._otel_spans import Span, TraceInfo, doc_kind, jaeger_spans, langfuse_spans, otlp_spans
from decider.replay.traces._parse import (
    decode_json_text,
    parse_arguments,
    split_mcp_name,
    text_or_none,
    to_float,
    to_int,
)
from decider.replay.traces._records import ObjOrLines, iter_records
from decider.replay.traces._user_request import user_request_in, with_user_request
from decider.replay.traces.errors import TraceFormatError
from decider.replay.traces.model import TraceCall, new_call

__all__ = ["read_otel", "looks_like_otel"]

FORMAT = "otel"
_CHAT_OPS = frozenset({"chat", "text_completion", "generate_content"})
_VERCEL_CHAT_OPS = frozenset({"ai.generateText", "ai.streamText", "ai.generateObject", "ai.streamObject",
                              "ai.generateText.doGenerate", "ai.streamText.doStream",
                              "ai.generateObject.doGenerate", "ai.streamObject.doStream"})
_TOOL_NAME_KEYS = ("gen_ai.tool.name", "tool.name", "ai.toolCall.name", "traceloop.entity.name")
_TOOL_NAME_PREFIXES = ("execute_tool ", "running tool: ", "tools/call ", "tool.")
_CALL_ID_KEYS = ("gen_ai.tool.call.id", "ai.toolCall.id", "tool_call.id")
# Where each instrumentation puts the arguments, best first. `input` is Langfuse's field, to which
# it moves `gen_ai.tool.call.arguments`.
_ARG_KEYS = ("gen_ai.tool.call.arguments", "input", "input.value", "traceloop.entity.input",
             "ai.toolCall.args", "tool_arguments", "gcp.vertex.agent.tool_call_args")
_RESULT_KEYS = ("gen_ai.tool.call.result", "output", "output.value", "traceloop.entity.output",
                "ai.toolCall.result", "tool_response", "gcp.vertex.agent.tool_response")
_MODEL_KEYS = ("gen_ai.request.model", "gen_ai.response.model", "llm.model_name", "ai.model.id",
               "ai.response.model", "langsmith.metadata.ls_model_name", "model_name")
_TOKENS_IN_KEYS = ("gen_ai.usage.input_tokens", "gen_ai.usage.prompt_tokens", "llm.token_count.prompt",
                   "ai.usage.inputTokens", "ai.usage.promptTokens")
_TOKENS_OUT_KEYS = ("gen_ai.usage.output_tokens", "gen_ai.usage.completion_tokens",
                    "llm.token_count.completion", "ai.usage.outputTokens", "ai.usage.completionTokens")
_COST_KEYS = ("gen_ai.usage.cost", "operation.cost")
_SESSION_KEYS = ("gen_ai.conversation.id", "session.id", "langfuse.session.id",
                 "langsmith.metadata.session_id")
_USER_KEYS = ("user.id", "enduser.id", "langfuse.user.id")
# Where a model span keeps its input messages (for context.user_request), best first.
_INPUT_KEYS = ("gen_ai.input.messages", "gen_ai.prompt", "ai.prompt.messages", "ai.prompt", "input.value",
               "traceloop.entity.input")
# The flattened forms: OpenLLMetry `gen_ai.prompt.N.role/content`, OpenInference
# `llm.input_messages.N.message.role/content`.
_FLAT_INPUTS = (("gen_ai.prompt.{}.role", "gen_ai.prompt.{}.content"),
                ("llm.input_messages.{}.message.role", "llm.input_messages.{}.message.content"))
_FLAT_MAX = 64
_EARLIEST = datetime.min.replace(tzinfo=timezone.utc)
_UNSEEN: Any = object()


def looks_like_otel(record: object) -> bool:
    return doc_kind(record) is not None


def _first(attrs: dict[str, Any], keys: tuple[str, ...]) -> Any:
    for k in keys:
        v = attrs.get(k)
        if v is not None and v != "":
            return v
    return None


def _is_chat(s: Span) -> bool:
    a = s.attrs
    return (a.get("gen_ai.operation.name") in _CHAT_OPS or s.obs_type == "GENERATION"
            or a.get("openinference.span.kind") == "LLM" or a.get("traceloop.span.kind") == "llm"
            or "llm.request.type" in a or a.get("ai.operationId") in _VERCEL_CHAT_OPS)


def _is_tool(s: Span) -> bool:
    a = s.attrs
    if (a.get("gen_ai.operation.name") == "execute_tool" or s.obs_type == "TOOL"
            or s.name.startswith("execute_tool ") or a.get("mcp.method.name") == "tools/call"
            or a.get("openinference.span.kind") == "TOOL" or a.get("traceloop.span.kind") == "tool"
            or a.get("langsmith.span.kind") == "tool" or a.get("ai.operationId") == "ai.toolCall"):
        return True
    koog_tool = s.name.startswith("tool.") and s.scope == "ai.koog"
    return ("gen_ai.tool.name" in a or koog_tool) and not _is_chat(s)


def _agent_name(s: Span) -> tuple[str | None, str | None]:
    """(name, id) if the span is an agent invocation."""
    a = s.attrs
    agent_id = text_or_none(a.get("gen_ai.agent.id"))
    name = text_or_none(a.get("gen_ai.agent.name") or a.get("agent_name"))
    if name:
        return name, agent_id
    if not (a.get("gen_ai.operation.name") in ("invoke_agent", "create_agent") or s.obs_type == "AGENT"
            or a.get("openinference.span.kind") == "AGENT" or a.get("traceloop.span.kind") == "agent"):
        return None, None
    if agent_id:
        return agent_id, agent_id
    n = s.name
    if n.startswith("invoke_agent "):
        n = n[len("invoke_agent "):]
    elif n.endswith("]") and "[" in n:  # Google ADK: `agent_run [hello_agent]`
        n = n[n.rindex("[") + 1:-1]
    return n or None, None


def _model(s: Span) -> str | None:
    for k in _MODEL_KEYS:
        v = s.attrs.get(k)
        # Some emitters write "unknown" and put the real name in a vendor key further down.
        if v and v != "unknown":
            return str(v)
    return s.model if s.model and s.model != "unknown" else None


def _tokens(s: Span) -> tuple[int | None, int | None, float | None]:
    tin = s.tokens_in if s.tokens_in is not None else to_int(_first(s.attrs, _TOKENS_IN_KEYS))
    tout = s.tokens_out if s.tokens_out is not None else to_int(_first(s.attrs, _TOKENS_OUT_KEYS))
    cost = s.cost if s.cost is not None else to_float(_first(s.attrs, _COST_KEYS))
    return tin, tout, cost


def _flattened_calls(attrs: dict[str, Any]) -> list[Found]:
    """OpenInference `llm.output_messages.N.message.tool_calls.M.tool_call.function.{name,arguments}`
    and OpenLLMetry `gen_ai.completion.N.tool_calls.M.{name,arguments,id}`; Koog writes the OpenAI
    tool_calls list as JSON in `gen_ai.completion.N.content`."""
    groups: dict[tuple[int, int], dict[str, Any]] = {}
    found: list[Found] = []
    for key, value in attrs.items():
        if key.startswith("llm.output_messages."):
            p = key.split(".")
            if len(p) >= 8 and p[4] == "tool_calls" and p[2].isdigit() and p[5].isdigit():
                groups.setdefault((int(p[2]), int(p[5])), {})[".".join(p[6:])] = value
        elif key.startswith("gen_ai.completion."):
            p = key.split(".")
            if len(p) == 6 and p[3] == "tool_calls" and p[2].isdigit() and p[4].isdigit():
                groups.setdefault((int(p[2]), int(p[4])), {})[p[5]] = value
            elif (len(p) == 4 and p[3] == "content" and p[2].isdigit()
                  and attrs.get(f"gen_ai.completion.{p[2]}.finish_reason") == "tool_calls"):
                found.extend(f._replace(where=f"{key}{f.where}") for f in calls_in_value(value))
    for (n, m), g in sorted(groups.items()):
        name = g.get("tool_call.function.name", g.get("name"))
        raw = g.get("tool_call.function.arguments", g.get("arguments"))
        call_id = g.get("tool_call.id", g.get("id"))
        found.append(Found(text_or_none(name), raw, text_or_none(call_id), f"output {n} tool call {m}"))
    return found


def _chat_calls(s: Span) -> list[Found]:
    """The tool calls a chat span's response asked for; the first source that has any wins."""
    a = s.attrs
    if a.get("gen_ai.output.messages") is not None:
        found = calls_in_value(a["gen_ai.output.messages"])
        if found:
            return found
    found = _flattened_calls(a)
    if found:
        return found
    for value in (s.io.get("output"), a.get("gcp.vertex.agent.llm_response")):
        if value is not None:
            found = calls_in_value(value)
            if found:
                return found
    return []


def _unwrap_traceloop(value: object) -> object:
    """OpenLLMetry wraps tool inputs: LangChain `{"inputs": {...}, "tags", "metadata", "kwargs"}`,
    decorated functions `{"args": [], "kwargs": {...}}`."""
    decoded, reason = decode_json_text(value) if isinstance(value, str) else (value, None)
    if reason is not None or not isinstance(decoded, dict):
        return value
    if isinstance(decoded.get("inputs"), dict) and set(decoded) <= {"inputs", "tags", "metadata", "kwargs"}:
        return decoded["inputs"]
    if set(decoded) == {"args", "kwargs"} and not decoded["args"] and isinstance(decoded["kwargs"], dict):
        return decoded["kwargs"]
    return value


class _TraceIndex:
    """Parent links of one trace, for the walks up to the agent and the session.

    Sibling tool spans share their ancestors, so what a walk finds is remembered per parent: a
    trace is then read in time linear in its spans, not in spans × depth.
    """

    def __init__(self, spans: list[Span]) -> None:
        self.by_id = {s.span_id: s for s in spans if s.span_id}
        self.limit = len(spans)
        self._agents: dict[str | None, tuple[str | None, str | None, Span | None]] = {}
        self._inherited: dict[tuple[str | None, tuple[str, ...]], Any] = {}

    def ancestors(self, s: Span) -> Iterator[Span]:
        seen = 0
        p = self.by_id.get(s.parent_id) if s.parent_id else None
        while p is not None and seen <= self.limit:  # the bound guards against a cyclic file
            yield p
            seen += 1
            p = self.by_id.get(p.parent_id) if p.parent_id else None

    def agent(self, s: Span) -> tuple[str | None, str | None, Span | None]:
        found = self._agents.get(s.parent_id, _UNSEEN)
        if found is _UNSEEN:
            found = next(((*_agent_name(a), a) for a in self.ancestors(s) if _agent_name(a)[0]),
                         (None, None, None))
            self._agents[s.parent_id] = found
        if found[2] is not None:
            return found
        service = s.service
        if service and not service.startswith("unknown_service"):
            return service, None, None
        return None, None, None

    def inherited(self, s: Span, keys: tuple[str, ...]) -> Any:
        v = _first(s.attrs, keys)
        if v is not None:
            return v
        memo_key = (s.parent_id, keys)
        v = self._inherited.get(memo_key, _UNSEEN)
        if v is _UNSEEN:
            v = next((x for x in (_first(a.attrs, keys) for a in self.ancestors(s)) if x is not None), None)
            self._inherited[memo_key] = v
        return v


@dataclass(slots=True)
class _Chat:
    span: Span
    found: list[Found]
    agent: Span | None
    counted: bool = False


def _tool_call(t: Span, full_name: str, index: _TraceIndex, info: TraceInfo | None) -> dict[str, Any]:
    a = t.attrs
    server, name = split_mcp_name(full_name)
    if server is None and a.get("mcp.method.name") == "tools/call":
        server = t.service if t.server_side else text_or_none(a.get("server.address"))
    raw, arg_key = None, None
    for k in _ARG_KEYS:
        v = t.io.get(k) if k == "input" else a.get(k)
        if v is not None:
            raw, arg_key = v, k
            break
    if raw is None:
        args, why = None, "arguments not recorded (gen_ai.tool.call.arguments is opt-in content)"
    else:
        inner = _unwrap_traceloop(raw) if arg_key == "traceloop.entity.input" else raw
        # LangSmith (Claude Agent SDK traces) wraps tool inputs as {"input": {...}}.
        args, why = parse_arguments(inner, unwrap_input=t.scope == "langsmith" or "langsmith.span.kind" in a)
    if not name:
        why = "tool name missing" + (f"; {why}" if why else "")
    result = None
    for k in _RESULT_KEYS:
        v = t.io.get(k) if k == "output" else a.get(k)
        if v is not None:
            result = v
            break
    agent, _, agent_span = index.agent(t)
    if agent_span is None and t.server_side:
        agent = None  # an MCP server's own span: its service is the server, not the agent
    user = index.inherited(t, _USER_KEYS) or (info.user_id if info else None)
    session = index.inherited(t, _SESSION_KEYS) or (info.session_id if info else None)
    fields = {
        "tool_name": name, "arguments": args, "raw_arguments": raw, "indeterminate": why,
        "call_id": text_or_none(_first(a, _CALL_ID_KEYS)), "server": server, "agent": agent,
        "session_id": text_or_none(session), "trace_id": t.trace_id,
        "started_at": t.start, "ended_at": t.end, "result": result,
        "is_error": t.error or a.get("error.type") is not None,
        "label": info.label if info else None, "context": {"user_id": user} if user else None,
        "source": t.where, "format": FORMAT,
    }
    return fields


class _ChatIndex:
    """The chat spans of a trace, indexed to find the one that asked for a tool call."""

    def __init__(self, chats: list[_Chat]) -> None:
        self.by_call_id: dict[str, _Chat] = {}
        self.by_name: dict[str, list[tuple[_Chat, Found]]] = {}
        for c in chats:
            for f in c.found:
                if f.call_id is not None:
                    self.by_call_id.setdefault(f.call_id, c)
                if f.name:
                    self.by_name.setdefault(f.name, []).append((c, f))
        self.timed = [c for c in chats if c.span.start is not None]  # in start order
        self.starts = [c.span.start for c in self.timed]

    def asking(self, t: Span, call_id: str | None, full_name: str, args: dict[str, Any] | None,
               agent: Span | None) -> _Chat | None:
        """By call id; else by name and equal arguments; else the latest chat span that started
        before the call under the same agent."""
        if call_id is not None and call_id in self.by_call_id:
            return self.by_call_id[call_id]
        if args is not None:
            for c, f in self.by_name.get(full_name, ()):
                if parse_arguments(f.raw_arguments)[0] == args:
                    return c
        if t.start is None:
            return None
        for i in range(bisect_right(self.starts, t.start) - 1, -1, -1):  # type: ignore[arg-type]
            c = self.timed[i]
            if agent is None or c.agent is None or c.agent is agent:
                return c
        return None


def _apply_chat(fields: dict[str, Any], chat: _Chat | None, t: Span | None, index: _TraceIndex) -> None:
    model = _model(chat.span) if chat is not None else None
    if model is None and t is not None:
        model = _model(t) or next((m for m in map(_model, index.ancestors(t)) if m), None)
    fields["model"] = model
    if chat is None:
        return
    if chat.counted:
        fields["tokens_in"], fields["tokens_out"], fields["cost"] = 0, 0, 0.0
    else:
        fields["tokens_in"], fields["tokens_out"], fields["cost"] = _tokens(chat.span)
        chat.counted = True


def _order(spans: list[Span]) -> list[Span]:
    return sorted(spans, key=lambda s: s.start or _EARLIEST)  # stable: ties keep file order


def _flat_user_request(attrs: dict[str, Any]) -> str | None:
    for role_key, content_key in _FLAT_INPUTS:
        for i in range(_FLAT_MAX):
            role = attrs.get(role_key.format(i))
            if role is None:
                break
            if role in ("user", "human"):
                content = attrs.get(content_key.format(i))
                if isinstance(content, str) and content.strip():
                    return content.strip()
    return None


def _user_request(spans: list[Span], info: TraceInfo | None) -> str | None:
    """The trace's first user message: the Langfuse trace input, else the earliest span (not a
    tool span: its input is the tool's arguments) whose input messages have one."""
    if info is not None and info.user_request:
        return info.user_request
    for s in _order(spans):
        if _is_tool(s):
            continue
        for value in (s.io.get("input"), *(s.attrs.get(k) for k in _INPUT_KEYS)):
            if value is not None:
                found = user_request_in(value)
                if found is not None:
                    return found
        found = _flat_user_request(s.attrs)
        if found is not None:
            return found
    return None


def _trace_calls(spans: list[Span], info: TraceInfo | None) -> Iterator[TraceCall]:
    for call in _trace_call_fields(spans, info):
        yield new_call(call)


def _trace_call_fields(spans: list[Span], info: TraceInfo | None) -> Iterator[dict[str, Any]]:
    request: Any = _UNSEEN  # looked for once per trace, and only if the trace has a call
    for fields in _trace_fields(spans, info):
        if request is _UNSEEN:
            request = _user_request(spans, info)
        fields["context"] = with_user_request(fields["context"], request)
        yield fields


def _trace_fields(spans: list[Span], info: TraceInfo | None) -> Iterator[dict[str, Any]]:
    index = _TraceIndex(spans)
    chat_spans = [s for s in spans if _is_chat(s)]
    # A chat span with chat spans below it aggregates them (Vercel `ai.generateText` over
    # `doGenerate`): its output repeats theirs, so only the innermost ones are read.
    aggregates = {id(p) for c in chat_spans for p in index.ancestors(c) if _is_chat(p)}
    chats = [_Chat(c, _chat_calls(c), index.agent(c)[2])
             for c in _order(chat_spans) if id(c) not in aggregates]
    tools = [s for s in spans if _is_tool(s)]
    if tools:
        chat_index = _ChatIndex(chats)
        for t in _order(tools):
            full_name = _tool_call_name(t)
            if _nested_repeat(t, full_name, index):
                continue
            fields = _tool_call(t, full_name, index, info)
            chat = chat_index.asking(t, fields["call_id"], full_name, fields["arguments"], index.agent(t)[2])
            _apply_chat(fields, chat, t, index)
            yield fields
        return
    seen_ids: set[str] = set()
    for c in chats:
        for f in c.found:
            if f.call_id is not None:
                if f.call_id in seen_ids:
                    continue
                seen_ids.add(f.call_id)
            yield _requested_call(f, c, index, info)


def _nested_repeat(t: Span, full_name: str, index: _TraceIndex) -> bool:
    """True for a tool span inside a tool span of the same name with no agent in between: the
    framework's span and the MCP client span below it describe one call."""
    for a in index.ancestors(t):
        if _agent_name(a)[0] is not None:
            return False
        if _is_tool(a):
            # The MCP span names the bare tool (`create_issue`) where the framework's span may say
            # `mcp__github__create_issue`.
            return split_mcp_name(_tool_call_name(a))[1] == split_mcp_name(full_name)[1]
    return False


def _tool_call_name(s: Span) -> str:
    name = text_or_none(_first(s.attrs, _TOOL_NAME_KEYS))
    if name is not None:
        return name
    for prefix in _TOOL_NAME_PREFIXES:
        if s.name.startswith(prefix):
            return s.name[len(prefix):]
    return s.name


def _requested_call(f: Found, chat: _Chat, index: _TraceIndex, info: TraceInfo | None) -> dict[str, Any]:
    """A call seen only in a model response (the trace has no tool spans)."""
    c = chat.span
    server, name = (f.server, f.name or "") if f.server else split_mcp_name(f.name or "")
    args, why = parse_arguments(f.raw_arguments)
    if not name:
        why = "tool name missing" + (f"; {why}" if why else "")
    agent = index.agent(c)[0]
    user = index.inherited(c, _USER_KEYS) or (info.user_id if info else None)
    session = index.inherited(c, _SESSION_KEYS) or (info.session_id if info else None)
    fields = {
        "tool_name": name, "arguments": args, "raw_arguments": f.raw_arguments, "indeterminate": why,
        "call_id": f.call_id, "server": server, "agent": agent,
        "session_id": text_or_none(session), "trace_id": c.trace_id, "started_at": c.end,
        "label": info.label if info else None, "context": {"user_id": user} if user else None,
        "source": f"{c.where} {f.where}".rstrip(), "format": FORMAT,
    }
    _apply_chat(fields, chat, None, index)
    return fields


def _calls(spans: list[Span], info: TraceInfo | None) -> Iterator[TraceCall]:
    traces: dict[str | None, list[Span]] = {}
    for s in spans:
        traces.setdefault(s.trace_id, []).append(s)
    for trace_spans in traces.values():
        yield from _trace_calls(trace_spans, info)


def read_otel(obj_or_lines: ObjOrLines, source: str) -> Iterator[TraceCall]:
    """Tool calls of OTLP JSON (a document or the collector's JSONL), Jaeger JSON and Langfuse
    trace exports."""
    spans: list[Span] = []
    for record, where in iter_records(obj_or_lines, source):
        kind = doc_kind(record)
        if kind == "langfuse":
            trace_spans: list[Span] = []
            info = langfuse_spans(record, where, trace_spans)  # type: ignore[arg-type]
            yield from _calls(trace_spans, info)
        elif kind == "otlp":
            otlp_spans(record, where, spans)  # type: ignore[arg-type]
        elif kind == "jaeger":
            jaeger_spans(record, where, spans)  # type: ignore[arg-type]
        else:
            raise TraceFormatError(where, "not OTLP JSON (resourceSpans), Jaeger JSON (data[].spans) "
                                          "or a Langfuse export (trace, observations)")
    yield from _calls(spans, None)
