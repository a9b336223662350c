"""`@guard(tool="payments.refund", client=...)`: a decision before a plain Python function runs.

The function's arguments (bound to its signature, defaults applied) are `tool.args`. ALLOW → the
function runs, then ReportOutcome (`ok`, or `error` when it raised). DENY → `ToolDenied`;
REQUIRE_APPROVAL → waits up to `approval_wait` for an approver, then runs (approved) or raises
`ToolDenied` (rejected, expired) / `ApprovalPending` (nobody answered). No decision → `DeciderUnavailable`.
The function never runs without an ALLOW.
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable, Mapping
from typing import Any, ParamSpec, TypeVar, cast

from decider.client import DeciderClient, renamed_server
from decider.guard.core import Guard, Verdict

__all__ = ["guard", "call_args"]

P = ParamSpec("P")
R = TypeVar("R")


def call_args(fn: Callable[..., Any], args: tuple[Any, ...], kwargs: Mapping[str, Any]) -> dict[str, Any]:
    """The call's arguments by parameter name; `self`/`cls` of a method are not arguments of the tool."""
    bound = inspect.signature(fn).bind(*args, **kwargs)
    bound.apply_defaults()
    out: dict[str, Any] = {}
    for name, value in bound.arguments.items():
        if name in ("self", "cls"):
            continue
        kind = inspect.signature(fn).parameters[name].kind
        if kind is inspect.Parameter.VAR_KEYWORD:
            out.update(value)
        else:
            out[name] = list(value) if kind is inspect.Parameter.VAR_POSITIONAL else value
    return out


def guard(tool: str | None = None, *, client: Guard | DeciderClient | str, agent: Mapping[str, Any] | None = None,
          tool_server: str = "", approval_wait: float | None = None,
          cost: Callable[..., float] | float = 0.0,
          server: str | None = None) -> Callable[[Callable[P, R]], Callable[P, R]]:
    """Guard a sync or async function. `client` is a `Guard` (identity included), or a client or
    target with `agent=`; `tool` defaults to the function's name; `cost` is the estimated cost, or a
    function of the call's arguments that gives it."""
    tool_server = renamed_server(tool_server, server, "guard")
    if isinstance(client, Guard):
        g = client
    else:
        if agent is None:
            raise TypeError("guard(): agent= is required unless client is a decider.guard.Guard")
        g = Guard(client, agent=agent, tool_server=tool_server)
    srv = tool_server or None   # None: the Guard's own tool server

    def decorate(fn: Callable[P, R]) -> Callable[P, R]:
        name = tool or fn.__name__

        def estimate(arguments: dict[str, Any]) -> float:
            return float(cost(**arguments)) if callable(cost) else float(cost)

        def verdict_for(arguments: dict[str, Any]) -> Verdict:
            return g.check(name, arguments, estimated_cost=estimate(arguments), wait=approval_wait, tool_server=srv)

        if inspect.iscoroutinefunction(fn):
            @functools.wraps(fn)
            async def run_async(*args: P.args, **kwargs: P.kwargs) -> Any:
                arguments = call_args(fn, args, kwargs)
                verdict = await g.acheck(name, arguments, estimated_cost=estimate(arguments), wait=approval_wait,
                                         tool_server=srv)
                if not verdict.allowed:
                    raise verdict.error()
                try:
                    result = await fn(*args, **kwargs)  # type: ignore[misc]
                except BaseException:
                    await g.areport(verdict.decision_id, "error")
                    raise
                await g.areport(verdict.decision_id, "ok", result=result)
                return result
            wrapper = cast(Callable[P, R], run_async)
        else:
            @functools.wraps(fn)
            def run(*args: P.args, **kwargs: P.kwargs) -> R:
                verdict = verdict_for(call_args(fn, args, kwargs))
                if not verdict.allowed:
                    raise verdict.error()
                try:
                    result = fn(*args, **kwargs)
                except BaseException:
                    g.report(verdict.decision_id, "error")
                    raise
                g.report(verdict.decision_id, "ok", result=result)
                return result
            wrapper = run
        wrapper.__decider_tool__ = name  # type: ignore[attr-defined]
        return wrapper

    return decorate
