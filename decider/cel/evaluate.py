"""Evaluate one CEL expression against a request, outside any rule: what `decider eval` runs.

Same environment, same functions and the same variables (`agent`, `tool`, `request`, `context`,
`budget`) as a rule's condition, but any result type is allowed, and the value (or the evaluation
error) is returned instead of being combined into a decision.
"""

from __future__ import annotations

import base64
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from cel_expr_python import cel
from google.protobuf import json_format
from google.protobuf import message as _message

from decider.cel.env import CelError, compile_errors, environment
from decider.errors import DeciderError
from decider.v1 import decider_pb2 as pb

__all__ = ["Evaluated", "ExpressionError", "evaluate", "to_json"]


class ExpressionError(DeciderError):
    """The expression does not compile; `errors` are located inside the expression text."""

    def __init__(self, errors: list[CelError]) -> None:
        self.errors = errors
        super().__init__("; ".join(f"{e.line}:{e.column}: {e.message}" for e in errors))


@dataclass(frozen=True, slots=True)
class Evaluated:
    type: str                 # the CEL type name (e.g. "BOOL", "list(string)"), "ERROR" for an error
    value: Any                # plain Python value (None for an error)
    error: str = ""           # the evaluation error, when there is one


def evaluate(expression: str, request: pb.DecideRequest | None = None,
             budget: Mapping[str, Mapping[str, float]] | None = None, *,
             env: cel.Env | None = None, extra: Mapping[str, Any] | None = None) -> Evaluated:
    """Compile `expression` in the policy environment (or `env`, e.g. a bundle's, which may declare
    more variables) and evaluate it against `request`; `extra` binds those further variables."""
    env = env or environment()
    try:
        program = env.compile(expression)
    except RuntimeError as e:
        raise ExpressionError(compile_errors(expression, e)) from None
    req = request if request is not None else pb.DecideRequest()
    act = env.Activation(data={"agent": req.agent, "tool": req.tool, "request": req.request,
                               "context": req.context, "budget": dict(budget or {}), "call.source": "call",
                               **(extra or {})})
    try:
        value = program.eval(act)
    except RuntimeError as e:   # cost or iteration limits
        return Evaluated("ERROR", None, str(e))
    kind = str(value.type())
    if kind == "ERROR":
        return Evaluated(kind, None, str(value.value()))
    return Evaluated(kind, value.plain_value())


def to_json(value: Any) -> Any:
    """A CEL plain value as JSON: timestamps ISO-8601, durations "3600s", bytes base64, messages as
    their proto3 JSON."""
    if isinstance(value, dict):
        return {str(k): to_json(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [to_json(v) for v in value]
    if isinstance(value, datetime):
        return value.isoformat().replace("+00:00", "Z")
    if isinstance(value, timedelta):
        return f"{value.total_seconds():g}s"
    if isinstance(value, (bytes, bytearray)):
        return base64.b64encode(bytes(value)).decode("ascii")
    if isinstance(value, _message.Message):
        return json_format.MessageToDict(value)
    return value
