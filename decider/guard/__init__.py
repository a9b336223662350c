"""Runtime guards: decider's decision before a tool runs inside a Python agent.

- `guard` — a decorator for plain sync and async functions (decider/guard/decorator.py);
- `decider.guard.openai_agents` — the OpenAI Agents SDK: `needs_approval` + a tool input guardrail;
- `decider.guard.langgraph` — LangChain / LangGraph tools: a wrapper, approvals through `interrupt`.

The SDK integrations import their SDK only when used (`pip install 'decider[guard]'`).
"""

from decider.guard.core import ApprovalPending, DeciderUnavailable, Guard, GuardError, ToolDenied, Verdict
from decider.guard.decorator import guard

__all__ = ["Guard", "Verdict", "guard", "GuardError", "ToolDenied", "ApprovalPending", "DeciderUnavailable"]
