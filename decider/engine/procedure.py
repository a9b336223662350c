"""The decision procedure every surface runs, around the pure `evaluate` and `settle`:

    validate → admit → read state → evaluate → settle → apply effects

Unary `Decide`, `DecideStream`, `DecideBatchStream` (the procedure applied call by call, in the
batch's order), ExtMcp, the shadow, `decider test` and `decider replay`/`diff` all take a request
through these steps; they differ only in where the state lives — the server's store
(server/ledger.py) or memory (engine/memory.py) — so they never disagree (tests/parity).

This module holds the steps that are the same wherever the state lives:
- `intake`: the request checked as the server checks it (InvalidRequest naming the field);
- `admit`: the request as it is decided — the tool's default estimate (`spec.tools.<name>.cost`,
  SPEC §11) when it carries none;
- `evaluate_call`: the rules, failing closed when the estimate could not be computed;
- `decide_on`: evaluate and settle on a state the caller has read (the shadow, `decider decide`).
"""

from __future__ import annotations

from decider.api.validate import validate_request
from decider.bundle.compile import Bundle
from decider.engine.controls import deny, needs_approvals, settle
from decider.engine.decision import Decision
from decider.engine.rules import evaluate
from decider.engine.state import EMPTY_STATE, State
from decider.v1 import decider_pb2 as pb

__all__ = ["intake", "admit", "evaluate_call", "decide_on", "COST_ERROR_RULE"]

COST_ERROR_RULE = "error"


def intake(req: pb.DecideRequest) -> None:
    """The server's request checks, for every surface (InvalidRequest naming the field)."""
    validate_request(req)


def admit(bundle: Bundle, req: pb.DecideRequest) -> str:
    """Fill in the tool's default estimate when the request carries none. Returns "" or, when the
    bundle's cost expression gives no cost for this call, the reason the call is denied."""
    if req.request.estimated_cost > 0 or not bundle.costs:
        return ""
    cost = bundle.cost(req.tool.name)
    if cost is None:
        return ""

    def activation() -> object:
        data: dict[str, object] = {"agent": req.agent, "tool": req.tool, "request": req.request,
                                   "context": req.context}
        data.update({f"lists.{n}": list(v) for n, v in bundle.lists.items()})
        return bundle.env.Activation(data=data)  # type: ignore[attr-defined]

    try:
        req.request.estimated_cost = cost.of(activation)
    except ValueError as e:
        return f"the estimated cost of {req.tool.name} (spec.tools cost) could not be computed (fail closed): {e}"
    return ""


def evaluate_call(bundle: Bundle, req: pb.DecideRequest, state: State, refused: str = "") -> Decision:
    """The rules' decision; DENY `error` when `admit` refused the call (its reason)."""
    d = evaluate(bundle, req, state)
    return deny(d, COST_ERROR_RULE, refused) if refused and d.outcome != pb.DENY else d


def decide_on(bundle: Bundle, req: pb.DecideRequest, state: State = EMPTY_STATE) -> Decision:
    """`admit`, the rules and the controls on a state already read (approvals included where the
    rules ask for them): the final decision and its effects, applied by no one here."""
    refused = admit(bundle, req)
    evaluated = evaluate_call(bundle, req, state, refused)
    if needs_approvals(req, evaluated) and state.approvals is None:
        state = state.with_approvals(())
    return settle(bundle, req, evaluated, state)
