"""`x.matches("literal")` with the pattern compiled once instead of on every evaluation.

cel-expr-python 0.1.3 compiles the RE2 program of `matches` on every `eval` (its C++ runtime's
regex precompilation option is not exposed): 30–200 µs per rule, more than everything else a
decision costs. At bundle load, `rewrite_literal_matches` turns `.matches(<string literal>)` into
`._decider_matches(<same literal>)`, a member function backed by Google's RE2 (the `google-re2`
package: the same engine and syntax CEL uses, linear time) with a per-pattern cache. Only literal
patterns are rewritten (a pattern built from request data is never cached). The rule's `when` text,
its type check and its error positions all come from the original expression.

Regex capture (SPEC §10 round two): `re.extract(text, pattern)` (the first match's groups, a list)
and `re.named(text, pattern)` (its named groups, a map), on the same RE2 engine and cache, so that a
condition names what a pattern captured (with `cel.bind`) instead of writing the pattern twice.
CEL's own `regex` extension is not switched on: it compiles its pattern on every evaluation
(25–40 µs a call measured, like `matches` before the rewrite above).
"""

from __future__ import annotations

import functools
import re

import re2
from cel_expr_python import cel

__all__ = ["MATCHES_FUNCTION", "declaration", "extract", "named", "any_match", "rewrite_literal_matches"]

MATCHES_FUNCTION = "_decider_matches"

# CEL tokens that matter here. String literals first (so a `.matches(` inside a string is never
# touched), with optional raw/bytes prefixes and triple quotes; then comments, identifiers, the rest.
_TOKEN = re.compile(
    r"""(?P<str>(?:[rR][bB]?|[bB][rR]?)?(?:\"\"\"(?:\\.|[^\\])*?\"\"\"|'''(?:\\.|[^\\])*?'''|"(?:\\.|[^"\\\n])*"|'(?:\\.|[^'\\\n])*'))"""
    r"|(?P<comment>//[^\n]*)"
    r"|(?P<ws>\s+)"
    r"|(?P<ident>[_a-zA-Z][_a-zA-Z0-9]*)"
    r"|(?P<other>.)",
    re.S,
)


def rewrite_literal_matches(expression: str) -> str:
    """The expression with every `.matches(<string literal>)` turned into `._decider_matches(...)`;
    unchanged when there is none, or when the text does not tokenize cleanly."""
    tokens: list[tuple[str, str, int]] = []  # (kind, text, start) without whitespace and comments
    pos = 0
    for m in _TOKEN.finditer(expression):
        if m.start() != pos:
            return expression
        pos = m.end()
        kind = m.lastgroup or "other"
        if kind not in ("ws", "comment"):
            tokens.append((kind, m.group(), m.start()))
    if pos != len(expression):
        return expression
    spots = []
    for i in range(1, len(tokens) - 3):
        kind, text, start = tokens[i]
        if (kind == "ident" and text == "matches" and tokens[i - 1][1] == "."
                and tokens[i + 1][1] == "(" and tokens[i + 2][0] == "str" and tokens[i + 3][1] == ")"
                and not tokens[i + 2][1].lstrip("rR").startswith(("b", "B"))):
            spots.append(start)
    for start in reversed(spots):
        expression = expression[:start] + MATCHES_FUNCTION + expression[start + len("matches"):]
    return expression


_OPTIONS = re2.Options()
_OPTIONS.log_errors = False   # an invalid pattern is the rule's evaluation error, not a line on stderr


@functools.lru_cache(maxsize=1024)
def _compiled(pattern: str) -> re2._Regexp:
    try:
        return re2.compile(pattern, _OPTIONS)
    except re2.error as e:
        why = e.args[0].decode(errors="replace") if e.args and isinstance(e.args[0], bytes) else str(e)
        raise ValueError(f"invalid regular expression {pattern!r}: {why}") from None


def _matches(text: str, pattern: str) -> bool:
    # CEL's matches() is a partial match (RE2::PartialMatch): search, not fullmatch.
    return _compiled(pattern).search(text) is not None


def declaration() -> cel.FunctionDecl:
    return cel.FunctionDecl(
        MATCHES_FUNCTION,
        [cel.Overload("decider_matches_string", cel.Type.BOOL, [cel.Type.STRING, cel.Type.STRING],
                      is_member=True, impl=_matches)],
    )


def extract(text: str, pattern: str) -> list[str]:
    """The first match's capture groups, in order ("" for a group that took no part); the whole
    match when the pattern has no group; `[]` when nothing matches. An invalid pattern raises,
    which CEL turns into an evaluation error (the rule errors; `on_error` applies)."""
    m = _compiled(pattern).search(text)
    if m is None:
        return []
    if not m.re.groups:
        return [m.group(0)]
    return [g if g is not None else "" for g in m.groups()]


def named(text: str, pattern: str) -> dict[str, str]:
    """The first match's named groups (`(?P<id>…)`) by name ("" for one that took no part); `{}`
    when nothing matches."""
    m = _compiled(pattern).search(text)
    if m is None:
        return {}
    return {k: v if v is not None else "" for k, v in m.groupdict().items()}


@functools.lru_cache(maxsize=256)
def _pattern_set(patterns: tuple[str, ...]) -> re2.Set:
    # One RE2 set for the whole list (a bundle's `kind: patterns` list, usually): one search over
    # the text, whatever the number of patterns.
    rs = re2.Set.SearchSet(_OPTIONS)
    for p in patterns:
        try:
            rs.Add(p)
        except re2.error as e:
            why = e.args[0].decode(errors="replace") if e.args and isinstance(e.args[0], bytes) else str(e)
            raise ValueError(f"invalid regular expression {p!r}: {why}") from None
    rs.Compile()
    return rs


def any_match(text: str, patterns: list[str]) -> bool:
    """Does any of the RE2 patterns match (search) somewhere in the text? (`re.any`, for a
    `kind: patterns` list: `re.any(tool.args.body, lists.injection_phrases)`.)"""
    if not patterns:
        return False
    return _pattern_set(tuple(patterns)).Match(text) is not None


def capture_declarations() -> list[cel.FunctionDecl]:
    """`re.extract` and `re.named`: global functions, typed `string` like decider's others (a JSON
    value type-checks as `dyn`; a non-string there is a "no matching overload" evaluation error)."""
    string = cel.Type.STRING
    return [
        cel.FunctionDecl("re.extract", [cel.Overload("re_extract_string_string", cel.Type.List(string),
                                                     [string, string], impl=extract)]),
        cel.FunctionDecl("re.named", [cel.Overload("re_named_string_string", cel.Type.Map(string, string),
                                                   [string, string], impl=named)]),
        cel.FunctionDecl("re.any", [cel.Overload("re_any_string_list_string", cel.Type.BOOL,
                                                 [string, cel.Type.List(string)], impl=any_match)]),
    ]
