"""decider's gRPC API as the console uses it: one channel per console process, every call made
with the logged-in user's own bearer token, errors turned into HTTP statuses."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import grpc

from decider.v1 import decider_pb2 as pb
from decider.v1 import decider_pb2_grpc as pb_grpc

__all__ = ["DeciderApi", "ApiError", "HTTP_STATUS"]

# A refusal by decider is the console's refusal, with the same meaning.
HTTP_STATUS = {
    grpc.StatusCode.INVALID_ARGUMENT: 400,
    grpc.StatusCode.UNAUTHENTICATED: 401,
    grpc.StatusCode.PERMISSION_DENIED: 403,
    grpc.StatusCode.NOT_FOUND: 404,
    grpc.StatusCode.FAILED_PRECONDITION: 409,
    grpc.StatusCode.ALREADY_EXISTS: 409,
    grpc.StatusCode.UNAVAILABLE: 503,
    grpc.StatusCode.DEADLINE_EXCEEDED: 504,
}


class ApiError(Exception):
    """decider refused or failed: `status` is the HTTP status the console answers with."""

    def __init__(self, code: grpc.StatusCode, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.status = HTTP_STATUS.get(code, 502)


def _call_error(e: grpc.aio.AioRpcError) -> ApiError:
    return ApiError(e.code(), e.details() or e.code().name)


class DeciderApi:
    def __init__(self, target: str, *, ca: str | None = None, cert: str | None = None, key: str | None = None,
                 timeout_s: float = 10.0) -> None:
        if ca or cert:
            creds = grpc.ssl_channel_credentials(
                root_certificates=Path(ca).read_bytes() if ca else None,
                private_key=Path(key).read_bytes() if key else None,
                certificate_chain=Path(cert).read_bytes() if cert else None)
            self.channel = grpc.aio.secure_channel(target, creds)
        else:
            self.channel = grpc.aio.insecure_channel(target)
        self.decider = pb_grpc.DeciderStub(self.channel)
        self.control = pb_grpc.ControlStub(self.channel)
        self.queries = pb_grpc.QueriesStub(self.channel)
        self.timeout_s = timeout_s

    async def close(self) -> None:
        await self.channel.close()

    async def call(self, method: Any, request: Any, token: str) -> Any:
        md = (("authorization", f"Bearer {token}"),) if token else None
        try:
            return await method(request, metadata=md, timeout=self.timeout_s)
        except grpc.aio.AioRpcError as e:
            raise _call_error(e) from None

    async def stream(self, method: Any, request: Any, token: str) -> AsyncIterator[Any]:
        md = (("authorization", f"Bearer {token}"),) if token else None
        call = method(request, metadata=md)
        try:
            async for item in call:
                yield item
        except grpc.aio.AioRpcError as e:
            raise _call_error(e) from None
        finally:
            call.cancel()

    # ---- the calls the console makes ---------------------------------------------------------
    async def whoami(self, token: str) -> pb.WhoAmIResponse:
        return await self.call(self.queries.WhoAmI, pb.WhoAmIRequest(), token)

    async def pending(self, token: str) -> list[pb.DecisionRecord]:
        resp = await self.call(self.decider.ListApprovals,
                               pb.ListApprovalsRequest(state=pb.APPROVAL_PENDING, limit=1000), token)
        return list(resp.approvals)

    async def resolve(self, token: str, decision_id: str, approve: bool, comment: str) -> pb.DecisionRecord:
        req = pb.ResolveApprovalRequest(decision_id=decision_id, resolution=pb.APPROVE if approve else pb.REJECT,
                                        comment=comment)
        return await self.call(self.decider.ResolveApproval, req, token)

    async def get(self, token: str, decision_id: str) -> pb.DecisionRecord:
        return await self.call(self.decider.GetDecision, pb.GetDecisionRequest(decision_id=decision_id), token)

    async def list_decisions(self, token: str, f: pb.DecisionFilter, *, limit: int = 100, after_id: str = "",
                             newest_first: bool = False, before_id: str = "") -> pb.ListDecisionsResponse:
        req = pb.ListDecisionsRequest(filter=f, limit=limit, after_id=after_id, newest_first=newest_first,
                                      before_id=before_id)
        return await self.call(self.queries.ListDecisions, req, token)

    async def watch_decisions(self, token: str, f: pb.DecisionFilter,
                              after_id: str = "") -> AsyncIterator[pb.DecisionRecord]:
        """Each newly committed record that matches, one at a time (the stream sends them in batches)."""
        req = pb.WatchDecisionsRequest(filter=f, after_id=after_id)
        async for batch in self.stream(self.queries.WatchDecisions, req, token):
            for rec in batch.decisions:
                yield rec

    async def kill_switches(self, token: str, include_cleared: bool = False) -> list[pb.KillSwitch]:
        resp = await self.call(self.control.ListKillSwitches,
                               pb.ListKillSwitchesRequest(include_cleared=include_cleared), token)
        return list(resp.kill_switches)

    async def engage(self, token: str, scope: str, value: str, reason: str) -> pb.KillSwitch:
        return await self.call(self.control.SetKillSwitch,
                               pb.SetKillSwitchRequest(scope=scope, value=value, reason=reason), token)

    async def release(self, token: str, switch_id: str) -> pb.KillSwitch:
        return await self.call(self.control.ClearKillSwitch, pb.ClearKillSwitchRequest(id=switch_id), token)

    async def status(self, token: str) -> pb.StatusResponse:
        return await self.call(self.control.Status, pb.StatusRequest(), token)

    async def bundles(self, token: str) -> list[pb.BundleInfo]:
        return list((await self.call(self.control.ListBundles, pb.ListBundlesRequest(), token)).bundles)

    async def shadow_diff(self, token: str) -> pb.ShadowDiffResponse:
        return await self.call(self.queries.ShadowDiff, pb.ShadowDiffRequest(limit=1000, examples=20), token)

    async def activate(self, token: str, revision: str) -> pb.BundleInfo:
        return await self.call(self.control.ActivateBundle, pb.ActivateBundleRequest(revision=revision), token)

    async def rollback(self, token: str) -> pb.BundleInfo:
        return await self.call(self.control.RollbackBundle, pb.RollbackBundleRequest(), token)

    async def budgets(self, token: str) -> list[pb.BudgetUsage]:
        return list((await self.call(self.queries.ListBudgets, pb.ListBudgetsRequest(), token)).budgets)
