"""Turn a request + decision into the durable decision record (SPEC §5), and back into protos.

Pure: the server, the CLI and tests build records the same way; the store only persists rows.
"""

from __future__ import annotations

import functools
import json
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from typing import Any

from decider.bundle.compile import EFFECT_PB, Bundle
from decider.engine.decision import Decision, Reason, outcome_value
from decider.times import utc as _utc
from decider.v1 import decider_pb2 as pb
from decider.values.canonical import binding_hash, struct_to_dict
from decider.values.canonical import dumps as _dumps
from decider.values.masking import mask_json, split_mask_paths

__all__ = [
    "DecisionRecord",
    "Agent",
    "Approval",
    "BundleRef",
    "build_record",
    "record_to_proto",
    "response_from_row",
    "struct_to_dict",
    "set_timestamp",
    "outcome_of",
]


def outcome_of(name: str | None) -> int:
    """A stored outcome name → pb.Outcome (OUTCOME_UNSPECIFIED for none)."""
    return outcome_value(name) if name else pb.OUTCOME_UNSPECIFIED

_APPROVAL_PB = {
    "pending": pb.APPROVAL_PENDING,
    "approved": pb.APPROVAL_APPROVED,
    "rejected": pb.APPROVAL_REJECTED,
    "expired": pb.APPROVAL_EXPIRED,
    "consumed": pb.APPROVAL_CONSUMED,
}


def _reasons_json(reasons: tuple[Reason, ...]) -> list[dict[str, str]]:
    return [{"rule_id": r.rule_id, "text": r.text, "policy": r.policy, "effect": r.effect} for r in reasons]


@dataclass(slots=True)
class Agent:
    """Who acted (API: decider.v1.Agent)."""

    id: str
    instance_id: str = ""
    owner: str = ""
    team: str = ""
    workflow: str = ""
    model: str = ""
    session_id: str = ""
    labels: dict[str, str] = field(default_factory=dict)
    capabilities: list[str] = field(default_factory=list)


@dataclass(slots=True)
class BundleRef:
    name: str = ""
    version: str = ""
    revision: str = ""


@dataclass(slots=True)
class Approval:
    """An approval's part of a record (API: decider.v1.Approval)."""

    approval_id: str
    state: str                          # pending | approved | rejected | expired | consumed
    approvers: list[str] = field(default_factory=list)
    expires_at: datetime | None = None
    resolved_by: str = ""
    resolved_at: datetime | None = None
    comment: str = ""


@dataclass(slots=True)
class DecisionRecord:
    """One decision as recorded: built once per decision, then stored (`to_row`), answered
    (`to_proto`, `response`), exported (`to_json`, which `replay` reads back). Field names are the
    API's (decider.v1.DecisionRecord). `args` and `context` are masked per the bundle;
    `args_hash` is the keyed binding hash: stored, never returned or exported."""

    decision_id: str
    time: datetime
    agent: Agent
    tool_name: str
    outcome: str                        # ALLOW | DENY | REQUIRE_APPROVAL (pb.Outcome.Name)
    deciding_rule: str
    bundle: BundleRef
    tool_server: str = ""
    call_id: str = ""
    args: dict[str, Any] = field(default_factory=dict)
    args_hash: str = ""
    risk_tier: int = 0
    reasons: tuple[Reason, ...] = ()
    matched_rules: tuple[str, ...] = ()
    errors: tuple[str, ...] = ()
    kill_switch_id: str = ""
    shadow_outcome: str = ""
    shadow_rules: tuple[str, ...] = ()
    shadow_bundle: BundleRef | None = None
    eval_us: int = 0
    approval: Approval | None = None
    estimated_cost: float = 0.0
    actual_cost: float | None = None
    outcome_status: str = ""
    request_id: str = ""
    environment: str = ""
    context: dict[str, Any] = field(default_factory=dict)
    dry_run: bool = False
    caller: str = ""                    # the authenticated principal that asked ("" offline)
    labels: tuple[str, ...] = ()        # rules' `labels:` that held, then ReportOutcome's (SPEC §10)

    # ---- to and from the store -------------------------------------------------------------------
    def to_row(self) -> dict[str, Any]:
        """The `decisions` row (JSON columns encoded)."""
        a, b, ap = self.agent, self.bundle, self.approval
        return {
            "decision_id": self.decision_id, "time": self.time, "request_id": self.request_id,
            "agent_id": a.id, "instance_id": a.instance_id, "owner": a.owner, "team": a.team,
            "workflow": a.workflow, "model": a.model, "session_id": a.session_id,
            # Empty maps and lists are the common case: no encode for them.
            "agent_labels": _dumps(a.labels) if a.labels else "{}",
            "agent_capabilities": _dumps(a.capabilities) if a.capabilities else "[]",
            "tool_name": self.tool_name, "tool_server": self.tool_server, "call_id": self.call_id,
            "args": _dumps(self.args) if self.args else "{}", "args_hash": self.args_hash,
            "context": _dumps(self.context) if self.context else "{}",
            "risk_tier": self.risk_tier, "environment": self.environment, "estimated_cost": self.estimated_cost,
            "outcome": self.outcome, "reasons": _reasons_text(self.reasons),
            "matched_rules": _rules_text(self.matched_rules), "deciding_rule": self.deciding_rule,
            "errors": _dumps(list(self.errors)) if self.errors else "[]",
            "kill_switch_id": self.kill_switch_id or None,
            "bundle_name": b.name, "bundle_version": b.version, "bundle_revision": b.revision,
            "shadow_outcome": self.shadow_outcome or None,
            "shadow_rules": _rules_text(self.shadow_rules) if self.shadow_outcome else None,
            "shadow_bundle_revision": self.shadow_bundle.revision if self.shadow_bundle else None,
            "eval_us": self.eval_us, "dry_run": self.dry_run,
            "approval_state": ap.state if ap else None,
            "approval_id": ap.approval_id if ap else None,
            "approvers": _dumps(ap.approvers) if ap else None,
            "approval_expires_at": ap.expires_at if ap else None,
            "resolved_by": (ap.resolved_by or None) if ap else None,
            "resolved_at": ap.resolved_at if ap else None,
            "comment": (ap.comment or None) if ap else None,
            "actual_cost": self.actual_cost, "outcome_status": self.outcome_status or None,
            "caller": self.caller,
            "labels": _dumps(list(self.labels)) if self.labels else "[]",
        }

    @staticmethod
    def from_row(row: Any) -> DecisionRecord:
        """A stored row (mapping) → the record."""
        r = dict(row)
        approval = None
        if r.get("approval_state"):
            approval = Approval(
                approval_id=r.get("approval_id") or r["decision_id"], state=r["approval_state"],
                approvers=json.loads(r.get("approvers") or "[]"), expires_at=_utc(r.get("approval_expires_at")),
                resolved_by=r.get("resolved_by") or "", resolved_at=_utc(r.get("resolved_at")),
                comment=r.get("comment") or "")
        return DecisionRecord(
            decision_id=r["decision_id"], time=_utc(r["time"]),
            agent=Agent(id=r["agent_id"], instance_id=r["instance_id"], owner=r["owner"], team=r["team"],
                        workflow=r["workflow"], model=r["model"], session_id=r["session_id"],
                        labels=json.loads(r["agent_labels"] or "{}"),
                        capabilities=json.loads(r["agent_capabilities"] or "[]")),
            tool_name=r["tool_name"], tool_server=r["tool_server"], call_id=r["call_id"],
            args=json.loads(r["args"]), args_hash=r.get("args_hash") or "", risk_tier=r["risk_tier"],
            outcome=r["outcome"], deciding_rule=r["deciding_rule"],
            reasons=tuple(Reason(x["rule_id"], x["text"], x.get("policy", ""), x.get("effect", ""))
                          for x in json.loads(r["reasons"])),
            matched_rules=tuple(json.loads(r["matched_rules"])), errors=tuple(json.loads(r.get("errors") or "[]")),
            kill_switch_id=r.get("kill_switch_id") or "",
            bundle=BundleRef(r["bundle_name"], r["bundle_version"], r["bundle_revision"]),
            shadow_outcome=r.get("shadow_outcome") or "",
            shadow_rules=tuple(json.loads(r.get("shadow_rules") or "[]")),
            shadow_bundle=BundleRef(revision=r["shadow_bundle_revision"]) if r.get("shadow_bundle_revision") else None,
            eval_us=r["eval_us"], approval=approval, estimated_cost=r["estimated_cost"] or 0.0,
            actual_cost=r.get("actual_cost"), outcome_status=r.get("outcome_status") or "",
            request_id=r["request_id"], environment=r["environment"], context=json.loads(r["context"]),
            dry_run=bool(r["dry_run"]), caller=r.get("caller") or "",
            labels=tuple(json.loads(r.get("labels") or "[]")),
        )

    # ---- to callers --------------------------------------------------------------------------------
    def to_proto(self) -> pb.DecisionRecord:
        """The API's DecisionRecord (never with `args_hash`)."""
        a, b = self.agent, self.bundle
        rec = pb.DecisionRecord(
            decision_id=self.decision_id,
            agent=pb.Agent(id=a.id, instance_id=a.instance_id, owner=a.owner, team=a.team, workflow=a.workflow,
                           model=a.model, session_id=a.session_id, labels=a.labels, capabilities=a.capabilities),
            tool_name=self.tool_name, tool_server=self.tool_server, call_id=self.call_id,
            risk_tier=self.risk_tier, outcome=outcome_of(self.outcome), reasons=_reasons_pb(self.reasons),
            matched_rules=self.matched_rules, deciding_rule=self.deciding_rule,
            bundle=pb.BundleRef(name=b.name, version=b.version, revision=b.revision),
            eval_us=self.eval_us, estimated_cost=self.estimated_cost, actual_cost=self.actual_cost or 0.0,
            outcome_status=self.outcome_status, request_id=self.request_id, environment=self.environment,
            dry_run=self.dry_run, caller=self.caller, labels=self.labels,
        )
        set_timestamp(rec.time, self.time)
        rec.args.update(self.args)
        rec.context.update(self.context)
        if self.shadow_outcome:
            rec.shadow_outcome = outcome_of(self.shadow_outcome)
            rec.shadow_rules.extend(self.shadow_rules)
            rec.shadow_bundle.revision = self.shadow_bundle.revision if self.shadow_bundle else ""
        if self.approval is not None:
            _approval_into(rec.approval, self.approval)
        return rec

    def to_json(self) -> dict[str, Any]:
        """The `decider log --format jsonl` line: the API's names, times ISO-8601, no `args_hash`."""
        out: dict[str, Any] = {
            "decision_id": self.decision_id, "time": self.time.isoformat(), "request_id": self.request_id,
            "agent": {"id": self.agent.id, "instance_id": self.agent.instance_id, "owner": self.agent.owner,
                      "team": self.agent.team, "workflow": self.agent.workflow, "model": self.agent.model,
                      "session_id": self.agent.session_id, "labels": self.agent.labels,
                      "capabilities": self.agent.capabilities},
            "tool_name": self.tool_name, "tool_server": self.tool_server, "call_id": self.call_id,
            "args": self.args, "risk_tier": self.risk_tier, "environment": self.environment,
            "context": self.context, "estimated_cost": self.estimated_cost,
            "outcome": self.outcome, "deciding_rule": self.deciding_rule,
            "reasons": _reasons_json(self.reasons), "matched_rules": list(self.matched_rules),
            "errors": list(self.errors), "kill_switch_id": self.kill_switch_id,
            "bundle": {"name": self.bundle.name, "version": self.bundle.version, "revision": self.bundle.revision},
            "eval_us": self.eval_us, "dry_run": self.dry_run,
            "actual_cost": self.actual_cost, "outcome_status": self.outcome_status,
            "caller": self.caller,
            "labels": list(self.labels),
        }
        if self.shadow_outcome:
            out["shadow_outcome"] = self.shadow_outcome
            out["shadow_rules"] = list(self.shadow_rules)
            out["shadow_bundle"] = {"revision": self.shadow_bundle.revision if self.shadow_bundle else ""}
        if self.approval is not None:
            ap = self.approval
            out["approval"] = {"approval_id": ap.approval_id, "state": ap.state, "approvers": ap.approvers,
                               "expires_at": ap.expires_at.isoformat() if ap.expires_at else None,
                               "resolved_by": ap.resolved_by,
                               "resolved_at": ap.resolved_at.isoformat() if ap.resolved_at else None,
                               "comment": ap.comment}
        return out

    def response(self, req: pb.DecideRequest) -> pb.DecideResponse:
        """The DecideResponse for this record (an identical call while pending is answered with
        the earlier record)."""
        resp = pb.DecideResponse()
        # The same rules decide again and again: copy their prebuilt part (a third of the cost).
        b = self.bundle
        resp.CopyFrom(_response_template(outcome_of(self.outcome), self.reasons, b.name, b.version, b.revision,
                                         self.matched_rules, self.deciding_rule))
        resp.decision_id = self.decision_id
        resp.eval_us = self.eval_us
        resp.dry_run = req.dry_run
        resp.request_id = req.request.id
        if self.approval is not None:
            _approval_into(resp.approval, self.approval)
        return resp


def build_record(
    decision_id: str,
    req: pb.DecideRequest,
    decision: Decision,
    bundle: Bundle,
    now: datetime,
    binding_key: bytes,
    args_hash: str = "",
    caller: str = "",
) -> DecisionRecord:
    """The record of one decision, built once; masked per the bundle before it leaves this function.
    A REQUIRE_APPROVAL decision (not a dry run) opens its own pending approval. `args_hash`: the
    binding hash when the caller computed it already (an approval look-up did). The agent is the
    identity the decision saw (merged with its manifest); `caller` the principal that asked."""
    args_paths, ctx_paths = _mask_paths(bundle.mask)
    tool = req.tool
    args = struct_to_dict(tool.args)
    a = decision.agent or req.agent
    r = req.request
    approval = None
    if decision.outcome == pb.REQUIRE_APPROVAL and not req.dry_run:
        approval = Approval(decision_id, "pending", list(decision.approvers), _expiry(now, decision.approval_ttl_s))
    return DecisionRecord(
        decision_id=decision_id, time=now, request_id=r.id,
        agent=Agent(a.id, a.instance_id, a.owner, a.team, a.workflow, a.model, a.session_id,
                    dict(a.labels) if a.labels else {}, list(a.capabilities) if a.capabilities else []),
        tool_name=tool.name, tool_server=tool.server, call_id=tool.call_id,
        args=mask_json(args, args_paths) if args else {},
        args_hash=args_hash or binding_hash(req, binding_key, args),   # keyed: see values/canonical.py
        # Empty maps are the common case: skip the conversion for them.
        context=mask_json(struct_to_dict(req.context), ctx_paths) if req.context.fields else {},
        risk_tier=decision.risk_tier, environment=r.environment, estimated_cost=r.estimated_cost,
        outcome=decision.outcome_name, reasons=decision.reasons, matched_rules=decision.matched_rules,
        deciding_rule=decision.deciding_rule, errors=decision.errors, kill_switch_id=decision.kill_switch_id,
        bundle=_bundle_ref(bundle.name, bundle.version, bundle.revision), eval_us=decision.eval_us,
        dry_run=req.dry_run, approval=approval, caller=caller, labels=decision.labels,
    )


@functools.lru_cache(maxsize=64)
def _bundle_ref(name: str, version: str, revision: str) -> BundleRef:
    return BundleRef(name, version, revision)


@functools.lru_cache(maxsize=4096)
def _rules_text(rules: tuple[str, ...]) -> str:
    return _dumps(list(rules)) if rules else "[]"


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


def _reasons_pb(reasons: tuple[Reason, ...]) -> list[pb.Reason]:
    return [pb.Reason(rule_id=r.rule_id, text=r.text, policy=r.policy,
                      effect=EFFECT_PB.get(r.effect, pb.EFFECT_UNSPECIFIED)) for r in reasons]


_EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)
_MICROSECOND = timedelta(microseconds=1)


def set_timestamp(ts: Any, t: datetime) -> None:
    """`ts.FromDatetime(t)` for a UTC (or naive, read as UTC) datetime, at a fifth of its cost."""
    us = (_utc(t) - _EPOCH) // _MICROSECOND
    seconds, micros = divmod(us, 1_000_000)
    ts.seconds = seconds
    ts.nanos = micros * 1000


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
    return DecisionRecord.from_row(row).to_proto()


def response_from_row(row: dict[str, Any], req: pb.DecideRequest) -> pb.DecideResponse:
    """The answer to `req` from a stored decision (an identical call while its approval is
    pending gets the earlier decision)."""
    return DecisionRecord.from_row(row).response(req)


def _approval_into(ap: pb.Approval, a: Approval) -> None:
    ap.approval_id = a.approval_id
    ap.state = _APPROVAL_PB.get(a.state, pb.APPROVAL_STATE_UNSPECIFIED)
    ap.approvers.extend(a.approvers)
    if a.expires_at is not None:
        set_timestamp(ap.expires_at, a.expires_at)
    ap.resolved_by = a.resolved_by
    if a.resolved_at is not None:
        set_timestamp(ap.resolved_at, a.resolved_at)
    ap.comment = a.comment
