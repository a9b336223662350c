"""OpenTelemetry traces (`decider serve --otlp-endpoint URL`, or OTEL_EXPORTER_OTLP_ENDPOINT): one
span per recorded decision, exported over OTLP/HTTP, a child of the caller's W3C `traceparent`.

Off unless configured: without an endpoint nothing here is imported on the server. The span is
made after the answer, with the decision's own start and end times (`start_time`/`end_time`), so
the decision path itself carries no tracing work until then; the export runs on the SDK's batch
thread.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterable

from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor
from opentelemetry.trace import SpanKind
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

from decider.v1 import decider_pb2 as pb

__all__ = ["DecisionTracer", "traces_url", "endpoint_from_env", "trace_headers", "SPAN_NAME"]

SPAN_NAME = "decider.decide"
_PROPAGATOR = TraceContextTextMapPropagator()


def endpoint_from_env() -> str | None:
    return os.environ.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT") or os.environ.get("OTEL_EXPORTER_OTLP_ENDPOINT")


def traces_url(endpoint: str) -> str:
    """An OTLP base URL (http://collector:4318) gets the traces path, as OTEL_EXPORTER_OTLP_ENDPOINT does."""
    if not endpoint.startswith(("http://", "https://")):
        raise ValueError(f"--otlp-endpoint: not an http(s) URL: {endpoint!r}")
    return endpoint if endpoint.rstrip("/").endswith("/v1/traces") else endpoint.rstrip("/") + "/v1/traces"


def trace_headers(metadata: Iterable[tuple[str, str | bytes]] | None) -> dict[str, str]:
    """`traceparent` / `tracestate` from gRPC invocation metadata."""
    out: dict[str, str] = {}
    for key, value in metadata or ():
        if key in ("traceparent", "tracestate"):
            out[key] = value if isinstance(value, str) else value.decode("latin-1")
    return out


class DecisionTracer:
    def __init__(self, endpoint: str, instance: str = "") -> None:
        attrs = {"service.name": "decider"}
        if instance:
            attrs["service.instance.id"] = instance
        self.provider = TracerProvider(resource=Resource.create(attrs))
        self.provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter(endpoint=traces_url(endpoint))))
        self.tracer = self.provider.get_tracer("decider")

    def observe(self, req: pb.DecideRequest, resp: pb.DecideResponse, outcome: str, started: float,
                commit_started: float, commit_ended: float, carrier: dict[str, str] | None) -> None:
        """One span for one recorded decision; `started` etc. are time.perf_counter() readings."""
        now_pc, now_ns = time.perf_counter(), time.time_ns()
        start_ns = now_ns - int((now_pc - started) * 1e9)
        parent = _PROPAGATOR.extract(carrier) if carrier else None
        span = self.tracer.start_span(SPAN_NAME, context=parent, kind=SpanKind.SERVER, start_time=start_ns, attributes={
            "gen_ai.tool.name": req.tool.name,
            "gen_ai.tool.call.id": req.tool.call_id,
            "gen_ai.agent.id": req.agent.id,
            "decider.outcome": outcome,
            "decider.decision_id": resp.decision_id,
            "decider.bundle.revision": resp.bundle.revision,
            "decider.deciding_rule": resp.deciding_rule,
            "decider.eval_us": int(resp.eval_us),
            "decider.commit_us": int((commit_ended - commit_started) * 1e6),
            "rpc.system": "grpc",
            "rpc.service": "decider.v1.Decider",
        })
        span.end(end_time=now_ns)

    def shutdown(self) -> None:
        """Flush what the batch processor holds, then stop it."""
        self.provider.shutdown()
