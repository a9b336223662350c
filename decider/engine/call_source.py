"""`call.source` as conditions see it (SPEC §10 round two): `"call"` for a call the agent made as a
tool call, `"text"` for an action `decider replay` read from the agent's text (a ReAct
`Action: …` written in a final answer, TraceCall.from_text).

Only replay knows a call came from text, and the API has no field for it on purpose: a caller
must not be able to claim "text" for a real call, so the server always shows `"call"`. Replay sets
the source around the one decision it is for; a context variable carries it to the activation
without threading it through every layer between (engine/memory.py, the decision procedure).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar

__all__ = ["CALL", "TEXT", "call_source", "source"]

CALL, TEXT = "call", "text"
_SOURCE: ContextVar[str] = ContextVar("decider_call_source", default=CALL)


def call_source() -> str:
    """The source of the call being decided now (`"call"` unless replay said otherwise)."""
    return _SOURCE.get()


@contextmanager
def source(value: str) -> Iterator[None]:
    """Decide the calls inside this block as coming from `value` (`"call"` or `"text"`)."""
    token = _SOURCE.set(value)
    try:
        yield
    finally:
        _SOURCE.reset(token)
