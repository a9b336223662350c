"""What every runtime guard does around one tool call: ask decider, wait for an approver, report.

Only the public gRPC API is used (through `decider.client.DeciderClient`), so a guard runs in any
agent process that can reach a decider server. Every failure to get an answer is a refusal: the
tool does not run when decider is unreachable, slow, or refuses the request (fail closed).
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import Any, NamedTuple

import grpc

from decider.api.names import APPROVAL_STATE_NAMES
from decider.api.results import RESULT_TEXT_MAX
from decider.client import DeciderClient, build_request, outcome_request, renamed_server
from decider.errors import DeciderError
from decider.guard.stream import NoDecision, StreamTransport
from decider.v1 import decider_pb2 as pb

__all__ = ["Guard", "Verdict", "ApprovalStatus", "GuardError", "ToolDenied", "ApprovalPending", "DeciderUnavailable",
           "APPROVAL_STATES", "jsonable"]

log = logging.getLogger("decider.guard")

APPROVAL_STATES = {**APPROVAL_STATE_NAMES, pb.APPROVAL_STATE_UNSPECIFIED: "none"}


class ApprovalStatus(NamedTuple):
    """Where an approval stands: its state, and for a resolved one who resolved it and why."""

    state: str                 # pending, approved, rejected, expired, consumed, none
    resolved_by: str = ""
    comment: str = ""


def approval_status(rec: pb.DecisionRecord) -> ApprovalStatus:
    return ApprovalStatus(APPROVAL_STATES.get(rec.approval.state, "none"), rec.approval.resolved_by,
                          rec.approval.comment)


class GuardError(DeciderError):
    """A guarded call that did not run. `decision_id` is empty when no decision was made."""

    def __init__(self, message: str, decision_id: str = "") -> None:
        super().__init__(message)
        self.decision_id = decision_id


class ToolDenied(GuardError):
    """decider said no (DENY, or an approval that was rejected or expired)."""


class ApprovalPending(GuardError):
    """The call needs an approval that nobody has given (yet)."""


class DeciderUnavailable(GuardError):
    """No decision could be had: decider unreachable, too slow, or it refused the request."""


@dataclass(frozen=True, slots=True)
class Verdict:
    """decider's answer for one call, in the terms a guard acts on."""

    tool: str
    decision_id: str
    outcome: str                      # "ALLOW" | "DENY" | "REQUIRE_APPROVAL"
    reasons: tuple[tuple[str, str], ...] = ()   # (rule id, text)
    approvers: tuple[str, ...] = ()
    approval_state: str = "none"      # for REQUIRE_APPROVAL: pending, approved, rejected, expired
    response: pb.DecideResponse | None = field(default=None, compare=False, repr=False)
    resolved_by: str = ""             # who rejected it, and their comment: the model reads both
    comment: str = ""

    def with_approval(self, status: ApprovalStatus, decision_id: str | None = None) -> Verdict:
        """This REQUIRE_APPROVAL verdict as its approval now stands."""
        return replace(self, decision_id=decision_id or self.decision_id, approval_state=status.state,
                       resolved_by=status.resolved_by, comment=status.comment)

    @property
    def allowed(self) -> bool:
        return self.outcome == "ALLOW"

    @property
    def reason(self) -> str:
        return "; ".join(f"{text} [{rule}]" if text else rule for rule, text in self.reasons) or "no reason given"

    def refusal(self) -> str:
        """The text a model (or a person) reads when the call does not run."""
        if self.outcome == "DENY":
            return f"decider denied {self.tool}: {self.reason} (decision {self.decision_id})"
        if self.approval_state in ("rejected", "expired"):
            by = f" by {self.resolved_by}" if self.resolved_by else ""
            said = f' ("{self.comment}")' if self.comment else ""
            return (f"decider: approval {self.approval_state}{by}{said} for {self.tool}: {self.reason} "
                    f"(decision {self.decision_id})")
        who = f" by one of {', '.join(self.approvers)}" if self.approvers else ""
        return (f"decider: {self.tool} needs approval{who}; approval {self.approval_state}: {self.reason} "
                f"(decision {self.decision_id})")

    def error(self) -> GuardError:
        if self.outcome == "REQUIRE_APPROVAL" and self.approval_state == "pending":
            return ApprovalPending(self.refusal(), self.decision_id)
        return ToolDenied(self.refusal(), self.decision_id)


def verdict_of(tool: str, resp: pb.DecideResponse) -> Verdict:
    return Verdict(tool=tool, decision_id=resp.decision_id, outcome=pb.Outcome.Name(resp.outcome),
                   reasons=tuple((r.rule_id, r.text) for r in resp.reasons),
                   approvers=tuple(resp.approval.approvers),
                   approval_state=APPROVAL_STATES.get(resp.approval.state, "none")
                   if resp.outcome == pb.REQUIRE_APPROVAL else "none",
                   response=resp)


def jsonable(value: Any) -> Any:
    """A tool argument as JSON (what `tool.args` holds): other objects become their string form."""
    if value is None or isinstance(value, bool | int | float | str):
        return value
    if isinstance(value, Mapping):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple | set | frozenset):
        return [jsonable(v) for v in value]
    if hasattr(value, "model_dump"):   # pydantic models (LangChain and the Agents SDK use them)
        return jsonable(value.model_dump(mode="json"))
    return str(value)


def result_for_report(value: Any) -> Any:
    """A tool's return value as ReportOutcome's `result`: JSON (as `jsonable`), a string cut to
    RESULT_TEXT_MAX characters, and a value whose JSON is longer than that sent as its cut JSON text;
    None (nothing returned) is not sent."""
    if value is None:
        return None
    value = jsonable(value)
    if isinstance(value, str):
        return value[:RESULT_TEXT_MAX]
    text = json.dumps(value)
    return value if len(text) <= RESULT_TEXT_MAX else text[:RESULT_TEXT_MAX]


class Guard:
    """One agent's connection to decider: `check` before a tool runs, `report` after it ran.

    `agent` is the identity decider sees (`{"id": ..., "team": ..., "model": ...}`); `tool_server` is
    `tool.server` for every call (e.g. `"python://billing"`); `approval_wait` is how long `check`
    waits for an approver before it gives up (0: do not wait); `timeout` bounds every RPC.

    `transport`: "stream" (the default) sends decisions and outcomes as messages of one
    `DecideBatchStream` the guard keeps open (decider/guard/stream.py: a guarded call costs the
    server about one unary RPC instead of two); "unary" sends each as its own RPC (the better choice
    for a process that makes one call and exits, like a coding-agent hook). The answers are the same.
    Call `close()` (or use `with`) when done.
    """

    def __init__(self, client: DeciderClient | str, *, agent: Mapping[str, Any], tool_server: str = "",
                 approval_wait: float = 0.0, timeout: float = 5.0, token: str | None = None,
                 context: Mapping[str, Any] | None = None, costs: Mapping[str, float] | None = None,
                 server: str | None = None, transport: str = "stream") -> None:
        if transport not in ("stream", "unary"):
            raise ValueError(f"transport: {transport!r}; must be 'stream' or 'unary'")
        self.client = DeciderClient(client, timeout=timeout, token=token) if isinstance(client, str) else client
        self.stream = StreamTransport(self.client, timeout) if transport == "stream" else None
        # Estimated cost per tool name, for calls that give none (the bundle's `spec.tools.<name>.cost`
        # applies when neither does).
        self.costs = dict(costs or {})
        self.agent = dict(agent)
        self.tool_server = renamed_server(tool_server, server, "Guard")
        self.approval_wait = approval_wait
        self.context = dict(context or {})

    # ---- one decision ------------------------------------------------------------------------
    def decide(self, tool: str, args: Mapping[str, Any] | None = None, *, call_id: str = "",
               estimated_cost: float = 0.0, tool_server: str | None = None, server: str | None = None) -> Verdict:
        """Ask once. Raises DeciderUnavailable when no decision could be had (fail closed)."""
        request = self._request(tool, args, call_id, estimated_cost, renamed_server(tool_server, server, "Guard.decide"))
        try:
            resp = self.client.decide(request) if self.stream is None else self.stream.decide(request)
        except (grpc.RpcError, NoDecision) as e:
            raise _no_decision(tool, e) from None
        return verdict_of(tool, resp)

    def _request(self, tool: str, args: Mapping[str, Any] | None, call_id: str, estimated_cost: float,
                 tool_server: str | None) -> pb.DecideRequest:
        try:
            return build_request(agent=self.agent, tool=tool, args=jsonable(dict(args or {})),
                                 tool_server=self.tool_server if tool_server is None else tool_server,
                                 call_id=call_id, estimated_cost=estimated_cost or self.costs.get(tool, 0.0),
                                 context=self.context or None)
        except (TypeError, ValueError) as e:   # arguments that cannot be sent as JSON
            raise DeciderUnavailable(f"decider gave no decision for {tool}: {e}") from None

    def approval_state(self, decision_id: str, wait: float = 0.0) -> ApprovalStatus:
        """Where the approval stands: at once, or once it is no longer pending, waiting up to `wait` s."""
        if wait <= 0:
            try:
                return approval_status(self.client.get_decision(decision_id))
            except grpc.RpcError as e:
                raise DeciderUnavailable(f"decider: cannot read decision {decision_id} ({_status(e)})",
                                         decision_id) from None
        status = ApprovalStatus("pending")
        try:
            for rec in self.client.watch_decision(decision_id, timeout=wait):
                status = approval_status(rec)
                if status.state != "pending":
                    break
        except grpc.RpcError as e:
            if e.code() != grpc.StatusCode.DEADLINE_EXCEEDED:   # the wait ran out: still pending
                raise DeciderUnavailable(f"decider: cannot watch decision {decision_id} ({_status(e)})",
                                         decision_id) from None
        return status

    def check(self, tool: str, args: Mapping[str, Any] | None = None, *, call_id: str = "",
              estimated_cost: float = 0.0, wait: float | None = None, tool_server: str | None = None,
              server: str | None = None) -> Verdict:
        """Decide, and for REQUIRE_APPROVAL wait up to `wait` (default `approval_wait`) seconds for
        an approver. Approved → the identical call is decided again, which consumes the approval
        and gives this call its own ALLOW record. The verdict says what to do; it never raises for a
        refusal, only when decider cannot be asked (DeciderUnavailable)."""
        tool_server = renamed_server(tool_server, server, "Guard.check")
        verdict = self.decide(tool, args, call_id=call_id, estimated_cost=estimated_cost, tool_server=tool_server)
        wait = self.approval_wait if wait is None else wait
        if verdict.outcome != "REQUIRE_APPROVAL" or wait <= 0:
            return verdict
        return self.resume(verdict, args, call_id=call_id, estimated_cost=estimated_cost, wait=wait,
                           tool_server=tool_server)

    def resume(self, pending: Verdict, args: Mapping[str, Any] | None = None, *, call_id: str = "",
               estimated_cost: float = 0.0, wait: float = 0.0, tool_server: str | None = None,
               server: str | None = None) -> Verdict:
        """After an approval request: its state now (or after up to `wait` s); approved → decide the
        identical call again (ALLOW, consuming the approval)."""
        tool_server = renamed_server(tool_server, server, "Guard.resume")
        status = self.approval_state(pending.decision_id, wait)
        if status.state != "approved":
            return pending.with_approval(status)
        return self.decide(pending.tool, args, call_id=call_id, estimated_cost=estimated_cost,
                           tool_server=tool_server)

    def report(self, decision_id: str, status: str, actual_cost: float | None = None, result: Any = None) -> None:
        """ReportOutcome; a failure is logged, never raised (the tool already ran). `actual_cost`
        only when the caller knows it: absent, the estimate reserved for the call stands. `result`:
        the tool's return value, for the bundle's `on: outcome` rules (bounded, see `result_for_report`)."""
        try:
            request = outcome_request(decision_id, actual_cost, status[:64], result=result_for_report(result))
            if self.stream is None:
                self.client.report_request(request)
            else:
                self.stream.report(request)
        except (grpc.RpcError, NoDecision) as e:
            log.warning("outcome not reported", extra={"decision_id": decision_id, "error": _status(e)})

    # ---- the same from async code ------------------------------------------------------------
    # On the stream: awaited from the caller's loop. Unary (and the approval waits): the client is
    # synchronous, so in a worker thread.
    async def acheck(self, tool: str, args: Mapping[str, Any] | None = None, *, call_id: str = "",
                     estimated_cost: float = 0.0, wait: float | None = None, tool_server: str | None = None,
                     server: str | None = None) -> Verdict:
        tool_server = renamed_server(tool_server, server, "Guard.acheck")
        verdict = await self.adecide(tool, args, call_id=call_id, estimated_cost=estimated_cost,
                                     tool_server=tool_server)
        wait = self.approval_wait if wait is None else wait
        if verdict.outcome != "REQUIRE_APPROVAL" or wait <= 0:
            return verdict
        return await self.aresume(verdict, args, call_id=call_id, estimated_cost=estimated_cost, wait=wait,
                                  tool_server=tool_server)

    async def adecide(self, tool: str, args: Mapping[str, Any] | None = None, *, call_id: str = "",
                      estimated_cost: float = 0.0, tool_server: str | None = None,
                      server: str | None = None) -> Verdict:
        tool_server = renamed_server(tool_server, server, "Guard.adecide")
        if self.stream is None:
            return await asyncio.to_thread(self.decide, tool, args, call_id=call_id, estimated_cost=estimated_cost,
                                           tool_server=tool_server)
        request = self._request(tool, args, call_id, estimated_cost, tool_server)
        try:
            resp = await self.stream.adecide(request)
        except (grpc.RpcError, NoDecision) as e:
            raise _no_decision(tool, e) from None
        return verdict_of(tool, resp)

    async def aresume(self, pending: Verdict, args: Mapping[str, Any] | None = None, **kw: Any) -> Verdict:
        return await asyncio.to_thread(self.resume, pending, args, **kw)

    async def areport(self, decision_id: str, status: str, actual_cost: float | None = None,
                      result: Any = None) -> None:
        if self.stream is None:
            await asyncio.to_thread(self.report, decision_id, status, actual_cost, result)
            return
        try:
            await self.stream.areport(outcome_request(decision_id, actual_cost, status[:64],
                                                      result=result_for_report(result)))
        except (grpc.RpcError, NoDecision) as e:
            log.warning("outcome not reported", extra={"decision_id": decision_id, "error": _status(e)})

    def close(self) -> None:
        if self.stream is not None:
            self.stream.close()
        self.client.close()

    def __enter__(self) -> Guard:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _no_decision(tool: str, e: grpc.RpcError | NoDecision) -> DeciderUnavailable:
    return DeciderUnavailable(f"decider gave no decision for {tool} ({_status(e)}); the call does not run")


def _status(e: grpc.RpcError | NoDecision) -> str:
    if isinstance(e, NoDecision):
        return e.status
    code = e.code() if hasattr(e, "code") else None
    details = e.details() if hasattr(e, "details") else str(e)
    return f"{code.name if code else 'ERROR'}: {details}"

