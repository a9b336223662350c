"""The rules half of a decision: kill switches, then the bundle's rules combined.

`evaluate(bundle, request, state)` is pure; `engine.decide` runs it and then settles the stateful
controls (engine/controls.py).

Combining (SPEC §2): a matching kill switch wins (deny, `killed`); otherwise
deny > require_approval > allow, where a policy's `spec.default` votes like a rule (`<policy>.default`)
when the policy fits and none of its rules held; no vote at all gives the bundle's `default`. Among
the votes for the winning outcome the first explicit rule decides (policy order, then rule order),
a policy default only when no explicit rule voted for that outcome. A condition that
errors — a missing field, a type error, or the CEL runtime refusing it (e.g. its iteration budget
exceeded) — counts as a deny when `on_error: deny` (fail closed), and is skipped when
`on_error: skip`; either way the error is in the decision.
"""

from __future__ import annotations

import dataclasses
import time

from decider.bundle.compile import EFFECT_OUTCOME, Bundle, CompiledPolicy, CompiledRule, Reason
from decider.cel.env import environment
from decider.engine.arguments import check_arguments
from decider.engine.budgets import budget_views
from decider.engine.call_source import call_source
from decider.engine.decision import Decision
from decider.engine.identity import resolve
from decider.engine.scrub import masked_values, quotes_request, scrub_texts
from decider.engine.session import session_view
from decider.engine.state import EMPTY_STATE, State
from decider.v1 import decider_pb2 as pb

__all__ = ["evaluate"]

# Precedence: the larger wins.
_RANK = {pb.OUTCOME_UNSPECIFIED: 0, pb.ALLOW: 1, pb.REQUIRE_APPROVAL: 2, pb.DENY: 3}  # 0: `effect: label`, no vote
# The reason of a default decision, one per default effect: Reason is immutable, so one value
# serves every decision instead of a new one (and its text) per request.
_DEFAULT_REASONS = {e: Reason("default", f"no rule matched; bundle default is {e}", "", e) for e in EFFECT_OUTCOME}
_BOOL = frozenset({bool})


def _activation(bundle: Bundle, request: pb.DecideRequest, agent: pb.Agent, state: State) -> object:
    """Bind only what the tool's policies read: each bound proto costs a conversion into CEL.
    `agent` is the identity merged with the agent's manifest (engine/identity.py)."""
    tool = request.tool
    needs = bundle.needs(tool.name)
    data: dict[str, object] = {"agent": agent, "tool": tool}
    if "request" in needs:
        data["request"] = request.request
    if "context" in needs:
        data["context"] = request.context
    if "budget" in needs:
        data["budget"] = budget_views(bundle, state)
    if "session" in needs:
        data["session"] = session_view(state.history, bundle.session_max_calls, bundle.session_window_s,
                                       state.at(request))
    if "call" in needs:
        data["call.source"] = call_source()
    lists = bundle.list_data(tool.name)
    if lists:
        data.update(lists)
    return (bundle.env or environment()).Activation(data=data)  # type: ignore[attr-defined]


def _evaluate(policy: CompiledPolicy, activation: object, matched: list[CompiledRule],
              errors: list[tuple[CompiledRule, str]]) -> None:
    """Append the policy's rules that hold (in order) to `matched`, and those that error to `errors`."""
    if policy.program is not None:
        try:
            values = policy.program.eval(activation).plain_value()
        except Exception:  # noqa: BLE001 - e.g. the runtime's iteration budget: find the rule below
            values = None
        # A list of bools: the common case. An error anywhere makes the whole list an error
        # value (a str): evaluate rule by rule below to know which rule failed, and why.
        if type(values) is list and _BOOL.issuperset(map(type, values)):
            for rule, slot in zip(policy.rules, policy.slots, strict=True):
                if slot < 0 or values[slot]:
                    matched.append(rule)
            return
    for rule in policy.rules:
        if rule.always:
            matched.append(rule)
            continue
        try:
            value = rule.program.eval(activation).value()
        except Exception as exc:  # noqa: BLE001 - cel-expr-python raises for cost/iteration limits
            errors.append((rule, f"evaluation failed: {exc}"))
            continue
        if value is True:
            matched.append(rule)
        elif value is not False:
            # An ERROR value carries its message as a str; anything else is a non-bool result.
            msg = value if isinstance(value, str) else f"condition returned {value!r}, not a bool"
            errors.append((rule, msg))


def evaluate(bundle: Bundle, request: pb.DecideRequest, state: State = EMPTY_STATE) -> Decision:
    """Kill switches and rules for one request (no approvals, no budgets: see engine/controls.py).

    Conditions read `tool.risk_tier`; when the caller left it unset they must see the catalogue's
    tier. It is set on the request for the evaluation and cleared again before returning (copying
    the tool, arguments and all, would cost more): the caller's request comes back unchanged.
    """
    decision = _evaluate_with_tier(bundle, request, state)
    if bundle.mask and (decision.errors or any(map(quotes_request, decision.reasons))):
        # Error texts quote the values they failed on: never a masked one (SPEC §7, issue 24 item 1).
        secrets = masked_values(request, bundle.mask)
        if secrets:
            reasons, errors = scrub_texts(decision.reasons, decision.errors, secrets)
            decision = dataclasses.replace(decision, reasons=reasons, errors=errors)
    return decision


def _evaluate_with_tier(bundle: Bundle, request: pb.DecideRequest, state: State) -> Decision:
    tool = request.tool
    if tool.HasField("risk_tier"):
        tier = tool.risk_tier
        try:
            return _evaluate_request(bundle, request, state, tier)
        except Exception as exc:  # noqa: BLE001 - see _failed
            return _failed(tier, exc)
    tier = bundle.risk_tier(tool.name)
    tool.risk_tier = tier
    try:
        return _evaluate_request(bundle, request, state, tier)
    except Exception as exc:  # noqa: BLE001 - see _failed
        return _failed(tier, exc)
    finally:
        tool.ClearField("risk_tier")


def _is_default(rule: CompiledRule) -> bool:
    return rule.policy_default


def _failed(tier: int, exc: Exception) -> Decision:
    """An evaluation that failed outside any one condition (conditions' own errors follow
    `on_error`): fail closed, with the error as the reason, so the decision is still recorded."""
    text = f"evaluation failed (fail closed): {type(exc).__name__}: {exc}"
    return Decision(pb.DENY, (Reason("error", text, "", "deny"),), (), "error", tier, errors=(text,))


def _evaluate_request(bundle: Bundle, request: pb.DecideRequest, state: State, tier: int) -> Decision:
    started = time.perf_counter_ns()
    tool = request.tool
    # Identity first (SPEC §9): the manifest fills and checks the agent before anything reads it.
    tool_name = tool.name
    agent = request.agent
    if bundle.agents.manifests:
        resolved = resolve(bundle, agent, tool, tool_name)
        merged, denial = resolved.agent, resolved.denial
        if merged is not None:
            agent = merged
    else:
        merged, denial = None, None

    for ks in state.kill_switches:
        if ks.hits(agent, tool):
            text = f"kill switch {ks.id} ({ks.scope}={ks.value})" + (f": {ks.reason}" if ks.reason else "")
            return Decision(
                outcome=pb.DENY,
                reasons=(Reason("killed", text, "", "deny"),),
                matched_rules=(),
                deciding_rule="killed",
                risk_tier=tier,
                kill_switch_id=ks.id,
                eval_us=(time.perf_counter_ns() - started) // 1000,
                agent=merged,
            )

    # Before any policy runs: who is asking (manifest), then what the call carries (schema).
    if denial is None and bundle.schemas:
        schema = bundle.schema(tool_name)
        if schema is not None:
            denial = check_arguments(schema, tool, tool_name)
    if denial is not None:
        return Decision(pb.DENY, (denial,), (), denial.rule_id, tier,
                        eval_us=(time.perf_counter_ns() - started) // 1000, agent=merged)

    candidates = bundle.candidates(tool_name)
    matched: list[CompiledRule] = []
    errors: list[tuple[CompiledRule, str]] = []
    activation = None
    for policy in candidates:
        if not policy.fits(agent, tool):
            continue
        if not policy.needs:  # only `always` rules (or conditions naming no variable)
            if all(r.always for r in policy.rules):
                matched.extend(policy.rules)
                continue
        if activation is None:
            activation = _activation(bundle, request, agent, state)
        held = len(matched)
        _evaluate(policy, activation, matched, errors)
        if policy.default is not None and all(r.outcome == pb.OUTCOME_UNSPECIFIED for r in matched[held:]):
            # None of the policy's voting rules held: its `spec.default` votes (SPEC §10).
            matched.append(policy.default)

    best = 0
    for rule in matched:
        if _RANK[rule.outcome] > best:
            best = _RANK[rule.outcome]
    winners = [r for r in matched if _RANK[r.outcome] == best] if best else []
    if len(winners) > 1 and winners[0].policy_default:
        # Tie-break (SPEC §10 round two): when a policy default and explicit rules agree on the
        # outcome, the first explicit rule decides (its reason, approvers and ttl); defaults' reasons last.
        winners.sort(key=_is_default)
    # The labels of every rule that held, whatever the combined outcome (SPEC §10), first seen first.
    labels = tuple(dict.fromkeys(x for r in matched if r.labels for x in r.labels)) if bundle.labels_rules else ()
    error_reasons: list[Reason] = []
    if errors and bundle.on_error == "deny":
        error_reasons = [Reason(r.id, f"condition error (fail closed): {msg}", r.policy, "deny") for r, msg in errors]

    eval_us = (time.perf_counter_ns() - started) // 1000
    matched_ids = tuple([r.id for r in matched])
    error_texts = tuple([f"{r.id}: {msg}" for r, msg in errors]) if errors else ()
    if error_reasons and best < _RANK[pb.DENY]:
        # An erroring rule might have denied: fail closed, with the error as the reason.
        return Decision(pb.DENY, tuple(error_reasons), matched_ids, error_reasons[0].rule_id, tier,
                        errors=error_texts, eval_us=eval_us, agent=merged, labels=labels)
    if not winners:
        outcome = EFFECT_OUTCOME[bundle.default]
        return Decision(
            outcome, (_DEFAULT_REASONS[bundle.default],),
            matched_ids, "default", tier, errors=error_texts, eval_us=eval_us,
            approval_ttl_s=3600 if outcome == pb.REQUIRE_APPROVAL else 0, agent=merged, labels=labels,
        )
    first = winners[0]
    return Decision(
        outcome=first.outcome,
        reasons=tuple(r.reason_of for r in winners),
        matched_rules=matched_ids,
        deciding_rule=first.id,
        risk_tier=tier,
        approvers=first.approvers,
        approval_ttl_s=first.approval_ttl_s if first.outcome == pb.REQUIRE_APPROVAL else 0,
        errors=error_texts,
        eval_us=eval_us,
        agent=merged,
        labels=labels,
    )
