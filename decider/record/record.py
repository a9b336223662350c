"""Turn a request + decision into the durable decision record (SPEC §5), and back into protos.

Pure: the server, the CLI and tests build records the same way; the store only persists rows.
"""

from __future__ import annotations

import functools
import json
from datetime import datetime, timedelta, timezone
from typing import Any

from decider.bundle.compile import EFFECT_PB, Bundle
from decider.engine.decision import Decision, Reason
from decider.record.canonical import binding_hash, struct_to_dict
from decider.record.canonical import dumps as _dumps
from decider.record.masking import mask_json, split_mask_paths
from decider.times import utc as _utc
from decider.v1 import decider_pb2 as pb

__all__ = [
    "build_record",
    "record_to_proto",
    "response_from_row",
    "decision_response",
    "struct_to_dict",
    "set_timestamp",
    "outcome_of",
]


def outcome_of(name: str | None) -> int:
    """A stored outcome name → pb.Outcome (OUTCOME_UNSPECIFIED for none)."""
    return pb.Outcome.Value(name) if name else pb.OUTCOME_UNSPECIFIED

_APPROVAL_PB = {
    "pending": pb.APPROVAL_PENDING,
    "approved": pb.APPROVAL_APPROVED,
    "rejected": pb.APPROVAL_REJECTED,
    "expired": pb.APPROVAL_EXPIRED,
    "consumed": pb.APPROVAL_CONSUMED,
}


def _reasons_json(reasons: tuple[Reason, ...]) -> list[dict[str, str]]:
    return [{"rule_id": r.rule_id, "text": r.text, "policy": r.policy, "effect": r.effect} for r in reasons]


def build_record(
    decision_id: str,
    req: pb.DecideRequest,
    decision: Decision,
    bundle: Bundle,
    now: datetime,
    binding_key: bytes,
) -> dict[str, Any]:
    """The row for the `decisions` table; masked per the bundle before it leaves this function."""
    args_paths, ctx_paths = _mask_paths(bundle.mask)
    tool = req.tool
    args = struct_to_dict(tool.args)
    # Empty maps and lists are the common case: skip the conversion and the encode for them.
    context_json = _dumps(mask_json(struct_to_dict(req.context), ctx_paths)) if req.context.fields else "{}"
    a = req.agent
    r = req.request
    approval = decision.outcome == pb.REQUIRE_APPROVAL
    return {
        "decision_id": decision_id,
        "time": now,
        "request_id": r.id,
        "agent_id": a.id,
        "instance_id": a.instance_id,
        "owner": a.owner,
        "team": a.team,
        "workflow": a.workflow,
        "model": a.model,
        "session_id": a.session_id,
        "agent_labels": _dumps(dict(a.labels)) if a.labels else "{}",
        "agent_capabilities": _dumps(list(a.capabilities)) if a.capabilities else "[]",
        "tool_name": tool.name,
        "tool_server": tool.server,
        "call_id": tool.call_id,
        "args": _dumps(mask_json(args, args_paths)),
        "args_hash": binding_hash(req, binding_key, args),   # keyed: see record/canonical.py
        "context": context_json,
        "risk_tier": decision.risk_tier,
        "environment": r.environment,
        "estimated_cost": r.estimated_cost,
        "outcome": decision.outcome_name,
        "reasons": _reasons_text(decision.reasons),
        "matched_rules": _dumps(list(decision.matched_rules)) if decision.matched_rules else "[]",
        "deciding_rule": decision.deciding_rule,
        "errors": _dumps(list(decision.errors)) if decision.errors else "[]",
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


@functools.lru_cache(maxsize=64)
def _mask_paths(mask: tuple[str, ...]) -> tuple[list[list[str]], list[list[str]]]:
    # Per bundle, not per decision (the lists are only read).
    return split_mask_paths(mask)


@functools.lru_cache(maxsize=4096)
def _reasons_text(reasons: tuple[Reason, ...]) -> str:
    # The same rules win again and again: encode each distinct set of reasons once.
    return _dumps(_reasons_json(reasons))


def _expiry(now: datetime, ttl_s: int) -> datetime:
    return datetime.fromtimestamp(now.timestamp() + ttl_s, tz=timezone.utc)


def _reasons_pb(raw: list[dict[str, str]]) -> list[pb.Reason]:
    return [
        pb.Reason(rule_id=r["rule_id"], text=r["text"], policy=r.get("policy", ""),
                  effect=EFFECT_PB.get(r.get("effect", ""), pb.EFFECT_UNSPECIFIED))
        for r in raw
    ]


_EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)
_MICROSECOND = timedelta(microseconds=1)


def set_timestamp(ts: Any, t: datetime) -> None:
    """`ts.FromDatetime(t)` for a UTC (or naive, read as UTC) datetime, at a fifth of its cost."""
    us = (_utc(t) - _EPOCH) // _MICROSECOND
    seconds, micros = divmod(us, 1_000_000)
    ts.seconds = seconds
    ts.nanos = micros * 1000


def decision_response(decision_id: str, req: pb.DecideRequest, decision: Decision, bundle: Bundle,
                      row: dict[str, Any]) -> pb.DecideResponse:
    resp = pb.DecideResponse()
    # The same rules decide again and again: copy their prebuilt part (a third of the cost).
    resp.CopyFrom(_response_template(decision.outcome, decision.reasons, bundle.name, bundle.version,
                                     bundle.revision, decision.matched_rules, decision.deciding_rule))
    resp.decision_id = decision_id
    resp.eval_us = decision.eval_us
    resp.dry_run = req.dry_run
    if decision.outcome == pb.REQUIRE_APPROVAL:
        resp.approval.approval_id = row.get("approval_id") or decision_id
        resp.approval.approvers.extend(decision.approvers)
        if row.get("approval_expires_at"):
            set_timestamp(resp.approval.expires_at, row["approval_expires_at"])
        resp.approval.state = _APPROVAL_PB.get(row.get("approval_state") or "", pb.APPROVAL_STATE_UNSPECIFIED)
    return resp


@functools.lru_cache(maxsize=4096)
def _response_template(outcome: int, reasons: tuple[Reason, ...], name: str, version: str, revision: str,
                       matched_rules: tuple[str, ...], deciding_rule: str) -> pb.DecideResponse:
    return pb.DecideResponse(
        outcome=outcome,
        reasons=[pb.Reason(rule_id=r.rule_id, text=r.text, policy=r.policy,
                           effect=EFFECT_PB.get(r.effect, pb.EFFECT_UNSPECIFIED)) for r in reasons],
        bundle=pb.BundleRef(name=name, version=version, revision=revision),
        matched_rules=matched_rules,
        deciding_rule=deciding_rule,
    )


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
        risk_tier=r["risk_tier"],
        outcome=outcome_of(r["outcome"]),
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
    set_timestamp(rec.time, r["time"])
    rec.args.update(json.loads(r["args"]))
    rec.context.update(json.loads(r["context"]))
    if r.get("shadow_outcome"):
        rec.shadow_outcome = outcome_of(r["shadow_outcome"])
        rec.shadow_rules.extend(json.loads(r.get("shadow_rules") or "[]"))
        rec.shadow_bundle.revision = r.get("shadow_revision") or ""
    if r.get("approval_state"):
        _approval_into(rec.approval, r)
    return rec


def response_from_row(row: dict[str, Any], req: pb.DecideRequest) -> pb.DecideResponse:
    """The answer to `req` from a stored decision (an identical call while its approval is
    pending gets the earlier decision): the response fields of `record_to_proto`, nothing else."""
    resp = pb.DecideResponse(
        decision_id=row["decision_id"],
        outcome=outcome_of(row["outcome"]),
        reasons=_reasons_pb(json.loads(row["reasons"])),
        bundle=pb.BundleRef(name=row["bundle_name"], version=row["bundle_version"], revision=row["bundle_revision"]),
        matched_rules=json.loads(row["matched_rules"]),
        deciding_rule=row["deciding_rule"],
        eval_us=row["eval_us"],
        dry_run=req.dry_run,
        request_id=req.request.id,
    )
    if row.get("approval_state"):
        _approval_into(resp.approval, row)
    return resp


def _approval_into(ap: pb.Approval, r: dict[str, Any]) -> None:
    ap.approval_id = r.get("approval_id") or r["decision_id"]
    ap.state = _APPROVAL_PB.get(r["approval_state"], pb.APPROVAL_STATE_UNSPECIFIED)
    ap.approvers.extend(json.loads(r.get("approvers") or "[]"))
    if r.get("approval_expires_at"):
        set_timestamp(ap.expires_at, r["approval_expires_at"])
    ap.resolved_by = r.get("resolved_by") or ""
    if r.get("resolved_at"):
        set_timestamp(ap.resolved_at, r["resolved_at"])
    ap.comment = r.get("resolution_comment") or ""
