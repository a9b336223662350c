"""How much of a tool's result `on: outcome` rules see (SPEC §10 round two): shared by the engine
(engine/outcome.py) and the senders (the MCP gateway), which must not import the engine."""

from __future__ import annotations

__all__ = ["RESULT_TEXT_MAX", "RESULT_MAX_BYTES"]

# What an outcome rule may read of a result: enough for an SSN or an injected instruction, bounded
# so that a huge download costs a bounded scan (the gateway sends at most this much text too).
RESULT_TEXT_MAX = 256 * 1024
# ReportOutcome refuses a larger `result` (INVALID_ARGUMENT): senders cut theirs to RESULT_TEXT_MAX.
RESULT_MAX_BYTES = 1024 * 1024
