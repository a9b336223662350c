"""The Decider service's RPC handlers, gathered from the modules that implement them: the decision
RPCs (server/service.py, server/stream.py), the approval RPCs (server/approvals.py) and ReportOutcome
(server/controls.py), and the kill-switch Control RPCs (server/kill_switches.py). Registered here,
by the server (server/app.py), so none of those modules imports another to register it."""

from __future__ import annotations

from functools import partial

import grpc

from decider.server import approvals as approvals_rpc
from decider.server import kill_switches as kill_rpc
from decider.server.controls import Controls
from decider.server.outcomes import report_outcome
from decider.server.service import SERVICE_NAME, DeciderService
from decider.server.stream import decide_batch_stream_handler, decide_stream_handler
from decider.v1 import decider_pb2 as pb

__all__ = ["decision_handler", "control_rpc_handlers", "kill_switch_handlers"]


def decision_handler(svc: DeciderService) -> grpc.GenericRpcHandler:
    return grpc.method_handlers_generic_handler(
        SERVICE_NAME,
        {
            # Raw bytes in: a request that does not even decode still gets INVALID_ARGUMENT naming
            # the field, instead of grpc's generic INTERNAL deserialisation failure.
            "Decide": grpc.unary_unary_rpc_method_handler(
                svc.decide, request_deserializer=None, response_serializer=pb.DecideResponse.SerializeToString
            ),
            "DecideStream": decide_stream_handler(svc),
            "DecideBatchStream": decide_batch_stream_handler(svc),
            "GetDecision": grpc.unary_unary_rpc_method_handler(
                svc.get_decision,
                request_deserializer=pb.GetDecisionRequest.FromString,
                response_serializer=pb.DecisionRecord.SerializeToString,
            ),
        },
    )


def control_rpc_handlers(controls: Controls) -> dict[str, grpc.RpcMethodHandler]:
    """The Decider RPCs the controls serve (merged with DeciderService's own): the approval RPCs and
    ReportOutcome."""
    out = approvals_rpc.handlers(controls)
    out["ReportOutcome"] = grpc.unary_unary_rpc_method_handler(
        partial(report_outcome, controls), request_deserializer=pb.ReportOutcomeRequest.FromString,
        response_serializer=pb.DecisionRecord.SerializeToString)
    return out


def kill_switch_handlers(controls: Controls) -> dict[str, grpc.RpcMethodHandler]:
    return kill_rpc.handlers(controls)
