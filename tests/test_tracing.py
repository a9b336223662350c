"""OpenTelemetry traces: one span per decision, sent over OTLP/HTTP to a receiver in the test, a
child of the caller's traceparent (propagated by decider.client, or sent on a DecideStream), with
the attributes of SPEC §11."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import grpc
import pytest
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.proto.trace.v1.trace_pb2 import Span
from opentelemetry.sdk.trace import TracerProvider

from decider.client import DeciderClient, build_request
from decider.v1 import decider_pb2 as pb

from .helpers import POLICIES, start_server

CODER = {"id": "coder-7", "capabilities": ["shell"]}


class OtlpReceiver:
    """POST /v1/traces with a protobuf ExportTraceServiceRequest: keeps every span."""

    def __init__(self) -> None:
        self.spans: list[tuple[dict[str, str], Span]] = []
        self.paths: list[str] = []
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 - http.server's name
                body = self.rfile.read(int(self.headers["Content-Length"]))
                outer.paths.append(self.path)
                req = ExportTraceServiceRequest.FromString(body)
                for rs in req.resource_spans:
                    resource = {a.key: a.value.string_value for a in rs.resource.attributes}
                    outer.spans += [(resource, s) for ss in rs.scope_spans for s in ss.spans]
                self.send_response(200)
                self.send_header("Content-Type", "application/x-protobuf")
                self.end_headers()

            def log_message(self, *a: object) -> None:
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()

    def wait_for(self, n: int, timeout: float = 30) -> list[tuple[dict[str, str], Span]]:
        deadline = time.monotonic() + timeout
        while len(self.spans) < n and time.monotonic() < deadline:
            time.sleep(0.05)
        return self.spans

    def stop(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def receiver(monkeypatch: pytest.MonkeyPatch) -> Iterator[OtlpReceiver]:
    monkeypatch.setenv("OTEL_BSP_SCHEDULE_DELAY", "100")   # the server's batch processor: flush often
    r = OtlpReceiver()
    try:
        yield r
    finally:
        r.stop()


def attrs(span: Span) -> dict[str, object]:
    out: dict[str, object] = {}
    for a in span.attributes:
        v = a.value
        out[a.key] = v.string_value if v.HasField("string_value") else v.int_value
    return out


def test_one_span_per_decision_child_of_the_callers_traceparent(tmp_path: Path, receiver: OtlpReceiver) -> None:
    srv = start_server(tmp_path, POLICIES, None, "--otlp-endpoint", receiver.url)
    try:
        tracer = TracerProvider().get_tracer("gateway")   # the caller's own tracing
        with tracer.start_as_current_span("mcp tools/call") as parent, DeciderClient(srv.target) as c:
            resp = c.decide(agent=CODER, tool="shell.exec", call_id="call-42", args={"command": "rm -rf /"})
        assert resp.outcome == pb.DENY
        with DeciderClient(srv.target) as c:   # no caller span: a root span of its own
            root = c.decide(agent=CODER, tool="shell.exec", args={"command": "ls"})
        spans = receiver.wait_for(2)
        assert len(spans) == 2 and set(receiver.paths) == {"/v1/traces"}
        by_id = {attrs(s)["decider.decision_id"]: (res, s) for res, s in spans}
        resource, span = by_id[resp.decision_id]
        ctx = parent.get_span_context()
        assert span.trace_id == ctx.trace_id.to_bytes(16, "big")
        assert span.parent_span_id == ctx.span_id.to_bytes(8, "big")
        assert span.name == "decider.decide" and span.kind == Span.SPAN_KIND_SERVER
        a = attrs(span)
        assert a["gen_ai.tool.name"] == "shell.exec" and a["gen_ai.tool.call.id"] == "call-42"
        assert a["decider.outcome"] == "DENY" and a["decider.bundle.revision"] == resp.bundle.revision
        assert a["decider.deciding_rule"] == resp.deciding_rule
        assert span.end_time_unix_nano >= span.start_time_unix_nano > 0
        assert resource["service.name"] == "decider"
        _, lone = by_id[root.decision_id]
        assert lone.parent_span_id == b"" and lone.trace_id != span.trace_id
    finally:
        srv.stop()


def test_stream_decisions_are_children_of_the_streams_traceparent_and_env_endpoint_works(
        tmp_path: Path, receiver: OtlpReceiver, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", receiver.url)   # configured by environment alone
    srv = start_server(tmp_path, POLICIES, None)
    try:
        trace_id, span_id = "4bf92f3577b34da6a3ce929d0e0e4736", "00f067aa0ba902b7"
        reqs = [build_request(agent=CODER, tool="fs.write", args={"path": f"/workspace/{i}"}, request_id=f"r{i}")
                for i in range(3)]
        with grpc.insecure_channel(srv.target) as ch:
            call = ch.stream_stream("/decider.v1.Decider/DecideStream",
                                    request_serializer=pb.DecideRequest.SerializeToString,
                                    response_deserializer=pb.DecideResponse.FromString)
            replies = list(call(iter(reqs), timeout=30,
                                metadata=(("traceparent", f"00-{trace_id}-{span_id}-01"),)))
        assert len(replies) == 3
        spans = receiver.wait_for(3)
        assert len(spans) == 3
        assert {s.trace_id.hex() for _, s in spans} == {trace_id}
        assert {s.parent_span_id.hex() for _, s in spans} == {span_id}
        assert {attrs(s)["decider.decision_id"] for _, s in spans} == {r.decision_id for r in replies}
    finally:
        srv.stop()
