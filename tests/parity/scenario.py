"""The parity scenarios (tests/parity/scenarios/*.yaml): calls and actions in order, one expected
table (a row per call), and the surfaces on which a scenario is not meaningful, each with a reason.

A scenario file:

    name: session-labels
    agent: {id: alpha, session_id: labels}      # every call's agent unless the call names its own
    steps:
      - {tool: fs.read, args: {path: /app/.env}}
      - {action: approve}                       # approve the last call that asked for approval
      - {action: kill}                          # an agent kill switch on the scenario's agent
      - {tool: work.do, caller: bound}          # caller: enforcer (default) | bound (tokens.yaml)
    expected:                                   # one row per call, in order
      - {outcome: ALLOW, rule: reads-allowed}
      - {error: INVALID_ARGUMENT, field: agent.session_id}   # refused, the message names the field
    not_meaningful: {surface: reason}

Every surface runs the scenario with its own agent ids and session ids (`personalized`), so the
surfaces share one server per backend without seeing each other's budgets, sessions or switches.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import yaml

__all__ = ["Call", "Action", "Scenario", "Row", "load_scenarios", "SCENARIOS", "T0", "CALLERS"]

SCENARIOS = Path(__file__).resolve().parent / "scenarios"
# The scenario's clock for the surfaces that are given times (test steps, replay): call i at T0 + i
# minutes, an action half a minute before the call after it.
T0 = datetime(2026, 1, 5, 9, 0, tzinfo=timezone.utc)
CALLERS = {"enforcer": "enforcer-token", "bound": "bound-token"}
_ACTIONS = ("approve", "kill")


@dataclass(frozen=True, slots=True)
class Call:
    row: int                      # its row in the expected table
    tool: str
    args: dict[str, Any]
    agent: dict[str, Any]
    caller: str                   # a key of CALLERS
    at: datetime

    @property
    def token(self) -> str:
        return CALLERS[self.caller]


@dataclass(frozen=True, slots=True)
class Action:
    kind: str                     # approve | kill
    agent: dict[str, Any]         # the scenario's agent (kill: its id is switched off)
    at: datetime


Step = Call | Action


@dataclass(frozen=True, slots=True)
class Row:
    """One expected (or observed) result: a decision, or a refusal without one."""

    outcome: str = ""             # ALLOW | DENY | REQUIRE_APPROVAL; "" for a refusal
    rule: str = ""
    error: str = ""               # a gRPC status name, e.g. INVALID_ARGUMENT
    field: str = ""               # expected: a text the refusal's message contains (the field it names)
    message: str = ""             # observed: the refusal's message

    def matches(self, got: Row) -> bool:
        if self.error:
            return got.error == self.error and self.field in got.message
        return (got.outcome, got.rule, got.error) == (self.outcome, self.rule, "")

    def show(self) -> str:
        if self.error:
            return f"{self.error} ({self.message or self.field})"
        return f"{self.outcome} [{self.rule}]"


@dataclass(frozen=True, slots=True)
class Scenario:
    name: str
    file: Path
    agent: dict[str, Any]
    steps: tuple[Step, ...]
    expected: tuple[Row, ...]
    not_meaningful: dict[str, str] = field(default_factory=dict)

    @property
    def calls(self) -> tuple[Call, ...]:
        return tuple(s for s in self.steps if isinstance(s, Call))

    def personalized(self, tag: str) -> Scenario:
        """The same scenario with every agent id and session id suffixed by `tag` (a surface's own)."""
        def own(agent: dict[str, Any]) -> dict[str, Any]:
            out = dict(agent)
            for key in ("id", "session_id"):
                if out.get(key):
                    out[key] = f"{out[key]}-{tag}"
            return out

        steps = tuple(replace(s, agent=own(s.agent)) for s in self.steps)
        return replace(self, agent=own(self.agent), steps=steps)

    def segments(self) -> list[list[Call]]:
        """The calls between actions, split again where the caller changes: what one batch (or one
        stream) may carry, since an action must happen between the calls around it and a stream
        has one token."""
        out: list[list[Call]] = [[]]
        for s in self.steps:
            if isinstance(s, Action):
                out.append([])
            elif out[-1] and out[-1][-1].caller != s.caller:
                out.append([s])
            else:
                out[-1].append(s)
        return [seg for seg in out if seg]


def _row(d: dict[str, Any], where: str) -> Row:
    unknown = set(d) - {"outcome", "rule", "error", "field"}
    if unknown:
        raise ValueError(f"{where}: unknown keys {sorted(unknown)}")
    if "error" in d:
        if "field" not in d or "outcome" in d:
            raise ValueError(f"{where}: a refusal is {{error, field}}")
        return Row(error=str(d["error"]), field=str(d["field"]))
    if d.get("outcome") not in ("ALLOW", "DENY", "REQUIRE_APPROVAL") or not d.get("rule"):
        raise ValueError(f"{where}: a decision is {{outcome: ALLOW|DENY|REQUIRE_APPROVAL, rule}}")
    return Row(outcome=d["outcome"], rule=str(d["rule"]))


def load(path: Path) -> Scenario:
    doc = yaml.safe_load(path.read_text())
    unknown = set(doc) - {"name", "agent", "steps", "expected", "not_meaningful"}
    if unknown:
        raise ValueError(f"{path}: unknown keys {sorted(unknown)}")
    agent = dict(doc["agent"])
    steps: list[Step] = []
    calls = 0
    for i, s in enumerate(doc["steps"]):
        at = T0 + timedelta(minutes=calls)
        if "action" in s:
            if s["action"] not in _ACTIONS or set(s) != {"action"}:
                raise ValueError(f"{path}: steps[{i}]: an action is one of {_ACTIONS}")
            steps.append(Action(s["action"], agent, at - timedelta(seconds=30)))
            continue
        unknown = set(s) - {"tool", "args", "agent", "caller"}
        if unknown:
            raise ValueError(f"{path}: steps[{i}]: unknown keys {sorted(unknown)}")
        caller = s.get("caller", "enforcer")
        if caller not in CALLERS:
            raise ValueError(f"{path}: steps[{i}]: caller is one of {sorted(CALLERS)}")
        steps.append(Call(calls, s["tool"], dict(s.get("args") or {}), dict(s.get("agent") or agent), caller, at))
        calls += 1
    expected = tuple(_row(r, f"{path}: expected[{i}]") for i, r in enumerate(doc["expected"]))
    if len(expected) != calls:
        raise ValueError(f"{path}: {calls} calls but {len(expected)} expected rows")
    reasons = {str(k): str(v).strip() for k, v in (doc.get("not_meaningful") or {}).items()}
    return Scenario(str(doc["name"]), path, agent, tuple(steps), expected, reasons)


def load_scenarios() -> list[Scenario]:
    return [load(p) for p in sorted(SCENARIOS.glob("*.yaml"))]
