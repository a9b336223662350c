"""What a decision is: the outcome and why (`Decision`), plus the state changes it asks for (`Effects`).

`decide` returns both; whoever holds the state applies the effects — the server in its store
(atomically, before the answer), `decider test` and `replay` in memory (engine/memory.py), and a
shadow evaluation not at all.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType

from decider.bundle.compile import Reason
from decider.engine.budgets import BudgetKey
from decider.engine.state import ApprovalView
from decider.v1 import decider_pb2 as pb

__all__ = ["Reason", "Decision", "Effects", "NO_EFFECTS", "outcome_name", "outcome_value"]

# The one enum ↔ string mapping: the generated enum's own names, read once from its descriptor
# (`pb.Outcome.Name()` costs a wrapper call and a try per use; this runs several times a decision).
_NAMES = {v.number: v.name for v in pb.Outcome.DESCRIPTOR.values}
_VALUES = {v.name: v.number for v in pb.Outcome.DESCRIPTOR.values}


def outcome_name(outcome: int) -> str:
    """pb.ALLOW → "ALLOW" (as `pb.Outcome.Name`)."""
    return _NAMES[outcome]


def outcome_value(name: str) -> int:
    """"ALLOW" → pb.ALLOW (as `pb.Outcome.Value`)."""
    return _VALUES[name]


@dataclass(frozen=True, slots=True)
class Effects:
    """State changes a decision asks for. Empty for most decisions (`NO_EFFECTS`)."""

    reserve: tuple[BudgetKey, ...] = ()     # hold `amount` against each of these budgets (all or none)
    amount: float = 0.0
    consume: str = ""                       # approval id: approved → consumed (this call uses it, once)
    open_approval: bool = False             # this decision opens a pending approval (Decision.approvers/ttl)
    expire: tuple[str, ...] = ()            # pending approvals of this call found past their ttl
    same_as: str = ""                       # an identical call is pending: answer with that decision, record nothing
    labels: Mapping[str, str] = field(default_factory=lambda: MappingProxyType({}))  # reserved for labels

    def __bool__(self) -> bool:
        return bool(self.reserve or self.consume or self.open_approval or self.expire or self.same_as or self.labels)


NO_EFFECTS = Effects()


@dataclass(frozen=True, slots=True)
class Decision:
    outcome: int                          # pb.Outcome
    reasons: tuple[Reason, ...]           # the rules (or built-in) that decided
    matched_rules: tuple[str, ...]        # every rule whose condition held, in bundle order
    deciding_rule: str
    risk_tier: int
    approvers: tuple[str, ...] = ()
    approval_ttl_s: int = 0
    errors: tuple[str, ...] = ()          # "rule-id: message" for conditions that errored
    kill_switch_id: str = ""
    eval_us: int = 0
    effects: Effects = NO_EFFECTS
    approval: ApprovalView | None = None  # the existing approval this decision used, met or answers with
    # The identity merged with the agent's manifest, when the manifest filled request fields
    # (None: the request's agent as sent). Conditions saw it; the record stores it.
    agent: pb.Agent | None = None
    labels: tuple[str, ...] = ()          # the `labels:` of the rules that held (SPEC §10)

    @property
    def outcome_name(self) -> str:
        return _NAMES[self.outcome]

    def with_effects(self, effects: Effects, approval: ApprovalView | None = None) -> Decision:
        """This decision with `effects` (and the approval it met): `dataclasses.replace` costs
        ~3 µs a call through field introspection; this runs for every approval decision."""
        return Decision(self.outcome, self.reasons, self.matched_rules, self.deciding_rule, self.risk_tier,
                        self.approvers, self.approval_ttl_s, self.errors, self.kill_switch_id, self.eval_us,
                        effects, approval if approval is not None else self.approval, self.agent, self.labels)
