"""OTLP/HTTP logs sink: each record is one LogRecord of an `ExportLogsServiceRequest` (protobuf)."""

from __future__ import annotations

import json
import time
from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import Any

from opentelemetry.proto.collector.logs.v1.logs_service_pb2 import ExportLogsServiceRequest
from opentelemetry.proto.common.v1.common_pb2 import AnyValue, InstrumentationScope, KeyValue
from opentelemetry.proto.logs.v1.logs_pb2 import LogRecord, ResourceLogs, ScopeLogs, SeverityNumber
from opentelemetry.proto.resource.v1.resource_pb2 import Resource

from decider.export.webhook import post

__all__ = ["OtlpLogsSink", "logs_request"]

SCOPE = "decider.decisions"
_SEVERITY = {"ALLOW": (SeverityNumber.SEVERITY_NUMBER_INFO, "INFO"),
             "REQUIRE_APPROVAL": (SeverityNumber.SEVERITY_NUMBER_INFO2, "INFO"),
             "DENY": (SeverityNumber.SEVERITY_NUMBER_WARN, "WARN")}


class OtlpLogsSink:
    def __init__(self, url: str, headers: Mapping[str, str] | None = None, timeout_s: float = 10.0) -> None:
        if not url.startswith(("http://", "https://")):
            raise ValueError(f"--url: not an http(s) URL: {url!r}")
        self.url = url if url.rstrip("/").endswith("/v1/logs") else url.rstrip("/") + "/v1/logs"
        self.headers = {"Content-Type": "application/x-protobuf", **(headers or {})}
        self.timeout_s = timeout_s

    def send(self, lines: Sequence[dict[str, Any]]) -> None:
        post(self.url, logs_request(lines).SerializeToString(), self.headers, self.timeout_s)


def _kv(key: str, value: str | int) -> KeyValue:
    v = AnyValue(int_value=value) if isinstance(value, int) else AnyValue(string_value=value)
    return KeyValue(key=key, value=v)


def logs_request(lines: Sequence[dict[str, Any]]) -> ExportLogsServiceRequest:
    """Body: the whole line as JSON; attributes: the fields a log pipeline filters on."""
    now = time.time_ns()
    records = []
    for line in lines:
        sev, sev_text = _SEVERITY.get(line.get("outcome", ""), (SeverityNumber.SEVERITY_NUMBER_INFO, "INFO"))
        t = datetime.fromisoformat(line["time"]) if line.get("time") else None
        records.append(LogRecord(
            time_unix_nano=int(t.timestamp() * 1e9) if t else now, observed_time_unix_nano=now,
            severity_number=sev, severity_text=sev_text, event_name="decider.decision",
            body=AnyValue(string_value=json.dumps(line, separators=(",", ":"))),
            attributes=[_kv("decider.seq", int(line["seq"])), _kv("decider.change", line["change"]),
                        _kv("decider.decision_id", line["decision_id"]), _kv("decider.outcome", line["outcome"]),
                        _kv("decider.bundle.revision", line.get("bundle_revision", "")),
                        _kv("gen_ai.tool.name", line.get("tool_name", "")),
                        _kv("gen_ai.tool.call.id", line.get("call_id", "")),
                        _kv("gen_ai.agent.id", line.get("agent_id", ""))]))
    return ExportLogsServiceRequest(resource_logs=[ResourceLogs(
        resource=Resource(attributes=[_kv("service.name", "decider")]),
        scope_logs=[ScopeLogs(scope=InstrumentationScope(name=SCOPE), log_records=records)])])
