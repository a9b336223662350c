"""Decode any API message from wire bytes; when the bytes do not parse, name the field that broke.

protobuf's own DecodeError says only "Error parsing message". A caller needs to know *which* field
was wrong, so on failure the bytes are walked again field by field (tag, wire type, length) and the
deepest field that is truncated, not UTF-8 where a string is declared, or itself undecodable is
named with its dotted path (`agent.labels`, `decision_id`, `tool.args`). This runs only after a
parse has failed: the happy path is a single `FromString`.
"""

from __future__ import annotations

from typing import TypeVar

from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from google.protobuf import message_factory as _factory
from google.protobuf.internal import decoder as _decoder

from decider.errors import InvalidRequest

__all__ = ["MAX_BATCH", "decode_message", "find_bad_field", "frame_entries", "split_batch", "split_batch_parts"]

_TYPE_STRING = _descriptor.FieldDescriptor.TYPE_STRING
M = TypeVar("M", bound=_message.Message)


def decode_message(cls: type[M], raw: bytes, hint: str = "") -> M:
    """`cls.FromString(raw)`, or InvalidRequest naming the field that does not decode."""
    try:
        return cls.FromString(raw)
    except _message.DecodeError as e:
        field = find_bad_field(cls.DESCRIPTOR, raw) or "request"
        raise InvalidRequest(field, f"cannot be decoded ({e}){hint}") from None


def find_bad_field(desc: _descriptor.Descriptor, raw: bytes, prefix: str = "") -> str | None:
    """The dotted path of the deepest field of `raw` (a `desc` message) that fails to parse."""
    pos, end = 0, len(raw)
    while pos < end:
        try:
            tag, pos = _decoder._DecodeVarint(raw, pos)
        except Exception:  # noqa: BLE001 - a truncated tag: blame the enclosing field
            return prefix or None
        number, wire = tag >> 3, tag & 7
        fd = desc.fields_by_number.get(number)
        name = (f"{prefix}.{fd.name}" if prefix else fd.name) if fd is not None else (prefix or None)
        if wire == 0:
            try:
                _, pos = _decoder._DecodeVarint(raw, pos)
            except Exception:  # noqa: BLE001 - truncated varint
                return name
            continue
        if wire in (1, 5):
            pos += 8 if wire == 1 else 4
            if pos > end:
                return name
            continue
        if wire != 2:  # groups (3, 4) are not used by this API; 6 and 7 do not exist
            return name
        try:
            size, pos = _decoder._DecodeVarint(raw, pos)
        except Exception:  # noqa: BLE001 - truncated length
            return name
        if pos + size > end:
            return name
        chunk = raw[pos:pos + size]
        pos += size
        if fd is None:
            continue
        if fd.type == _TYPE_STRING:
            try:
                chunk.decode("utf-8")
            except UnicodeDecodeError:
                return name
            continue
        if fd.message_type is None:
            continue
        try:
            _factory.GetMessageClass(fd.message_type).FromString(chunk)
        except _message.DecodeError:
            # Struct internals and map entries are not user-facing: stop at the field itself.
            if fd.message_type.full_name.startswith("google.protobuf.") or fd.message_type.GetOptions().map_entry:
                return name
            return find_bad_field(fd.message_type, chunk, name or "") or name
    return None


MAX_BATCH = 256   # calls per DecideBatch message


def split_batch(raw: bytes, limit: int = MAX_BATCH) -> list[bytes]:
    """The wire bytes of each `requests` entry of a `DecideBatch`, in order, without decoding them:
    each is then decoded (and its errors named) exactly as a unary Decide's bytes are. Fields
    other than `requests` are skipped, as protobuf skips unknown fields."""
    return split_batch_parts(raw, limit)[0]


def split_batch_parts(raw: bytes, limit: int = MAX_BATCH) -> tuple[list[bytes], list[bytes]]:
    """`split_batch`, and the wire bytes of each `outcomes` entry (field 2) too, in order."""
    out: list[bytes] = []
    outcomes: list[bytes] = []
    pos, end = 0, len(raw)
    decode = _decoder._DecodeVarint
    while pos < end:
        try:
            tag, pos = decode(raw, pos)
            wire = tag & 7
            if wire == 2:
                size, pos = decode(raw, pos)
                if pos + size > end:
                    raise IndexError
                if tag == 0x0A:   # field 1, length-delimited
                    if len(out) == limit:
                        raise InvalidRequest("requests", f"has more than {limit} entries; the limit is {limit}")
                    out.append(raw[pos:pos + size])
                elif tag == 0x12:   # field 2, length-delimited
                    if len(outcomes) == limit:
                        raise InvalidRequest("outcomes", f"has more than {limit} entries; the limit is {limit}")
                    outcomes.append(raw[pos:pos + size])
                pos += size
            elif wire == 0:
                _, pos = decode(raw, pos)
            elif wire in (1, 5):
                pos += 8 if wire == 1 else 4
            else:
                raise IndexError
        except InvalidRequest:
            raise
        except Exception:  # noqa: BLE001 - a truncated tag, length or value
            raise InvalidRequest("requests", "cannot be decoded (the batch message is truncated or malformed)") from None
        if pos > end:
            raise InvalidRequest("requests", "cannot be decoded (the batch message is truncated or malformed)")
    return out, outcomes


def frame_entries(bodies: list[bytes], field: int = 1) -> bytes:
    """A message whose field `field` (1..15) is `repeated <message>`, on the wire, from each entry's
    own bytes (tag, length, bytes per entry): a `DecideBatch` from requests' bytes, a
    `DecideBatchResponse` from responses' bytes, without copying every entry into a new message
    first. Messages concatenate: `frame_entries(a) + frame_entries(b, 2)` has both fields."""
    tag = (field << 3) | 2
    out = bytearray()
    for body in bodies:
        out.append(tag)
        n = len(body)
        while n > 0x7F:
            out.append((n & 0x7F) | 0x80)
            n >>= 7
        out.append(n)
        out += body
    return bytes(out)
