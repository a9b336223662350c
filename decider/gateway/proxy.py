"""The MCP server the gateway's clients see: every tools/call is decided by decider first.

Per tools/call (SPEC §8): Decide with tool.name = the upstream's own name, tool.server =
mcp://<upstream>, tool.args, tool.call_id = the JSON-RPC id.
- ALLOW → forwarded; then ReportOutcome with status "ok" / "error" (from the result's isError).
- DENY → not forwarded: a tool result with isError naming the reason and the decision id (a policy
  refusal is something the model can read, not a protocol error).
- REQUIRE_APPROVAL → WatchDecision up to approval_wait, with progress notifications; approved →
  the identical call is decided again (which consumes the one-shot approval, SPEC §4) and forwarded;
  otherwise isError naming the state (pending / rejected / expired) and the decision id.
- decider unreachable, refusing or late → not forwarded (fail closed).
resources/read, resources/subscribe, prompts/get and completion/complete are decided the same way
(tool.name = the method, tool.args = its params, SPEC §8 Round two) unless the config lists them under
`pass_through:`; a refusal is a JSON-RPC error (POLICY_REFUSED) naming the reason and the decision id.
tools/list, resources/list, resources/templates/list, prompts/list pass through, merged over upstreams
(naming.py).

tools/call takes a raw path (RawToolCalls, issue 27): the params and the upstream's result stay JSON
(dicts), decided from the parsed name and arguments only. The SDK keeps the handshake and every other
method, and tools/call too when the raw path cannot vouch for the wire form (see RawToolCalls).
"""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Callable, Mapping
from typing import Any

import anyio
import mcp_types as types
from mcp.server.context import ServerRequestContext
from mcp.server.lowlevel import Server
from mcp.shared.exceptions import MCPError
from mcp.shared.jsonrpc_dispatcher import progress_token_from_params
from mcp_types.version import MODERN_PROTOCOL_VERSIONS
from pydantic import TypeAdapter

from decider.api.results import bounded_mcp_result, bounded_result
from decider.client import build_request
from decider.gateway import naming
from decider.gateway.config import GatewayConfig
from decider.gateway.decisions import DeciderLink, DecisionUnavailable
from decider.gateway.upstreams import UpstreamConnection, UpstreamUnavailable
from decider.v1 import decider_pb2 as pb

__all__ = ["Gateway", "META_KEY"]

log = logging.getLogger("decider.gateway")

# `_meta` key on every result the gateway decided: the decision ids, so a client can look them up.
META_KEY = "dev.decider/decision"
_STATE_WORD = {pb.APPROVAL_PENDING: "pending", pb.APPROVAL_REJECTED: "rejected", pb.APPROVAL_EXPIRED: "expired",
               pb.APPROVAL_APPROVED: "approved", pb.APPROVAL_CONSUMED: "consumed"}
# JSON-RPC error code of a policy refusal of a method that has no result the model could read (the
# code agentgateway gives a permission denial, so clients of either gateway see one code).
POLICY_REFUSED = -32001
PROGRESS_EVERY_S = 1.0  # between progress notifications while a call waits for an approver
# An upstream's tools/call result as the JSON it sent: `send_request` still checks it against the
# negotiated protocol version (validate_server_result), but builds no CallToolResult from it.
_RAW_RESULT: TypeAdapter[dict[str, Any]] = TypeAdapter(dict[str, Any])


class Gateway:
    def __init__(self, cfg: GatewayConfig, link: DeciderLink, upstreams: list[UpstreamConnection]) -> None:
        self.cfg = cfg
        self.link = link
        self.upstreams = {u.name: u for u in upstreams}
        self._plain = upstreams[0].name if cfg.tool_names == "plain" else None
        self._resource_owner: dict[str, str] = {}   # uri → upstream, learnt from resources/list
        self._template_owner: dict[str, tuple[str, re.Pattern[str]]] = {}   # uri template → (upstream, regex)
        # stdio clients without a configured session id share one per gateway process, so
        # session-aware policies (SPEC §10) see one session per run.
        self._stdio_session = f"gw-{os.getpid()}-{os.urandom(4).hex()}"
        self.server: Server[Any] = Server(
            "decider-gateway", version="1",
            instructions="Tool calls pass through decider (policy decision point) before they reach a server.",
            on_list_tools=self.list_tools, on_call_tool=self.call_tool,
            on_list_resources=self.list_resources, on_list_resource_templates=self.list_resource_templates,
            on_read_resource=self.read_resource, on_subscribe_resource=self.subscribe_resource,
            on_unsubscribe_resource=self.unsubscribe_resource,
            on_list_prompts=self.list_prompts, on_get_prompt=self.get_prompt, on_completion=self.complete,
        )
        # The SDK's default OpenTelemetry middleware is a no-op without an exporter but still runs per
        # message; the gateway's own record of each call is the decision record.
        self.server.middleware = [RawToolCalls(self)]

    # ---- identity ----
    def identity(self, ctx: ServerRequestContext[Any]) -> dict[str, Any]:
        """stdio: the config's agent. HTTP: the agent mapped to the request's bearer token (already
        checked by the HTTP layer; looked up again here so an unauthenticated request can never
        borrow the config's identity)."""
        request = ctx.request
        headers = getattr(request, "headers", None)
        if self.cfg.http is None:
            agent = dict(self.cfg.agent)
            agent.setdefault("session_id", self._stdio_session)
            return agent
        auth = headers.get("authorization", "") if headers is not None else ""
        scheme, _, token = auth.partition(" ")
        agent = self.cfg.agent_for_token(token.strip()) if scheme.lower() == "bearer" else None
        if agent is None:
            raise MCPError(types.INVALID_REQUEST, "no authenticated client identity (send Authorization: Bearer …)")
        agent = dict(agent)
        sid = headers.get("mcp-session-id") if headers is not None else None
        if sid:
            agent.setdefault("session_id", sid)
        return agent

    # ---- tools ----
    def _route(self, exposed: str) -> tuple[UpstreamConnection, str]:
        parts = naming.split(exposed, self._plain)
        up = self.upstreams.get(parts[0]) if parts else None
        if parts is None or up is None:
            raise MCPError(types.INVALID_PARAMS, f"Unknown tool: {exposed} (tools are named "
                           f"<upstream>{naming.SEPARATOR}<tool>; upstreams: {', '.join(self.upstreams)})")
        return up, parts[1]

    async def list_tools(self, ctx: ServerRequestContext[Any],
                         params: types.PaginatedRequestParams | None) -> types.ListToolsResult:
        tools: list[types.Tool] = []
        for up in self.upstreams.values():
            if not up.supports("tools"):
                continue
            try:
                listed = await up.list_tools()
            except UpstreamUnavailable as e:
                log.warning("tools/list skipped an upstream", extra={"upstream": up.name, "error": str(e)})
                continue
            tools += [t.model_copy(update={"name": naming.expose(up.name, t.name, self._plain is not None)})
                      for t in listed]
        return types.ListToolsResult(tools=tools)

    async def call_tool(self, ctx: ServerRequestContext[Any],
                        params: types.CallToolRequestParams) -> types.CallToolResult:
        result = await self._call_tool(ctx, params.name, params.arguments or {}, raw=False)
        assert isinstance(result, types.CallToolResult)
        return result

    async def _call_tool(self, ctx: ServerRequestContext[Any], exposed: str, args: dict[str, Any],
                         raw: bool) -> types.CallToolResult | dict[str, Any]:
        """One tools/call: decide, then forward (ALLOW) or refuse. `raw`: the upstream's result comes
        back as the JSON it sent (RawToolCalls), else as the SDK's CallToolResult."""
        up, tool = self._route(exposed)
        if tool not in up.tools:
            try:
                await up.list_tools()   # the upstream may have added it since
            except UpstreamUnavailable as e:
                return _error(f"Tool {exposed} was not called: {e}.")
            if tool not in up.tools:
                raise MCPError(types.INVALID_PARAMS, f"Unknown tool: {exposed} "
                               f"(upstream '{up.name}' has no tool '{tool}')")
        cost = self.cfg.cost_of(up.name, tool)
        req = build_request(agent=self.identity(ctx), tool=tool, tool_server=up.spec.server,
                            call_id="" if ctx.request_id is None else str(ctx.request_id), args=args,
                            estimated_cost=cost or 0.0)
        try:
            resp = await self.link.decide(req)
        except DecisionUnavailable as e:
            log.warning("call refused: no decision", extra={"tool": tool, "upstream": up.name, "error": str(e)})
            return _error(f"Tool {exposed} was not called: {e}. The gateway fails closed.")
        ids = [resp.decision_id]
        if resp.outcome == pb.REQUIRE_APPROVAL:
            resp = await self._await_approval(ctx, req, resp, exposed)
            if resp.decision_id not in ids:
                ids.append(resp.decision_id)
            if resp.outcome != pb.ALLOW:
                # _meta says what the record says: this call's decision is REQUIRE_APPROVAL
                return _error(_refusal_text(exposed, resp), ids, "REQUIRE_APPROVAL")
        if resp.outcome != pb.ALLOW:
            return _error(_refusal_text(exposed, resp), ids)
        return await self._forward(ctx, up, tool, args, resp.decision_id, ids, cost, raw)

    async def _forward(self, ctx: ServerRequestContext[Any], up: UpstreamConnection, tool: str,
                       args: dict[str, Any], decision_id: str, ids: list[str],
                       cost: float | None = None, raw: bool = False) -> types.CallToolResult | dict[str, Any]:
        async def progress(p: float, total: float | None, message: str | None) -> None:
            await ctx.session.report_progress(p, total, message)

        # Upstream progress is relayed only when the client asked for progress (its request carries a
        # progressToken): otherwise nobody would read it, and the token makes the upstream track it.
        relay = progress if progress_token_from_params(ctx.params) is not None else None
        try:
            # send_request rather than call_tool: a pass-through does not validate the upstream's
            # structured output against its outputSchema (the end client does; it cost ~1 ms here).
            request = types.CallToolRequest(params=types.CallToolRequestParams(name=tool, arguments=args))
            result_type: Any = _RAW_RESULT if raw else types.CallToolResult
            result = await up.call(lambda s: s.send_request(request, result_type, progress_callback=relay))
        except UpstreamUnavailable as e:
            self.link.report_later(decision_id, "error", cost)
            return _error(f"{e}. Decision {decision_id} allowed the call; its outcome is recorded as error.", ids)
        except MCPError as e:
            self.link.report_later(decision_id, "error", cost)
            raise MCPError(e.code, f"{e.message} (decision {decision_id})", e.data) from None
        except BaseException:
            # Cancelled by the client (notifications/cancelled) or the gateway stopping: the SDK has
            # told the upstream to cancel; record what happened before unwinding.
            with anyio.CancelScope(shield=True), anyio.move_on_after(2):
                await self.link.report(decision_id, "cancelled", cost)
            raise
        decided = {"decision_ids": ids, "outcome": "ALLOW"}
        if isinstance(result, dict):
            self.link.report_later(decision_id, "error" if result.get("isError") is True else "ok", cost,
                                   bounded_mcp_result(result))
            meta = result.get("_meta")
            return {**result, "_meta": {**(meta if isinstance(meta, dict) else {}), META_KEY: decided}}
        self.link.report_later(decision_id, "error" if result.is_error else "ok", cost, result_for_report(result))
        meta = dict(result.meta or {})
        meta[META_KEY] = decided
        return result.model_copy(update={"meta": meta})

    async def _await_approval(self, ctx: ServerRequestContext[Any], req: pb.DecideRequest,
                              pending: pb.DecideResponse, exposed: str) -> pb.DecideResponse:
        """Wait for an approver; then decide the identical call again (consuming the approval)."""
        wait = self.cfg.approval_wait_s
        state = pb.APPROVAL_PENDING
        last: pb.DecisionRecord | None = None
        decision_id = pending.decision_id
        started = anyio.current_time()

        async def tick() -> None:
            while True:
                await ctx.session.report_progress(
                    min(anyio.current_time() - started, wait), wait,
                    f"waiting for an approver: decision {decision_id} (tool {exposed})")
                await anyio.sleep(PROGRESS_EVERY_S)

        try:
            async with anyio.create_task_group() as tg:
                tg.start_soon(tick)
                async for rec in self.link.watch(decision_id, wait):
                    last = rec
                    state = rec.approval.state
                    if state != pb.APPROVAL_PENDING:
                        break
                tg.cancel_scope.cancel()
        except DecisionUnavailable as e:
            return _synthetic(decision_id, pb.DENY, f"approval state unknown: {e}")
        if state != pb.APPROVAL_APPROVED:
            word = _STATE_WORD.get(state, "pending")
            text = (f"approval still pending after {wait:g}s" if word == "pending" else f"approval {word}")
            if last is not None and last.approval.resolved_by:   # who rejected it, and what they said
                text += f" by {last.approval.resolved_by}"
                if last.approval.comment:
                    text += f' ("{last.approval.comment}")'
            return _synthetic(decision_id, pb.DENY, text, state=word)
        try:
            again = await self.link.decide(req)   # the approved identical call: ALLOW once, reason "approved"
        except DecisionUnavailable as e:
            return _synthetic(decision_id, pb.DENY, f"approved, but {e}")
        return again

    # ---- every other governed method (SPEC §8 Round two) ----
    async def _decide_method(self, ctx: ServerRequestContext[Any], method: str, up: UpstreamConnection,
                             args: dict[str, Any], label: str) -> tuple[str, list[str]]:
        """Decide a non-tool method (tool.name = the method, tool.server = mcp://<upstream>): the
        decision id and every decision id involved, or MCPError POLICY_REFUSED (not forwarded).
        A refusal here is a protocol error: these methods have no result the model could read."""
        req = build_request(agent=self.identity(ctx), tool=method, tool_server=up.spec.server,
                            call_id="" if ctx.request_id is None else str(ctx.request_id), args=args,
                            estimated_cost=self.cfg.cost_of(up.name, method) or 0.0)
        try:
            resp = await self.link.decide(req)
        except DecisionUnavailable as e:
            log.warning("request refused: no decision", extra={"method": method, "upstream": up.name, "error": str(e)})
            raise MCPError(POLICY_REFUSED, f"{label} was not forwarded: {e}. The gateway fails closed.") from None
        ids = [resp.decision_id]
        first = resp.outcome
        if resp.outcome == pb.REQUIRE_APPROVAL:
            resp = await self._await_approval(ctx, req, resp, label)
            if resp.decision_id not in ids:
                ids.append(resp.decision_id)
        if resp.outcome != pb.ALLOW:
            text = _refusal_text(label, resp)
            outcome = pb.Outcome.Name(first if first == pb.REQUIRE_APPROVAL else resp.outcome)
            raise MCPError(POLICY_REFUSED, text, {META_KEY: {"decision_ids": ids, "outcome": outcome}})
        return resp.decision_id, ids

    async def _governed(self, ctx: ServerRequestContext[Any], method: str, up: UpstreamConnection,
                        args: dict[str, Any], label: str, fn: Callable[[Any], Any]) -> Any:
        """Decide (unless the config passes this method through), forward, report the outcome."""
        if not self.cfg.governs(method):
            try:
                return await up.call(fn)
            except UpstreamUnavailable as e:
                raise MCPError(types.INTERNAL_ERROR, str(e)) from None
        decision_id, ids = await self._decide_method(ctx, method, up, args, label)
        cost = self.cfg.cost_of(up.name, method)
        try:
            result = await up.call(fn)
        except UpstreamUnavailable as e:
            self.link.report_later(decision_id, "error", cost)
            raise MCPError(types.INTERNAL_ERROR, f"{e} (decision {decision_id})") from None
        except MCPError as e:
            self.link.report_later(decision_id, "error", cost)
            raise MCPError(e.code, f"{e.message} (decision {decision_id})", e.data) from None
        self.link.report_later(decision_id, "ok", cost)
        meta = dict(result.meta or {})
        meta[META_KEY] = {"decision_ids": ids, "outcome": "ALLOW"}
        return result.model_copy(update={"meta": meta})

    # ---- resources ----
    async def list_resources(self, ctx: ServerRequestContext[Any],
                             params: types.PaginatedRequestParams | None) -> types.ListResourcesResult:
        out: list[types.Resource] = []
        for up in self._with("resources"):
            res = await self._safe(up, lambda s: s.list_resources())
            if res is not None:
                for r in res.resources:
                    self._resource_owner[str(r.uri)] = up.name
                out += res.resources
        return types.ListResourcesResult(resources=out)

    async def list_resource_templates(self, ctx: ServerRequestContext[Any],
                                      params: types.PaginatedRequestParams | None) -> types.ListResourceTemplatesResult:
        out: list[types.ResourceTemplate] = []
        for up in self._with("resources"):
            res = await self._safe(up, lambda s: s.list_resource_templates())
            if res is not None:
                for t in res.resource_templates:
                    self._template_owner[t.uri_template] = (up.name, _template_regex(t.uri_template))
                out += res.resource_templates
        return types.ListResourceTemplatesResult(resource_templates=out)

    def _owner_of(self, uri: str) -> str | None:
        if uri in self._resource_owner:
            return self._resource_owner[uri]
        for name, pattern in self._template_owner.values():
            if pattern.fullmatch(uri):
                return name
        return None

    async def _resource_upstream(self, ctx: ServerRequestContext[Any], uri: str) -> UpstreamConnection:
        """The one upstream a URI belongs to (so the decision names its server): learnt from
        resources/list and resources/templates/list, asked again once when unknown; with a single
        resource-serving upstream, that one."""
        candidates = self._with("resources")
        if len(candidates) == 1:
            return candidates[0]
        owner = self._owner_of(uri)
        if owner is None:
            await self.list_resources(ctx, None)
            await self.list_resource_templates(ctx, None)
            owner = self._owner_of(uri)
        if owner is None or owner not in self.upstreams:
            raise MCPError(types.INVALID_PARAMS, f"Unknown resource: {uri} (no upstream lists it)")
        return self.upstreams[owner]

    async def read_resource(self, ctx: ServerRequestContext[Any],
                            params: types.ReadResourceRequestParams) -> types.ReadResourceResult:
        uri = str(params.uri)
        up = await self._resource_upstream(ctx, uri)
        return await self._governed(ctx, "resources/read", up, {"uri": uri}, f"resources/read {uri}",
                                    lambda s: s.read_resource(uri))

    async def subscribe_resource(self, ctx: ServerRequestContext[Any],
                                 params: types.SubscribeRequestParams) -> types.EmptyResult:
        uri = str(params.uri)
        up = await self._resource_upstream(ctx, uri)
        if not _can_subscribe(up):
            raise MCPError(types.METHOD_NOT_FOUND, f"upstream '{up.name}' does not support resources/subscribe")
        return await self._governed(ctx, "resources/subscribe", up, {"uri": uri}, f"resources/subscribe {uri}",
                                    lambda s: s.subscribe_resource(uri))

    async def unsubscribe_resource(self, ctx: ServerRequestContext[Any],
                                   params: types.UnsubscribeRequestParams) -> types.EmptyResult:
        # Not decided: it only takes away (SPEC §8 lists the governed methods).
        uri = str(params.uri)
        up = await self._resource_upstream(ctx, uri)
        try:
            return await up.call(lambda s: s.unsubscribe_resource(uri))
        except UpstreamUnavailable as e:
            raise MCPError(types.INTERNAL_ERROR, str(e)) from None

    # ---- prompts ----
    async def list_prompts(self, ctx: ServerRequestContext[Any],
                           params: types.PaginatedRequestParams | None) -> types.ListPromptsResult:
        out: list[types.Prompt] = []
        for up in self._with("prompts"):
            res = await self._safe(up, lambda s: s.list_prompts())
            if res is not None:
                out += [p.model_copy(update={"name": naming.expose(up.name, p.name, self._plain is not None)})
                        for p in res.prompts]
        return types.ListPromptsResult(prompts=out)

    def _prompt_route(self, exposed: str) -> tuple[UpstreamConnection, str]:
        parts = naming.split(exposed, self._plain)
        up = self.upstreams.get(parts[0]) if parts else None
        if parts is None or up is None:
            raise MCPError(types.INVALID_PARAMS, f"Unknown prompt: {exposed}")
        return up, parts[1]

    async def get_prompt(self, ctx: ServerRequestContext[Any],
                         params: types.GetPromptRequestParams) -> types.GetPromptResult:
        up, name = self._prompt_route(params.name)
        args = {"name": name, "arguments": dict(params.arguments or {})}
        return await self._governed(ctx, "prompts/get", up, args, f"prompts/get {params.name}",
                                    lambda s: s.get_prompt(name, params.arguments))

    # ---- completion ----
    async def complete(self, ctx: ServerRequestContext[Any], params: types.CompleteRequestParams) -> types.CompleteResult:
        ref: types.ResourceTemplateReference | types.PromptReference
        if isinstance(params.ref, types.PromptReference):
            up, name = self._prompt_route(params.ref.name)
            ref = params.ref.model_copy(update={"name": name})
        else:
            up = await self._resource_upstream(ctx, params.ref.uri)
            ref = params.ref
        upstream_params = params.model_copy(update={"ref": ref})
        args = upstream_params.model_dump(mode="json", by_alias=True, exclude_none=True)
        args.pop("_meta", None)
        request = types.CompleteRequest(params=upstream_params)
        return await self._governed(ctx, "completion/complete", up, args, f"completion/complete for {params.ref.type}",
                                    lambda s: s.send_request(request, types.CompleteResult))

    def _with(self, capability: str) -> list[UpstreamConnection]:
        return [u for u in self.upstreams.values() if u.supports(capability)]

    @staticmethod
    async def _safe(up: UpstreamConnection, fn: Callable[[Any], Any]) -> Any:
        try:
            return await up.call(fn)
        except (UpstreamUnavailable, MCPError) as e:
            log.warning("list skipped an upstream", extra={"upstream": up.name, "error": str(e)})
            return None


class RawToolCalls:
    """Server middleware: tools/call without the SDK's typed round trip (issue 27, lever 3).

    The SDK would validate the params against the protocol surface and into CallToolRequestParams,
    build a CallToolResult from the upstream's JSON, copy it to add our `_meta`, dump it back to JSON
    and validate that again against the client's protocol version — the same bytes parsed four times.
    Here the gateway reads the tool's name and arguments from the params as received, decides, and
    forwards the upstream's result as the JSON it sent (checked once, by the upstream leg, against the
    protocol version both legs speak). Every decision, refusal, report and bound is the one
    `Gateway.call_tool` makes (both run `Gateway._call_tool`).

    The SDK keeps tools/call (call_next) whenever this path could not vouch for the wire form: a
    session not initialized yet (the SDK's own refusal), the 2026 per-request-envelope era (results
    there carry fields the SDK stamps), a name or arguments of the wrong type (the SDK's
    INVALID_PARAMS), or an upstream that negotiated another protocol version than the client."""

    def __init__(self, gateway: Gateway) -> None:
        self.gateway = gateway

    async def __call__(self, ctx: ServerRequestContext[Any], call_next: Any) -> Any:
        if ctx.method != "tools/call" or not self._raw_ok(ctx):
            return await call_next(ctx)
        params: Mapping[str, Any] = ctx.params  # type: ignore[assignment]   # checked by _raw_ok
        args = params.get("arguments")
        return await self.gateway._call_tool(ctx, params["name"], dict(args) if args else {}, raw=True)

    def _raw_ok(self, ctx: ServerRequestContext[Any]) -> bool:
        params = ctx.params
        version = ctx.session.protocol_version
        if (ctx.session.client_params is None or version in MODERN_PROTOCOL_VERSIONS
                or not isinstance(params, Mapping) or not isinstance(params.get("name"), str)
                or not isinstance(params.get("arguments") or {}, Mapping)):
            return False
        parts = naming.split(params["name"], self.gateway._plain)
        up = self.gateway.upstreams.get(parts[0]) if parts else None
        # unknown names take the typed path, which names the error exactly as before
        return up is not None and up.session is not None and up.session.protocol_version == version


def _template_regex(template: str) -> re.Pattern[str]:
    """An RFC 6570 URI template as a regex: each {expression} matches one or more characters."""
    parts = re.split(r"\{[^}]*\}", template)
    return re.compile(".+".join(re.escape(p) for p in parts))


def _can_subscribe(up: UpstreamConnection) -> bool:
    caps = up.init.capabilities.resources if up.init and up.init.capabilities else None
    return bool(caps and caps.subscribe)


def _synthetic(decision_id: str, outcome: int, text: str, state: str = "") -> pb.DecideResponse:
    resp = pb.DecideResponse(decision_id=decision_id, outcome=outcome)  # type: ignore[arg-type]
    resp.reasons.add(rule_id=f"approval_{state}" if state else "gateway", text=text)
    return resp


def _refusal_text(exposed: str, resp: pb.DecideResponse) -> str:
    """`exposed` is a tool's exposed name, or "<method> <what>" for the other governed methods."""
    why = "; ".join(f"{r.text or r.rule_id} [{r.rule_id}]" if r.text else r.rule_id for r in resp.reasons)
    what = exposed if "/" in exposed.split(" ", 1)[0] else f"tool {exposed}"
    return f"decider refused {what}: {why or 'denied'} (decision {resp.decision_id}). The call was not made."


def _error(text: str, ids: list[str] | None = None, outcome: str = "DENY") -> types.CallToolResult:
    meta = {META_KEY: {"decision_ids": ids, "outcome": outcome}} if ids else None
    return types.CallToolResult(content=[types.TextContent(text=text)], is_error=True, _meta=meta)


# What of a tool's result goes to ReportOutcome for the bundle's `on: outcome` rules (SPEC §10 round
# two): its text content, cut to RESULT_TEXT_MAX characters in all, and its structured content when
# small. Images, audio and embedded resources are not sent (their type only). As
# api/results.bounded_mcp_result does for a result in JSON, from the SDK's typed one without a dump.
def result_for_report(result: types.CallToolResult) -> dict[str, Any]:
    parts = [("text", item.text) if isinstance(item, types.TextContent) else (item.type, None) for item in result.content]
    return bounded_result(parts, bool(result.is_error), result.structured_content)
