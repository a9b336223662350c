"""The user's request in a trace: the text of the first user message (SPEC §10), for
`context.user_request` in replay, so a policy can compare what the agent does with what was asked.

Shared by the readers: it understands the message shapes of `_messages.py` (OpenAI chat, Responses
items, Anthropic blocks, OTel GenAI `parts`, Google `parts[{text}]`) and the wrappers they arrive in
(`{messages}`, `{prompt}`, Google ADK `{new_message}`, JSON text holding any of those).
"""

from __future__ import annotations

from typing import Any

from decider.replay.traces._parse import decode_json_text

__all__ = ["user_request_in", "with_user_request", "first_user_event"]

_USER_ROLES = frozenset({"user", "human"})
_TEXT_PART_TYPES = frozenset({None, "text", "input_text"})
_WRAPPERS = ("messages", "new_message", "input", "contents", "prompt", "history")
_MAX_DEPTH = 6


def _text(content: object) -> str | None:
    """A message's text: a string, or the text parts of a list of parts/blocks, joined."""
    if isinstance(content, str):
        return content.strip() or None
    if isinstance(content, list):
        texts = []
        for part in content:
            if isinstance(part, str):
                texts.append(part)
            elif isinstance(part, dict) and part.get("type") in _TEXT_PART_TYPES:
                t = part.get("text") if isinstance(part.get("text"), str) else part.get("content")
                if isinstance(t, str):
                    texts.append(t)
        joined = "\n".join(t for t in texts if t.strip())
        return joined.strip() or None
    return None


def _message_text(m: dict[str, Any]) -> str | None:
    text = _text(m.get("content"))
    if text is None:
        text = _text(m.get("parts"))
    return text


def user_request_in(value: object, *, plain_text: bool = False, _depth: int = 0) -> str | None:
    """The first user message's text in `value`, or None. `plain_text`: a string that is not JSON is
    itself the request (a Langfuse trace's `input` can be the user's question as is)."""
    if _depth > _MAX_DEPTH:
        return None
    if isinstance(value, str):
        decoded, reason = decode_json_text(value)
        if reason is None and isinstance(decoded, (dict, list)):
            return user_request_in(decoded, _depth=_depth + 1)
        if not plain_text:
            return None
        text = decoded if reason is None and isinstance(decoded, str) else value  # JSON text of a string
        return text.strip() or None
    if isinstance(value, list):
        for item in value:
            if isinstance(item, dict) and item.get("role") in _USER_ROLES:
                text = _message_text(item)
                if text is not None:
                    return text
        return None
    if isinstance(value, dict):
        if value.get("role") in _USER_ROLES:
            return _message_text(value)
        for key in _WRAPPERS:
            inner = value.get(key)
            if inner is None:
                continue
            if key == "prompt" and isinstance(inner, str):
                return inner.strip() or None
            found = user_request_in(inner, _depth=_depth + 1)
            if found is not None:
                return found
    return None


def first_user_event(events: list[Any]) -> str | None:
    """OpenHands: the first `message` action from the user."""
    for e in events:
        if isinstance(e, dict) and e.get("source") == "user" and e.get("action") == "message":
            args = e.get("args")
            text = args.get("content") if isinstance(args, dict) else None
            if isinstance(text, str) and text.strip():
                return text.strip()
    return None


def with_user_request(context: dict[str, Any] | None, request: str | None) -> dict[str, Any] | None:
    """`context` with `user_request` added (a new dict; None stays None when there is no request)."""
    if request is None:
        return context
    return {**(context or {}), "user_request": request}
