"""agentgateway's external MCP policy hook (`ExtMcp`), served by `decider serve --ext-mcp`.

agentgateway asks `CheckRequest` before it forwards an MCP method to an upstream and
`CheckResponse` with the upstream's result. Here:

- `tools/call` → one decision through the same entry point as `Decide` (`DeciderService.decide_bytes`,
  given the DecideRequest built here rather than its bytes),
  so the record is the one a Decide would have written: `tool.name` = `params.name`, `tool.args` =
  `params.arguments`, `tool.server` = `mcp://<service_name>`, the agent from `metadata_context`.
  ALLOW → `pass`; DENY → `error` naming the reason and the decision id; REQUIRE_APPROVAL → wait up to
  `approval_wait_s` for an approver, then decide the identical call again (which consumes the
  approval, once) and `pass`, or `error` naming the approval's state and the decision id.
- `resources/read`, `resources/subscribe`, `prompts/get`, `completion/complete` → decided the same
  way, mapped as the MCP gateway maps them (SPEC §8 Round two): `tool.name` = the method, `tool.args`
  = `{"uri": …}` / `{"name": …, "arguments": {…}}` / the completion's params.
- methods with no effect or payload of their own (`initialize`, `ping`, `*/list`, `notifications/*`,
  `resources/unsubscribe`, `logging/setLevel`) → `pass` (no decision); any other method → `error`
  (an unknown method is refused, not waved through: fail closed).
- `CheckResponse` for a decided method → ReportOutcome on its decision (status `error` when the
  result has `isError: true`, else `ok`), then `pass`: a result is never held back.

Identity comes from `metadata_context` (agentgateway fills it from CEL expressions in its own config,
e.g. JWT claims): an `agent` object, or flat `agent.<field>` keys, with the fields of decider's
`Agent`; `estimated_cost` (a number) is the request's estimated cost, for budgets. Every other key is
passed to policies as `context.<key>`.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import OrderedDict, deque
from typing import Any, NoReturn

import grpc
from google.protobuf import json_format, struct_pb2

from decider.agentgateway import ext_mcp_pb2 as xpb
from decider.api.results import bounded_mcp_result
from decider.server.approvals import fingerprint
from decider.server.controls import Controls
from decider.server.outcomes import report_outcome
from decider.server.service import DeciderService, DecisionFailed
from decider.v1 import decider_pb2 as pb
from decider.values.canonical import struct_to_dict_lenient, value_to_python

__all__ = ["SERVICE_NAME", "ExtMcpService", "ext_mcp_handler", "identity_from_metadata"]

log = logging.getLogger("decider.server.ext_mcp")

SERVICE_NAME = xpb.DESCRIPTOR.services_by_name["ExtMcp"].full_name   # agentgateway.dev.ext_mcp.ExtMcp
AGENT_FIELDS = frozenset(f.name for f in pb.Agent.DESCRIPTOR.fields)
# Allowed decisions waiting for their CheckResponse, per (backend, agent): bounded, so a gateway that
# never sends CheckResponse cannot grow this without limit.
MAX_OUTSTANDING = 10_000
OUTSTANDING_TTL_S = 3600.0
SWEEP_EVERY_S = 1.0   # how often allowed calls past OUTSTANDING_TTL_S are looked for
# The methods decided (SPEC §8 Round two), and those passed without a decision: they carry no
# effect or payload of their own. Anything else is refused.
GOVERNED_METHODS = ("tools/call", "resources/read", "resources/subscribe", "prompts/get", "completion/complete")
PASS_METHODS = frozenset({"initialize", "ping", "tools/list", "resources/list", "resources/templates/list",
                          "prompts/list", "resources/unsubscribe", "logging/setLevel"})
# A denial the gateway should report as "resource exhausted" rather than "permission denied".
_DENY_CODES = {"budget_exceeded": xpb.AuthorizationError.RESOURCE_EXHAUSTED}


_FAILED_CODES = {
    grpc.StatusCode.INVALID_ARGUMENT: xpb.AuthorizationError.INVALID,
    grpc.StatusCode.PERMISSION_DENIED: xpb.AuthorizationError.PERMISSION_DENIED,
    grpc.StatusCode.UNAUTHENTICATED: xpb.AuthorizationError.PERMISSION_DENIED,
    grpc.StatusCode.RESOURCE_EXHAUSTED: xpb.AuthorizationError.RESOURCE_EXHAUSTED,
}


class BadMcpRequest(Exception):
    """A CheckRequest decider cannot decide: answered with AuthorizationError INVALID."""


class _Refusal(Exception):
    def __init__(self, code: grpc.StatusCode, details: str) -> None:
        super().__init__(details)
        self.code = code


class _InternalCall:
    """Stands in for a ServicerContext when this module calls another RPC's implementation: an
    abort becomes an exception here instead of failing the gateway's call."""

    async def abort(self, code: grpc.StatusCode, details: str) -> NoReturn:
        raise _Refusal(code, details)


# A Value's kind as the Python type `struct_to_dict` would have given it, for error messages.
_KIND_TYPES = {"string_value": "str", "number_value": "float", "bool_value": "bool", "struct_value": "dict",
               "list_value": "list", "null_value": "NoneType", None: "NoneType"}
# The Agent's fields by how a JSON value maps onto them: scalars (strings), `labels` (an object of
# strings), `capabilities` (a list of strings).
_AGENT_MAPS = frozenset(f.name for f in pb.Agent.DESCRIPTOR.fields if f.message_type is not None)
_AGENT_LISTS = frozenset(f.name for f in pb.Agent.DESCRIPTOR.fields if f.is_repeated and f.message_type is None)


def _kind(v: struct_pb2.Value) -> str | None:
    return v.WhichOneof("kind")


def _plain_agent(agent: dict[str, struct_pb2.Value]) -> pb.Agent | None:
    """The Agent when every value has its field's plain JSON shape (strings; an object of strings;
    a list of strings), built without json_format; None for anything else (json_format then
    converts it, or names what is wrong, exactly as before)."""
    fields: dict[str, Any] = {}
    for name, v in agent.items():
        kind = _kind(v)
        if name in _AGENT_MAPS:
            if kind != "struct_value":
                return None
            entries = v.struct_value.fields
            if any(_kind(x) != "string_value" for x in entries.values()):
                return None
            fields[name] = {k: x.string_value for k, x in entries.items()}
        elif name in _AGENT_LISTS:
            if kind != "list_value":
                return None
            items = v.list_value.values
            if any(_kind(x) != "string_value" for x in items):
                return None
            fields[name] = [x.string_value for x in items]
        elif kind == "string_value":
            fields[name] = v.string_value
        else:
            return None
    return pb.Agent(**fields)


def identity_from_metadata(meta: struct_pb2.Struct) -> tuple[pb.Agent, dict[str, struct_pb2.Value]]:
    """`metadata_context` → (the agent, the rest as the request's context, key → Value). Raises
    BadMcpRequest."""
    agent: dict[str, struct_pb2.Value] = {}
    rest: dict[str, struct_pb2.Value] = {}
    for key, value in meta.fields.items():
        if key == "agent":
            if _kind(value) != "struct_value":
                raise BadMcpRequest("metadata_context.agent: must be an object")
            items = [(f"agent.{k}", k, v) for k, v in value.struct_value.fields.items()]
        elif key.startswith("agent."):
            items = [(key, key.removeprefix("agent."), value)]
        else:
            rest[key] = value
            continue
        for where, name, v in items:
            if name not in AGENT_FIELDS:
                raise BadMcpRequest(f"metadata_context.{where}: unknown agent field "
                                    f"(known: {', '.join(sorted(AGENT_FIELDS))})")
            agent[name] = v
    msg = _plain_agent(agent)
    if msg is not None:
        return msg, rest
    try:
        msg = json_format.ParseDict({k: value_to_python(v) for k, v in agent.items()}, pb.Agent())
    except (json_format.ParseError, ValueError) as e:   # ValueError: a NaN or infinite number
        raise BadMcpRequest(f"metadata_context.agent: {e}") from None
    return msg, rest


def _string(params: struct_pb2.Struct, key: str) -> str | None:
    v = params.fields.get(key)
    return v.string_value if v is not None and _kind(v) == "string_value" else None


def _tool_and_args(method: str, params: struct_pb2.Struct, tool: pb.ToolCall) -> None:
    """Fill `tool.name` and `tool.args` from a governed method's params (Struct to Struct: no JSON
    values built on the way). Raises BadMcpRequest naming the field."""
    if method in ("resources/read", "resources/subscribe"):
        uri = _string(params, "uri")
        if not uri:
            raise BadMcpRequest("mcp_request.uri: is required (the resource)")
        tool.name = method
        tool.args.fields["uri"].string_value = uri
        return
    if method == "completion/complete":
        tool.name = method
        for k, v in params.fields.items():
            if k != "_meta":
                tool.args.fields[k].CopyFrom(v)
        return
    name = _string(params, "name")
    if not name:
        what = "the tool to call" if method == "tools/call" else "the prompt"
        raise BadMcpRequest(f"mcp_request.name: is required ({what})")
    arguments = params.fields.get("arguments")
    kind = None if arguments is None else _kind(arguments)
    if kind not in ("struct_value", "null_value", None):
        raise BadMcpRequest(f"mcp_request.arguments: must be an object, got {_KIND_TYPES[kind]}")
    if method == "prompts/get":
        tool.name = method
        tool.args.fields["name"].string_value = name
        target = tool.args.fields["arguments"].struct_value
        target.SetInParent()   # {} when the prompt has no arguments
    else:
        tool.name = name
        target = tool.args
    if kind == "struct_value":
        target.CopyFrom(arguments.struct_value)


def decide_request_for(req: xpb.McpRequest) -> pb.DecideRequest:
    """The DecideRequest for one governed method (`tools/call`, `resources/read`, …). Raises
    BadMcpRequest naming the field.

    Built message to message: the Struct values are copied, never turned into Python values and
    back (that cost ~15 µs of CPU per call, in a check that should cost what a `Decide` does)."""
    if not req.service_name:
        raise BadMcpRequest("service_name: is required")
    server = req.service_name if "://" in req.service_name else f"mcp://{req.service_name}"
    out = pb.DecideRequest(tool=pb.ToolCall(server=server))
    _tool_and_args(req.method or "tools/call", req.mcp_request, out.tool)
    agent, context = identity_from_metadata(req.metadata_context)
    out.agent.CopyFrom(agent)
    cost = context.pop("estimated_cost", None)
    if cost is not None:
        if _kind(cost) != "number_value":
            raise BadMcpRequest(f"metadata_context.estimated_cost: must be a number, got {_KIND_TYPES[_kind(cost)]}")
        out.request.estimated_cost = cost.number_value
    out.request.SetInParent()
    for k, v in context.items():
        out.context.fields[k].CopyFrom(v)
    return out


def _result_of(response: struct_pb2.Struct) -> dict[str, Any]:
    """The upstream's result as JSON values. The call already ran: a NaN or infinite number in it
    (which JSON cannot hold) becomes null rather than failing the report."""
    return struct_to_dict_lenient(response, lambda _x: None)


def _reasons(resp: pb.DecideResponse) -> str:
    return "; ".join(f"{r.text or r.rule_id} [{r.rule_id}]" if r.text else r.rule_id for r in resp.reasons)


def _error(code: int, reason: str, data: dict[str, Any] | None = None) -> xpb.McpRequestResult:
    err = xpb.AuthorizationError(code=code, reason=reason)  # type: ignore[arg-type]
    if data:
        err.mcp_error.update(data)
    return xpb.McpRequestResult(error=err)


def _passed(decision_id: str) -> xpb.McpRequestResult:
    # The decision id goes back as metadata: agentgateway exposes it to its CEL (extmcp.decision_id),
    # so its config can hand it to CheckResponse in metadata_context for an exact ReportOutcome.
    out = xpb.McpRequestResult(**{"pass": xpb.Pass()})
    out.metadata.update({"decision_id": decision_id})
    return out


class ExtMcpService:
    def __init__(self, svc: DeciderService, controls: Controls, approval_wait_s: float = 0.0) -> None:
        self.svc = svc
        self.controls = controls
        self.approval_wait_s = approval_wait_s
        # (backend, method), agent → allowed decisions waiting for their CheckResponse
        self._outstanding: OrderedDict[tuple[tuple[str, str], str], deque[tuple[str, float]]] = OrderedDict()
        self._count = 0
        self._next_sweep = 0.0
        self.sweeps = 0   # TTL sweeps done (tests)

    # ---- CheckRequest ------------------------------------------------------------------------
    async def check_request(self, req: xpb.McpRequest, context: grpc.aio.ServicerContext) -> xpb.McpRequestResult:
        if req.method in PASS_METHODS or req.method.startswith("notifications/"):
            return xpb.McpRequestResult(**{"pass": xpb.Pass()})
        if req.method not in GOVERNED_METHODS:
            return _error(xpb.AuthorizationError.PERMISSION_DENIED,
                          f"decider: method '{req.method}' is neither decided nor known to be harmless; refused "
                          f"(decided: {', '.join(GOVERNED_METHODS)})")
        try:
            decide_req = decide_request_for(req)
        except BadMcpRequest as e:
            return _error(xpb.AuthorizationError.INVALID, f"decider: {e}")
        try:
            # The message itself, not its bytes: the decision fills in its defaults (time, cost),
            # so the approved call below is asked with a request built again.
            resp = await self.svc.decide_bytes(decide_req)
            if resp.outcome == pb.REQUIRE_APPROVAL:
                pending = resp
                state, row = await self._wait_for_resolution(pending.decision_id, self.approval_wait_s)
                if state != "approved":
                    by = f" by {row['resolved_by']}" if row.get("resolved_by") else ""
                    said = f' ("{row["comment"]}")' if row.get("comment") else ""
                    return _error(xpb.AuthorizationError.PERMISSION_DENIED,
                                  f"decider: approval {state}{by}{said} for {decide_req.tool.name} "
                                  f"(decision {pending.decision_id}): {_reasons(pending)}",
                                  {"decision_id": pending.decision_id, "outcome": "REQUIRE_APPROVAL",
                                   "approval_state": state, "approvers": list(pending.approval.approvers),
                                   "resolved_by": row.get("resolved_by") or "",
                                   "comment": row.get("comment") or ""})
                # Approved: the identical call is now allowed once; asking again consumes it and
                # gives this call its own ALLOW record (the one the outcome is reported on).
                resp = await self.svc.decide_bytes(decide_request_for(req))
        except DecisionFailed as e:
            # No decision, no call (fail closed), with the code the unary Decide would have given:
            # INVALID for a request decider refuses to decide, PERMISSION_DENIED for a caller
            # that may not ask for this agent (parity with the other surfaces).
            code = _FAILED_CODES.get(e.code, xpb.AuthorizationError.UNKNOWN)
            return _error(code, f"decider: no decision: {e.message}")
        if resp.outcome == pb.ALLOW:
            self._remember((req.service_name, req.method), decide_req.agent.id, resp.decision_id)
            return _passed(resp.decision_id)
        return _error(_DENY_CODES.get(resp.deciding_rule, xpb.AuthorizationError.PERMISSION_DENIED),
                      f"decider denied {decide_req.tool.name} (decision {resp.decision_id}): {_reasons(resp)}",
                      {"decision_id": resp.decision_id, "outcome": pb.Outcome.Name(resp.outcome),
                       "reasons": [{"rule_id": r.rule_id, "text": r.text} for r in resp.reasons]})

    async def _wait_for_resolution(self, decision_id: str, wait_s: float) -> tuple[str, dict[str, Any]]:
        """The approval's state (and its record) once it is no longer pending, or "pending" after `wait_s`."""
        hub = self.controls.hub
        sub = hub.subscribe(decision_id)
        deadline = time.monotonic() + max(wait_s, 0.0)
        try:
            while True:
                row = await asyncio.to_thread(self.controls.decisions.get, decision_id) or {}
                state = row.get("approval_state") or "missing"
                remaining = deadline - time.monotonic()
                if state != "pending" or remaining <= 0:
                    return str(state), row
                sub.version = fingerprint(row)   # the poller wakes us when another replica changes it
                try:
                    await asyncio.wait_for(sub.event.wait(), timeout=remaining)
                except TimeoutError:
                    pass
                sub.event.clear()
        finally:
            hub.unsubscribe(decision_id, sub)

    # ---- CheckResponse -----------------------------------------------------------------------
    async def check_response(self, req: xpb.McpResponse,
                             context: grpc.aio.ServicerContext) -> xpb.McpResponseResult:
        passed = xpb.McpResponseResult(**{"pass": xpb.Pass()})
        if req.method not in GOVERNED_METHODS:
            return passed
        decision_id = _string(req.metadata_context, "decision_id")
        try:
            agent, _ = identity_from_metadata(req.metadata_context)
            agent_id = agent.id
        except BadMcpRequest:
            agent_id = ""
        decision_id = self._take((req.service_name, req.method), agent_id, decision_id)
        if decision_id is None:
            log.warning("CheckResponse without a matching allowed call; outcome not reported",
                        extra={"service_name": req.service_name, "agent": agent_id})
            return passed
        result = _result_of(req.mcp_response)
        status = "error" if result.get("isError") is True else "ok"
        # No actual_cost: agentgateway tells us none, so the estimate stands.
        report = pb.ReportOutcomeRequest(decision_id=decision_id, status=status)
        # The upstream's result, bounded, for the bundle's `on: outcome` rules (never stored).
        json_format.ParseDict(bounded_mcp_result(result), report.result)
        try:
            await report_outcome(self.controls, report, _InternalCall(), answer=False)  # type: ignore[arg-type]
        except _Refusal as e:
            log.warning("outcome not reported", extra={"decision_id": decision_id, "error": str(e)})
        return passed

    # ---- which decision a CheckResponse belongs to -------------------------------------------
    def _remember(self, backend: tuple[str, str], agent_id: str, decision_id: str) -> None:
        self._outstanding.setdefault((backend, agent_id), deque()).append((decision_id, time.monotonic()))
        self._count += 1
        self._trim()

    def _take(self, backend: tuple[str, str], agent_id: str, decision_id: str | None) -> str | None:
        """The decision a CheckResponse settles: the one named in metadata_context.decision_id (exact),
        else the oldest allowed call of this method on this backend for this agent (exact when calls
        do not overlap)."""
        queue = self._outstanding.get((backend, agent_id))
        if decision_id is not None:
            if queue is not None:
                for item in queue:
                    if item[0] == decision_id:
                        queue.remove(item)
                        self._count -= 1
                        break
            return decision_id
        if not queue:
            return None
        taken, _ = queue.popleft()
        self._count -= 1
        if not queue:
            del self._outstanding[(backend, agent_id)]
        return taken

    def _trim(self) -> None:
        # Entries past their TTL: a sweep of every (backend, agent) at most every SWEEP_EVERY_S, not
        # one per call (with many agents a sweep per CheckRequest cost O(agents) on every call).
        now = time.monotonic()
        if now >= self._next_sweep:
            self._next_sweep = now + SWEEP_EVERY_S
            self.sweeps += 1
            horizon = now - OUTSTANDING_TTL_S
            for key in list(self._outstanding):
                queue = self._outstanding[key]
                while queue and queue[0][1] < horizon:
                    queue.popleft()
                    self._count -= 1
                if not queue:
                    del self._outstanding[key]
        # Over the bound: the oldest entries of the longest-known (backend, agent) go first.
        while self._count > MAX_OUTSTANDING:
            key = next(iter(self._outstanding))
            queue = self._outstanding[key]
            queue.popleft()
            self._count -= 1
            if not queue:
                del self._outstanding[key]

def ext_mcp_handler(svc: DeciderService, controls: Controls, approval_wait_s: float) -> grpc.GenericRpcHandler:
    ext = ExtMcpService(svc, controls, approval_wait_s)
    return grpc.method_handlers_generic_handler(SERVICE_NAME, {
        "CheckRequest": grpc.unary_unary_rpc_method_handler(
            ext.check_request, request_deserializer=xpb.McpRequest.FromString,
            response_serializer=xpb.McpRequestResult.SerializeToString),
        "CheckResponse": grpc.unary_unary_rpc_method_handler(
            ext.check_response, request_deserializer=xpb.McpResponse.FromString,
            response_serializer=xpb.McpResponseResult.SerializeToString),
    })


__all__ += ["BadMcpRequest", "decide_request_for"]
