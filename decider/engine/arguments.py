"""A call's arguments checked against its tool's schema from the catalogue (SPEC §9).

A tool without a schema is not checked (as before schemas existed). Arguments that violate the
schema are denied `invalid_arguments`, the reason naming the JSON path (`$.amount: 'lots' is not of
type 'number'`) so the agent can correct the call. The validator was built at bundle load.
"""

from __future__ import annotations

from decider.bundle.compile import Reason
from decider.bundle.schemas import ToolSchema, violation
from decider.v1 import decider_pb2 as pb
from decider.values.canonical import struct_to_dict

__all__ = ["INVALID_ARGUMENTS", "check_arguments"]

INVALID_ARGUMENTS = "invalid_arguments"


def check_arguments(schema: ToolSchema, tool: pb.ToolCall, tool_name: str) -> Reason | None:
    """None when the call's arguments fit its tool's schema (`bundle.schema(tool_name)`, looked up
    by the caller so a tool without one costs no call)."""
    on_struct = schema.on_struct
    if on_struct is not None and on_struct(tool.args):
        return None   # valid, read straight off the Struct (no conversion)
    args = struct_to_dict(tool.args)
    if schema.is_valid(args):
        return None
    return Reason(INVALID_ARGUMENTS, f"arguments of {tool_name!r} do not match its schema: {violation(schema, args)}",
                  "", "deny")
