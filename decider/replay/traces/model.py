"""The normalised tool call that every trace reader yields.

Readers differ in where they find each field; `decider replay` and `decider diff` only ever see
`TraceCall`. A call whose arguments could not be read is still yielded, with `arguments=None`,
the file's value in `raw_arguments` and the reason in `indeterminate`: replay must report it,
never drop it.
"""

from __future__ import annotations

from dataclasses import KW_ONLY, dataclass, fields
from datetime import datetime
from typing import Any

__all__ = ["TraceCall", "new_call", "blank_fields", "call_from_fields"]


@dataclass(frozen=True)
class TraceCall:
    """One tool call as recorded in a trace.

    `tool_name` and `server` are the names a gateway would send to `Decide` (an MCP name
    `mcp__github__create_issue` becomes tool `create_issue` on server `github`).
    `source` says where the call is (`runs.json[12].traj[5].tool_calls[0]`, `log.jsonl:40`) and
    `format` names the reader that produced it.
    """

    tool_name: str
    _: KW_ONLY
    arguments: dict[str, Any] | None = None
    raw_arguments: object = None
    indeterminate: str | None = None
    call_id: str | None = None
    server: str | None = None
    agent: str | None = None
    # The complete agent identity, in decider's `Agent` field names (id, instance_id, owner, team,
    # workflow, model, session_id, labels, capabilities), for formats that record one: decider's own
    # log. When set it is the whole identity; otherwise `agent`, `model`, `session_id` are all a
    # trace knows.
    agent_fields: dict[str, Any] | None = None
    model: str | None = None
    session_id: str | None = None
    trace_id: str | None = None
    tokens_in: int | None = None
    tokens_out: int | None = None
    cost: float | None = None
    started_at: datetime | None = None
    ended_at: datetime | None = None
    result: object = None
    is_error: bool | None = None
    # Ground truth recorded with the run, when the file has one: tau-bench `reward`, Langfuse
    # scores, OpenHands confirmation state, the outcome decider recorded for this call.
    label: dict[str, Any] | None = None
    # Free-form facts about the call's situation (the end user, the task), `context` in CEL.
    context: dict[str, Any] | None = None
    # Request fields only decider's own log carries, so a replay can resend the same request.
    risk_tier: int | None = None
    request_fields: dict[str, Any] | None = None
    # The call was written as text ("Action: X / Action Input: {...}") in the agent's final answer,
    # not executed as a step (LangChain / ToolEmu): the model meant it; replay reports it as such.
    from_text: bool = False
    # A text action identical (tool, server, arguments) to a call already made in the same turn:
    # that call's `source`. Replay reports it as a repeat and does not decide it again.
    repeats: str = ""
    source: str = ""
    format: str = ""


_DEFAULTS: dict[str, Any] = {f.name: f.default for f in fields(TraceCall)}


def new_call(values: dict[str, Any]) -> TraceCall:
    """Build a TraceCall from a dict of its fields, for readers.

    The generated `__init__` of a frozen dataclass assigns each of its 24 fields through
    `object.__setattr__` (~7 µs a call); filling the instance dict directly costs ~1 µs, which
    matters at replay's 20,000 calls/s. Keys must be field names (the readers' tests check).
    """
    call = object.__new__(TraceCall)
    object.__setattr__(call, "__dict__", {**_DEFAULTS, **values})
    return call


def blank_fields() -> dict[str, Any]:
    """Every TraceCall field at its default, for a reader to fill in and pass to `call_from_fields`."""
    return _DEFAULTS.copy()


def call_from_fields(values: dict[str, Any]) -> TraceCall:
    """`new_call` for a dict that already holds every field (from `blank_fields`): the dict becomes
    the call's own, without the merge with the defaults (a third of `new_call`'s cost)."""
    call = object.__new__(TraceCall)
    object.__setattr__(call, "__dict__", values)
    return call
