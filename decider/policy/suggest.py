"""'did you mean …?' for unknown YAML keys: the valid keys at the place the error points to."""

from __future__ import annotations

import difflib
import types
import typing
from typing import Any

from pydantic import BaseModel

__all__ = ["valid_keys", "did_you_mean"]


def _step(t: Any, part: Any) -> Any:
    """The type found one `loc` step below `t` (a model field, a list item, a dict value), or None."""
    origin = typing.get_origin(t)
    if origin in (typing.Union, types.UnionType):
        for arg in typing.get_args(t):
            found = _step(arg, part)
            if found is not None:
                return found
        return None
    if isinstance(t, type) and issubclass(t, BaseModel):
        field = t.model_fields.get(str(part)) if isinstance(part, str) else None
        return field.annotation if field is not None else None
    if origin is list and isinstance(part, int):
        return typing.get_args(t)[0]
    if origin is dict and isinstance(part, str):
        return typing.get_args(t)[1]
    return None


def valid_keys(model: type[BaseModel], loc: tuple[Any, ...]) -> list[str]:
    """The keys allowed in the mapping that holds `loc[-1]` (a pydantic error location)."""
    t: Any = model
    for part in loc[:-1]:
        t = _step(t, part)
        if t is None:
            return []
    for arg in (t, *typing.get_args(t)):   # unwrap `X | None`
        if isinstance(arg, type) and issubclass(arg, BaseModel):
            return [f.alias or name for name, f in arg.model_fields.items()]
    return []


def did_you_mean(word: str, candidates: list[str]) -> str:
    """`"; did you mean 'tools'?"`, or "" when nothing is close."""
    close = difflib.get_close_matches(word, candidates, n=1, cutoff=0.6)
    if not close:
        close = [c for c in candidates if c.lower() == word.lower() or c.rstrip("s") == word.rstrip("s")][:1]
    return f"; did you mean '{close[0]}'?" if close else ""
