"""`@guard` on plain sync and async functions, against a real decider server on 127.0.0.1."""

from __future__ import annotations

import asyncio
import socket
import threading
from collections.abc import Iterator
from typing import Any

import pytest
from google.protobuf import json_format

from decider.client import DeciderClient
from decider.guard import ApprovalPending, DeciderUnavailable, Guard, ToolDenied, guard
from decider.v1 import decider_pb2 as pb

from .guarded import AGENT, decision_ids, eventually, pending_approvals, write_bundle, write_tokens
from .helpers import ServerProcess, start_server


@pytest.fixture(scope="module")
def decider_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    tmp = tmp_path_factory.mktemp("decorator")
    srv = start_server(tmp, write_bundle(tmp), None, "--tokens", str(write_tokens(tmp)))
    try:
        yield srv
    finally:
        srv.stop()


@pytest.fixture()
def g(decider_server: ServerProcess) -> Iterator[Guard]:
    with Guard(decider_server.target, agent=AGENT, server="python://billing", token="gw-token") as gd:
        yield gd


def record(srv: ServerProcess, decision_id: str) -> pb.DecisionRecord:
    with DeciderClient(srv.target, token="gw-token") as c:
        return c.get_decision(decision_id)


def last(srv: ServerProcess, tool: str, outcome: str) -> pb.DecisionRecord:
    return record(srv, decision_ids(srv.db_url, tool, outcome)[-1])


def test_sync_function_runs_on_allow_and_reports_ok(g: Guard, decider_server: ServerProcess) -> None:
    ran: list[tuple[str, float]] = []

    @guard(tool="refund", client=g, cost=lambda order, amount, note="": amount / 10)
    def refund(order: str, amount: float, note: str = "") -> str:
        ran.append((order, amount))
        return f"refunded {amount}"

    assert refund("o-1", 40) == "refunded 40"
    assert ran == [("o-1", 40)]
    rec = last(decider_server, "refund", "ALLOW")
    assert json_format.MessageToDict(rec.args) == {"order": "o-1", "amount": 40, "note": ""}  # defaults applied
    assert (rec.tool_server, rec.estimated_cost, rec.outcome_status) == ("python://billing", 4.0, "ok")


def test_exception_is_reported_as_error_and_propagates(g: Guard, decider_server: ServerProcess) -> None:
    @guard(tool="flaky", client=g)
    def flaky() -> None:
        raise RuntimeError("upstream down")

    with pytest.raises(RuntimeError, match="upstream down"):
        flaky()
    assert last(decider_server, "flaky", "ALLOW").outcome_status == "error"


def test_async_function_and_methods(g: Guard, decider_server: ServerProcess) -> None:
    class Weather:
        calls = 0

        @guard(tool="get_weather", client=g)
        async def get(self, city: str) -> str:
            Weather.calls += 1
            await asyncio.sleep(0)
            return f"sunny in {city}"

    assert asyncio.run(Weather().get("Oslo")) == "sunny in Oslo"
    assert Weather.calls == 1
    rec = last(decider_server, "get_weather", "ALLOW")
    assert json_format.MessageToDict(rec.args) == {"city": "Oslo"}   # `self` is not an argument
    assert rec.outcome_status == "ok"


def test_denied_call_raises_naming_reason_and_decision_and_never_runs(g: Guard, decider_server: ServerProcess) -> None:
    ran: list[str] = []

    @guard(tool="delete_repo", client=g)
    async def delete_repo(repo: str) -> None:
        ran.append(repo)

    with pytest.raises(ToolDenied) as e:
        asyncio.run(delete_repo("core"))
    assert ran == []
    rec = last(decider_server, "delete_repo", "DENY")
    assert e.value.decision_id == rec.decision_id
    assert str(e.value) == (f"decider denied delete_repo: Agents never delete repositories [no-repo-deletes] "
                            f"(decision {rec.decision_id})")


def test_approval_is_waited_for_then_the_call_runs_once(decider_server: ServerProcess) -> None:
    ran: list[float] = []
    waiting = Guard(decider_server.target, agent=AGENT, token="gw-token", approval_wait=60)

    @guard(tool="refund", client=waiting)
    def refund(order: str, amount: float) -> str:
        ran.append(amount)
        return "done"

    def approver() -> None:
        with DeciderClient(decider_server.target, token="carol-token") as carol:
            pending = eventually(lambda: [r for r in pending_approvals(carol, "refund") if r.args["order"] == "o-7"])
            carol.resolve_approval(pending[0].decision_id, True, comment="fine")

    t = threading.Thread(target=approver, daemon=True)
    t.start()
    assert refund("o-7", 500) == "done"
    t.join(60)
    assert ran == [500]
    allowed = last(decider_server, "refund", "ALLOW")
    assert record(decider_server, allowed.approval.approval_id).approval.state == pb.APPROVAL_CONSUMED
    waiting.close()


def test_unanswered_approval_raises_pending_and_a_retry_after_approval_runs(
        g: Guard, decider_server: ServerProcess) -> None:
    ran: list[float] = []

    @guard(tool="refund", client=g)   # approval_wait 0: do not wait
    def refund(order: str, amount: float) -> None:
        ran.append(amount)

    with pytest.raises(ApprovalPending) as e:
        refund("o-8", 800)
    assert "needs approval by one of user:carol; approval pending" in str(e.value)
    with pytest.raises(ApprovalPending) as again:
        refund("o-8", 800)
    assert again.value.decision_id == e.value.decision_id   # the same pending decision, not a new one
    with DeciderClient(decider_server.target, token="carol-token") as carol:
        carol.resolve_approval(e.value.decision_id, True)
    refund("o-8", 800)
    assert ran == [800]
    with pytest.raises(ApprovalPending):   # once: the next identical call needs a new approval
        refund("o-8", 800)
    assert ran == [800]


def test_rejected_approval_raises_denied(decider_server: ServerProcess) -> None:
    waiting = Guard(decider_server.target, agent=AGENT, token="gw-token", approval_wait=60)

    @guard(tool="refund", client=waiting)
    def refund(order: str, amount: float) -> None:
        raise AssertionError("must not run")

    def rejecter() -> None:
        with DeciderClient(decider_server.target, token="carol-token") as carol:
            pending = eventually(lambda: [r for r in pending_approvals(carol, "refund") if r.args["order"] == "o-9"])
            carol.resolve_approval(pending[0].decision_id, False)

    t = threading.Thread(target=rejecter, daemon=True)
    t.start()
    with pytest.raises(ToolDenied, match="approval rejected by user:carol for refund"):
        refund("o-9", 900)
    t.join(60)
    waiting.close()


def test_unreachable_decider_fails_closed() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        dead = f"127.0.0.1:{s.getsockname()[1]}"
    ran: list[Any] = []

    @guard(tool="get_weather", client=dead, agent=AGENT)
    def get_weather(city: str) -> None:
        ran.append(city)

    with pytest.raises(DeciderUnavailable, match="UNAVAILABLE"):
        get_weather("Oslo")
    assert ran == []


def test_agent_is_required_without_a_guard() -> None:
    with pytest.raises(TypeError, match="agent="):
        guard(tool="x", client="127.0.0.1:1")


def test_the_return_value_goes_to_the_outcome_rules_as_the_result(g: Guard, decider_server: ServerProcess) -> None:
    # SPEC §10 round two: the guard reports what the tool returned; the bundle's `on: outcome` rule
    # labels the record when it holds an SSN. The value itself is not stored.
    @guard(tool="read_file", client=g)
    def read_file(path: str) -> dict[str, str]:
        return {"path": path, "text": "name: Bo, ssn: 123-45-6789" if path == "/hr/bo" else "nothing here"}

    read_file("/hr/bo")
    rec = last(decider_server, "read_file", "ALLOW")
    assert (rec.outcome_status, list(rec.labels)) == ("ok", ["pii-seen"])
    assert "123-45-6789" not in str(rec)
    read_file("/tmp/x")
    assert list(last(decider_server, "read_file", "ALLOW").labels) == []


def test_a_reported_result_is_bounded() -> None:
    from decider.api.results import RESULT_TEXT_MAX
    from decider.guard.core import result_for_report

    assert result_for_report(None) is None
    assert result_for_report({"a": (1, 2)}) == {"a": [1, 2]}
    assert len(result_for_report("x" * (RESULT_TEXT_MAX + 5))) == RESULT_TEXT_MAX
    big = result_for_report({"rows": ["y" * 1000] * 400})
    assert isinstance(big, str) and len(big) == RESULT_TEXT_MAX and big.startswith('{"rows": ["yyy')
