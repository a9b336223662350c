"""CEL syntax errors in words. The parser (ANTLR) says `mismatched input '<EOF>' expecting {'[', '{',
'(', '.', '-', '!', 'true', …, IDENTIFIER}`; a policy author wants `expected an expression after
'&&', found the end of the condition`. Positions are unchanged: only the message is rewritten, and a
message this module does not recognise is kept as the parser wrote it."""

from __future__ import annotations

import re

__all__ = ["describe_syntax_error"]

# What may start an expression: when the parser expects any of these, it expects "an expression".
_EXPRESSION_START = {"'['", "'{'", "'('", "'.'", "'-'", "'!'", "'true'", "'false'", "'null'", "NUM_FLOAT",
                     "NUM_INT", "NUM_UINT", "STRING", "BYTES", "IDENTIFIER"}
_OPERATORS = ("&&", "||", "==", "!=", "<=", ">=", "<", ">", "+", "-", "*", "/", "%", "!", "?", ":", ",",
              "(", "[", "{", " in")
_PAIRS = {"')'": "'('", "']'": "'['", "'}'": "'{'"}

_MISMATCHED = re.compile(r"^(mismatched|extraneous) input '(.*)' expecting (.*)$", re.S)
_MISSING = re.compile(r"^missing (.*) at '(.*)'$", re.S)
_TOKEN = re.compile(r"^token recognition error at: '(.*)'$", re.S)
_ITEM = re.compile(r"'[^']*'|<EOF>|[A-Z_]+")
_NO_VIABLE = re.compile(r"^no viable alternative at input '(.*)'$", re.S)


def _found(token: str) -> str:
    return "the end of the condition" if token == "<EOF>" else f"'{token}'"


def _expected(spec: str) -> str:
    items = _ITEM.findall(spec)
    if items == ["<EOF>"]:
        return "the end of the condition"
    if _EXPRESSION_START <= set(items) or set(items) <= _EXPRESSION_START:
        return "an expression"
    return " or ".join(items)


def _before(expression: str, column: int) -> str:
    """The operator just before a 1-based column of the expression (on its last line), if any."""
    head = expression[: max(column - 1, 0)].rstrip()
    for op in _OPERATORS:
        if head.endswith(op):
            return op.strip()
    return ""


def describe_syntax_error(expression: str, line: int, column: int, message: str) -> str:
    """A parser message in words, or the message unchanged when it is not a syntax error we know."""
    if not message.startswith("Syntax error: "):
        return message
    text = message.removeprefix("Syntax error: ")
    lines = expression.split("\n")
    at_line = "\n".join(lines[:line - 1] + [lines[line - 1][: column - 1]]) if 0 < line <= len(lines) else ""
    if m := _MISMATCHED.match(text):
        kind, token, spec = m.groups()
        want = _expected(spec)
        op = _before(at_line, len(at_line) + 1)
        if want == "an expression" and op:
            return f"syntax error: expected an expression after '{op}', found {_found(token)}"
        if want == "the end of the condition":
            return (f"syntax error: unexpected {_found(token)} after a complete expression "
                    "(a missing operator such as && or ==, or an extra bracket?)")
        return f"syntax error: expected {want}, found {_found(token)}"
    if m := _MISSING.match(text):
        want, token = m.groups()
        opened = f" to close the {_PAIRS[want]}" if want in _PAIRS else ""
        return f"syntax error: expected {want}{opened}, found {_found(token)}"
    if m := _TOKEN.match(text):
        token = m.group(1)
        if token[:1] in ("'", '"'):
            return f"syntax error: a string is not closed: {token} has no closing {token[0]}"
        return f"syntax error: '{token}' cannot appear in a condition"
    if m := _NO_VIABLE.match(text):
        return f"syntax error: cannot make sense of the condition at {_found(m.group(1))}"
    return message
