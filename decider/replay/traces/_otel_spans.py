"""The three OTel file shapes turned into one span model, for the rules in `otel.py`.

OTLP JSON (`resourceSpans`, the collector's file exporter and OTLP/HTTP), Jaeger JSON (`data[].spans`)
and Langfuse exports (`trace` + `observations`, whose metadata carries the original OTel attributes)
all become `Span`s: id, parent, trace, name, attributes as Python values, times, error status.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from decider.replay.traces._parse import (
    decode_json_text,
    from_unix_micros,
    from_unix_nanos,
    normalize_id,
    parse_time,
    text_or_none,
    to_float,
    to_int,
)
from decider.replay.traces._user_request import user_request_in

__all__ = ["Span", "TraceInfo", "doc_kind", "jaeger_spans", "langfuse_spans", "otlp_spans"]


@dataclass(slots=True)
class Span:
    """One span (or Langfuse observation) as the call rules read it; `where` locates it in the file."""

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
class TraceInfo:
    """Trace-level facts only a Langfuse export has."""

    session_id: str | None = None
    user_id: str | None = None
    label: dict[str, Any] | None = None
    user_request: str | None = None     # from the trace's `input` (SPEC §10: context.user_request)


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


def otlp_spans(doc: dict[str, Any], where: str, out: list[Span]) -> None:
    for rs in doc.get("resourceSpans") or doc.get("resource_spans") or ():
        resource = rs.get("resource") or {}
        service = text_or_none(_attributes(resource.get("attributes")).get("service.name"))
        scope_spans = rs.get("scopeSpans") or rs.get("scope_spans") or rs.get("instrumentationLibrarySpans")
        for ss in scope_spans or ():
            scope = ss.get("scope") or ss.get("instrumentationLibrary") or {}
            for s in ss.get("spans") or ():
                span_id = normalize_id(s.get("spanId") or s.get("span_id"))
                status = s.get("status") or {}
                out.append(Span(
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


def jaeger_spans(doc: dict[str, Any], where: str, out: list[Span]) -> None:
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
            out.append(Span(
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


def langfuse_spans(doc: dict[str, Any], where: str, out: list[Span]) -> TraceInfo:
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
        out.append(Span(
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
    return TraceInfo(session_id=text_or_none(trace.get("sessionId")),
                      user_id=text_or_none(trace.get("userId")), label=label or None,
                      user_request=user_request_in(trace.get("input"), plain_text=True))


def doc_kind(record: object) -> str | None:
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
