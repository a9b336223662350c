"""Slack mrkdwn for values a caller controls (agent ids, teams, tool names, arguments, reasons).

A notification is read by approvers, so what an agent sends must arrive as inert text: no live link
(`<https://host|label>`), no mention (`<!here>`, `<@U…>`, `@channel`), no way out of a code span.
Slack's rules: `&`, `<` and `>` are its control characters and must be sent as `&amp;`, `&lt;`,
`&gt;` everywhere, code included (https://api.slack.com/reference/surfaces/formatting#escaping).
Beyond them:

- every caller value goes in code formatting, where Slack neither links a bare URL or domain nor
  applies `*bold*`/`_italic_`;
- a backtick cannot end that code early: it becomes `ˋ` (U+02CB, which looks the same);
- `@` is followed by a zero-width space, so no `@channel`, `@here`, `@everyone` or `@name` pings;
- inline values are one line (a newline would let the rest escape an inline span).

The console shows the exact values; the notification is for reading, not copying.
"""

from __future__ import annotations

__all__ = ["escape", "escape_link", "code", "code_block"]

_BACKTICK = "\u02cb"
_ZWSP = "\u200b"


def escape_link(value: str) -> str:
    """Slack's three control characters only (a URL decider built: an `@` in it must stay)."""
    return value.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def escape(value: str) -> str:
    """Slack's three control characters, and mentions defused."""
    return escape_link(value).replace("@", "@" + _ZWSP)


def _cut(value: str, limit: int) -> str:
    # Cut before escaping, so an entity (`&amp;`) is never cut in half.
    return value if len(value) <= limit else value[:limit] + "…"


def code(value: str, limit: int = 300) -> str:
    """One caller value as inline code: `value`, on one line, escaped."""
    one_line = " ".join(_cut(value, limit).replace("`", _BACKTICK).splitlines()) or "-"
    return f"`{escape(one_line)}`"


def code_block(value: str, limit: int = 500) -> str:
    """A caller value as a ``` block no content can close."""
    return f"```{escape(_cut(value, limit).replace('`', _BACKTICK))}```"
