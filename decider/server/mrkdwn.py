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
- inline values are one line (a newline would let the rest escape an inline span);
- limits count what is sent, after escaping (`<` is 4 characters as `&lt;`), so no value a caller
  picks can push a block past Slack's 3,000-character limit and get the message refused for good.

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


def _escaped_within(value: str, limit: int, link: bool = False) -> str:
    """`value` escaped, cut to at most `limit` characters of output (plus "…") between two
    characters, so an entity (`&amp;`) or a defused mention is never cut in half."""
    out: list[str] = []
    used = 0
    for ch in value:
        piece = escape_link(ch) if link else escape(ch)
        if used + len(piece) > limit:
            out.append("…")
            break
        out.append(piece)
        used += len(piece)
    return "".join(out)


def code(value: str, limit: int = 300) -> str:
    """One caller value as inline code: `value`, on one line, escaped, at most `limit` characters sent."""
    one_line = " ".join(value.replace("`", _BACKTICK).splitlines()) or "-"
    return f"`{_escaped_within(one_line, limit)}`"


def code_block(value: str, limit: int = 2000) -> str:
    """A caller value as a ``` block no content can close, at most `limit` characters sent."""
    return f"```{_escaped_within(value.replace('`', _BACKTICK), limit)}```"
