"""Reader for OpenTelemetry GenAI traces (README format B): OTLP JSON, Jaeger JSON, Langfuse exports.

All three are first turned into the same `_Span` (id, parent, attributes, times, status), so one
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
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from typing import Any

from ._messages import Found, calls_in_value
from ._parse import (
    decode_json_text,
    from_unix_micros,
    from_unix_nanos,
    normalize_id,
    parse_arguments,
    parse_time,
    split_mcp_name,
    text_or_none,
    to_float,
    to_int,
)
from ._records import ObjOrLines, iter_records
from .errors import TraceFormatError
from .model import TraceCall, new_call

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
_EARLIEST = datetime.min.replace(tzinfo=timezone.utc)
_UNSEEN: Any = object()


@dataclass(slots=True)
class _Span:
    span_id: str | None
    parent_id: str | None
    trace_id: str | None
    name: str
    attrs: dict[str, Any]
    start: datetime | None
    end: datetime | None
    error: bool
    service: str | None
    scope: str | None
    where: str
    server_side: bool = False
    # Langfuse observations only: their type and the fields Langfuse lifted out of the attributes.
    obs_type: str | None = None
    io: dict[str, Any] = field(default_factory=dict)
    model: str | None = None
    tokens_in: int | None = None
    tokens_out: int | None = None
    cost: float | None = None


@dataclass(slots=True)
class _TraceInfo:
    """Trace-level facts only a Langfuse export has."""

    session_id: str | None = None
    user_id: str | None = None
    label: dict[str, Any] | None = None


# --- file shapes -> _Span ---------------------------------------------------------------------

_VALUE_KINDS = {"stringValue": "s", "string_value": "s", "intValue": "i", "int_value": "i",
                "doubleValue": "d", "double_value": "d", "boolValue": "b", "bool_value": "b",
                "arrayValue": "a", "array_value": "a", "kvlistValue": "k", "kvlist_value": "k",
                "bytesValue": "s", "bytes_value": "s"}


def _any_value(value: object) -> Any:
    """An OTLP AnyValue as a Python value (`intValue` arrives as a string)."""
    if not isinstance(value, dict):
        return value
    if "stringValue" in value:  # by far the most common
        return value["stringValue"]
    for key, x in value.items():
        kind = _VALUE_KINDS.get(key)
        if kind == "s":
            return x
        if kind == "i":
            return to_int(x)
        if kind == "d":
            return to_float(x)
        if kind == "b":
            return bool(x)
        if kind == "a":
            return [_any_value(v) for v in (x or {}).get("values") or ()]
        if kind == "k":
            return _attributes((x or {}).get("values"))
    return None


def _attributes(kvs: object) -> dict[str, Any]:
    if not isinstance(kvs, list):
        return {}
    return {kv["key"]: _any_value(kv.get("value")) for kv in kvs if isinstance(kv, dict) and "key" in kv}


def _otlp_spans(doc: dict[str, Any], where: str, out: list[_Span]) -> None:
    for rs in doc.get("resourceSpans") or doc.get("resource_spans") or ():
        resource = rs.get("resource") or {}
        service = text_or_none(_attributes(resource.get("attributes")).get("service.name"))
        scope_spans = rs.get("scopeSpans") or rs.get("scope_spans") or rs.get("instrumentationLibrarySpans")
        for ss in scope_spans or ():
            scope = ss.get("scope") or ss.get("instrumentationLibrary") or {}
            for s in ss.get("spans") or ():
                span_id = normalize_id(s.get("spanId") or s.get("span_id"))
                status = s.get("status") or {}
                out.append(_Span(
                    span_id=span_id,
                    parent_id=normalize_id(s.get("parentSpanId") or s.get("parent_span_id")),
                    trace_id=normalize_id(s.get("traceId") or s.get("trace_id")),
                    name=s.get("name") or "",
                    attrs=_attributes(s.get("attributes")),
                    start=from_unix_nanos(s.get("startTimeUnixNano") or s.get("start_time_unix_nano")),
                    end=from_unix_nanos(s.get("endTimeUnixNano") or s.get("end_time_unix_nano")),
                    error=status.get("code") in (2, "2", "STATUS_CODE_ERROR"),
                    service=service, scope=text_or_none(scope.get("name")),
                    where=f"{where} span {span_id}",
                    server_side=s.get("kind") in (2, "SPAN_KIND_SERVER"),
                ))


def _jaeger_spans(doc: dict[str, Any], where: str, out: list[_Span]) -> None:
    traces = doc["data"] if isinstance(doc.get("data"), list) else [doc]
    for t in traces:
        processes = t.get("processes") or {}
        for s in t.get("spans") or ():
            attrs = {tag["key"]: tag.get("value") for tag in s.get("tags") or () if "key" in tag}
            process = processes.get(s.get("processID")) or s.get("process") or {}
            refs = s.get("references") or ()
            parent = next((r.get("spanID") for r in refs if r.get("refType") == "CHILD_OF"), None)
            start = from_unix_micros(s.get("startTime"))
            duration = to_int(s.get("duration"))
            span_id = normalize_id(s.get("spanID"))
            out.append(_Span(
                span_id=span_id, parent_id=normalize_id(parent),
                trace_id=normalize_id(s.get("traceID") or t.get("traceID")),
                name=s.get("operationName") or "", attrs=attrs, start=start,
                end=start + timedelta(microseconds=duration) if start and duration is not None else None,
                error=attrs.get("error") in (True, "true") or attrs.get("otel.status_code") == "ERROR",
                service=text_or_none(process.get("serviceName")),
                scope=text_or_none(attrs.get("otel.scope.name") or attrs.get("otel.library.name")),
                where=f"{where} span {span_id}", server_side=attrs.get("span.kind") == "server",
            ))


def _as_object(value: object) -> dict[str, Any]:
    """Langfuse writes `metadata` either as an object or as JSON text."""
    if isinstance(value, str):
        value, reason = decode_json_text(value)
        if reason is not None:
            return {}
    return value if isinstance(value, dict) else {}


def _langfuse_spans(doc: dict[str, Any], where: str, out: list[_Span]) -> _TraceInfo:
    trace = doc.get("trace") if isinstance(doc.get("trace"), dict) else {}
    observations = doc.get("observations")
    if not isinstance(observations, list):
        observations = trace.get("observations") if isinstance(trace.get("observations"), list) else []
    trace_id = normalize_id(trace.get("id"))
    for o in observations:
        if not isinstance(o, dict):
            continue
        meta = _as_object(o.get("metadata"))
        attrs = meta.get("attributes") if isinstance(meta.get("attributes"), dict) else {}
        resource = meta.get("resourceAttributes") if isinstance(meta.get("resourceAttributes"), dict) else {}
        scope = meta.get("scope") if isinstance(meta.get("scope"), dict) else {}
        usage = o.get("usageDetails") if isinstance(o.get("usageDetails"), dict) else {}
        cost = o.get("costDetails") if isinstance(o.get("costDetails"), dict) else {}
        obs_id = text_or_none(o.get("id"))
        out.append(_Span(
            span_id=obs_id, parent_id=text_or_none(o.get("parentObservationId")),
            trace_id=normalize_id(o.get("traceId")) or trace_id, name=o.get("name") or "", attrs=attrs,
            start=parse_time(o.get("startTime")), end=parse_time(o.get("endTime")),
            error=o.get("level") == "ERROR", service=text_or_none(resource.get("service.name")),
            scope=text_or_none(scope.get("name")), where=f"{where} observation {obs_id}",
            obs_type=text_or_none(o.get("type")),
            io={k: o[k] for k in ("input", "output") if o.get(k) is not None},
            model=text_or_none(o.get("model")), tokens_in=to_int(usage.get("input")),
            tokens_out=to_int(usage.get("output")), cost=to_float(cost.get("total")),
        ))
    scores = trace.get("scores") if isinstance(trace.get("scores"), list) else []
    label = {s["name"]: s.get("value") for s in scores if isinstance(s, dict) and s.get("name")}
    return _TraceInfo(session_id=text_or_none(trace.get("sessionId")),
                      user_id=text_or_none(trace.get("userId")), label=label or None)


def _doc_kind(record: object) -> str | None:
    if not isinstance(record, dict):
        return None
    if "resourceSpans" in record or "resource_spans" in record:
        return "otlp"
    if isinstance(record.get("observations"), list) or isinstance(record.get("trace"), dict):
        return "langfuse"
    data = record.get("data")
    if isinstance(data, list) and (not data or isinstance(data[0], dict) and "spans" in data[0]):
        return "jaeger"
    if isinstance(record.get("spans"), list) and "traceID" in record:
        return "jaeger"
    return None


def looks_like_otel(record: object) -> bool:
    return _doc_kind(record) is not None


# --- spans -> calls ---------------------------------------------------------------------------


def _first(attrs: dict[str, Any], keys: tuple[str, ...]) -> Any:
    for k in keys:
        v = attrs.get(k)
        if v is not None and v != "":
            return v
    return None


def _is_chat(s: _Span) -> bool:
    a = s.attrs
    return (a.get("gen_ai.operation.name") in _CHAT_OPS or s.obs_type == "GENERATION"
            or a.get("openinference.span.kind") == "LLM" or a.get("traceloop.span.kind") == "llm"
            or "llm.request.type" in a or a.get("ai.operationId") in _VERCEL_CHAT_OPS)


def _is_tool(s: _Span) -> bool:
    a = s.attrs
    if (a.get("gen_ai.operation.name") == "execute_tool" or s.obs_type == "TOOL"
            or s.name.startswith("execute_tool ") or a.get("mcp.method.name") == "tools/call"
            or a.get("openinference.span.kind") == "TOOL" or a.get("traceloop.span.kind") == "tool"
            or a.get("langsmith.span.kind") == "tool" or a.get("ai.operationId") == "ai.toolCall"):
        return True
    koog_tool = s.name.startswith("tool.") and s.scope == "ai.koog"
    return ("gen_ai.tool.name" in a or koog_tool) and not _is_chat(s)


def _agent_name(s: _Span) -> tuple[str | None, str | None]:
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


def _model(s: _Span) -> str | None:
    for k in _MODEL_KEYS:
        v = s.attrs.get(k)
        # Some emitters write "unknown" and put the real name in a vendor key further down.
        if v and v != "unknown":
            return str(v)
    return s.model if s.model and s.model != "unknown" else None


def _tokens(s: _Span) -> tuple[int | None, int | None, float | None]:
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


def _chat_calls(s: _Span) -> list[Found]:
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

    def __init__(self, spans: list[_Span]) -> None:
        self.by_id = {s.span_id: s for s in spans if s.span_id}
        self.limit = len(spans)
        self._agents: dict[str | None, tuple[str | None, str | None, _Span | None]] = {}
        self._inherited: dict[tuple[str | None, tuple[str, ...]], Any] = {}

    def ancestors(self, s: _Span) -> Iterator[_Span]:
        seen = 0
        p = self.by_id.get(s.parent_id) if s.parent_id else None
        while p is not None and seen <= self.limit:  # the bound guards against a cyclic file
            yield p
            seen += 1
            p = self.by_id.get(p.parent_id) if p.parent_id else None

    def agent(self, s: _Span) -> tuple[str | None, str | None, _Span | None]:
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

    def inherited(self, s: _Span, keys: tuple[str, ...]) -> Any:
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
    span: _Span
    found: list[Found]
    agent: _Span | None
    counted: bool = False


def _tool_call(t: _Span, full_name: str, index: _TraceIndex, info: _TraceInfo | None) -> dict[str, Any]:
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

    def asking(self, t: _Span, call_id: str | None, full_name: str, args: dict[str, Any] | None,
               agent: _Span | None) -> _Chat | None:
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


def _apply_chat(fields: dict[str, Any], chat: _Chat | None, t: _Span | None, index: _TraceIndex) -> None:
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


def _order(spans: list[_Span]) -> list[_Span]:
    return sorted(spans, key=lambda s: s.start or _EARLIEST)  # stable: ties keep file order


def _trace_calls(spans: list[_Span], info: _TraceInfo | None) -> Iterator[TraceCall]:
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
            yield new_call(fields)
        return
    seen_ids: set[str] = set()
    for c in chats:
        for f in c.found:
            if f.call_id is not None:
                if f.call_id in seen_ids:
                    continue
                seen_ids.add(f.call_id)
            yield new_call(_requested_call(f, c, index, info))


def _nested_repeat(t: _Span, full_name: str, index: _TraceIndex) -> bool:
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


def _tool_call_name(s: _Span) -> str:
    name = text_or_none(_first(s.attrs, _TOOL_NAME_KEYS))
    if name is not None:
        return name
    for prefix in _TOOL_NAME_PREFIXES:
        if s.name.startswith(prefix):
            return s.name[len(prefix):]
    return s.name


def _requested_call(f: Found, chat: _Chat, index: _TraceIndex, info: _TraceInfo | None) -> dict[str, Any]:
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


def _calls(spans: list[_Span], info: _TraceInfo | None) -> Iterator[TraceCall]:
    traces: dict[str | None, list[_Span]] = {}
    for s in spans:
        traces.setdefault(s.trace_id, []).append(s)
    for trace_spans in traces.values():
        yield from _trace_calls(trace_spans, info)


def read_otel(obj_or_lines: ObjOrLines, source: str) -> Iterator[TraceCall]:
    """Tool calls of OTLP JSON (a document or the collector's JSONL), Jaeger JSON and Langfuse
    trace exports."""
    spans: list[_Span] = []
    for record, where in iter_records(obj_or_lines, source):
        kind = _doc_kind(record)
        if kind == "langfuse":
            trace_spans: list[_Span] = []
            info = _langfuse_spans(record, where, trace_spans)  # type: ignore[arg-type]
            yield from _calls(trace_spans, info)
        elif kind == "otlp":
            _otlp_spans(record, where, spans)  # type: ignore[arg-type]
        elif kind == "jaeger":
            _jaeger_spans(record, where, spans)  # type: ignore[arg-type]
        else:
            raise TraceFormatError(where, "not OTLP JSON (resourceSpans), Jaeger JSON (data[].spans) "
                                          "or a Langfuse export (trace, observations)")
    yield from _calls(spans, None)
