"""Replay recorded tool calls through a bundle, offline: the engine the server uses, no server.

`decider replay` and `decider diff` are thin shells over this module. A trace call becomes the
DecideRequest a gateway would have sent; identity the trace lacks comes from a `Mapping`. A call
whose arguments are absent or unparseable is reported INDETERMINATE with the reader's reason and
is never evaluated, so nothing is silently allowed.

Stateful controls are simulated (engine/memory.py), call after call in trace order, with the
effects the server would apply: budgets accumulate the calls' costs (from given starting usage;
an actual cost in the trace settles the call), approvals open, are consumed once approved, expire
and reject; kill switches are given with the time they were in force. A decider log carries the
approvers' resolutions, so replaying a server's own export decides as the server did.
"""

from __future__ import annotations

import gc
from collections import Counter
from collections.abc import Iterable, Iterator
from collections.abc import Mapping as MappingT
from dataclasses import dataclass, field
from datetime import datetime, timezone
from functools import partial
from pathlib import Path
from typing import Any

import yaml
from google.protobuf import struct_pb2

from decider.bundle.compile import Bundle
from decider.engine.call_source import TEXT, source
from decider.engine.decide import Decision, decide
from decider.engine.memory import MemoryState, Resolution
from decider.engine.outcome import outcome_labels
from decider.engine.procedure import intake
from decider.engine.state import EMPTY_STATE
from decider.errors import DeciderError, InvalidRequest
from decider.replay.parallel import map_forked
from decider.replay.traces import TraceCall
from decider.replay.traces._parse import parse_time
from decider.v1 import decider_pb2 as pb

__all__ = ["IdentityMapping", "Replayed", "ReplayReport", "SessionCounts", "call_to_request", "replay", "diff",
           "DiffReport", "session_key"]

INDETERMINATE = "INDETERMINATE"
# A text action identical to a call already made in the same turn (TraceCall.repeats): reported,
# not decided again, and not counted with the calls.
DUPLICATE = "DUPLICATE"
UNKNOWN_AGENT = "unknown-agent"
_AGENT_FIELDS = ("id", "instance_id", "owner", "team", "workflow", "model", "session_id")


@dataclass(frozen=True, slots=True)
class IdentityMapping:
    """Identity and request facts to fill in where a trace has none (the trace wins where it has one)."""

    agent: MappingT[str, Any] = field(default_factory=dict)       # id, team, owner, workflow, model, …
    environment: str = ""
    context: MappingT[str, Any] = field(default_factory=dict)

    @staticmethod
    def from_file(path: str | Path) -> IdentityMapping:
        data = yaml.safe_load(Path(path).read_text()) or {}
        unknown = set(data) - {"agent", "environment", "context"}
        if unknown:
            raise DeciderError(f"{path}: unknown mapping keys {sorted(unknown)}; use agent, environment, context")
        agent = data.get("agent") or {}
        bad = set(agent) - {*_AGENT_FIELDS, "labels", "capabilities"}
        if bad:
            raise DeciderError(f"{path}: unknown agent fields {sorted(bad)}")
        return IdentityMapping(agent=agent, environment=str(data.get("environment", "")),
                               context=data.get("context") or {})

    def merged(self, **overrides: Any) -> IdentityMapping:
        agent = dict(self.agent)
        agent.update({k: v for k, v in overrides.items() if v})
        return IdentityMapping(agent, self.environment, self.context)


@dataclass(frozen=True, slots=True)
class Replayed:
    call: TraceCall
    outcome: str                       # ALLOW | DENY | REQUIRE_APPROVAL | INDETERMINATE
    rule: str                          # deciding rule ("" when indeterminate)
    reason: str                        # the deciding reason, or why it is indeterminate
    matched: tuple[str, ...] = ()
    labels: tuple[str, ...] = ()       # the labels the call's record would carry (rules' `labels:`)


def _set_value(v: struct_pb2.Value, x: Any) -> None:
    if x is None:
        v.null_value = struct_pb2.NULL_VALUE
    elif isinstance(x, bool):
        v.bool_value = x
    elif isinstance(x, (int, float)):
        v.number_value = x
    elif isinstance(x, str):
        v.string_value = x
    elif isinstance(x, dict):
        _fill_struct(v.struct_value, x)
    elif isinstance(x, (list, tuple)):
        lv = v.list_value
        lv.SetInParent()
        for item in x:
            _set_value(lv.values.add(), item)
    else:
        v.string_value = str(x)


def wire_server(call: TraceCall) -> str:
    """`tool.server` as the enforcing surface sent it. decider's own log recorded it as sent; every
    other reader names an MCP server as the trace does (`github` from `mcp__github__create_issue`,
    an MCP `serverInfo.name`), which the gateway and the Claude Code hook send as `mcp://github`
    (SPEC §8), so a policy matching `servers: ["mcp://github"]` decides the replayed call as it
    decided the live one."""
    server = call.server or ""
    if not server or call.format == "decider" or "://" in server:
        return server
    return f"mcp://{server}"


def _fill_struct(s: struct_pb2.Struct, d: MappingT[str, Any]) -> None:
    s.SetInParent()
    fields = s.fields
    for k, x in d.items():
        _set_value(fields[str(k)], x)


def call_to_request(call: TraceCall, mapping: IdentityMapping) -> pb.DecideRequest:
    """The DecideRequest a gateway would have sent for this call (arguments must be present)."""
    req = pb.DecideRequest()
    a = req.agent
    known = call.agent_fields
    fallback = mapping.agent
    if known:
        for name in _AGENT_FIELDS:
            value = known.get(name) or fallback.get(name)
            if value:
                setattr(a, name, str(value))
    else:
        # The common case: the trace names at most the agent, model and session.
        a.id = call.agent or fallback.get("id") or UNKNOWN_AGENT
        model = call.model or fallback.get("model")
        if model:
            a.model = model
        session = call.session_id or fallback.get("session_id")
        if session:
            a.session_id = session
        for name in ("instance_id", "owner", "team", "workflow"):
            value = fallback.get(name)
            if value:
                setattr(a, name, str(value))
    if not a.id:
        a.id = UNKNOWN_AGENT
    labels = (known or fallback).get("labels") or fallback.get("labels")
    if labels:
        a.labels.update({str(k): str(v) for k, v in labels.items()})
    caps = (known or fallback).get("capabilities") or fallback.get("capabilities")
    if caps:
        a.capabilities.extend(str(c) for c in caps)
    t = req.tool
    t.name = call.tool_name
    if call.server:
        t.server = wire_server(call)
    if call.call_id:
        t.call_id = str(call.call_id)
    if call.risk_tier is not None:
        t.risk_tier = call.risk_tier
    _fill_struct(t.args, call.arguments or {})
    rf = call.request_fields
    r = req.request
    env = (rf.get("environment") if rf else None) or mapping.environment
    if env:
        r.environment = str(env)
    if rf and rf.get("estimated_cost"):
        r.estimated_cost = float(rf["estimated_cost"])
    if call.started_at is not None:
        r.time.FromDatetime(call.started_at)
    if mapping.context or call.context:
        _fill_struct(req.context, {**mapping.context, **(call.context or {})})
    return req


Outcome = tuple[str, str, str, tuple[str, ...], tuple[str, ...]]  # outcome, rule, reason, matched rules, labels


def _repeat(call: TraceCall) -> Outcome:
    return DUPLICATE, "", f"written as text after the same call was made ({call.repeats}): not decided again", (), ()


def _outcome(bundle: Bundle, call: TraceCall, mapping: IdentityMapping) -> Outcome:
    if call.indeterminate or call.arguments is None:
        return INDETERMINATE, "", call.indeterminate or "the call's arguments are absent", (), ()
    if not call.tool_name:
        return INDETERMINATE, "", "the call has no tool name", (), ()
    if call.repeats:
        return _repeat(call)
    req = call_to_request(call, mapping)
    try:
        intake(req)
    except InvalidRequest as e:
        return _refused(e)
    if call.from_text:
        with source(TEXT):   # `call.source` (SPEC §10 round two)
            d: Decision = decide(bundle, req, EMPTY_STATE)
    else:
        d = decide(bundle, req, EMPTY_STATE)
    return (d.outcome_name, d.deciding_rule, d.reasons[0].text if d.reasons else "", d.matched_rules,
            _with_outcome_labels(bundle, call, req, d, None, ""))


def _refused(e: InvalidRequest) -> Outcome:
    """A call the server would refuse before deciding it: not a decision, so INDETERMINATE, with
    the server's error as the reason."""
    return INDETERMINATE, "", f"INVALID_ARGUMENT {e} (the server refuses this request)", (), ()


_EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)


def _simulated(bundle: Bundle, call: TraceCall, mapping: IdentityMapping, sim: MemoryState) -> Outcome:
    """The call decided on the simulated state, its effects applied there."""
    if call.indeterminate or call.arguments is None:
        return INDETERMINATE, "", call.indeterminate or "the call's arguments are absent", (), ()
    if not call.tool_name:
        return INDETERMINATE, "", "the call has no tool name", (), ()
    if call.repeats:
        return _repeat(call)
    if call.from_text:
        with source(TEXT):   # `call.source` (SPEC §10 round two)
            return _decided(bundle, call, mapping, sim)
    return _decided(bundle, call, mapping, sim)


def _decided(bundle: Bundle, call: TraceCall, mapping: IdentityMapping, sim: MemoryState) -> Outcome:
    req = call_to_request(call, mapping)
    now = call.started_at or _EPOCH
    if now.tzinfo is None:
        now = now.replace(tzinfo=timezone.utc)
    label = call.label
    # The call's session (SPEC §10: a trajectory / trace / conversation is a session).
    key = session_key(call)
    session = "" if key == NO_SESSION else key
    try:
        if not label:   # most traces: nothing recorded beyond the call itself
            d = sim.decide(bundle, req, now, session=session)
            return (d.outcome_name, d.deciding_rule, d.reasons[0].text if d.reasons else "", d.matched_rules,
                    _with_outcome_labels(bundle, call, req, d, sim, session))
        recorded_id = str(label.get("decision_id") or "")
        d = sim.decide(bundle, req, now, recorded_id, session=session)
    except InvalidRequest as e:
        return _refused(e)
    if label.get("approval_state") and label.get("outcome") == "REQUIRE_APPROVAL":
        _learn_resolution(sim, label, recorded_id)
    actual = label.get("actual_cost")
    if actual is not None and d.outcome == pb.ALLOW:
        sim.settle(sim.last_id, float(actual), bundle, req, now)
    if session and bundle.reads_session and label.get("outcome_status"):
        # A decider log carries what ReportOutcome said: later calls of the session see it.
        sim.report(session, str(label["outcome_status"]), tuple(label.get("labels") or ()))
    return (d.outcome_name, d.deciding_rule, d.reasons[0].text if d.reasons else "", d.matched_rules,
            _with_outcome_labels(bundle, call, req, d, sim, session))


def _with_outcome_labels(bundle: Bundle, call: TraceCall, req: pb.DecideRequest, d: Decision,
                         sim: MemoryState | None, session: str) -> tuple[str, ...]:
    """The call's labels plus those its outcome rules give on the result the trace recorded (SPEC §10
    round two), as ReportOutcome would add them: only for a call that ran (allowed), and seen by the
    session's later calls."""
    if bundle.outcome_env is None or call.result is None or d.outcome != pb.ALLOW:
        return d.labels
    added, _ = outcome_labels(bundle, req, call.result)
    if not added:
        return d.labels
    if sim is not None and session and bundle.reads_session:
        sim.report(session, "", added)
    return tuple(dict.fromkeys([*d.labels, *added]))


def _learn_resolution(sim: MemoryState, label: dict[str, Any], decision_id: str) -> None:
    """A recorded approval's resolution (a decider log carries it) applies from when it was made."""
    state = label.get("approval_state")
    if not decision_id or state not in ("approved", "consumed", "rejected"):
        return
    at = parse_time(label.get("resolved_at"))
    if at is None:
        return
    if at.tzinfo is None:
        at = at.replace(tzinfo=timezone.utc)
    sim.resolve(decision_id, Resolution("rejected" if state == "rejected" else "approved", at,
                                        str(label.get("resolved_by") or ""), str(label.get("comment") or "")))


def _evaluate(bundle: Bundle, call: TraceCall, mapping: IdentityMapping) -> Replayed:
    return Replayed(call, *_outcome(bundle, call, mapping))


def stateless(bundle: Bundle, sim: MemoryState | None) -> bool:
    """Would the simulation never change an outcome? Then calls may be decided independently
    (in parallel): no budgets, no kill switches given, and no rule that asks for approval."""
    if sim is not None and (sim.kill_switches or sim.start_usage or sim.assume != "pending"):
        return False
    if bundle.reads_session:
        return False   # each call's session history is the earlier calls' decisions
    return not bundle.budgets and bundle.default != "require_approval" and all(
        r.effect != "require_approval" for r in bundle.rules)


def replay(bundle: Bundle, calls: Iterable[TraceCall], mapping: IdentityMapping | None = None, *,
           workers: int = 1, state: MemoryState | None = None) -> Iterator[Replayed]:
    """Every call's outcome, in input order, on a simulated state (`state`, else an empty one).

    `workers` > 1 evaluates in that many forked processes (replay_parallel.py), a window of calls
    at a time: the same decisions, in the same order, sooner on a machine with the cores for it.
    Only when no state can change an outcome (`stateless`): otherwise the calls are decided in
    order, in this process, because each one's effects are the next one's state.
    The process must not be running other threads then (fork copies only the calling thread).
    """
    m = mapping or IdentityMapping()
    sim = state if state is not None else MemoryState()
    if not stateless(bundle, state):
        gc.freeze()
        try:
            for call in calls:
                yield Replayed(call, *_simulated(bundle, call, m, sim))
        finally:
            gc.unfreeze()
        return
    if workers > 1:
        for call, out in map_forked(partial(_outcome, bundle, mapping=m), calls, workers):
            yield Replayed(call, *out)
        return
    # What is alive now (the calls already read, the bundle) outlives the loop: freeze it so the
    # collector's walks, triggered by the loop's own allocations, skip it (~5-8 % a call measured;
    # see traces/_gc.py). Freezing never changes what is freed; unfrozen when the loop ends.
    gc.freeze()
    try:
        for call in calls:
            yield _evaluate(bundle, call, m)
    finally:
        gc.unfreeze()


NO_SESSION = "(no session)"


def session_key(call: TraceCall) -> str:
    """The session a call belongs to (SPEC §10: a trajectory / trace / conversation is a session):
    the trace's session id, else its trace id. The same id in two files is one session."""
    return call.session_id or call.trace_id or NO_SESSION


@dataclass(slots=True)
class SessionCounts:
    """One session's calls by outcome, in the per-session view of a replay."""

    calls: int = 0
    by_outcome: Counter[str] = field(default_factory=Counter)
    from_text: int = 0
    first_source: str = ""
    labels: dict[str, None] = field(default_factory=dict)   # the session's labels, first seen first

    @property
    def flagged(self) -> bool:
        return bool(self.by_outcome["DENY"] or self.by_outcome["REQUIRE_APPROVAL"])


@dataclass(slots=True)
class ReplayReport:
    total: int = 0
    by_outcome: Counter[str] = field(default_factory=Counter)
    by_tool: dict[str, Counter[str]] = field(default_factory=dict)
    by_rule: Counter[str] = field(default_factory=Counter)
    flagged: list[Replayed] = field(default_factory=list)     # deny, approval and indeterminate calls
    sessions: dict[str, SessionCounts] = field(default_factory=dict)   # in first-seen order
    from_text: int = 0                # calls written as text in a final answer (TraceCall.from_text)
    duplicates: int = 0               # text actions repeating a call already made (not in the counts above)

    def sessions_with(self, outcome: str) -> int:
        return sum(1 for s in self.sessions.values() if s.by_outcome[outcome])

    def flagged_sessions(self) -> list[tuple[str, SessionCounts]]:
        """Sessions with any DENY or REQUIRE_APPROVAL: most denials first, then most approvals."""
        found = [(k, s) for k, s in self.sessions.items() if s.flagged]
        return sorted(found, key=lambda kv: (-kv[1].by_outcome["DENY"], -kv[1].by_outcome["REQUIRE_APPROVAL"]))

    def add(self, r: Replayed) -> None:
        if r.outcome == DUPLICATE:
            self.duplicates += 1
            return
        self.total += 1
        key = session_key(r.call)
        session = self.sessions.get(key)
        if session is None:
            session = self.sessions[key] = SessionCounts(first_source=r.call.source)
        session.calls += 1
        session.by_outcome[r.outcome] += 1
        for label in r.labels:
            session.labels[label] = None
        if r.call.from_text:
            session.from_text += 1
            self.from_text += 1
        self.by_outcome[r.outcome] += 1
        per_tool = self.by_tool.get(r.call.tool_name)
        if per_tool is None:  # not setdefault: that builds a Counter for every call
            per_tool = self.by_tool[r.call.tool_name] = Counter()
        per_tool[r.outcome] += 1
        if r.rule:
            self.by_rule[r.rule] += 1
        if r.outcome != "ALLOW":
            self.flagged.append(r)


@dataclass(frozen=True, slots=True)
class Change:
    call: TraceCall
    old: Replayed
    new: Replayed


@dataclass(slots=True)
class DiffReport:
    total: int = 0
    changes: list[Change] = field(default_factory=list)

    def groups(self) -> dict[tuple[str, str], list[Change]]:
        out: dict[tuple[str, str], list[Change]] = {}
        for c in self.changes:
            out.setdefault((c.old.outcome, c.new.outcome), []).append(c)
        return dict(sorted(out.items(), key=lambda kv: -len(kv[1])))


def diff(old: Bundle, new: Bundle, calls: Iterable[TraceCall], mapping: IdentityMapping | None = None) -> DiffReport:
    """Every call whose outcome or deciding rule differs between two bundles (each bundle on its
    own simulated state: a budget one bundle exhausts need not be exhausted under the other)."""
    m = mapping or IdentityMapping()
    report = DiffReport()
    sim_old, sim_new = MemoryState(), MemoryState()
    for call in calls:
        report.total += 1
        a = Replayed(call, *_simulated(old, call, m, sim_old))
        b = Replayed(call, *_simulated(new, call, m, sim_new))
        if (a.outcome, a.rule) != (b.outcome, b.rule):
            report.changes.append(Change(call, a, b))
    return report
