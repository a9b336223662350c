"""`decide(bundle, request, state)`: the one decision function of decider.

Pure — values in, a value out, no I/O, the request left as it came. The gRPC server, `decider
decide --bundle`, `decider test`, `replay`/`diff`, the shadow evaluation and the benchmarks all call
it (or its two halves, for the server, which reads the approval part of the state only for a
decision that needs it):

    evaluate (engine/rules.py)    kill switches, then the rules combined
    settle   (engine/controls.py) approvals and budgets → the final outcome and its Effects
"""

from __future__ import annotations

from decider.bundle.compile import Bundle, Reason
from decider.engine.controls import needs_approvals, settle
from decider.engine.decision import NO_EFFECTS, Decision, Effects, outcome_name, outcome_value
from decider.engine.procedure import admit, evaluate_call
from decider.engine.rules import evaluate
from decider.engine.state import EMPTY_STATE, State
from decider.v1 import decider_pb2 as pb

__all__ = ["Reason", "Decision", "Effects", "NO_EFFECTS", "decide", "evaluate", "settle", "needs_approvals",
           "outcome_name", "outcome_value"]


def decide(bundle: Bundle, request: pb.DecideRequest, state: State = EMPTY_STATE) -> Decision:
    """The final decision and the effects to apply. `state.approvals` None reads as "none".
    The request is admitted first (engine/procedure.py: the tool's default estimate)."""
    refused = admit(bundle, request)
    return settle(bundle, request, evaluate_call(bundle, request, state, refused), state)
