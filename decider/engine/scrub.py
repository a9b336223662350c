"""Keep masked values out of the texts a decision carries (reasons and condition errors).

The record masks `tool.args`/`context` paths (values/masking.py), but a condition that errors on a
masked value gets an error message from the CEL runtime that quotes the value, in whatever form that
runtime chose (`'Hunter2'`, `"\\x07"`, a regex fragment such as `\\q`). So texts are scrubbed when the
decision is made, before anything stores or serves them:

1. every encoding of every masked value we know of (as is, JSON-escaped, Python-escaped,
   C-escaped) is replaced by MASK;
2. if the text still shares a run of `_GRAM` characters (or the whole value, when shorter) with
   any masked value, the text is withheld entirely: a fragment of a secret is still a secret.

Costs nothing for a bundle without `mask`, and runs only on decisions whose texts come from the
request (condition errors, schema violations, evaluation failures).
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Iterable, Sequence
from typing import Any

from decider.bundle.compile import Reason
from decider.v1 import decider_pb2 as pb
from decider.values.canonical import struct_to_dict_lenient
from decider.values.masking import MASK, split_mask_paths

__all__ = ["WITHHELD", "masked_values", "quotes_request", "scrub_text", "scrub_texts"]

WITHHELD = "[message withheld: it quoted a masked argument]"
_GRAM = 4            # a shared run this long (or the whole value, if shorter) withholds the text;
                     # at 3, ordinary words matched ordinary passwords (`integer` and `Hunter2`: `ter`)
_LONG = 4096         # a masked value longer than this withholds every text that quotes anything


def masked_values(request: pb.DecideRequest, mask: Sequence[str]) -> list[str]:
    """The text forms of every value (leaf, and key under a masked value) at the bundle's mask
    paths in this request; empty when nothing masked is present."""
    args_paths, ctx_paths = split_mask_paths(mask)
    found: list[Any] = []
    if args_paths and request.tool.args.fields:
        args = _plain(request.tool.args)
        for path in args_paths:
            _collect(args, list(path), found)
    if ctx_paths and request.context.fields:
        ctx = _plain(request.context)
        for path in ctx_paths:
            _collect(ctx, list(path), found)
    out: list[str] = []
    for value in found:
        _leaves(value, out)
    return [s for s in dict.fromkeys(out) if s]


def _plain(struct: Any) -> dict[str, Any]:
    # A NaN/Infinity (a request not through validate_request: `engine.decide` called directly) is
    # kept as the number, so its text forms are masked too.
    return struct_to_dict_lenient(struct, lambda x: x)


def _collect(node: Any, path: list[str], out: list[Any]) -> None:
    """The values `path` (with `*` segments) reaches, as masking.mask_json walks it."""
    if not path:
        out.append(node)
        return
    if isinstance(node, list):
        for item in node:
            _collect(item, path, out)
        return
    if not isinstance(node, dict):
        return
    head, rest = path[0], path[1:]
    for k in (list(node) if head == "*" else [head] if head in node else []):
        _collect(node[k], rest, out)


def _leaves(value: Any, out: list[str]) -> None:
    if isinstance(value, dict):
        for k, v in value.items():
            out.append(str(k))
            _leaves(v, out)
    elif isinstance(value, list):
        for v in value:
            _leaves(v, out)
    elif isinstance(value, bool):
        out.append("true" if value else "false")
    elif isinstance(value, float):
        out.append(str(int(value)) if value.is_integer() else repr(value))
        out.append(repr(value))
    elif value is not None:
        out.append(str(value))


def _encodings(secret: str) -> list[str]:
    """The forms a runtime may quote `secret` in."""
    forms = {
        secret,
        json.dumps(secret)[1:-1],
        json.dumps(secret, ensure_ascii=False)[1:-1],
        repr(secret)[1:-1],
        secret.encode("unicode_escape").decode("ascii"),
        secret.encode("unicode_escape").decode("ascii").replace('"', '\\"'),
        secret.encode("unicode_escape").decode("ascii").replace("'", "\\'"),
    }
    return [f for f in forms if f]


def scrub_text(text: str, secrets: Iterable[str]) -> str:
    """`text` with every masked value replaced by MASK, or WITHHELD when a fragment remains."""
    secrets = list(secrets)
    # Longest first across all values: `4821.0` before `4821`, so no form is left half-replaced.
    for form in sorted({f for secret in secrets for f in _encodings(secret)}, key=len, reverse=True):
        if form in text:
            text = text.replace(form, MASK)
    if _shares_fragment(text.replace(MASK, "\0"), secrets):
        return WITHHELD
    return text


def _shares_fragment(text: str, secrets: list[str]) -> bool:
    for secret in secrets:
        forms = _encodings(secret)
        if len(secret) > _LONG:
            return True   # too long to index cheaply: fail closed
        for form in forms:
            k = min(_GRAM, len(form))
            grams = {form[i:i + k] for i in range(len(form) - k + 1)}
            if any(text[i:i + k] in grams for i in range(len(text) - k + 1)):
                return True
    return False


def quotes_request(reason: Reason) -> bool:
    """A reason whose text may quote the request: built from an error or a schema violation
    (a rule's own `reason:` and the built-in texts are the bundle's words, left alone)."""
    return reason.rule_id in _QUOTING or reason.text.startswith("condition error")


_QUOTING = frozenset({"error", "invalid_arguments"})


def scrub_texts(reasons: tuple[Reason, ...], errors: tuple[str, ...],
                secrets: list[str]) -> tuple[tuple[Reason, ...], tuple[str, ...]]:
    """Reasons (those that quote the request) and errors with `scrub_text` applied."""
    new_reasons = tuple(dataclasses.replace(r, text=scrub_text(r.text, secrets)) if quotes_request(r) else r
                        for r in reasons)
    return new_reasons, tuple(scrub_text(e, secrets) for e in errors)
