"""Outcome rules (SPEC §10 round two): rules with `on: outcome` run when a call's outcome is reported,
see the tool's result besides the call, and only add labels to the call's record.

`result.text` is the result as text (an MCP `CallToolResult`'s text content joined by newlines, a
string as it is, anything else as JSON), at most RESULT_TEXT_MAX characters; `result.json` is the
result parsed where it is JSON (a JSON value, or text that parses), else `null`. The result itself is
never kept: only the labels the rules return are.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from google.protobuf import json_format, struct_pb2

from decider.api.results import RESULT_MAX_BYTES, RESULT_TEXT_MAX
from decider.bundle.compile import Bundle, CompiledRule
from decider.engine.call_source import call_source
from decider.v1 import decider_pb2 as pb

__all__ = ["RESULT_TEXT_MAX", "RESULT_MAX_BYTES", "outcome_labels", "result_view", "reported_labels",
           "request_of_record"]



def _mcp_text(value: Any) -> str | None:
    """The text of an MCP `CallToolResult` (`{"content": [{"type": "text", "text": …}, …]}`) or of
    its content list; None for anything else."""
    content = value.get("content") if isinstance(value, dict) else value
    if not isinstance(content, list) or not content:
        return None
    if not all(isinstance(c, dict) and "type" in c for c in content):
        return None
    return "\n".join(str(c.get("text", "")) for c in content if c.get("type") == "text")


def result_view(value: Any) -> dict[str, Any]:
    """`{"text": …, "json": …}` for a tool's result (see the module's docstring)."""
    parsed: Any = None
    if isinstance(value, str):
        text = value
        if text[:1] in "{[" and len(text) <= RESULT_TEXT_MAX:
            try:
                parsed = json.loads(text)
            except ValueError:
                parsed = None
    else:
        text = _mcp_text(value)
        if text is None:
            text = json.dumps(value, default=str)
            parsed = value
        elif isinstance(value, dict) and isinstance(value.get("structuredContent"), dict):
            parsed = value["structuredContent"]
        elif text[:1] in "{[" and len(text) <= RESULT_TEXT_MAX:
            try:
                parsed = json.loads(text)
            except ValueError:
                parsed = None
    return {"text": text[:RESULT_TEXT_MAX], "json": parsed}


def _rules_for(bundle: Bundle, req: pb.DecideRequest) -> list[CompiledRule]:
    return [r for p in bundle.candidates(req.tool.name) if p.outcome_rules and p.fits(req.agent, req.tool)
            for r in p.outcome_rules]


def outcome_labels(bundle: Bundle, req: pb.DecideRequest, result: Any) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """(the labels of the outcome rules that hold for this call and result, first seen first; the
    errors of those whose condition failed, `rule: message`). An erroring rule adds no label."""
    if bundle.outcome_env is None:
        return (), ()
    rules = _rules_for(bundle, req)
    if not rules:
        return (), ()
    view = result_view(result)
    data: dict[str, object] = {"agent": req.agent, "tool": req.tool, "request": req.request, "context": req.context,
                               "budget": {}, "call.source": call_source(),
                               "result.text": view["text"], "result.json": view["json"]}
    for name, items in bundle.lists.items():
        data[f"lists.{name}"] = dict(items) if isinstance(items, dict) else list(items)
    activation = bundle.outcome_env.Activation(data=data)  # type: ignore[attr-defined]
    labels: dict[str, None] = {}
    errors: list[str] = []
    for rule in rules:
        try:
            value = rule.program.eval(activation).value()
        except Exception as exc:  # noqa: BLE001 - cel-expr-python raises for cost/iteration limits
            errors.append(f"{rule.id}: evaluation failed: {exc}")
            continue
        if value is True:
            labels.update(dict.fromkeys(rule.labels))
        elif value is not False:
            errors.append(f"{rule.id}: {value if isinstance(value, str) else f'condition returned {value!r}'}")
    return tuple(labels), tuple(errors)


def request_of_record(row: Mapping[str, Any]) -> pb.DecideRequest:
    """The call a stored decision record describes (arguments as recorded: masked), for the outcome
    rules ReportOutcome runs on the server."""
    req = pb.DecideRequest()
    a = req.agent
    a.id, a.instance_id, a.owner, a.team = row["agent_id"], row["instance_id"], row["owner"], row["team"]
    a.workflow, a.model, a.session_id = row["workflow"], row["model"], row["session_id"]
    a.labels.update(json.loads(row.get("agent_labels") or "{}"))
    a.capabilities.extend(json.loads(row.get("agent_capabilities") or "[]"))
    req.tool.name, req.tool.server = row["tool_name"], row["tool_server"] or ""
    req.tool.args.update(json.loads(row.get("args") or "{}"))
    if row.get("risk_tier") is not None:
        req.tool.risk_tier = int(row["risk_tier"])
    req.request.id, req.request.environment = row.get("request_id") or "", row.get("environment") or ""
    req.context.update(json.loads(row.get("context") or "{}"))
    return req


def reported_labels(bundle: Bundle | None, row: Mapping[str, Any],
                    result: struct_pb2.Value) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """`outcome_labels` for ReportOutcome's `result` on the recorded call (the serving bundle's rules)."""
    if bundle is None or bundle.outcome_env is None:
        return (), ()
    return outcome_labels(bundle, request_of_record(row), json_format.MessageToDict(result))
