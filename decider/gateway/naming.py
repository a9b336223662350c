"""How several upstreams' tools and prompts share one namespace without collisions.

Exposed name = `<upstream>__<name>` (`time__get_current_time`). Upstream names are `[a-z0-9-]` only
(config.py), so the first `__` of an exposed name always ends the upstream name: the mapping is a
bijection whatever the upstream's own names contain. `__` rather than `.` because model APIs accept
only `[A-Za-z0-9_-]` in tool names. With `tool_names: plain` (one upstream only) names pass unchanged.
Policies always see the upstream's own name (`tool.name`) and `tool.server = mcp://<upstream>`.
"""

from __future__ import annotations

__all__ = ["SEPARATOR", "expose", "split"]

SEPARATOR = "__"


def expose(upstream: str, name: str, plain: bool) -> str:
    return name if plain else f"{upstream}{SEPARATOR}{name}"


def split(exposed: str, plain_upstream: str | None) -> tuple[str, str] | None:
    """(upstream, upstream's own name), or None when the name carries no upstream prefix."""
    if plain_upstream is not None:
        return plain_upstream, exposed
    upstream, sep, name = exposed.partition(SEPARATOR)
    if not sep or not upstream or not name:
        return None
    return upstream, name
