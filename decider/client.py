"""A small Python client for enforcement points: `DeciderClient("127.0.0.1:50051").decide(...)`."""

from __future__ import annotations

import warnings
from collections.abc import Iterator, Mapping, Sequence
from typing import Any, TypeVar

import grpc
from google.protobuf import json_format
from opentelemetry.propagate import inject

from decider.v1 import decider_pb2 as pb
from decider.v1 import decider_pb2_grpc as pb_grpc

__all__ = ["DeciderClient", "build_request", "outcome_request", "with_trace_context", "renamed_server"]

T = TypeVar("T", str, "str | None")


def renamed_server(tool_server: T, server: str | None, where: str) -> T:
    """`server=` meant the tool's server, while `--server` on the CLI was decider's address (issue 28):
    the keyword is now `tool_server=`. The old one still works, with a DeprecationWarning."""
    if server is None:
        return tool_server
    warnings.warn(f"{where}: server= is deprecated; use tool_server= (the tool's own server, e.g. mcp://billing)",
                  DeprecationWarning, stacklevel=3)
    return tool_server or server  # type: ignore[return-value]


def build_request(
    *,
    agent: Mapping[str, Any],
    tool: str,
    args: Mapping[str, Any] | None = None,
    tool_server: str = "",
    call_id: str = "",
    risk_tier: int | None = None,
    estimated_cost: float = 0.0,
    environment: str = "",
    request_id: str = "",
    labels: Mapping[str, str] | None = None,
    context: Mapping[str, Any] | None = None,
    dry_run: bool = False,
    server: str | None = None,   # deprecated: tool_server
) -> pb.DecideRequest:
    tool_server = renamed_server(tool_server, server, "build_request")
    req = pb.DecideRequest(
        agent=pb.Agent(**dict(agent)),
        tool=pb.ToolCall(name=tool, server=tool_server, call_id=call_id),
        request=pb.Request(id=request_id, estimated_cost=estimated_cost, environment=environment,
                           labels=dict(labels or {})),
        dry_run=dry_run,
    )
    if risk_tier is not None:
        req.tool.risk_tier = risk_tier
    if args:
        req.tool.args.update(dict(args))
    if context:
        req.context.update(dict(context))
    return req


def with_trace_context(metadata: tuple[tuple[str, str], ...] | None) -> tuple[tuple[str, str], ...] | None:
    """`metadata` plus the current OpenTelemetry context as W3C `traceparent`/`tracestate`, so the
    server's decision span is a child of the caller's span (nothing is added outside a span)."""
    carrier: dict[str, str] = {}
    inject(carrier)   # the globally configured propagator (W3C trace context by default)
    if not carrier:
        return metadata
    return (*(metadata or ()), *((k, v) for k, v in carrier.items() if k in ("traceparent", "tracestate")))


def outcome_request(decision_id: str, actual_cost: float | None = None, status: str = "ok",
                    labels: Sequence[str] = (), result: Any = None) -> pb.ReportOutcomeRequest:
    """A ReportOutcomeRequest; `actual_cost` None leaves the field unset (the estimate stands)."""
    req = pb.ReportOutcomeRequest(decision_id=decision_id, status=status, labels=list(labels))
    if actual_cost is not None:
        req.actual_cost = actual_cost
    if result is not None:
        json_format.ParseDict(result, req.result)
    return req


class DeciderClient:
    def __init__(self, target: str, *, timeout: float = 10.0, token: str | None = None,
                 tls_ca: bytes | None = None, tls_cert: bytes | None = None, tls_key: bytes | None = None) -> None:
        self.target = target
        self._creds: grpc.ChannelCredentials | None = None
        if tls_ca is not None or tls_cert is not None:
            self._creds = grpc.ssl_channel_credentials(root_certificates=tls_ca, private_key=tls_key,
                                                       certificate_chain=tls_cert)
            self._channel = grpc.secure_channel(target, self._creds)
        else:
            self._channel = grpc.insecure_channel(target)
        self._stub = pb_grpc.DeciderStub(self._channel)
        self._control = pb_grpc.ControlStub(self._channel)
        self._timeout = timeout
        self._metadata = (("authorization", f"Bearer {token}"),) if token else None

    @property
    def metadata(self) -> tuple[tuple[str, str], ...]:
        """What every call sends (the bearer token, when there is one)."""
        return self._metadata or ()

    def aio_channel(self) -> grpc.aio.Channel:
        """A grpc.aio channel to the same target with the same credentials (for streams run on an
        event loop, e.g. the runtime guards'); call it on the loop that will use it."""
        if self._creds is not None:
            return grpc.aio.secure_channel(self.target, self._creds)
        return grpc.aio.insecure_channel(self.target)

    def decide(self, request: pb.DecideRequest | None = None, **kwargs: Any) -> pb.DecideResponse:
        """Send a DecideRequest, or build one from keyword arguments (see `build_request`)."""
        if "server" in kwargs:   # warn at the caller's line, not here
            kwargs["tool_server"] = renamed_server(kwargs.get("tool_server", ""), kwargs.pop("server"),
                                                   "DeciderClient.decide")
        req = request if request is not None else build_request(**kwargs)
        return self._stub.Decide(req, timeout=self._timeout, metadata=with_trace_context(self._metadata))

    def get_decision(self, decision_id: str) -> pb.DecisionRecord:
        return self._stub.GetDecision(pb.GetDecisionRequest(decision_id=decision_id), timeout=self._timeout,
                                      metadata=self._metadata)

    # ---- approvals, outcomes (approver / enforcer roles) ----
    def resolve_approval(self, decision_id: str, approve: bool, *, approver: str = "",
                         comment: str = "") -> pb.DecisionRecord:
        req = pb.ResolveApprovalRequest(decision_id=decision_id, resolution=pb.APPROVE if approve else pb.REJECT,
                                        approver=approver, comment=comment)
        return self._stub.ResolveApproval(req, timeout=self._timeout, metadata=self._metadata)

    def list_approvals(self, state: int = pb.APPROVAL_PENDING, limit: int = 0) -> list[pb.DecisionRecord]:
        resp = self._stub.ListApprovals(pb.ListApprovalsRequest(state=state, limit=limit), timeout=self._timeout,
                                        metadata=self._metadata)
        return list(resp.approvals)

    def watch_decision(self, decision_id: str, timeout: float | None = None) -> Iterator[pb.DecisionRecord]:
        """The record now and at every change until it is final (approved, rejected, expired, settled)."""
        return self._stub.WatchDecision(pb.GetDecisionRequest(decision_id=decision_id), timeout=timeout,
                                        metadata=self._metadata)

    def report_outcome(self, decision_id: str, actual_cost: float | None = None, status: str = "ok",
                       labels: Sequence[str] = (), result: Any = None) -> pb.DecisionRecord:
        """`actual_cost` None (not known): the estimate stands; 0 refunds it (SPEC §11). `result`: the
        tool's result (any JSON value), for the bundle's `on: outcome` rules; never stored."""
        return self.report_request(outcome_request(decision_id, actual_cost, status, labels, result))

    def report_request(self, request: pb.ReportOutcomeRequest) -> pb.DecisionRecord:
        return self._stub.ReportOutcome(request, timeout=self._timeout, metadata=self._metadata)

    # ---- kill switches (admin role) ----
    def set_kill_switch(self, scope: str, value: str = "", reason: str = "") -> pb.KillSwitch:
        return self._control.SetKillSwitch(pb.SetKillSwitchRequest(scope=scope, value=value, reason=reason),
                                           timeout=self._timeout, metadata=self._metadata)

    def clear_kill_switch(self, switch_id: str = "", *, scope: str = "", value: str = "") -> pb.KillSwitch:
        return self._control.ClearKillSwitch(pb.ClearKillSwitchRequest(id=switch_id, scope=scope, value=value),
                                             timeout=self._timeout, metadata=self._metadata)

    def status(self) -> pb.StatusResponse:
        return self._control.Status(pb.StatusRequest(), timeout=self._timeout, metadata=self._metadata)

    def list_kill_switches(self, include_cleared: bool = False) -> list[pb.KillSwitch]:
        resp = self._control.ListKillSwitches(pb.ListKillSwitchesRequest(include_cleared=include_cleared),
                                              timeout=self._timeout, metadata=self._metadata)
        return list(resp.kill_switches)

    def close(self) -> None:
        self._channel.close()

    def __enter__(self) -> DeciderClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
