"""Who is asking, checked against the bundle's agent manifests before any policy runs (SPEC §9).

`resolve(bundle, request)` gives the identity conditions see and, when the call may not go on,
the reason to deny it:

- no manifest covers the agent id (matched exactly) and `spec.agents.unregistered` is `deny`
  (the default once any manifest exists) → `unregistered_agent`;
- a request field contradicts the manifest (owner, team, a workflow or model not listed, a
  capability not granted, a label with another value) → `identity_mismatch` naming the field;
- the tool, or the tool's server, is not in the manifest → `not_in_manifest`.

Empty request fields are filled from the manifest: the result is a new `pb.Agent` (the request
is never changed), or the request's own when nothing needed filling — the common case costs no copy.
"""

from __future__ import annotations

from dataclasses import dataclass

from decider.bundle.compile import Bundle, Reason
from decider.bundle.manifests import Manifest
from decider.v1 import decider_pb2 as pb

__all__ = ["Resolved", "resolve", "UNREGISTERED", "MISMATCH", "NOT_IN_MANIFEST"]

UNREGISTERED = "unregistered_agent"
MISMATCH = "identity_mismatch"
NOT_IN_MANIFEST = "not_in_manifest"


@dataclass(frozen=True, slots=True)
class Resolved:
    agent: pb.Agent                 # the merged identity (the request's own object when unchanged)
    denial: Reason | None = None    # why the call is denied before any policy runs
    manifest: Manifest | None = None


def _deny(rule_id: str, text: str) -> Reason:
    return Reason(rule_id, text, "", "deny")


def resolve(bundle: Bundle, request: pb.DecideRequest) -> Resolved:
    agent = request.agent
    index = bundle.agents
    if not index:
        return Resolved(agent)
    m = index.find(agent)
    if m is None:
        if index.unregistered == "allow":
            return Resolved(agent)
        return Resolved(agent, _deny(UNREGISTERED, f"agent {agent.id!r} is not registered: no agent manifest "
                                                   f"covers it (spec.agents.unregistered: deny)"))
    fills: dict[str, object] = {}
    mismatch = _contradiction(agent, m, fills)
    merged = agent
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
    tool = request.tool
    if m.tool_ok(tool.name) is None:
        return Resolved(merged, _deny(NOT_IN_MANIFEST, f"tool {tool.name!r} is not in the manifest of agent "
                                                       f"{m.name!r} (tools: {', '.join(m.tools) or 'none'})"), m)
    if tool.server and m.server_ok(tool.server) is None:
        return Resolved(merged, _deny(NOT_IN_MANIFEST, f"server {tool.server!r} is not in the manifest of agent "
                                                       f"{m.name!r} (servers: {', '.join(m.servers) or 'none'})"), m)
    return Resolved(merged, None, m)


def _contradiction(a: pb.Agent, m: Manifest, fills: dict[str, object]) -> str:
    """The first field of `a` that contradicts `m` ("" if none); empty fields to fill go in `fills`."""
    for key, want in (("owner", m.owner), ("team", m.team)):
        have = getattr(a, key)
        if want:
            if not have:
                fills[key] = want
            elif have != want:
                return f"agent.{key}: the request says {have!r}, the manifest says {want!r}"
    for key, allowed in (("workflow", m.workflows), ("model", m.models)):
        have = getattr(a, key)
        if not allowed:
            continue
        if not have:
            if len(allowed) == 1:
                fills[key] = allowed[0]
        elif have not in allowed:
            return f"agent.{key}: {have!r} is not one of the manifest's {key}s {list(allowed)}"
    if a.capabilities:
        extra = [c for c in a.capabilities if c not in m.capabilities]
        if extra:
            return (f"agent.capabilities: {extra[0]!r} is not granted by the manifest "
                    f"(capabilities: {list(m.capability_list)})")
    elif m.capability_list:
        fills["capabilities"] = True
    if m.labels:
        missing: dict[str, str] = {}
        for k, v in m.labels.items():
            have = a.labels.get(k)
            if have is None:
                missing[k] = v
            elif have != v:
                return f"agent.labels.{k}: the request says {have!r}, the manifest says {v!r}"
        if missing:
            fills["labels"] = missing
    return ""
