"""How much of a tool's result `on: outcome` rules see (SPEC §10 round two): shared by the engine
(engine/outcome.py) and the senders (the MCP gateway), which must not import the engine."""

from __future__ import annotations

import json
from typing import Any

__all__ = ["RESULT_TEXT_MAX", "RESULT_MAX_BYTES", "STRUCTURED_MAX", "bounded_mcp_result"]

# What an outcome rule may read of a result: enough for an SSN or an injected instruction, bounded
# so that a huge download costs a bounded scan (the gateway sends at most this much text too).
RESULT_TEXT_MAX = 256 * 1024
# ReportOutcome refuses a larger `result` (INVALID_ARGUMENT): senders cut theirs to RESULT_TEXT_MAX.
RESULT_MAX_BYTES = 1024 * 1024
# Structured content is sent along only when its JSON is at most this long.
STRUCTURED_MAX = 64 * 1024


def bounded_mcp_result(result: dict[str, Any]) -> dict[str, Any]:
    """An MCP `CallToolResult` (as JSON) as a ReportOutcome `result`: its text content, cut to
    RESULT_TEXT_MAX characters in all; other content by type only; its structured content when small."""
    budget = RESULT_TEXT_MAX
    content: list[dict[str, Any]] = []
    items = result.get("content")
    for item in items if isinstance(items, list) else ():
        if not isinstance(item, dict):
            continue
        if item.get("type") == "text" and isinstance(item.get("text"), str):
            text = item["text"][:max(budget, 0)]
            budget -= len(text)
            content.append({"type": "text", "text": text})
        else:
            content.append({"type": str(item.get("type", ""))})
    out: dict[str, Any] = {"content": content, "isError": result.get("isError") is True}
    structured = result.get("structuredContent")
    if isinstance(structured, dict):
        try:
            if len(json.dumps(structured, default=str)) <= STRUCTURED_MAX:
                out["structuredContent"] = structured
        except (TypeError, ValueError):
            pass
    return out
