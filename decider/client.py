"""A small Python client for enforcement points: `DeciderClient("127.0.0.1:50051").decide(...)`."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import grpc

from .v1 import decider_pb2 as pb
from .v1 import decider_pb2_grpc as pb_grpc

__all__ = ["DeciderClient", "build_request"]


def build_request(
    *,
    agent: Mapping[str, Any],
    tool: str,
    args: Mapping[str, Any] | None = None,
    server: str = "",
    call_id: str = "",
    risk_tier: int | None = None,
    estimated_cost: float = 0.0,
    environment: str = "",
    request_id: str = "",
    labels: Mapping[str, str] | None = None,
    context: Mapping[str, Any] | None = None,
    dry_run: bool = False,
) -> pb.DecideRequest:
    req = pb.DecideRequest(
        agent=pb.Agent(**dict(agent)),
        tool=pb.ToolCall(name=tool, server=server, call_id=call_id),
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


class DeciderClient:
    def __init__(self, target: str, *, timeout: float = 10.0, token: str | None = None) -> None:
        self._channel = grpc.insecure_channel(target)
        self._stub = pb_grpc.DeciderStub(self._channel)
        self._timeout = timeout
        self._metadata = (("authorization", f"Bearer {token}"),) if token else None

    def decide(self, request: pb.DecideRequest | None = None, **kwargs: Any) -> pb.DecideResponse:
        """Send a DecideRequest, or build one from keyword arguments (see `build_request`)."""
        req = request if request is not None else build_request(**kwargs)
        return self._stub.Decide(req, timeout=self._timeout, metadata=self._metadata)

    def get_decision(self, decision_id: str) -> pb.DecisionRecord:
        return self._stub.GetDecision(pb.GetDecisionRequest(decision_id=decision_id), timeout=self._timeout,
                                      metadata=self._metadata)

    def close(self) -> None:
        self._channel.close()

    def __enter__(self) -> DeciderClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
