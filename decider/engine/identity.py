"""Who is asking, checked against the bundle's agent manifests before any policy runs (SPEC §9).

`resolve(bundle, agent, tool, tool_name)` gives the identity conditions see and, when the call may not go on,
the reason to deny it:

- no manifest covers the agent id (matched exactly) and `spec.agents.unregistered` is `deny`
  (the default once any manifest exists) → `unregistered_agent`;
- a request field contradicts the manifest (owner, team, a workflow or model not listed, a
  capability not granted, a label with another value) → `identity_mismatch` naming the field;
- the tool, or the tool's server, is not in the manifest → `not_in_manifest`.

Empty request fields are filled from the manifest: the result is a new `pb.Agent` (the request
is never changed), or None when nothing needed filling — the common case allocates nothing.
"""

from __future__ import annotations

import fnmatch
from dataclasses import dataclass

from decider.bundle.compile import Bundle, Reason
from decider.bundle.manifests import AgentIndex, Manifest, is_glob
from decider.v1 import decider_pb2 as pb

__all__ = ["Resolved", "resolve", "identity_of", "UNREGISTERED", "MISMATCH", "NOT_IN_MANIFEST"]

UNREGISTERED = "unregistered_agent"
MISMATCH = "identity_mismatch"
_MEMO_MAX = 4096
NOT_IN_MANIFEST = "not_in_manifest"


@dataclass(frozen=True, slots=True)
class Resolved:
    agent: pb.Agent | None          # the merged identity; None: the request's agent as sent
    denial: Reason | None = None    # why the call is denied before any policy runs
    manifest: Manifest | None = None


# A memo entry: the manifest (None: unregistered), the fields to fill, the contradiction ("" if none),
# and the manifest's memo of allows() when there is nothing to fill or deny (else None).
_Checked = tuple[Manifest | None, dict[str, object], str, dict[object, bool] | None]

# "The request's own agent, no denial": one shared value (the caller reads `agent` None as "as sent").
_AS_SENT = Resolved(None, None, None)  # type: ignore[arg-type]


# The memo key, called unbound: `agent.SerializeToString()` builds a bound method on every call
# (~20% of the serialisation's cost in upb).
_serialize = pb.Agent.SerializeToString


def _deny(rule_id: str, text: str) -> Reason:
    return Reason(rule_id, text, "", "deny")


def resolve(bundle: Bundle, agent: pb.Agent, tool: pb.ToolCall, tool_name: str) -> Resolved:
    """The identity conditions see, and why the call is denied before any policy (if it is)."""
    index = bundle.agents
    if not index.manifests:
        return _AS_SENT
    key = _serialize(agent)
    hit = index.checked.get(key)
    if hit is None:
        hit = _check(index, agent, key)
    m, fills, mismatch, clean = hit   # read only: shared by every request with these bytes
    if clean is not None:
        # The common case: registered, nothing to fill, nothing to deny — only the tool to look up,
        # in the manifest's own memo of allows() (a dict hit once the name has been seen).
        server = tool.server
        ok = clean.get((tool_name, server) if server else tool_name)
        if ok is None:
            ok = m.allows(tool_name, server)  # type: ignore[union-attr]
        if ok:
            return _AS_SENT
    elif m is None:
        if index.unregistered == "allow":
            return _AS_SENT
        return Resolved(None, _deny(UNREGISTERED, f"agent {agent.id!r} is not registered: no agent manifest "
                                                   f"covers it (spec.agents.unregistered: deny)"))
    server = tool.server
    merged: pb.Agent | None = None
    if fills:
        merged = pb.Agent()
        merged.CopyFrom(agent)
        for key, value in fills.items():
            if key == "capabilities":
                merged.capabilities.extend(m.capability_list)
            elif key == "labels":
                for k, v in value.items():  # type: ignore[attr-defined]
                    merged.labels[k] = v
            else:
                setattr(merged, key, value)
    if mismatch:
        return Resolved(merged, _deny(MISMATCH, f"{mismatch} (manifest {m.name!r} at {m.location})"), m)
    if m.tool_ok(tool_name) is None:
        return Resolved(merged, _deny(NOT_IN_MANIFEST, f"tool {tool_name!r} is not in the manifest of agent "
                                                       f"{m.name!r} (tools: {', '.join(m.tools) or 'none'})"), m)
    if server and m.server_ok(server) is None:
        return Resolved(merged, _deny(NOT_IN_MANIFEST, f"server {server!r} is not in the manifest of agent "
                                                       f"{m.name!r} (servers: {', '.join(m.servers) or 'none'})"), m)
    return Resolved(merged, None, m)


def _check(index: AgentIndex, agent: pb.Agent, key: bytes) -> _Checked:
    """Look the agent up and check it against its manifest, memoised by its wire bytes (bounded)."""
    found = index.find(agent)
    fills: dict[str, object] = {}
    mismatch = ""
    if found is not None:
        mismatch = _variant(agent, found) or _contradiction(agent, found, fills)
    hit = (found, fills, mismatch, found._seen if found is not None and not fills and not mismatch else None)
    if len(index.checked) < _MEMO_MAX:
        index.checked[key] = hit
    return hit


def _variant(a: pb.Agent, m: Manifest) -> str:
    """A request id that is the manifest's only once case-folded/trimmed (`REFUND-BOT` for
    `refund-bot`): denied, naming the registered id — neither unregistered (it would walk out of its
    manifest under `unregistered: allow`) nor accepted as sent (budgets and sessions key on the id
    as sent: a case variant would get a budget of its own). Issue 24 item 13."""
    if is_glob(m.name):
        key = a.instance_id or a.id
        if fnmatch.fnmatchcase(key, m.name):
            return ""
        field = "agent.instance_id" if a.instance_id else "agent.id"
        return f"{field}: {key!r} is not {m.name!r} as registered (ids are exact: case and spaces count)"
    if a.id == m.name:
        return ""
    return f"agent.id: {a.id!r} is not {m.name!r} as registered (ids are exact: case and spaces count)"


def _contradiction(a: pb.Agent, m: Manifest, fills: dict[str, object]) -> str:
    """The first field of `a` that contradicts `m` ("" if none); empty fields to fill go in `fills`.
    Straight-line on purpose: this runs on every decision of a bundle with manifests."""
    if m.owner:
        have = a.owner
        if not have:
            fills["owner"] = m.owner
        elif have != m.owner:
            return f"agent.owner: the request says {have!r}, the manifest says {m.owner!r}"
    if m.team:
        have = a.team
        if not have:
            fills["team"] = m.team
        elif have != m.team:
            return f"agent.team: the request says {have!r}, the manifest says {m.team!r}"
    if m.workflows:
        have = a.workflow
        if not have:
            if len(m.workflows) == 1:
                fills["workflow"] = m.workflows[0]
        elif have not in m.workflows:
            return f"agent.workflow: {have!r} is not one of the manifest's workflows {list(m.workflows)}"
    if m.models:
        have = a.model
        if not have:
            if len(m.models) == 1:
                fills["model"] = m.models[0]
        elif have not in m.models:
            return f"agent.model: {have!r} is not one of the manifest's models {list(m.models)}"
    caps = a.capabilities
    if caps:
        for c in caps:
            if c not in m.capabilities:
                return (f"agent.capabilities: {c!r} is not granted by the manifest "
                        f"(capabilities: {list(m.capability_list)})")
    elif m.capability_list:
        fills["capabilities"] = True
    if m.labels:
        labels = a.labels
        missing: dict[str, str] = {}
        for k, v in m.labels.items():
            have = labels.get(k)
            if have is None:
                missing[k] = v
            elif have != v:
                return f"agent.labels.{k}: the request says {have!r}, the manifest says {v!r}"
        if missing:
            fills["labels"] = missing
    return ""


def identity_of(bundle: Bundle, request: pb.DecideRequest) -> pb.Agent:
    """The identity the decision sees (merged with the manifest): what budgets are charged to, so
    a team the manifest fills is the team whose budget is read, reserved and charged. Memoised by
    `resolve`, so calling it again for the state read costs a dict hit."""
    if not bundle.agents.manifests:
        return request.agent
    tool = request.tool
    return resolve(bundle, request.agent, tool, tool.name).agent or request.agent
