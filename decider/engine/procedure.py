"""The decision procedure every surface runs, around the pure `evaluate` and `settle`:

    validate → admit → read state → evaluate → settle → apply effects

Unary `Decide`, `DecideStream`, `DecideBatchStream` (the procedure applied call by call, in the
batch's order), ExtMcp, the shadow, `decider test` and `decider replay`/`diff` all take a request
through these steps; they differ only in where the state lives — the server's store
(server/controls.py) or memory (engine/memory.py) — so they never disagree (tests/parity).

This module holds the steps that are the same wherever the state lives:
- `intake`: the request checked as the server checks it (InvalidRequest naming the field);
- `admit`: the request as it is decided — the tool's default estimate (`spec.tools.<name>.cost`,
  SPEC §11) when it carries none;
- `evaluate_call`: the rules, failing closed when the estimate could not be computed.
"""

from __future__ import annotations

from decider.api.validate import validate_request
from decider.bundle.compile import Bundle, bundle_lists
from decider.engine.controls import deny
from decider.engine.decision import Decision
from decider.engine.rules import evaluate
from decider.engine.state import State
from decider.v1 import decider_pb2 as pb

__all__ = ["intake", "admit", "evaluate_call", "COST_ERROR_RULE"]

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
        # Every named list as the rules see it (a map list stays a map).
        data.update({f"lists.{n}": v for n, v in bundle_lists(bundle).items()})
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

