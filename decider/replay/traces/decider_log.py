"""Reader for decider's own decision log (`decider log` JSONL export, SPEC §5).

Each line is one decision record: `decision_id`, `tool_name`, `tool_server`, `args`, `agent{id,
team, owner, workflow, model, session_id, labels, ...}`, `call_id`, `outcome`, and optionally
`time`, `risk_tier`, `context`, `request_id`, `environment`, `estimated_cost`, `actual_cost`.
Everything a `Decide` request carried is kept, so replaying a log resends the same requests; the
recorded outcome becomes the call's `label` for `decider diff`. The protobuf JSON spelling
(`decisionId`, `toolName`, ...) and the flat row spelling (`agent_id`, `team`, ...) are read too.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from decider.replay.traces._parse import decode_json_text, parse_arguments, parse_time, text_or_none, to_float, to_int
from decider.replay.traces._records import ObjOrLines, iter_records
from decider.replay.traces.errors import TraceFormatError
from decider.replay.traces.model import TraceCall, new_call

__all__ = ["read_decider_log", "looks_like_decider_log"]

FORMAT = "decider"
# protobuf JSON spelling → the record's own; a record written that way is renamed once.
_SNAKE = {
    "decisionId": "decision_id", "toolName": "tool_name", "toolServer": "tool_server", "callId": "call_id",
    "requestId": "request_id", "estimatedCost": "estimated_cost", "actualCost": "actual_cost",
    "riskTier": "risk_tier", "decidingRule": "deciding_rule", "outcomeStatus": "outcome_status",
    "requestLabels": "request_labels", "instanceId": "instance_id", "sessionId": "session_id",
    "resolution_comment": "comment",   # the stored column's older name
}
_FLAT_AGENT = (("agent_id", "id"), ("instance_id", "instance_id"), ("owner", "owner"), ("team", "team"),
               ("workflow", "workflow"), ("model", "model"), ("session_id", "session_id"))
# Kept with the call for replay: what was decided, the cost reported later, and an approval's
# resolution (when and by whom), so replay can apply it from the time it was made.
_LABEL_EXTRAS = ("deciding_rule", "actual_cost", "outcome_status", "approval_state", "approval_id", "resolved_by",
                 "resolved_at", "comment")


def _snake(d: dict[str, Any]) -> dict[str, Any]:
    return {_SNAKE.get(k, k): v for k, v in d.items()}


def _blank(v: object) -> bool:
    return v is None or v == "" or v == {} or v == []


def looks_like_decider_log(record: object) -> bool:
    if not isinstance(record, dict):
        return False
    return (("decision_id" in record or "decisionId" in record)
            and ("tool_name" in record or "toolName" in record) and "outcome" in record)


def _json_field(value: object) -> object:
    """The stored row keeps maps as JSON text (`agent_labels`, `context`); exports may too."""
    if isinstance(value, str) and value[:1] in ("{", "["):
        decoded, reason = decode_json_text(value)
        return decoded if reason is None else value
    return value


def _agent(record: dict[str, Any], camel: bool) -> dict[str, Any]:
    agent = record.get("agent")
    if isinstance(agent, dict):
        # `_blank` inlined: this runs once per record.
        return {k: v for k, v in (_snake(agent) if camel else agent).items()
                if v is not None and v != "" and v != {} and v != []}
    # the flat row form of the `decisions` table
    fields = {name: record.get(key) for key, name in _FLAT_AGENT}
    fields["labels"] = _json_field(record.get("agent_labels"))
    fields["capabilities"] = _json_field(record.get("agent_capabilities"))
    return {k: v for k, v in fields.items() if not _blank(v)}


def _request(get: Any) -> dict[str, Any]:
    request: dict[str, Any] = {}
    if not _blank(v := get("request_id")):
        request["id"] = str(v)
    if not _blank(v := get("environment")):
        request["environment"] = str(v)
    if (cost := to_float(get("estimated_cost"))) is not None:
        request["estimated_cost"] = cost
    if not _blank(v := get("request_labels")):
        request["labels"] = _json_field(v)
    return request


def read_decider_log(obj_or_lines: ObjOrLines, source: str) -> Iterator[TraceCall]:
    for record, where in iter_records(obj_or_lines, source):
        if not looks_like_decider_log(record):
            raise TraceFormatError(where, "not a decision record (needs decision_id, tool_name, outcome)")
        camel = "decisionId" in record
        if camel:
            record = _snake(record)
        get = record.get
        raw = get("args")
        args, why = parse_arguments(raw)
        agent = _agent(record, camel)
        request = _request(get)
        label = {"outcome": record["outcome"], "decision_id": text_or_none(get("decision_id"))}
        approval = get("approval")
        if isinstance(approval, dict):   # the API's nested form
            for key, name in (("state", "approval_state"), ("approvalId", "approval_id"), ("approval_id", "approval_id"),
                              ("resolvedBy", "resolved_by"), ("resolved_by", "resolved_by"),
                              ("resolvedAt", "resolved_at"), ("resolved_at", "resolved_at"), ("comment", "comment")):
                if not _blank(v := approval.get(key)):
                    label[name] = v.removeprefix("APPROVAL_").lower() if key == "state" else v
        for key in _LABEL_EXTRAS:
            if not _blank(v := get(key)):
                label[key] = v
        if "comment" not in label and not _blank(v := get("resolution_comment")):
            label["comment"] = v
        context = _json_field(get("context"))
        yield new_call({
            "tool_name": str(get("tool_name")), "arguments": args, "raw_arguments": raw,
            "indeterminate": why, "call_id": text_or_none(get("call_id")),
            "server": text_or_none(get("tool_server")),
            "agent": text_or_none(agent.get("id")), "agent_fields": agent or None,
            "model": text_or_none(agent.get("model")), "session_id": text_or_none(agent.get("session_id")),
            "cost": request.get("estimated_cost"), "started_at": parse_time(get("time")),
            "label": label, "context": context if isinstance(context, dict) and context else None,
            "risk_tier": to_int(get("risk_tier")), "request_fields": request or None,
            "source": where, "format": FORMAT,
        })
