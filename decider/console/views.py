"""Protos → what the templates show. Pure: no I/O, no Starlette."""

from __future__ import annotations

import json
from datetime import timezone
from typing import Any

from google.protobuf import json_format, timestamp_pb2

from decider.api.names import approval_state_name
from decider.v1 import decider_pb2 as pb

__all__ = ["record_view", "when", "kill_view", "bundle_view", "budget_view", "OUTCOMES"]

OUTCOMES = ("ALLOW", "DENY", "REQUIRE_APPROVAL")


def when(ts: timestamp_pb2.Timestamp) -> str:
    """ISO-8601 UTC with milliseconds, or "" for an unset timestamp."""
    if not ts.seconds and not ts.nanos:
        return ""
    return ts.ToDatetime(tzinfo=timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _json(s: Any) -> str:
    return json.dumps(json_format.MessageToDict(s), indent=2, sort_keys=True) if s.fields else "{}"


def record_view(r: pb.DecisionRecord) -> dict[str, Any]:
    a = r.agent
    approval = r.approval
    return {
        "id": r.decision_id,
        "time": when(r.time),
        "agent": {"id": a.id, "instance_id": a.instance_id, "owner": a.owner, "team": a.team,
                  "workflow": a.workflow, "model": a.model, "session_id": a.session_id,
                  "labels": dict(sorted(a.labels.items())), "capabilities": list(a.capabilities)},
        "tool": r.tool_name, "server": r.tool_server, "call_id": r.call_id,
        "args": _json(r.args), "context": _json(r.context), "args_hash": r.args_hash,
        "risk_tier": r.risk_tier,
        "outcome": pb.Outcome.Name(r.outcome) if r.outcome else "",
        "reasons": [{"rule_id": x.rule_id, "text": x.text, "policy": x.policy,
                     "effect": pb.Effect.Name(x.effect) if x.effect else ""} for x in r.reasons],
        "matched_rules": list(r.matched_rules),
        "deciding_rule": r.deciding_rule,
        "bundle": {"name": r.bundle.name, "version": r.bundle.version, "revision": r.bundle.revision},
        "shadow_outcome": pb.Outcome.Name(r.shadow_outcome) if r.shadow_outcome else "",
        "shadow_rules": list(r.shadow_rules),
        "shadow_bundle": r.shadow_bundle.revision,
        "eval_us": r.eval_us,
        "approval": {"state": approval_state_name(approval.state), "id": approval.approval_id,
                     "approvers": list(approval.approvers), "expires_at": when(approval.expires_at),
                     "resolved_by": approval.resolved_by, "resolved_at": when(approval.resolved_at),
                     "comment": approval.comment},
        "estimated_cost": r.estimated_cost,
        "actual_cost": r.actual_cost,
        "outcome_status": r.outcome_status,
        "request_id": r.request_id,
        "environment": r.environment,
        "dry_run": r.dry_run,
    }


def kill_view(k: pb.KillSwitch) -> dict[str, Any]:
    return {"id": k.id, "scope": k.scope, "value": k.value, "reason": k.reason, "created_by": k.created_by,
            "created_at": when(k.created_at), "cleared_at": when(k.cleared_at), "cleared_by": k.cleared_by}


def bundle_view(b: pb.BundleInfo) -> dict[str, Any]:
    return {"name": b.name, "version": b.version, "revision": b.revision, "source": b.source, "signed": b.signed,
            "active": b.active, "shadow": b.shadow, "loaded_at": when(b.loaded_at),
            "activated_at": when(b.activated_at)}


def budget_view(b: pb.BudgetUsage) -> dict[str, Any]:
    used = b.spent + b.reserved
    return {"scope": b.scope, "scope_key": b.scope_key, "window": b.window, "window_start": when(b.window_start),
            "limit": b.limit, "spent": b.spent, "reserved": b.reserved, "remaining": b.remaining,
            "percent": min(100.0, 100.0 * used / b.limit) if b.limit > 0 else 100.0}
