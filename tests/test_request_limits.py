"""Every string, list and map of Agent, ToolCall and Request is bounded; NUL and control characters
are refused in identity fields; the error names the field (issue 12, item 9)."""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest

from decider.api.validate import MAX_ENTRIES, MAX_NAME_LEN, validate_request
from decider.client import build_request
from decider.errors import InvalidRequest
from decider.v1 import decider_pb2 as pb

from .helpers import ServerProcess, start_server

AGENT = {"id": "refund-bot", "team": "finance", "owner": "user:olga", "model": "gpt-5", "session_id": "s-1",
         "labels": {"tier": "prod"}, "capabilities": ["refunds"]}
IDENTITY = ("agent.id", "agent.instance_id", "agent.owner", "agent.team", "agent.workflow", "agent.model",
            "agent.session_id", "tool.name", "tool.server", "tool.call_id", "request.id", "request.environment")


def ok() -> pb.DecideRequest:
    return build_request(agent=AGENT, tool="payments.refund", server="mcp://billing", args={"amount": 5},
                         environment="production", labels={"ticket": "T-1"})


def with_field(path: str, value: str) -> pb.DecideRequest:
    req = ok()
    msg, name = path.split(".")
    setattr(getattr(req, msg), name, value)
    return req


def error_of(req: pb.DecideRequest) -> InvalidRequest:
    with pytest.raises(InvalidRequest) as err:
        validate_request(req)
    return err.value


def test_a_well_formed_request_at_the_limits_passes() -> None:
    req = ok()
    for path in IDENTITY:
        msg, name = path.split(".")
        # Characters, not bytes, are counted; agent.id takes ASCII only (issue 24 item 13).
        setattr(getattr(req, msg), name, ("a" if path == "agent.id" else "é") * MAX_NAME_LEN)
    req.agent.capabilities.extend(f"c{i}" for i in range(MAX_ENTRIES - 1))
    for i in range(MAX_ENTRIES - 1):
        req.agent.labels[f"k{i}"] = "v" * MAX_NAME_LEN
    validate_request(req)


@pytest.mark.parametrize("path", IDENTITY)
def test_every_identity_string_is_bounded(path: str) -> None:
    err = error_of(with_field(path, "x" * (MAX_NAME_LEN + 1)))
    assert (err.field, err.message) == (path, f"is {MAX_NAME_LEN + 1} characters; the limit is {MAX_NAME_LEN}")


@pytest.mark.parametrize("path", IDENTITY)
@pytest.mark.parametrize("char", ["\x00", "\n", "\x1b", "\u2028"])
def test_nul_and_control_characters_are_refused_in_identity_fields(path: str, char: str) -> None:
    err = error_of(with_field(path, f"fin{char}ance"))
    assert err.field == path and err.message.startswith("contains a control or non-printable character")


def test_a_five_megabyte_team_is_refused() -> None:
    err = error_of(with_field("agent.team", "t" * (5 << 20)))
    assert str(err) == f"agent.team: is {5 << 20} characters; the limit is {MAX_NAME_LEN}"


@pytest.mark.parametrize("field", ["agent.labels", "agent.capabilities", "request.labels"])
def test_lists_and_maps_are_bounded_in_entries(field: str) -> None:
    req = ok()
    if field == "agent.capabilities":
        req.agent.capabilities.extend(f"c{i}" for i in range(300_000))
    else:
        target = req.agent.labels if field == "agent.labels" else req.request.labels
        for i in range(MAX_ENTRIES + 1):
            target[f"k{i}"] = "v"
    err = error_of(req)
    assert err.field == field and err.message.endswith(f"entries; the limit is {MAX_ENTRIES}")


def test_each_entry_of_a_list_or_map_is_bounded_and_named() -> None:
    req = ok()
    req.agent.capabilities.append("x" * 300)
    assert error_of(req).field == "agent.capabilities[1]"
    req = ok()
    req.agent.labels["tier"] = "prod\x00"
    assert error_of(req).field == "agent.labels.tier"
    req = ok()
    req.request.labels["k" * 300] = "v"
    assert error_of(req).field == "request.labels key"


@pytest.mark.parametrize(("where", "value", "field"), [
    ("args", {"amount": float("nan")}, "tool.args.amount"),
    ("args", {"limits": {"hi": [1.0, 2.0, float("inf")]}}, "tool.args.limits.hi[2]"),
    ("context", {"score": float("-inf")}, "context.score"),
])
def test_a_nan_or_infinite_number_is_refused_naming_it(where: str, value: dict[str, object], field: str) -> None:
    # JSON has no NaN or Infinity, and the record is JSON: the call is the caller's error, named.
    req = ok()
    (req.tool.args if where == "args" else req.context).update(value)
    err = error_of(req)
    assert err.field == field and "must be finite" in err.message


def test_finite_numbers_and_strings_with_the_same_bytes_pass() -> None:
    # The check reads the serialized values for a non-finite number's bytes first; these must pass.
    req = ok()
    req.tool.args.update({"big": 1.7976931348623157e308, "small": -5e-324, "nested": [{"x": 0.0}],
                          "text": "\x11" + "\u00ff" * 10 + "\x7f", "long": "y" * 16_383})
    req.context.update({"n": -1.0e300})
    validate_request(req)


@pytest.fixture(scope="module")
def srv(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    s = start_server(tmp_path_factory.mktemp("limits"))
    try:
        yield s
    finally:
        s.stop()


def _records(srv: ServerProcess) -> int:
    with sqlite3.connect(Path(srv.db_url.removeprefix("sqlite:///"))) as db:
        return db.execute("select count(*) from decisions").fetchone()[0]


def test_the_server_refuses_oversized_identity_with_invalid_argument_and_no_record(srv: ServerProcess) -> None:
    before = _records(srv)
    caps = ok()
    caps.agent.capabilities.extend(f"c{i}" for i in range(300_000))
    cases = [(with_field("agent.team", "t" * (5 << 20)), "agent.team: is 5242880 characters"),
             (with_field("agent.team", "fin\x00ance"), "agent.team: contains a control"),
             (caps, "agent.capabilities: has 300001 entries")]
    nan = ok()
    nan.tool.args.update({"amount": float("nan")})
    cases.append((nan, "tool.args.amount: is nan"))
    with grpc.insecure_channel(srv.target, options=[("grpc.max_send_message_length", 16 << 20)]) as ch:
        call = ch.unary_unary("/decider.v1.Decider/Decide")
        for req, message in cases:
            with pytest.raises(grpc.RpcError) as err:
                call(req.SerializeToString(), timeout=20)
            assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
            assert err.value.details().startswith(message), err.value.details()
    assert _records(srv) == before
