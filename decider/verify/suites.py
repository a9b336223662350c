"""Policy unit tests (`decider test`): YAML cases with expected outcomes, run through the engine.

A suite file (`*_test.yaml`, beside the policies or in its own folder):

    apiVersion: decider/v1
    kind: TestSuite
    metadata: {name: payments}
    fixtures:
      agents:  {refund-bot: {id: refund-bot, team: finance, model: gpt-5}}
      tools:   {refund: {name: payments.refund, server: "mcp://billing"}}
    cases:
      - name: big refunds need a finance approver
        agent: refund-bot              # a fixture name, or an inline mapping
        tool: refund                   # a fixture name, a tool name, or an inline mapping
        args: {amount: 2500}
        request: {environment: production, estimated_cost: 5.0, time: "2026-01-01T09:00:00Z"}
        context: {ticket: FIN-1}
        state:                         # server-side state the decision sees (means what it means on the server)
          budgets: {team: {spent: 480.0}}
          kill_switches: [{scope: team, value: finance}]
          approval: approved           # the approval bound to this exact call: approved | pending | rejected | expired
        expect:
          outcome: require_approval    # allow | deny | require_approval
          rule: refund-needs-approval-above-1000    # optional: the deciding rule
          reason: finance approver     # optional: a substring of the deciding reason

The same `engine.decide` as the server decides every case, on a state snapshot built from `state:`,
so a case means exactly what the server would do: `approval: approved` → ALLOW `approved` (once),
`pending` → REQUIRE_APPROVAL (the pending decision), `rejected` → DENY `rejected` (a rejection binds
the identical call until the approval's ttl), `expired` → REQUIRE_APPROVAL (a new approval); a cost
that does not fit a budget (`spent + reserved + estimated_cost > limit`) → DENY `budget_exceeded`.
Coverage says which rules decided at least one case, which matched but were always overridden,
and which never matched.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from decider.bundle.compile import Bundle, CompiledRule
from decider.cel.env import environment
from decider.engine.budgets import applicable_budgets, budget_views
from decider.engine.call_source import source as call_source
from decider.engine.decide import Decision, Reason, decide
from decider.engine.identity import identity_of
from decider.engine.memory import MemoryState, TimedKillSwitch
from decider.engine.outcome import outcome_labels
from decider.engine.procedure import intake
from decider.engine.state import KILL_SCOPES, ApprovalView, BudgetUsage, KillSwitch, State
from decider.errors import InvalidRequest, PolicyLoadError, SourceError
from decider.policy.loader import _compose_all, _mark, _to_python, locate  # shared YAML-with-positions machinery
from decider.v1 import decider_pb2 as pb

__all__ = [
    "TestSuite",
    "CaseResult",
    "SuiteResult",
    "Coverage",
    "find_suites",
    "load_suites",
    "run_suites",
    "coverage",
    "fields_read",
    "suite_files_for",
    "LoadedSuite",
]

# `invalid_argument`: the server refuses the request before deciding it (SPEC §3 validation);
# `decider test` checks a request exactly as the server does, so a suite can pin that down.
OutcomeName = Literal["allow", "deny", "require_approval", "invalid_argument"]
INVALID = "invalid_argument"


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class ToolSpec(_Strict):
    name: str
    server: str = ""
    risk_tier: int | None = Field(default=None, ge=0, le=4)


class RequestSpec(_Strict):
    id: str = ""
    environment: str = ""
    estimated_cost: float = Field(default=0.0, ge=0)
    time: datetime | None = None
    labels: dict[str, str] = Field(default_factory=dict)


class BudgetState(_Strict):
    spent: float = 0.0
    reserved: float = 0.0


class KillSwitchSpec(_Strict):
    scope: str   # one of KILL_SCOPES (checked below: one list of scopes)
    value: str = ""
    reason: str = ""
    id: str = "test-kill-switch"

    @field_validator("scope")
    @classmethod
    def _known_scope(cls, v: str) -> str:
        if v not in KILL_SCOPES:
            raise ValueError(f"must be one of {', '.join(KILL_SCOPES)}")
        return v


class StateSpec(_Strict):
    budgets: dict[str, BudgetState] = Field(default_factory=dict)
    kill_switches: list[KillSwitchSpec] = Field(default_factory=list)
    approval: Literal["approved", "pending", "rejected", "expired"] | None = None


class Expect(_Strict):
    outcome: OutcomeName
    rule: str | None = None
    reason: str | None = None
    # The labels the call's record carries, exactly (any order): its rules' `labels:`, and in a step
    # also what the step's `report:` and `result:` (outcome rules) added. None: not checked.
    labels: list[str] | None = None


class ReportSpec(_Strict):
    """What ReportOutcome says after a step ran: `session.calls[i].status` and added labels."""

    status: str = "ok"
    labels: list[str] = Field(default_factory=list)


class Step(_Strict):
    """One call of a multi-step case (SPEC §10): decided after the steps before it, in the same
    session, which its conditions see as `session.calls`."""

    name: str = ""
    agent: str | dict[str, Any] | None = None     # default: the case's agent
    tool: str | ToolSpec
    args: dict[str, Any] = Field(default_factory=dict)
    request: RequestSpec = Field(default_factory=RequestSpec)
    # None: the case's `context` / `state` (SPEC §10: steps inherit them); set: this step's instead.
    context: dict[str, Any] | None = None
    state: StateSpec | None = None
    expect: Expect
    report: ReportSpec | None = None   # the call's reported outcome, seen by the later steps
    source: Literal["call", "text"] | None = None   # `call.source`; default: the case's
    # The tool's result (any JSON: text, an MCP CallToolResult, …), seen by `on: outcome` rules when the
    # step ran; the labels they give go on the step's call, seen by the later steps (SPEC §10 round two).
    result: Any = None


class Case(_Strict):
    name: str
    agent: str | dict[str, Any]
    tool: str | ToolSpec | None = None
    args: dict[str, Any] = Field(default_factory=dict)
    request: RequestSpec = Field(default_factory=RequestSpec)
    context: dict[str, Any] = Field(default_factory=dict)
    state: StateSpec = Field(default_factory=StateSpec)
    expect: Expect | None = None
    # Several calls in one session, each with its expectation (instead of `tool`/`expect`).
    steps: list[Step] = Field(default_factory=list)
    # `call.source` (SPEC §10 round two): "text" tests a rule on actions replay reads from text.
    source: Literal["call", "text"] = "call"

    @model_validator(mode="after")
    def _one_call_or_steps(self) -> Case:
        if self.steps:
            if self.tool is not None or self.expect is not None:
                raise ValueError("a case has either steps: or tool: and expect:, not both")
        elif self.tool is None or self.expect is None:
            raise ValueError("a case needs tool: and expect: (or steps:)")
        return self


class Fixtures(_Strict):
    agents: dict[str, dict[str, Any]] = Field(default_factory=dict)
    tools: dict[str, ToolSpec] = Field(default_factory=dict)


class SuiteMetadata(_Strict):
    name: str
    description: str = ""


class TestSuite(_Strict):
    __test__ = False  # not a pytest class

    apiVersion: Literal["decider/v1"]  # noqa: N815 - the YAML key
    kind: Literal["TestSuite"]
    metadata: SuiteMetadata
    fixtures: Fixtures = Field(default_factory=Fixtures)
    cases: list[Case] = Field(min_length=1)


@dataclass(frozen=True, slots=True)
class LoadedSuite:
    suite: TestSuite
    file: str
    case_lines: tuple[int, ...]       # 1-based line of each case, for reports


@dataclass(frozen=True, slots=True)
class CaseResult:
    suite: str
    file: str
    line: int
    name: str
    passed: bool
    expected: Expect
    actual_outcome: str               # allow | deny | require_approval
    actual_rule: str
    actual_reasons: tuple[Reason, ...]
    matched_rules: tuple[str, ...]
    errors: tuple[str, ...]
    fields: dict[str, str] = field(default_factory=dict)   # field path → value, for failures
    problem: str = ""                  # a case that could not be built (unknown fixture, bad agent field)
    actual_labels: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class SuiteResult:
    name: str
    file: str
    cases: tuple[CaseResult, ...]

    @property
    def failed(self) -> int:
        return sum(1 for c in self.cases if not c.passed)


@dataclass(frozen=True, slots=True)
class Coverage:
    total: int
    decided: tuple[str, ...]             # decided at least one case
    overridden: tuple[str, ...]          # matched some case, never decided one
    never_matched: tuple[str, ...]
    errored_only: tuple[str, ...] = ()   # their condition errored in some case and never held: not covered

    @property
    def percent(self) -> float:
        return 100.0 * len(self.decided) / self.total if self.total else 100.0


def find_suites(paths: Sequence[str | Path]) -> list[Path]:
    """Every `*_test.yaml` / `*_test.yml` under the given files and folders, sorted."""
    found: set[Path] = set()
    for p in map(Path, paths):
        if p.is_file():
            found.add(p)
        elif p.is_dir():
            found.update(x for x in p.rglob("*_test.y*ml") if x.is_file())
    return sorted(found)


def load_suites(files: Sequence[Path]) -> list[LoadedSuite]:
    """Parse and validate suites; PolicyLoadError with every problem as file:line:col."""
    errors: list[SourceError] = []
    out: list[LoadedSuite] = []
    for path in files:
        display = str(path)
        for node in _compose_all(display, path.read_bytes(), errors):
            value = _to_python(display, node, errors)
            try:
                suite = TestSuite.model_validate(value)
            except ValidationError as e:
                for err in e.errors():
                    loc = tuple(err["loc"])
                    target = locate(node, loc, key=err["type"] == "extra_forbidden")
                    line, col = _mark(target)
                    where = ".".join(str(x) for x in loc)
                    errors.append(SourceError(display, line, col, f"{where}: {err['msg']}"))
                continue
            lines = tuple(_mark(locate(node, ("cases", i)))[0] for i in range(len(suite.cases)))
            for i, case in enumerate(suite.cases):
                if isinstance(case.agent, str) and case.agent not in suite.fixtures.agents:
                    line, col = _mark(locate(node, ("cases", i, "agent")))
                    errors.append(SourceError(display, line, col, f"unknown agent fixture {case.agent!r}"))
            out.append(LoadedSuite(suite, display, lines))
    if not files:
        errors.append(SourceError(".", 1, 1, "no test suites (*_test.yaml) found"))
    if errors:
        raise PolicyLoadError(errors)
    return out


def _build(suite: TestSuite, case: Case | Step, default_agent: str | dict[str, Any] | None = None,
           default_context: dict[str, Any] | None = None) -> tuple[pb.DecideRequest, State]:
    who = case.agent if case.agent is not None else default_agent
    agent = suite.fixtures.agents[who] if isinstance(who, str) else who
    if isinstance(case.tool, str):
        tool = suite.fixtures.tools.get(case.tool) or ToolSpec(name=case.tool)
    else:
        tool = case.tool
    assert tool is not None and agent is not None   # the Case validator guarantees them
    req = pb.DecideRequest(
        agent=pb.Agent(**agent),
        tool=pb.ToolCall(name=tool.name, server=tool.server),
        request=pb.Request(id=case.request.id, environment=case.request.environment,
                           estimated_cost=case.request.estimated_cost, labels=case.request.labels),
    )
    if tool.risk_tier is not None:
        req.tool.risk_tier = tool.risk_tier
    req.tool.args.update(case.args)
    req.context.update(case.context if case.context is not None else default_context or {})
    if case.request.time is not None:
        req.request.time.FromDatetime(case.request.time)
    else:
        req.request.time.FromSeconds(0)  # deterministic: a test never depends on the wall clock
    now = req.request.time.ToDatetime(tzinfo=timezone.utc)
    if isinstance(case, Step):
        return req, State(now=now)
    approval = _approval(case.state, now)
    state = State(
        kill_switches=_kill_switches(case.state),
        budget_usage={k: BudgetUsage(v.spent, v.reserved) for k, v in case.state.budgets.items()},
        approvals=(approval,) if approval is not None else (),
        now=now,
    )
    return req, state


def _kill_switches(spec: StateSpec) -> tuple[KillSwitch, ...]:
    return tuple(KillSwitch(k.id, k.scope, k.value, k.reason) for k in spec.kill_switches)


def _approval(spec: StateSpec, now: datetime, approval_id: str = "test-approval") -> ApprovalView | None:
    """`state.approval` as the approval bound to the call: binding for another day (a pending one has
    not expired); `expired` ran out a second ago."""
    if spec.approval is None:
        return None
    expires = now - timedelta(seconds=1) if spec.approval == "expired" else now + timedelta(days=1)
    return ApprovalView(approval_id=approval_id, state=spec.approval, expires_at=expires,
                        resolved_by="test-approver" if spec.approval != "pending" else "")
# A field path a condition reads: `tool.args.amount`, `agent.labels["env"]`, `budget.team.remaining`.
_FIELD = re.compile(r"\b(?:agent|tool|request|context|budget)(?:\.[A-Za-z_]\w*|\[\s*(?:\"[^\"]*\"|'[^']*')\s*\])+")


def fields_read(when: str) -> list[str]:
    """The field paths a condition mentions, in order, without duplicates (a textual scan)."""
    seen: dict[str, None] = {}
    for m in _FIELD.finditer(when):
        path = m.group(0)
        # `shell.commands(tool.args.command)` style calls are not fields; a trailing `.method(` is.
        rest = when[m.end():m.end() + 1]
        if rest == "(" and "." in path:
            path = path.rsplit(".", 1)[0]
        seen.setdefault(path, None)
    return list(seen)


def _field_values(rules: Sequence[CompiledRule], bundle: Bundle, req: pb.DecideRequest,
                  state: State) -> dict[str, str]:
    env = environment()
    act = env.Activation(data={"agent": req.agent, "tool": req.tool, "request": req.request,
                               "context": req.context, "budget": budget_views(bundle, state)})
    out: dict[str, str] = {}
    for rule in rules:
        for path in fields_read(rule.when):
            if path in out:
                continue
            try:
                v = env.compile(path).eval(act)
                out[path] = repr(v.plain_value()) if str(v.type()) != "ERROR" else f"<{v.value()}>"
            except RuntimeError as e:
                out[path] = f"<{e}>"
    return out


def run_suites(bundle: Bundle, suites: Sequence[LoadedSuite]) -> list[SuiteResult]:
    rules_by_id = {r.id: r for r in bundle.rules}
    results: list[SuiteResult] = []
    for ls in suites:
        cases: list[CaseResult] = []
        for case, line in zip(ls.suite.cases, ls.case_lines, strict=True):
            if case.steps:
                cases.extend(_run_steps(bundle, ls, case, line, rules_by_id))
                continue
            assert case.expect is not None
            try:
                req, state = _build(ls.suite, case)
            except (ValueError, TypeError, AttributeError) as e:
                cases.append(CaseResult(ls.suite.metadata.name, ls.file, line, case.name, False, case.expect,
                                        "", "", (), (), (), problem=f"cannot build the request: {e}"))
                continue
            try:
                intake(req)
            except InvalidRequest as e:
                cases.append(_refused(ls, line, case.name, case.expect, e))
                continue
            with call_source(case.source):
                d = decide(bundle, req, state)
            cases.append(_result(ls, line, case.name, case.expect, d, bundle, req, state, rules_by_id))
        results.append(SuiteResult(ls.suite.metadata.name, ls.file, tuple(cases)))
    return results


def _refused(ls: LoadedSuite, line: int, name: str, exp: Expect, e: InvalidRequest) -> CaseResult:
    """A request the server would refuse with INVALID_ARGUMENT: passes only when that is expected
    (and the expected reason, if any, is in the error)."""
    ok = exp.outcome == INVALID and (exp.reason is None or exp.reason in str(e))
    return CaseResult(ls.suite.metadata.name, ls.file, line, name, ok, exp, INVALID, "",
                      (Reason("invalid", f"INVALID_ARGUMENT {e}"),), (), ())


def _result(ls: LoadedSuite, line: int, name: str, exp: Expect, d: Decision, bundle: Bundle,
            req: pb.DecideRequest, state: State, rules_by_id: dict[str, CompiledRule],
            labels: tuple[str, ...] | None = None) -> CaseResult:
    actual = d.outcome_name.lower()
    labels = d.labels if labels is None else labels
    ok = actual == exp.outcome and (exp.rule is None or exp.rule == d.deciding_rule)
    if ok and exp.reason is not None:
        ok = any(exp.reason in r.text for r in d.reasons)
    if ok and exp.labels is not None:
        ok = set(exp.labels) == set(labels)
    fields: dict[str, str] = {}
    if not ok:
        shown = [rules_by_id[x] for x in (d.deciding_rule, exp.rule) if x and x in rules_by_id]
        fields = _field_values(shown, bundle, req, state)
    return CaseResult(ls.suite.metadata.name, ls.file, line, name, ok, exp, actual,
                      d.deciding_rule, d.reasons, d.matched_rules, d.errors, fields, actual_labels=labels)


_EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)


def _run_steps(bundle: Bundle, ls: LoadedSuite, case: Case, line: int,
               rules_by_id: dict[str, CompiledRule]) -> list[CaseResult]:
    """A multi-step case: each step decided on the in-memory state replay uses (engine/memory.py),
    in one session (the agent's `session_id`, else the case's own), so later steps see earlier
    ones in `session.calls`. A step without `request.time` is one second after the one before."""
    sim = MemoryState()
    out: list[CaseResult] = []
    at = _EPOCH
    for i, step in enumerate(case.steps, 1):
        name = f"{case.name} / step {i}" + (f": {step.name}" if step.name else "")
        try:
            req, _ = _build(ls.suite, step, case.agent, case.context)
        except (ValueError, TypeError, AttributeError, KeyError) as e:
            out.append(CaseResult(ls.suite.metadata.name, ls.file, line, name, False, step.expect,
                                  "", "", (), (), (), problem=f"cannot build the request: {e}"))
            continue
        at = step.request.time or (at + timedelta(seconds=1) if i > 1 else at)
        if at.tzinfo is None:
            at = at.replace(tzinfo=timezone.utc)
        req.request.time.FromDatetime(at)
        _step_state(bundle, sim, req, step.state or case.state, at, step.state is not None, i)
        session = req.agent.session_id or f"test:{ls.file}:{line}"
        state = State(now=at).with_history(sim.history(bundle, req, session))
        try:
            with call_source(step.source or case.source):
                d = sim.decide(bundle, req, at, session=session)
        except InvalidRequest as e:   # refused before deciding: no effects, as on the server
            out.append(_refused(ls, line, name, step.expect, e))
            continue
        labels = d.labels
        if step.report is not None and d.outcome != pb.DENY:   # a denied call did not run: nothing to report
            sim.report(session, step.report.status, tuple(step.report.labels))
            labels = (*labels, *step.report.labels)
        if step.result is not None and d.outcome != pb.DENY:
            with call_source(step.source or case.source):
                added, _ = outcome_labels(bundle, req, step.result)
            if added:
                sim.report(session, "", added)
                labels = (*labels, *added)
        out.append(_result(ls, line, name, step.expect, d, bundle, req, state, rules_by_id,
                           tuple(dict.fromkeys(labels))))
    return out


def _step_state(bundle: Bundle, sim: MemoryState, req: pb.DecideRequest, spec: StateSpec, at: datetime,
                own: bool, n: int) -> None:
    """A step's `state:` (its own, else the case's) on the simulated state, before the step runs.

    Kill switches are those in force for this step. Budgets: the case's usage is where each budget
    counter starts (the steps' own reservations then add up); a step's own `state.budgets` sets the
    usage its counters have at that step. `approval`: an approval for this step's exact call, unless
    an earlier step already opened one for it (it is consumed, expires and binds as on the server)."""
    sim.kill_switches = tuple(TimedKillSwitch(k) for k in _kill_switches(spec))
    if spec.budgets:
        who = identity_of(bundle, req)
        for b in applicable_budgets(bundle, who, at):
            use = spec.budgets.get(b.scope)
            if use is None:
                continue
            if own:
                sim.usage[b.key] = [use.spent, use.reserved]
            else:
                sim.set_usage([(b.scope, b.scope_key, BudgetUsage(use.spent, use.reserved))])
    approval = _approval(spec, at, f"test-approval-{n}")
    if approval is not None:
        sim.seed_approval(req, approval)


def coverage(bundle: Bundle, results: Sequence[SuiteResult]) -> Coverage:
    """A rule counts only when its condition held without error in some case: a rule that decided a
    case because its condition *errored* (on_error: deny) proves nothing about the condition."""
    decided: set[str] = set()
    matched: set[str] = set()
    errored: set[str] = set()
    labelling = {r.id for r in bundle.rules if r.effect == "label"}
    for s in results:
        for c in s.cases:
            if c.actual_rule in c.matched_rules:   # held; not an error that failed closed
                decided.add(c.actual_rule)
            decided.update(r for r in c.matched_rules if r in labelling)   # `effect: label` never decides
            matched.update(c.matched_rules)
            errored.update(e.split(": ", 1)[0] for e in c.errors)   # "rule-id: message"
    ids = [r.id for r in bundle.rules]
    return Coverage(
        total=len(ids),
        decided=tuple(i for i in ids if i in decided),
        overridden=tuple(i for i in ids if i in matched and i not in decided),
        never_matched=tuple(i for i in ids if i not in matched and i not in decided),
        errored_only=tuple(i for i in ids if i in errored and i not in matched),
    )


def suite_files_for(bundle_dir: Path, extra: Sequence[str]) -> list[Path]:
    """The suites named on the command line, else those beside the bundle's policies."""
    return find_suites(extra or [bundle_dir])
