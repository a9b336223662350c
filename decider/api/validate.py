"""Check a DecideRequest before it reaches the engine; name the field that is wrong.

Also locates the field that made a request undecodable (too deeply nested, truncated), by
re-parsing the wire bytes field by field, so even that error names `tool.args`.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence

from google.protobuf import message as _message
from google.protobuf import struct_pb2
from google.protobuf import unknown_fields as _unknown

from decider.api.wire import decode_message
from decider.errors import InvalidRequest
from decider.v1 import decider_pb2 as pb
from decider.values.agent_ids import SAFE_ID, unsafe_id

__all__ = ["MAX_ARGS_BYTES", "MAX_ENTRIES", "MAX_NAME_LEN", "validate_request", "decode_request", "non_finite_number"]

MAX_ARGS_BYTES = 1 << 20     # per Struct (tool.args, context): 1 MiB
MAX_NAME_LEN = 256           # every string of Agent, ToolCall, Request; each label key/value and capability
MAX_ENTRIES = 64             # agent.labels, agent.capabilities, request.labels
MAX_RISK_TIER = 4


def decode_request(raw: bytes) -> pb.DecideRequest:
    """Parse wire bytes; InvalidRequest naming the field when they do not parse."""
    return decode_message(pb.DecideRequest, raw, "; nesting is limited to about 30 levels")


def _check_name(field: str, value: str, required: bool) -> None:
    if required and not value:
        raise InvalidRequest(field, "is required")
    if len(value) > MAX_NAME_LEN:
        raise InvalidRequest(field, f"is {len(value)} characters; the limit is {MAX_NAME_LEN}")
    if value and not value.isprintable():
        bad = next(c for c in value if not c.isprintable())
        raise InvalidRequest(field, f"contains a control or non-printable character (U+{ord(bad):04X})")


# Every string field of Agent, ToolCall and Request, in the order `validate_request` reads them.
_NAME_FIELDS = ("tool.name", "agent.id", "tool.server", "tool.call_id", "request.id", "agent.instance_id",
                "agent.owner", "agent.team", "agent.workflow", "agent.model", "agent.session_id",
                "request.environment")
_REQUIRED = frozenset({"tool.name", "agent.id"})


def _check_collections(a_labels: Mapping[str, str], caps: Sequence[str], r_labels: Mapping[str, str]) -> None:
    """Counts first (a 300k-entry list is refused without walking it), then one test over every
    entry; the entry-by-entry checks run only to name the one that fails."""
    for field, n in (("agent.labels", len(a_labels)), ("agent.capabilities", len(caps)),
                     ("request.labels", len(r_labels))):
        if n > MAX_ENTRIES:
            raise InvalidRequest(field, f"has {n} entries; the limit is {MAX_ENTRIES}")
    strings = [*caps, *a_labels, *a_labels.values(), *r_labels, *r_labels.values()]
    joined = "".join(strings)
    # All together within one entry's limit (the usual case): no entry can exceed it.
    if (len(joined) <= MAX_NAME_LEN or max(map(len, strings)) <= MAX_NAME_LEN) and joined.isprintable():
        return
    for i, cap in enumerate(caps):
        _check_name(f"agent.capabilities[{i}]", cap, required=False)
    for field, labels in (("agent.labels", a_labels), ("request.labels", r_labels)):
        for key, value in labels.items():
            _check_name(f"{field} key", key, required=False)
            _check_name(f"{field}.{key}", value, required=False)


def _check_struct(field: str, value: struct_pb2.Struct) -> None:
    size = value.ByteSize()
    if size <= MAX_ARGS_BYTES:
        return
    # Name the biggest entry so the caller knows what to shrink.
    biggest = max(value.fields.items(), key=lambda kv: kv[1].ByteSize(), default=None)
    where = f"{field}.{biggest[0]}" if biggest else field
    raise InvalidRequest(where, f"{field} is {size} bytes; the limit is {MAX_ARGS_BYTES} bytes")


_WIRE_NAMES = {0: "a varint", 1: "a 64-bit value", 2: "a length-delimited value", 5: "a 32-bit value"}


def _check_wire_types(msg: _message.Message, prefix: str) -> None:
    """A known field sent with the wrong wire type parses as an *unknown* field; name it.

    Field numbers this server does not know are tolerated (a newer client), as protobuf intends.
    """
    for f in _unknown.UnknownFieldSet(msg):
        fd = msg.DESCRIPTOR.fields_by_number.get(f.field_number)
        if fd is not None:
            got = _WIRE_NAMES.get(f.wire_type, f"wire type {f.wire_type}")
            raise InvalidRequest(prefix + fd.name, f"has the wrong type: sent as {got}")


def validate_request(req: pb.DecideRequest) -> None:
    """Raise InvalidRequest for the first problem found; return None when the request is usable."""
    _check_wire_types(req, "")
    _check_wire_types(req.agent, "agent.")
    _check_wire_types(req.tool, "tool.")
    _check_wire_types(req.request, "request.")
    if not req.HasField("tool"):
        raise InvalidRequest("tool", "is required")
    if not req.HasField("agent"):
        raise InvalidRequest("agent", "is required")
    tool, agent, request = req.tool, req.agent, req.request
    names = (tool.name, agent.id, tool.server, tool.call_id, request.id, agent.instance_id, agent.owner,
             agent.team, agent.workflow, agent.model, agent.session_id, request.environment)
    # One test for the common case (all present, short, printable); the field-by-field checks run
    # only to name the field that fails it.
    joined = "".join(names)
    if not (names[0] and names[1] and (len(joined) <= MAX_NAME_LEN or max(map(len, names)) <= MAX_NAME_LEN)
            and joined.isprintable()):
        for field, value in zip(_NAME_FIELDS, names, strict=True):
            _check_name(field, value, required=field in _REQUIRED)
    if not SAFE_ID.fullmatch(agent.id):
        # Look-alikes (`"killme "`, Cyrillic `kіllme`, full-width letters) never reach a decision,
        # bundle or not: they would be other agents to kill switches and budgets (issue 24 item 13).
        raise InvalidRequest("agent.id", unsafe_id(agent.id))
    a_labels, caps, r_labels = agent.labels, agent.capabilities, request.labels
    if a_labels or caps or r_labels:
        _check_collections(a_labels, caps, r_labels)
    if req.tool.HasField("risk_tier") and not 0 <= req.tool.risk_tier <= MAX_RISK_TIER:
        raise InvalidRequest("tool.risk_tier", f"is {req.tool.risk_tier}; must be 0..{MAX_RISK_TIER}")
    cost = req.request.estimated_cost
    if not math.isfinite(cost) or cost < 0:
        raise InvalidRequest("request.estimated_cost", f"is {cost}; must be a finite number >= 0")
    _check_struct("tool.args", req.tool.args)
    _check_struct("context", req.context)
    if _MAYBE_NON_FINITE.search(req.tool.args.SerializeToString()) or \
            _MAYBE_NON_FINITE.search(req.context.SerializeToString()):
        bad = non_finite_number(req)   # the bytes only hint at one: a string may hold the same bytes
        if bad is not None:
            raise bad


# A Value's number_value on the wire (field 2, 64-bit: tag 0x11) whose exponent bits are all ones:
# NaN or ±Infinity. ~1 µs per call over the serialized args, where walking them costs ~5 µs.
_MAYBE_NON_FINITE = re.compile(rb"\x11[\x00-\xff]{6}[\xf0-\xff][\x7f\xff]", re.DOTALL)


def non_finite_number(req: pb.DecideRequest) -> InvalidRequest | None:
    """The first NaN or infinite number in `tool.args` or `context`, named: JSON has none, and the
    record is JSON."""
    for field, struct in (("tool.args", req.tool.args), ("context", req.context)):
        found = _non_finite(struct, field)
        if found is not None:
            return InvalidRequest(found[0], f"is {found[1]}; a number must be finite (JSON has no NaN or Infinity)")
    return None


def _non_finite(struct: struct_pb2.Struct, prefix: str) -> tuple[str, float] | None:
    for key, value in struct.fields.items():
        found = _non_finite_value(value, f"{prefix}.{key}")
        if found is not None:
            return found
    return None


def _non_finite_value(value: struct_pb2.Value, where: str) -> tuple[str, float] | None:
    kind = value.WhichOneof("kind")
    if kind == "number_value":
        return None if math.isfinite(value.number_value) else (where, value.number_value)
    if kind == "struct_value":
        return _non_finite(value.struct_value, where)
    if kind == "list_value":
        for i, item in enumerate(value.list_value.values):
            found = _non_finite_value(item, f"{where}[{i}]")
            if found is not None:
                return found
    return None
