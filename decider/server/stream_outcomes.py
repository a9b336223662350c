"""Outcomes carried in a `DecideBatchStream` message (`DecideBatch.outcomes`, issue 27).

A gateway decides on the batch stream and used to report each allowed call's outcome with a unary
ReportOutcome: two round trips to decider per call, the second paying grpc's ~400 µs unary cost. On
the stream the outcome rides with the next batch message. Each one goes through the very handler the
unary RPC uses (`server/outcomes.py::report_outcome`: the same validation, the same bound-caller
check, the same budget settle); the stream's caller already holds the enforcer role both RPCs need.
What the unary call would abort with becomes that outcome's `error` in the reply, so nothing is lost
silently and one bad outcome affects neither the others nor the message's decisions.
"""

from __future__ import annotations

import asyncio
from typing import Any, NoReturn, cast

import grpc

from decider.api.wire import decode_message
from decider.errors import InvalidRequest
from decider.server.controls import Controls
from decider.server.outcomes import report_outcome
from decider.v1 import decider_pb2 as pb

__all__ = ["report_outcomes"]


class _Refused(Exception):
    def __init__(self, code: grpc.StatusCode, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


class _OutcomeContext:
    """What `report_outcome` needs of a ServicerContext, for one outcome on a stream: `abort` fails
    this outcome alone (the stream goes on); `peer` is the stream's, for the auth event."""

    def __init__(self, stream: grpc.aio.ServicerContext) -> None:
        self._stream = stream

    def peer(self) -> str:
        return cast(str, self._stream.peer())

    async def abort(self, code: grpc.StatusCode, details: str = "", *_: Any) -> NoReturn:
        raise _Refused(code, details)


def _error(decision_id: str, code: grpc.StatusCode, message: str) -> bytes:
    return pb.ReportOutcomeReply(decision_id=decision_id,
                                 error=pb.StreamError(code=code.value[0], message=message)).SerializeToString()


async def _report_one(controls: Controls, raw: bytes, ctx: _OutcomeContext) -> bytes:
    try:
        req = decode_message(pb.ReportOutcomeRequest, raw)
    except InvalidRequest as e:
        return _error("", grpc.StatusCode.INVALID_ARGUMENT, str(e))
    try:
        await report_outcome(controls, req, cast(grpc.aio.ServicerContext, ctx), answer=False)
    except _Refused as e:
        return _error(req.decision_id, e.code, e.message)
    except Exception as e:  # noqa: BLE001 - one outcome's failure is its own, never the stream's
        return _error(req.decision_id, grpc.StatusCode.INTERNAL, f"outcome not recorded: {e}")
    return pb.ReportOutcomeReply(decision_id=req.decision_id).SerializeToString()


async def report_outcomes(controls: Controls, raws: list[bytes], stream: grpc.aio.ServicerContext) -> list[bytes]:
    """Each outcome's `ReportOutcomeReply` bytes, in order. Settled concurrently, as concurrent unary
    reports are (their writes share the group commit)."""
    ctx = _OutcomeContext(stream)
    if len(raws) == 1:
        return [await _report_one(controls, raws[0], ctx)]
    return list(await asyncio.gather(*(_report_one(controls, raw, ctx) for raw in raws)))
