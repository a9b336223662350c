"""A bound caller reaches only its own agents' decisions, on every RPC (SPEC §9, issue 24 item 2).

Decide refuses a bound token speaking for another agent; the reads and writes that name a decision by
id (GetDecision, WatchDecision, ReportOutcome, ResolveApproval) refuse one outside the token's agents
and teams the same way (PERMISSION_DENIED, recorded in auth_events), and the listings leave such
decisions out.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Mapping
from datetime import datetime, timezone
from typing import Any

import grpc

from decider.server.auth import current_principal
from decider.store.auth_events import AuthEventStore

__all__ = ["refuse_unreached"]

log = logging.getLogger("decider.server.auth")


async def refuse_unreached(row: Mapping[str, Any], decision_id: str, method: str,
                           context: grpc.aio.ServicerContext, events: AuthEventStore | None) -> None:
    """Abort with PERMISSION_DENIED when the caller is bound and `row` is not one of its agents'."""
    caller = current_principal()
    if caller.reaches(row):
        return
    detail = caller.not_yours(decision_id)
    log.warning("refused", extra={"method": method, "code": "PERMISSION_DENIED", "principal": caller.name})
    if events is not None:
        event = {"time": datetime.now(timezone.utc), "method": method, "code": "PERMISSION_DENIED",
                 "principal": caller.name, "peer": context.peer() or "", "detail": detail}
        try:
            await asyncio.to_thread(events.record, event)
        except Exception as exc:  # noqa: BLE001 - refusing must not depend on the audit write
            log.error("auth event not recorded", extra={"error": str(exc)})
    await context.abort(grpc.StatusCode.PERMISSION_DENIED, detail)
