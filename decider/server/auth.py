"""Who is calling, and may they call this method: bearer tokens → principal + roles.

The token file (YAML) maps each token to a principal and its roles; group memberships (for
approvers written as `group:NAME` in rules) come from the token entry and from a `groups` map:

    tokens:
      - token: "change-me-gateway"          # or  sha256: <hex of the token>
        principal: service:gateway
        roles: [enforcer]
      - token: "change-me-ana"
        principal: user:ana
        roles: [approver]
        groups: [finance-oncall]
      - token: "change-me-gateway-a"        # a bound caller (SPEC §9): may speak only for
        principal: service:gw-a             # agents matching `agents` AND teams matching `teams`
        roles: [enforcer]
        agents: ["coder-*"]
        teams: [platform]
    groups:
      finance-oncall: [user:bo]

Roles: `enforcer` (Decide, DecideStream, DecideBatchStream, GetDecision, WatchDecision, ReportOutcome), `approver`
(ResolveApproval, ListApprovals, GetDecision, WatchDecision, and the Queries service), `admin` (every
Control RPC, and the reads). A method not listed here needs `admin` (fail closed). Health and reflection are open.
Refusals (UNAUTHENTICATED, PERMISSION_DENIED) are recorded in `auth_events`.
"""

from __future__ import annotations

import asyncio
import contextvars
import fnmatch
import hashlib
import inspect
import ipaddress
import logging
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import grpc
import yaml

from decider.errors import DeciderError
from decider.v1 import decider_pb2 as pb

__all__ = [
    "ROLES",
    "Principal",
    "TokenConfig",
    "AuthInterceptor",
    "load_token_file",
    "current_principal",
    "required_roles",
    "is_loopback",
    "ANONYMOUS",
]

log = logging.getLogger("decider.server.auth")

ROLES = ("enforcer", "approver", "admin")
_READ = frozenset({"enforcer", "approver", "admin"})
_DECIDER_ROLES: dict[str, frozenset[str]] = {
    "Decide": frozenset({"enforcer"}),
    "DecideStream": frozenset({"enforcer"}),
    "DecideBatchStream": frozenset({"enforcer"}),
    "ReportOutcome": frozenset({"enforcer"}),
    "GetDecision": _READ,
    "WatchDecision": _READ,
    "ResolveApproval": frozenset({"approver"}),
    "ListApprovals": frozenset({"approver", "admin"}),
}
_ADMIN = frozenset({"admin"})
# Every Control method (kill switches and bundles) is admin-only; read from the proto so a method
# added later is covered without touching this file.
_CONTROL_ROLES = {m.name: _ADMIN for m in pb.DESCRIPTOR.services_by_name["Control"].methods}
# The console's reads (decision feed, timelines, budgets, shadow diff): what an approver needs to
# judge a call, and what an admin reads. An enforcer sees only the decisions it asks about.
_QUERY_ROLES = {m.name: frozenset({"approver", "admin"}) for m in pb.DESCRIPTOR.services_by_name["Queries"].methods}
_QUERY_ROLES["WhoAmI"] = _READ


def required_roles(full_method: str) -> frozenset[str] | None:
    """Roles that may call `/package.Service/Method` (any one suffices); None for open methods."""
    try:
        _, service, method = full_method.split("/")
    except ValueError:
        return _ADMIN
    if service == "decider.v1.Decider":
        return _DECIDER_ROLES.get(method, _ADMIN)
    if service == "decider.v1.Control":
        return _CONTROL_ROLES.get(method, _ADMIN)
    if service == "decider.v1.Queries":
        return _QUERY_ROLES.get(method, _ADMIN)
    if service.startswith("decider."):
        return _ADMIN
    if service == "agentgateway.dev.ext_mcp.ExtMcp":   # `serve --ext-mcp`: a gateway asking for decisions
        return frozenset({"enforcer"})
    return None  # grpc.health.v1, reflection


@dataclass(frozen=True, slots=True)
class Principal:
    name: str
    roles: frozenset[str]
    groups: frozenset[str] = frozenset()
    # Bound caller (SPEC §9): globs over the agent ids / teams it may ask for; empty = any.
    agents: tuple[str, ...] = ()
    teams: tuple[str, ...] = ()

    def refuses(self, agent: pb.Agent) -> str:
        """Why this principal may not ask for `agent` ("" when it may). Globs match exactly
        (case-sensitive): a token bound to `coder-*` cannot speak for `Coder-7`."""
        if self.agents and not any(fnmatch.fnmatchcase(agent.id, g) for g in self.agents):
            return (f"{self.name} may not ask for agent {agent.id!r}: its token is bound to agents "
                    f"{list(self.agents)}")
        if self.teams and not any(fnmatch.fnmatchcase(agent.team, g) for g in self.teams):
            return (f"{self.name} may not ask for team {agent.team!r} (agent {agent.id!r}): its token is "
                    f"bound to teams {list(self.teams)}")
        return ""

    @property
    def bound(self) -> bool:
        return bool(self.agents or self.teams)

    def reaches(self, row: Mapping[str, Any]) -> bool:
        """Whether this principal may read or act on a stored decision (issue 24 item 2): a bound
        caller only on its own agents' decisions — the agent id and team the record holds (the
        identity the decision saw), matched as Decide matches them."""
        if not self.bound:
            return True
        agent_id, team = str(row.get("agent_id") or ""), str(row.get("team") or "")
        return (not self.agents or any(fnmatch.fnmatchcase(agent_id, g) for g in self.agents)) and \
            (not self.teams or any(fnmatch.fnmatchcase(team, g) for g in self.teams))

    def not_yours(self, decision_id: str) -> str:
        """The refusal of a decision outside a bound caller's agents; names neither that agent nor its team."""
        return (f"decision_id: {decision_id!r} is not a decision of the agents or teams {self.name}'s token "
                f"is bound to")


ANONYMOUS = Principal("anonymous", frozenset(ROLES))
"""Every caller, when the server runs without a token file (loopback only)."""
_NOBODY = Principal("", frozenset())

_current: contextvars.ContextVar[Principal | None] = contextvars.ContextVar("decider_principal", default=None)
_fallback: list[Principal] = [ANONYMOUS]


def current_principal() -> Principal:
    """The authenticated caller of the RPC being served (ANONYMOUS when auth is off)."""
    p = _current.get()
    return p if p is not None else _fallback[0]


@dataclass(frozen=True, slots=True)
class TokenConfig:
    by_digest: Mapping[str, Principal]
    groups: Mapping[str, frozenset[str]] = field(default_factory=dict)   # group → member principals

    def authenticate(self, token: str) -> Principal | None:
        return self.by_digest.get(hashlib.sha256(token.encode("utf-8")).hexdigest())

    def groups_of(self, principal: str) -> frozenset[str]:
        found = {g for g, members in self.groups.items() if principal in members}
        for p in self.by_digest.values():
            if p.name == principal:
                found |= p.groups
        return frozenset(found)


class TokenFileError(DeciderError):
    pass


def load_token_file(path: str | Path) -> TokenConfig:
    """Read and check the token file; TokenFileError says what is wrong and where."""
    p = Path(path)
    try:
        doc = yaml.safe_load(p.read_text())
    except (OSError, yaml.YAMLError) as e:
        raise TokenFileError(f"{p}: {e}") from None
    if not isinstance(doc, dict) or not isinstance(doc.get("tokens"), list) or not doc["tokens"]:
        raise TokenFileError(f"{p}: expected a mapping with a non-empty 'tokens' list")
    by_digest: dict[str, Principal] = {}
    for i, entry in enumerate(doc["tokens"]):
        where = f"{p}: tokens[{i}]"
        if not isinstance(entry, dict):
            raise TokenFileError(f"{where}: must be a mapping")
        unknown = set(entry) - {"token", "sha256", "principal", "roles", "groups", "agents", "teams"}
        if unknown:
            raise TokenFileError(f"{where}: unknown key(s) {sorted(unknown)}")
        if ("token" in entry) == ("sha256" in entry):
            raise TokenFileError(f"{where}: give exactly one of 'token' or 'sha256'")
        digest = (hashlib.sha256(str(entry["token"]).encode("utf-8")).hexdigest() if "token" in entry
                  else str(entry["sha256"]).lower())
        principal = entry.get("principal")
        if not isinstance(principal, str) or not principal:
            raise TokenFileError(f"{where}: 'principal' is required")
        roles = entry.get("roles") or []
        bad = [r for r in roles if r not in ROLES]
        if bad or not roles:
            raise TokenFileError(f"{where}: roles must be a non-empty list of {list(ROLES)}; got {roles}")
        if digest in by_digest:
            raise TokenFileError(f"{where}: the same token appears twice")
        bound: dict[str, tuple[str, ...]] = {}
        for key in ("agents", "teams"):
            globs = entry.get(key) or []
            if not isinstance(globs, list) or not all(isinstance(g, str) and g for g in globs):
                raise TokenFileError(f"{where}: '{key}' must be a list of non-empty globs")
            bound[key] = tuple(globs)
        by_digest[digest] = Principal(principal, frozenset(roles), frozenset(entry.get("groups") or []),
                                      bound["agents"], bound["teams"])
    groups_raw = doc.get("groups") or {}
    if not isinstance(groups_raw, dict):
        raise TokenFileError(f"{p}: 'groups' must map a group name to a list of principals")
    groups = {str(g): frozenset(str(m) for m in (members or [])) for g, members in groups_raw.items()}
    return TokenConfig(by_digest, groups)


def is_loopback(listen: str) -> bool:
    host = listen.rsplit(":", 1)[0].strip("[]")
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


Recorder = Callable[[dict[str, Any]], Awaitable[None]]


class AuthInterceptor(grpc.aio.ServerInterceptor):
    """Authenticate every decider.v1 call and check its role before the handler runs."""

    def __init__(self, tokens: TokenConfig, record: Recorder) -> None:
        self.tokens = tokens
        self.record = record
        _fallback[0] = _NOBODY   # with auth on, code outside an authenticated call has no roles

    async def intercept_service(self, continuation: Any, details: grpc.HandlerCallDetails) -> Any:
        handler = await continuation(details)
        roles = required_roles(details.method)
        if handler is None or roles is None:
            return handler
        principal, code, detail = self._check(details, roles)
        return _wrap(handler, details.method, principal, code, detail, self.record)

    def _check(self, details: grpc.HandlerCallDetails,
               roles: frozenset[str]) -> tuple[Principal | None, grpc.StatusCode | None, str]:
        headers = [value if isinstance(value, str) else value.decode("latin-1")
                   for key, value in details.invocation_metadata or () if key == "authorization"]
        if len(headers) > 1:
            # Which one would a proxy in front of us have checked? Ambiguity is refused, not resolved.
            return None, grpc.StatusCode.UNAUTHENTICATED, "more than one 'authorization' header"
        header = headers[0] if headers else ""
        scheme, _, token = header.partition(" ")
        if not header:
            return None, grpc.StatusCode.UNAUTHENTICATED, "missing bearer token (metadata 'authorization: Bearer …')"
        if scheme.lower() != "bearer" or not token.strip():
            return None, grpc.StatusCode.UNAUTHENTICATED, "authorization must be 'Bearer <token>'"
        principal = self.tokens.authenticate(token.strip())
        if principal is None:
            return None, grpc.StatusCode.UNAUTHENTICATED, "unknown token"
        if not principal.roles & roles:
            need = " or ".join(sorted(roles))
            return principal, grpc.StatusCode.PERMISSION_DENIED, (
                f"{principal.name} (roles: {', '.join(sorted(principal.roles))}) may not call "
                f"{details.method.rsplit('/', 1)[-1]}: needs role {need}")
        return principal, None, ""


def _wrap(handler: grpc.RpcMethodHandler, method: str, principal: Principal | None,
          code: grpc.StatusCode | None, detail: str, record: Recorder) -> grpc.RpcMethodHandler:
    async def refuse(context: grpc.aio.ServicerContext) -> None:
        assert code is not None
        row = {"time": datetime.now(timezone.utc), "method": method, "code": code.name,
               "principal": principal.name if principal else "", "peer": context.peer() or "", "detail": detail}
        log.warning("refused", extra={"method": method, "code": code.name, "principal": row["principal"],
                                      "peer": row["peer"]})
        try:
            await record(row)
        except Exception as exc:  # noqa: BLE001 - refusing must not depend on the audit write
            log.error("auth event not recorded", extra={"error": str(exc)})
        await context.abort(code, detail)

    def enter() -> None:
        # Each RPC runs in its own task with its own context copy: no reset needed, nothing leaks.
        _current.set(principal)

    kind = ("unary_unary" if handler.unary_unary else "unary_stream" if handler.unary_stream
            else "stream_unary" if handler.stream_unary else "stream_stream")
    inner = getattr(handler, kind)
    if inspect.isasyncgenfunction(inner):
        async def behaviour_gen(request: Any, context: grpc.aio.ServicerContext) -> Any:
            if code is not None:
                await refuse(context)
            enter()
            async for item in inner(request, context):
                yield item
        behaviour: Any = behaviour_gen
    else:
        async def behaviour_fn(request: Any, context: grpc.aio.ServicerContext) -> Any:
            if code is not None:
                await refuse(context)
            enter()
            result = inner(request, context)
            if inspect.isawaitable(result):
                result = await result
            return result
        behaviour = behaviour_fn
    factory = getattr(grpc, f"{kind}_rpc_method_handler")
    return factory(behaviour, request_deserializer=handler.request_deserializer,
                   response_serializer=handler.response_serializer)


def record_to_thread(fn: Callable[[dict[str, Any]], None]) -> Recorder:
    async def rec(row: dict[str, Any]) -> None:
        await asyncio.to_thread(fn, row)
    return rec


__all__ += ["TokenFileError", "record_to_thread"]
