"""The words for the API's enum values, read from the proto descriptors so each is named once:
`pb.APPROVAL_PENDING` is "pending" wherever decider prints, stores or matches it."""

from __future__ import annotations

from decider.v1 import decider_pb2 as pb

__all__ = ["APPROVAL_STATE_NAMES", "approval_state_name"]

# 1 → "pending", … 5 → "consumed" (APPROVAL_STATE_UNSPECIFIED, no approval involved, is not here).
APPROVAL_STATE_NAMES: dict[int, str] = {
    v.number: v.name.removeprefix("APPROVAL_").lower()
    for v in pb.ApprovalState.DESCRIPTOR.values if v.number != pb.APPROVAL_STATE_UNSPECIFIED}


def approval_state_name(state: int, none: str = "") -> str:
    """The word for an approval state; `none` for APPROVAL_STATE_UNSPECIFIED or an unknown value."""
    return APPROVAL_STATE_NAMES.get(state, none)
