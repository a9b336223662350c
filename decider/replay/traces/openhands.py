"""Reader for the OpenHands event stream (README format C1): JSONL, one run per line.

A call is an event with `source == "agent"`, an `action` and `tool_call_metadata`. The arguments
are the ones the model sent (`model_response...tool_calls[k].function.arguments`, a JSON string),
not OpenHands' normalised `args`, because a gateway sees the model's call; `args` is the fallback.
The result is the observation whose `cause` is the action's id.

Events that are not calls are skipped, including the `error` observations OpenHands writes when
it rejects a malformed tool call before it becomes an action: those carry no tool name or
arguments to read.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from decider.replay.traces._parse import parse_arguments, parse_time, split_mcp_name, text_or_none, to_float, to_int
from decider.replay.traces._records import ObjOrLines, iter_records
from decider.replay.traces._user_request import first_user_event, with_user_request
from decider.replay.traces.errors import TraceFormatError
from decider.replay.traces.model import TraceCall, new_call

__all__ = ["read_openhands", "looks_like_openhands"]

FORMAT = "openhands"


def _is_event(e: object) -> bool:
    return isinstance(e, dict) and ("action" in e or "observation" in e) and "source" in e


def looks_like_openhands(record: object) -> bool:
    """A run `{history[events], metadata, ...}`, or one event of a bare event stream."""
    if isinstance(record, list):
        return bool(record) and looks_like_openhands(record[0])
    if not isinstance(record, dict):
        return False
    history = record.get("history")
    return (isinstance(history, list) and any(_is_event(e) for e in history[:5])) or _is_event(record)


def _model_arguments(tcm: dict[str, Any]) -> tuple[bool, object]:
    """The raw arguments of this call inside the model response: (found, raw)."""
    response = tcm.get("model_response")
    choices = response.get("choices") if isinstance(response, dict) else None
    call_id = tcm.get("tool_call_id")
    for choice in choices if isinstance(choices, list) else ():
        message = choice.get("message") if isinstance(choice, dict) else None
        tool_calls = message.get("tool_calls") if isinstance(message, dict) else None
        for tc in tool_calls if isinstance(tool_calls, list) else ():
            if isinstance(tc, dict) and tc.get("id") == call_id and isinstance(tc.get("function"), dict):
                return True, tc["function"].get("arguments")
    return False, None


def _observation_result(obs: dict[str, Any]) -> tuple[object, bool]:
    if obs.get("observation") == "error":
        return obs.get("content"), True
    if "success" in obs:
        return obs.get("content"), not obs["success"]
    extras = obs.get("extras")
    meta = extras.get("metadata") if isinstance(extras, dict) else None
    exit_code = meta.get("exit_code") if isinstance(meta, dict) else None
    return obs.get("content"), isinstance(exit_code, int) and exit_code not in (0, -1)


def _run_calls(run: dict[str, Any], events: list[Any], base: str | list[str]) -> Iterator[TraceCall]:
    metadata = run.get("metadata") if isinstance(run.get("metadata"), dict) else {}
    llm_config = metadata.get("llm_config") if isinstance(metadata.get("llm_config"), dict) else {}
    agent = text_or_none(metadata.get("agent_class"))
    run_model = text_or_none(llm_config.get("model"))
    session_id = text_or_none(run.get("instance_id"))
    # SPEC §10: a trajectory is a session; without an instance id, its place in the input names it.
    trajectory = base if isinstance(base, str) else (base[0].rsplit(":", 1)[0] if base else "")
    # SPEC §10: the user's first message (the task) is `context.user_request`.
    context = with_user_request(None, first_user_event(events) or text_or_none(run.get("instruction")))
    # Observations answer actions by `cause`; index them once so pairing stays linear.
    answers: dict[Any, dict[str, Any]] = {}
    for e in events:
        if isinstance(e, dict) and "observation" in e and e.get("cause") is not None:
            answers.setdefault(e["cause"], e)
    counted_responses: set[str] = set()
    last_cost = 0.0
    for i, e in enumerate(events):
        if not (isinstance(e, dict) and e.get("source") == "agent" and "action" in e):
            continue
        tcm = e.get("tool_call_metadata")
        if not isinstance(tcm, dict):
            continue
        found, raw = _model_arguments(tcm)
        if not found:
            raw = e.get("args")
        args, why = parse_arguments(raw)
        server, name = split_mcp_name(text_or_none(tcm.get("function_name")) or "")
        response = tcm.get("model_response") if isinstance(tcm.get("model_response"), dict) else {}
        usage = response.get("usage") if isinstance(response.get("usage"), dict) else {}
        # Several calls can come from one model response (`total_calls_in_response`): its tokens
        # and the cost it added are counted on the first of them only.
        response_id = text_or_none(response.get("id"))
        first = response_id is None or response_id not in counted_responses
        if response_id is not None:
            counted_responses.add(response_id)
        metrics = e.get("llm_metrics") if isinstance(e.get("llm_metrics"), dict) else {}
        accumulated = to_float(metrics.get("accumulated_cost"))
        cost = None
        if accumulated is not None:
            cost, last_cost = (round(max(accumulated - last_cost, 0.0), 12) if first else 0.0), accumulated
        obs = answers.get(e.get("id"))
        result, is_error = _observation_result(obs) if obs is not None else (None, None)
        args_in = e.get("args") if isinstance(e.get("args"), dict) else {}
        label = {k: args_in[k] for k in ("confirmation_state", "security_risk") if args_in.get(k) is not None}
        yield new_call({
            "tool_name": name, "arguments": args, "raw_arguments": raw,
            "indeterminate": why if name else "tool name missing" + (f"; {why}" if why else ""),
            "call_id": text_or_none(tcm.get("tool_call_id")), "server": server, "agent": agent,
            "model": text_or_none(response.get("model")) or run_model, "session_id": session_id,
            "trace_id": None if session_id else trajectory,
            "tokens_in": to_int(usage.get("prompt_tokens")) if first else 0,
            "tokens_out": to_int(usage.get("completion_tokens")) if first else 0,
            "cost": cost, "started_at": parse_time(e.get("timestamp")),
            "ended_at": parse_time(obs.get("timestamp")) if obs is not None else None,
            "result": result, "is_error": is_error, "label": label or None, "context": context,
            "source": base[i] if isinstance(base, list) else f"{base}[{i}]", "format": FORMAT,
        })


def read_openhands(obj_or_lines: ObjOrLines, source: str) -> Iterator[TraceCall]:
    """Tool calls of OpenHands runs (`output.jsonl` of the evaluation harness: one run per line),
    or of one bare event stream (a JSON array, or JSONL, of events), read as a single run."""
    if isinstance(obj_or_lines, list) and obj_or_lines and _is_event(obj_or_lines[0]):
        yield from _run_calls({}, obj_or_lines, source)
        return
    events: list[Any] = []
    event_wheres: list[str] = []
    for record, where in iter_records(obj_or_lines, source):
        if isinstance(record, dict) and isinstance(record.get("history"), list):
            yield from _run_calls(record, record["history"], f"{where}.history")
        elif _is_event(record):
            events.append(record)
            event_wheres.append(where)
        else:
            raise TraceFormatError(where, "not an OpenHands run (no `history` list of events) or event")
    if events:
        yield from _run_calls({}, events, event_wheres)
