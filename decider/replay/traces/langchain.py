"""Reader for LangChain agent trajectories (README format C3): ToolEmu's `intermediate_steps` and
LangChain's `AgentExecutor(return_intermediate_steps=True)` output, one trajectory per record (a
JSON document, an array, or JSONL).

A step is `[action, observation]`. The action is ToolEmu's `[tool, tool_input, log]`, LangChain's
`{tool, tool_input, log}`, or its serialised form `{lc, type, id: [..., "AgentAction"], kwargs}`;
the final step is the answer (`{return_values: {output}, log}`), not a call.

Agents also write actions they never ran into that final answer, ReAct style
(`Action: GmailSendEmail` / `Action Input: {...}`): the run stopped, but the model meant the call,
and ToolEmu's risk labels count it as done. Those are read too, as calls with `from_text=True`, after
the trajectory's executed calls; one identical (tool, server, arguments) to a call the trajectory
already made carries that call's `source` in `repeats` (replay does not count it twice). A trajectory is one session; the record's `input` (ToolEmu's
`User Instruction`) is `context.user_request`.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from typing import Any

from decider.replay.traces._parse import parse_arguments, split_mcp_name, text_or_none
from decider.replay.traces._records import ObjOrLines, iter_records
from decider.replay.traces._user_request import with_user_request
from decider.replay.traces.errors import TraceFormatError
from decider.replay.traces.model import TraceCall, blank_fields, call_from_fields

__all__ = ["read_langchain", "looks_like_langchain", "text_actions"]

FORMAT = "langchain"
# `Action: X` then `Action Input: ...` on the next line, tolerating markdown emphasis and bullets.
_ACTION = re.compile(r"^[ \t>*#-]*Action[ \t*]*:[ \t*]*(?P<name>[^\n]*?)[ \t*`]*\n"
                     r"[ \t>*#-]*Action[ \t]+Input[ \t*]*:[ \t*]*", re.M)
# Where an action input written as text ends: the next ReAct keyword at the start of a line.
_NEXT = re.compile(r"^[ \t>*#-]*(?:Observation|Thought|Action|Final Answer)[ \t*]*:", re.M)
_FENCE = re.compile(r"^```[a-zA-Z]*\s*|\s*```$")
_TEXT_MAX = 1_000_000  # a final answer longer than this is not searched for actions
_decoder = json.JSONDecoder()


def looks_like_langchain(record: object) -> bool:
    """Content sniffing for `read_traces`: a record with a list of `intermediate_steps`."""
    if isinstance(record, list):
        return bool(record) and looks_like_langchain(record[0])
    return isinstance(record, dict) and isinstance(record.get("intermediate_steps"), list)


def _action(step: object) -> tuple[str, object, object] | None:
    """(tool, tool_input, log) of a step's action, or None for the final answer / anything else."""
    action = step[0] if isinstance(step, list) and step else step
    if isinstance(action, list) and action and isinstance(action[0], str):
        return action[0], action[1] if len(action) > 1 else None, action[2] if len(action) > 2 else None
    if isinstance(action, dict):
        body = action.get("kwargs") if isinstance(action.get("kwargs"), dict) and "lc" in action else action
        if isinstance(body.get("tool"), str):
            return body["tool"], body.get("tool_input"), body.get("log")
    return None


def _final_text(record: dict[str, Any], steps: list[Any]) -> tuple[str | None, str]:
    """The final answer's text and where it is: the last step's log (the whole last model output),
    else its `return_values.output`, else the record's `output`."""
    for i in range(len(steps) - 1, -1, -1):
        step = steps[i]
        finish = step[0] if isinstance(step, list) and step else step
        if not isinstance(finish, dict):
            continue
        body = finish.get("kwargs") if isinstance(finish.get("kwargs"), dict) and "lc" in finish else finish
        if "return_values" not in body:
            continue
        if isinstance(body.get("log"), str):
            return body["log"], f"intermediate_steps[{i}].log"
        values = body.get("return_values")
        if isinstance(values, dict) and isinstance(values.get("output"), str):
            return values["output"], f"intermediate_steps[{i}].return_values.output"
        break
    output = record.get("output")
    return (output, "output") if isinstance(output, str) else (None, "")


def text_actions(text: str) -> list[tuple[str, str]]:
    """The `(tool, input text)` pairs written ReAct style in a text, in order. The input is the
    JSON value that follows `Action Input:` when there is one, else the text up to the next
    `Observation:` / `Thought:` / `Action:` / `Final Answer:` line."""
    if len(text) > _TEXT_MAX:
        return []
    found: list[tuple[str, str]] = []
    for m in _ACTION.finditer(text):
        name = m.group("name").strip().strip("`'\"*").strip()
        rest = text[m.end():]
        stop = _NEXT.search(rest)
        segment = _FENCE.sub("", (rest[:stop.start()] if stop else rest).strip()).strip()
        try:
            _, end = _decoder.raw_decode(segment)
            segment = segment[:end]
        except ValueError:
            pass  # not JSON: the whole segment, for parse_arguments to try (or to report)
        if name:
            found.append((name, segment))
    return found


def _fields(name: str, raw: object, run: dict[str, Any], source: str) -> dict[str, Any]:
    server, tool = split_mcp_name(name)
    args, why = parse_arguments(raw)
    kw = blank_fields()
    kw["tool_name"], kw["server"], kw["arguments"], kw["raw_arguments"] = tool, server, args, raw
    kw["indeterminate"] = why
    kw["model"], kw["session_id"], kw["context"] = run["model"], run["session_id"], run["context"]
    kw["source"], kw["format"] = source, FORMAT
    return kw


def _trajectory(record: dict[str, Any], where: str, model: str | None) -> Iterator[TraceCall]:
    steps: list[Any] = record["intermediate_steps"]
    case = record.get("case") if isinstance(record.get("case"), dict) else {}
    session = record.get("case_idx")
    for key in ("session_id", "run_id", "id"):
        if session is None:
            session = record.get(key)
    request = text_or_none(record.get("input")) or text_or_none(case.get("User Instruction"))
    run = {"model": text_or_none(record.get("model")) or model,
           # A trajectory is a session; without an id of its own it is named by where it is.
           "session_id": text_or_none(session) or where,
           "context": with_user_request(None, request.strip() if request else None)}
    made: dict[str, str] = {}   # the executed calls of this trajectory (one turn): identity -> source
    for i, step in enumerate(steps):
        action = _action(step)
        if action is None:
            continue
        kw = _fields(action[0], action[1], run, f"{where}.intermediate_steps[{i}]")
        observation = step[1] if isinstance(step, list) and len(step) > 1 else None
        if isinstance(observation, list) and observation:
            observation = observation[0]
        kw["result"] = observation
        if kw["arguments"] is not None:
            made.setdefault(_identity(kw), kw["source"])
        yield call_from_fields(kw)
    text, at = _final_text(record, steps)
    for k, (name, raw) in enumerate(text_actions(text) if text else ()):
        kw = _fields(name, raw, run, f"{where}.{at} action {k}")
        kw["from_text"] = True
        if kw["arguments"] is not None:
            kw["repeats"] = made.get(_identity(kw), "")
        yield call_from_fields(kw)


def _identity(kw: dict[str, Any]) -> str:
    """What makes two calls the same call: tool, server and arguments (key order aside)."""
    return json.dumps([kw["tool_name"], kw["server"], kw["arguments"]], sort_keys=True, default=str)


def read_langchain(obj_or_lines: ObjOrLines, source: str, *, model: str | None = None) -> Iterator[TraceCall]:
    """Tool calls of LangChain / ToolEmu trajectories; `model` is used where records name none
    (ToolEmu: the file name says which agent model ran)."""
    for record, where in iter_records(obj_or_lines, source):
        if not isinstance(record, dict) or not isinstance(record.get("intermediate_steps"), list):
            raise TraceFormatError(where, "not a LangChain trajectory (no `intermediate_steps` list)")
        yield from _trajectory(record, where, model)
