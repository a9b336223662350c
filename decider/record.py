"""Turn a request + decision into the durable decision record (SPEC §5), and back into protos.

Pure: the server, the CLI and tests build records the same way; the store only persists rows.
"""

from __future__ import annotations

import hashlib
import json
from datetime import datetime, timezone
from typing import Any

from google.protobuf import json_format, struct_pb2

from .bundle import Bundle
from .engine import EFFECT_OF_OUTCOME, OUTCOME_NAMES, Decision, Reason
from .masking import mask_json, split_mask_paths
from .v1 import decider_pb2 as pb

__all__ = [
    "build_record",
    "record_to_proto",
    "decision_response",
    "canonical_args_hash",
    "struct_to_dict",
    "OUTCOME_BY_NAME",
]

OUTCOME_BY_NAME = {v: k for k, v in OUTCOME_NAMES.items()}
_EFFECT_PB = {"allow": pb.EFFECT_ALLOW, "deny": pb.EFFECT_DENY, "require_approval": pb.EFFECT_REQUIRE_APPROVAL}
_APPROVAL_PB = {
    "pending": pb.APPROVAL_PENDING,
    "approved": pb.APPROVAL_APPROVED,
    "rejected": pb.APPROVAL_REJECTED,
    "expired": pb.APPROVAL_EXPIRED,
    "consumed": pb.APPROVAL_CONSUMED,
}


def struct_to_dict(s: struct_pb2.Struct) -> dict[str, Any]:
    return json_format.MessageToDict(s)


def _dumps(value: Any) -> str:
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False)


def canonical_args_hash(args: dict[str, Any]) -> str:
    """sha256 of the canonical JSON of the arguments: binds an approval to the exact call."""
    canon = json.dumps(args, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(canon.encode("utf-8")).hexdigest()


def _reasons_json(reasons: tuple[Reason, ...]) -> list[dict[str, str]]:
    return [{"rule_id": r.rule_id, "text": r.text, "policy": r.policy, "effect": r.effect} for r in reasons]


def build_record(
    decision_id: str,
    req: pb.DecideRequest,
    decision: Decision,
    bundle: Bundle,
    now: datetime,
) -> dict[str, Any]:
    """The row for the `decisions` table; masked per the bundle before it leaves this function."""
    args_paths, ctx_paths = split_mask_paths(bundle.mask)
    args = struct_to_dict(req.tool.args)
    context = struct_to_dict(req.context)
    a = req.agent
    approval = decision.outcome == pb.REQUIRE_APPROVAL
    return {
        "decision_id": decision_id,
        "time": now,
        "request_id": req.request.id,
        "agent_id": a.id,
        "instance_id": a.instance_id,
        "owner": a.owner,
        "team": a.team,
        "workflow": a.workflow,
        "model": a.model,
        "session_id": a.session_id,
        "agent_labels": _dumps(dict(a.labels)),
        "agent_capabilities": _dumps(list(a.capabilities)),
        "tool_name": req.tool.name,
        "tool_server": req.tool.server,
        "call_id": req.tool.call_id,
        "args": _dumps(mask_json(args, args_paths)),
        "args_hash": canonical_args_hash(args),
        "context": _dumps(mask_json(context, ctx_paths)),
        "risk_tier": decision.risk_tier,
        "environment": req.request.environment,
        "estimated_cost": req.request.estimated_cost,
        "outcome": decision.outcome_name,
        "reasons": _dumps(_reasons_json(decision.reasons)),
        "matched_rules": _dumps(list(decision.matched_rules)),
        "deciding_rule": decision.deciding_rule,
        "errors": _dumps(list(decision.errors)),
        "kill_switch_id": decision.kill_switch_id or None,
        "bundle_name": bundle.name,
        "bundle_version": bundle.version,
        "bundle_revision": bundle.revision,
        "eval_us": decision.eval_us,
        "dry_run": req.dry_run,
        "approval_state": "pending" if approval and not req.dry_run else None,
        "approvers": _dumps(list(decision.approvers)) if approval else None,
        "approval_expires_at": _expiry(now, decision.approval_ttl_s) if approval else None,
    }


def _expiry(now: datetime, ttl_s: int) -> datetime:
    return datetime.fromtimestamp(now.timestamp() + ttl_s, tz=timezone.utc)


def _reasons_pb(raw: list[dict[str, str]]) -> list[pb.Reason]:
    return [
        pb.Reason(rule_id=r["rule_id"], text=r["text"], policy=r.get("policy", ""),
                  effect=_EFFECT_PB.get(r.get("effect", ""), pb.EFFECT_UNSPECIFIED))
        for r in raw
    ]


def _utc(t: datetime) -> datetime:
    # SQLite returns naive datetimes; every time we store is UTC.
    return t if t.tzinfo else t.replace(tzinfo=timezone.utc)


def decision_response(decision_id: str, req: pb.DecideRequest, decision: Decision, bundle: Bundle,
                      row: dict[str, Any]) -> pb.DecideResponse:
    resp = pb.DecideResponse(
        decision_id=decision_id,
        outcome=decision.outcome,
        reasons=[pb.Reason(rule_id=r.rule_id, text=r.text, policy=r.policy,
                           effect=_EFFECT_PB.get(r.effect, pb.EFFECT_UNSPECIFIED)) for r in decision.reasons],
        bundle=pb.BundleRef(name=bundle.name, version=bundle.version, revision=bundle.revision),
        matched_rules=decision.matched_rules,
        deciding_rule=decision.deciding_rule,
        eval_us=decision.eval_us,
        dry_run=req.dry_run,
    )
    if decision.outcome == pb.REQUIRE_APPROVAL:
        resp.approval.approval_id = row.get("approval_id") or decision_id
        resp.approval.approvers.extend(decision.approvers)
        if row.get("approval_expires_at"):
            resp.approval.expires_at.FromDatetime(_utc(row["approval_expires_at"]))
        resp.approval.state = _APPROVAL_PB.get(row.get("approval_state") or "", pb.APPROVAL_STATE_UNSPECIFIED)
    return resp


def record_to_proto(row: Any) -> pb.DecisionRecord:
    """A stored row (mapping) → the API's DecisionRecord."""
    r = dict(row)
    rec = pb.DecisionRecord(
        decision_id=r["decision_id"],
        agent=pb.Agent(
            id=r["agent_id"], instance_id=r["instance_id"], owner=r["owner"], team=r["team"],
            workflow=r["workflow"], model=r["model"], session_id=r["session_id"],
            labels=json.loads(r["agent_labels"] or "{}"), capabilities=json.loads(r["agent_capabilities"] or "[]"),
        ),
        tool_name=r["tool_name"],
        tool_server=r["tool_server"],
        call_id=r["call_id"],
        args_hash=r["args_hash"],
        risk_tier=r["risk_tier"],
        outcome=OUTCOME_BY_NAME.get(r["outcome"], pb.OUTCOME_UNSPECIFIED),
        reasons=_reasons_pb(json.loads(r["reasons"])),
        matched_rules=json.loads(r["matched_rules"]),
        deciding_rule=r["deciding_rule"],
        bundle=pb.BundleRef(name=r["bundle_name"], version=r["bundle_version"], revision=r["bundle_revision"]),
        eval_us=r["eval_us"],
        estimated_cost=r["estimated_cost"] or 0.0,
        actual_cost=r.get("actual_cost") or 0.0,
        outcome_status=r.get("outcome_status") or "",
        request_id=r["request_id"],
        environment=r["environment"],
        dry_run=bool(r["dry_run"]),
    )
    rec.time.FromDatetime(_utc(r["time"]))
    rec.args.update(json.loads(r["args"]))
    rec.context.update(json.loads(r["context"]))
    if r.get("shadow_outcome"):
        rec.shadow_outcome = OUTCOME_BY_NAME.get(r["shadow_outcome"], pb.OUTCOME_UNSPECIFIED)
        rec.shadow_rules.extend(json.loads(r.get("shadow_rules") or "[]"))
        rec.shadow_bundle.revision = r.get("shadow_revision") or ""
    if r.get("approval_state"):
        ap = rec.approval
        ap.approval_id = r.get("approval_id") or r["decision_id"]
        ap.state = _APPROVAL_PB.get(r["approval_state"], pb.APPROVAL_STATE_UNSPECIFIED)
        ap.approvers.extend(json.loads(r.get("approvers") or "[]"))
        if r.get("approval_expires_at"):
            ap.expires_at.FromDatetime(_utc(r["approval_expires_at"]))
        ap.resolved_by = r.get("resolved_by") or ""
        if r.get("resolved_at"):
            ap.resolved_at.FromDatetime(_utc(r["resolved_at"]))
        ap.comment = r.get("resolution_comment") or ""
    return rec


__all__ += ["EFFECT_OF_OUTCOME"]
