"""The secrets detector behind ``secrets.found`` and ``secrets.kinds``: credential patterns and
``key=value`` assignments with secret-looking keys, over a string or every string in a JSON value.
"""

from __future__ import annotations

import re
from typing import Any

# --------------------------------------------------------------------------------------------------
# secrets.found(text), secrets.kinds(text)
# --------------------------------------------------------------------------------------------------

SECRETS_SCAN_LIMIT = 1 << 20
"""Only the first 1 MiB (characters) of a text, or of all strings in a map/list, is scanned."""

# Longer keywords first: the keyword search below takes the first alternative that matches.
_SECRET_KEYWORDS = (
    r"password|passwd|passphrase|client[_-]?secret|secret[_-]?key|secret|api[_-]?key|access[_-]?key"
    r"|access[_-]?token|auth[_-]?token|refresh[_-]?token|token"
)
_WORD = "A-Za-z0-9_-"
_ALNUM = "A-Za-z0-9"
# One combined regex for the credential formats. Its shape is chosen for speed on large strings:
# every alternative starts with a literal character, so Python's regex engine jumps straight to
# candidate characters instead of trying each alternative at every position, and the "not glued
# to a longer word" look-behind sits right after that character, so a candidate in the middle of
# a word is dropped in O(1). Measured on 1 MiB: ordinary text and JSON 35–60 ms, adversarial
# input ("sk-sk-sk-…", "token: token: …") at most ~0.25 s; a naive alternation with leading
# look-behinds took 0.4 s on ordinary text and ~2 s on "sk-sk-sk-…". Short strings: a few µs.
# Groups are named k0, k1, … after their index in this table, which gives the kind.
_CREDENTIAL_ALTERNATIVES: tuple[tuple[str, str, str, str], ...] = (
    # (kind, first character, characters that must not precede it, rest of the pattern)
    ("private_key", "-", "", r"----BEGIN[ A-Z0-9]{0,40}PRIVATE KEY(?: BLOCK)?-----"),
    ("aws_access_key_id", "A", "A-Z0-9", r"(?:KIA|SIA)[A-Z0-9]{16}(?![A-Z0-9])"),
    ("google_api_key", "A", _WORD, rf"Iza[{_WORD}]{{35}}(?![{_WORD}])"),
    ("github_token", "g", _ALNUM + "_", r"h[pousr]_[A-Za-z0-9]{36,255}(?![A-Za-z0-9_])"),
    ("github_token", "g", _ALNUM + "_", r"ithub_pat_[A-Za-z0-9_]{22,255}(?![A-Za-z0-9_])"),
    ("slack_token", "x", _ALNUM, r"ox[abprs]-[A-Za-z0-9-]{10,250}"),
    ("stripe_key", "s", _ALNUM, r"k_live_[A-Za-z0-9]{16,247}"),
    ("stripe_key", "r", _ALNUM, r"k_live_[A-Za-z0-9]{16,247}"),
    ("anthropic_api_key", "s", _WORD, rf"k-ant-[{_WORD}]{{20,300}}"),
    # OpenAI keys (sk-…, sk-proj-…) need a digit, so that a kebab-case slug is not a key.
    ("openai_api_key", "s", _WORD, rf"k-(?!ant-)(?=[A-Za-z_-]{{0,300}}[0-9])[{_WORD}]{{20,300}}"),
    ("jwt", "e", _WORD, rf"yJ[{_WORD}]{{8,4096}}\.eyJ[{_WORD}]{{8,8192}}\.[{_WORD}]{{0,4096}}"),
    # user:password@ in a URL (`postgres://app:pw@db/x`); anchored on "://", the scheme is irrelevant.
    ("url_credentials", ":", "", r"//[^\s/:@]{1,256}:(?P<url_password>[^\s/@]{3,256})@"),
)
_CREDENTIALS = re.compile(
    "|".join(
        re.escape(first)
        + (f"(?<![{not_after}]{re.escape(first)})" if not_after else "")
        + f"(?P<k{index}>{rest})"
        for index, (_, first, not_after, rest) in enumerate(_CREDENTIAL_ALTERNATIVES)
    )
)
_KIND_OF_GROUP: dict[str, str] = {f"k{i}": kind for i, (kind, *_) in enumerate(_CREDENTIAL_ALTERNATIVES)}
# `password=…`-style assignments, found in two steps on the lower-cased text (case-insensitive
# without IGNORECASE, which would disable the jump to candidate characters): the keyword, which
# must not be the tail of a longer word ("mypassword") but may follow "_" or "-" ("db_password",
# "x-api-key"), then the assignment right after it.
_SECRET_KEYWORD = re.compile(_SECRET_KEYWORDS)
_ASSIGNED_VALUE = re.compile(r"[\"']?[ \t]*(?:=>|=|:)[ \t]*[\"']?([^\s\"'`,;&]{8,256})")
_SECRET_KEY = re.compile(rf"(?i:(?:.*[^a-z0-9])?(?:{_SECRET_KEYWORDS}))")
SECRET_KINDS: tuple[str, ...] = (
    "anthropic_api_key",
    "aws_access_key_id",
    "generic_secret",
    "github_token",
    "google_api_key",
    "jwt",
    "openai_api_key",
    "private_key",
    "slack_token",
    "stripe_key",
    "url_credentials",
)
"""Every kind ``secrets.kinds`` can report."""

# Values that are obviously not a real secret: templating, redaction, documentation.
_PLACEHOLDER_START = tuple("$%{<*[(")
_PLACEHOLDERS = frozenset(
    {
        "null",
        "none",
        "undefined",
        "redacted",
        "placeholder",
        "example",
        "password",
        "secret",
        "changeit",
        "notasecret",
    }
)
_LOWER_ALNUM = frozenset("abcdefghijklmnopqrstuvwxyz0123456789")


def _is_placeholder(value: str) -> bool:
    return (
        value.startswith(_PLACEHOLDER_START)
        or len(set(value)) == 1
        or value.strip("<>[](){}").lower() in _PLACEHOLDERS
    )


def _scan(text: str, first_only: bool) -> set[str]:
    if len(text) > SECRETS_SCAN_LIMIT:
        text = text[:SECRETS_SCAN_LIMIT]
    found: set[str] = set()
    pos = 0
    while match := _CREDENTIALS.search(text, pos):
        password = match.group("url_password")
        if password is not None and _is_placeholder(password):
            pos = match.start() + 1
            continue
        found.add(_KIND_OF_GROUP[match.lastgroup or ""])
        if first_only:
            return found
        pos = match.end()
    lowered = text.lower()
    pos = 0
    while keyword := _SECRET_KEYWORD.search(lowered, pos):
        start, pos = keyword.start(), keyword.start() + 1
        if start and lowered[start - 1] in _LOWER_ALNUM:
            continue
        assigned = _ASSIGNED_VALUE.match(lowered, keyword.end())
        if assigned is None:
            continue
        if not _is_placeholder(assigned.group(1)):
            found.add("generic_secret")
            break
        pos = assigned.end()  # the rest of a `${…}`/`****` value is not a fresh assignment
    return found


def _strings(value: Any) -> str:
    """All strings in a CEL map/list (a JSON value), ``key=value`` for map entries, up to the limit.

    Rendering ``{"password": "hunter2hunter"}`` as ``password=hunter2hunter`` lets the generic
    assignment pattern see key/value pairs that are never written out as text.
    """
    parts: list[str] = []
    budget = SECRETS_SCAN_LIMIT
    stack: list[Any] = [value]
    while stack and budget > 0:
        item = stack.pop()
        if isinstance(item, str):
            parts.append(item)
            budget -= len(item) + 1
        elif isinstance(item, dict):
            for key, child in item.items():
                if isinstance(child, str) and isinstance(key, str):
                    entry = f"{key}={child}" if _SECRET_KEY.fullmatch(key) else child
                    parts.append(entry)
                    budget -= len(entry) + 1
                else:
                    stack.append(child)
        elif isinstance(item, list):
            stack.extend(reversed(item))
    return "\n".join(parts)  # no pattern spans a newline, so strings never run together


def _text_of(value: str | dict[Any, Any] | list[Any]) -> str:
    return value if isinstance(value, str) else _strings(value)


def secrets_found(value: str | dict[Any, Any] | list[Any]) -> bool:
    """Whether the text (or any string inside a map/list) looks like it holds a credential."""
    return bool(_scan(_text_of(value), first_only=True))


def secrets_kinds(value: str | dict[Any, Any] | list[Any]) -> list[str]:
    """The kinds of credential found (sorted, each once); see ``SECRET_KINDS``."""
    return sorted(_scan(_text_of(value), first_only=False))
