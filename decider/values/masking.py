"""Mask argument paths (bundle `mask`) before anything is stored.

Paths are dotted (`tool.args.password`, `context.user.token`); a `*` segment matches any key.
A masked value is replaced wholesale, whatever its type, so nothing of it reaches disk.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

__all__ = ["MASK", "mask_json", "split_mask_paths"]

MASK = "[masked]"


def split_mask_paths(paths: Sequence[str]) -> tuple[list[list[str]], list[list[str]]]:
    """Bundle mask paths → (paths under tool.args, paths under context), as segment lists."""
    args: list[list[str]] = []
    ctx: list[list[str]] = []
    for p in paths:
        parts = p.split(".")
        if parts[:2] == ["tool", "args"]:
            args.append(parts[2:])
        elif parts[0] == "context":
            ctx.append(parts[1:])
    return args, ctx


def mask_json(value: Any, paths: Sequence[Sequence[str]]) -> Any:
    """A copy of `value` with every path replaced by MASK (the input is never modified)."""
    if not paths or not isinstance(value, dict):
        return value
    out = dict(value)
    for path in paths:
        _mask_path(out, list(path))
    return out


def _mask_path(node: dict[str, Any], path: list[str]) -> None:
    if not path:
        return
    head, rest = path[0], path[1:]
    keys = list(node) if head == "*" else ([head] if head in node else [])
    for k in keys:
        if not rest:
            node[k] = MASK
        elif isinstance(node[k], dict):
            node[k] = dict(node[k])  # copy on write: never mutate the caller's value
            _mask_path(node[k], rest)
        elif isinstance(node[k], list):
            node[k] = [dict(x) if isinstance(x, dict) else x for x in node[k]]
            for item in node[k]:
                if isinstance(item, dict):
                    _mask_path(item, rest)
