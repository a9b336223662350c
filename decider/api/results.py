"""How much of a tool's result `on: outcome` rules see (SPEC §10 round two): shared by the engine
(engine/outcome.py) and the senders (the MCP gateway), which must not import the engine."""

from __future__ import annotations

import json
from collections.abc import Iterable
from typing import Any

__all__ = ["RESULT_TEXT_MAX", "RESULT_MAX_BYTES", "STRUCTURED_MAX", "bounded_mcp_result", "bounded_result"]

# What an outcome rule may read of a result: enough for an SSN or an injected instruction, bounded
# so that a huge download costs a bounded scan (the gateway sends at most this much text too).
RESULT_TEXT_MAX = 256 * 1024
# ReportOutcome refuses a larger `result` (INVALID_ARGUMENT): senders cut theirs to RESULT_TEXT_MAX.
RESULT_MAX_BYTES = 1024 * 1024
# Structured content is sent along only when its JSON is at most this long.
STRUCTURED_MAX = 64 * 1024


def bounded_mcp_result(result: dict[str, Any]) -> dict[str, Any]:
    """An MCP `CallToolResult` (as JSON) as a ReportOutcome `result`: see `bounded_result`."""
    items = result.get("content")
    parts = [(str(item.get("type", "")), item["text"] if item.get("type") == "text" and isinstance(item.get("text"), str)
              else None) for item in (items if isinstance(items, list) else ()) if isinstance(item, dict)]
    structured = result.get("structuredContent")
    return bounded_result(parts, result.get("isError") is True, structured if isinstance(structured, dict) else None)


def bounded_result(parts: Iterable[tuple[str, str | None]], is_error: bool, structured: object) -> dict[str, Any]:
    """A tool result's content parts (type, text or None) as a ReportOutcome `result`: the text,
    cut to RESULT_TEXT_MAX characters in all; other content by type only; the structured content
    when its JSON is at most STRUCTURED_MAX long. Shared by ExtMcp (JSON) and the gateway (the SDK's
    typed result), so both send the same."""
    budget = RESULT_TEXT_MAX
    content: list[dict[str, Any]] = []
    for kind, text in parts:
        if text is not None:
            text = text[:max(budget, 0)]
            budget -= len(text)
            content.append({"type": "text", "text": text})
        else:
            content.append({"type": kind})
    out: dict[str, Any] = {"content": content, "isError": is_error}
    if structured is not None:
        try:
            if len(json.dumps(structured, default=str)) <= STRUCTURED_MAX:
                out["structuredContent"] = structured
        except (TypeError, ValueError):
            pass
    return out
