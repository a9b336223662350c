"""Named lists of a bundle (`spec.lists` in bundle.yaml, SPEC §10): inline, or read from a YAML or
CSV file inside the bundle folder. Round two: `{kind: patterns, items: […]}` holds RE2 regular
expressions (each checked here, an invalid one is an error at its line), `{kind: map, items: {…}}`
holds key -> value (a scalar or a list of scalars); `items` may name a YAML file too.

A list file is part of the bundle's sources (its bytes are in the revision and in the `.bundle`
archive), so the values a condition sees are always those of the revision that decided. Every
problem is reported as `file:line:col`, like any other load error.
"""

from __future__ import annotations

import csv
import io
import posixpath
from collections.abc import Callable, Iterable
from typing import Protocol

import re2
import yaml

from decider.errors import SourceError
from decider.policy.models import ListItem, ListSpec, MapValue

__all__ = ["list_paths", "read_lists", "element_type", "MAX_LIST_ITEMS", "ListValue", "PATTERNS", "MAP"]

PATTERNS, MAP = "patterns", "map"
# A list's values as conditions see them: a tuple (a plain or patterns list), or a dict (a map).
ListValue = tuple[ListItem, ...] | dict[str, MapValue]
_RE2_OPTIONS = re2.Options()
_RE2_OPTIONS.log_errors = False


class _Located(Protocol):
    """A YAML document and where it came from (policy/loader.Source, named structurally so this
    module, which the loader imports, does not import it back)."""

    file: str
    node: yaml.Node


# A list is copied into CEL for each decision whose policies name it: keep it a list, not a table.
MAX_LIST_ITEMS = 100_000


def _child(node: yaml.Node, key: str) -> yaml.Node | None:
    if isinstance(node, yaml.MappingNode):
        for k, v in node.value:
            if isinstance(k, yaml.ScalarNode) and k.value == key:
                return v
    return None


def _mark(node: yaml.Node) -> tuple[int, int]:
    return node.start_mark.line + 1, node.start_mark.column + 1


def list_paths(documents: Iterable[list[yaml.Node]]) -> set[str]:
    """The relative paths the Bundle document's `spec.lists` names (read from the YAML nodes, before
    validation: the loader must know which files are data before it reads the others as documents)."""
    found: set[str] = set()
    for nodes in documents:
        for node in nodes:
            kind = _child(node, "kind")
            if not isinstance(kind, yaml.ScalarNode) or kind.value != "Bundle":
                continue
            spec = _child(node, "spec")
            lists = _child(spec, "lists") if spec is not None else None
            if isinstance(lists, yaml.MappingNode):
                for _, v in lists.value:
                    items = _child(v, "items")   # {kind: …, items: file.yaml}
                    if items is not None:
                        v = items
                    if isinstance(v, yaml.ScalarNode) and v.tag == "tag:yaml.org,2002:str":
                        found.add(posixpath.normpath(v.value))
    return found


def element_type(items: ListValue) -> str:
    """The CEL element type of a list: string, double (any numbers: JSON arguments are doubles),
    bool, or dyn for a mix; a map's is `map:string` (every value a string) or `map:dyn`."""
    if isinstance(items, dict):
        return "map:string" if all(isinstance(v, str) for v in items.values()) else "map:dyn"
    kinds = {type(v) for v in items}
    if kinds <= {str}:
        return "string"
    if kinds <= {bool}:
        return "bool"
    if kinds <= {int, float}:
        return "double"
    return "dyn"


def read_lists(
    spec_lists: dict[str, list[ListItem] | str | ListSpec],
    bundle_src: _Located,
    files: dict[str, bytes],
    composed: dict[str, list[yaml.Node]],
    display: Callable[[str], str],
    errors: list[SourceError],
    kinds: dict[str, str] | None = None,
) -> dict[str, ListValue]:
    """Each named list's values; a missing or malformed file adds an error and leaves the list out.
    `kinds` receives the kind of each list that has one (`patterns`, `map`)."""
    out: dict[str, ListValue] = {}
    lists_node = _child(_child(bundle_src.node, "spec") or bundle_src.node, "lists")
    for name, value in spec_lists.items():
        here = _child(lists_node, name) if lists_node is not None else None
        line, col = _mark(here) if here is not None else _mark(bundle_src.node)
        if isinstance(value, ListSpec):
            got = _kind_items(name, value, bundle_src.file, here, files, composed, display, errors)
            if got is not None:
                out[name] = got
                if kinds is not None:
                    kinds[name] = value.kind
            continue
        if not isinstance(value, str):
            items: tuple[ListItem, ...] | None = _normalised(value)
        else:
            rel = posixpath.normpath(value)
            if rel not in files:
                errors.append(SourceError(bundle_src.file, line, col,
                                          f"list {name!r}: file {value!r} is not in the bundle folder"))
                continue
            if rel.endswith(".csv"):
                items = _csv_items(display(rel), files[rel], errors)
            else:
                items = _yaml_items(display(rel), composed.get(rel, []), errors)
        if items is None:
            continue
        if len(items) > MAX_LIST_ITEMS:
            errors.append(SourceError(bundle_src.file, line, col,
                                      f"list {name!r} has {len(items)} items; at most {MAX_LIST_ITEMS}"))
            continue
        out[name] = items
    return out


def _normalised(values: Iterable[ListItem]) -> tuple[ListItem, ...]:
    # Numbers are doubles in CEL's view of a list (see element_type); bools stay bools.
    return tuple(float(v) if isinstance(v, int) and not isinstance(v, bool) else v for v in values)


def _yaml_items(file: str, nodes: list[yaml.Node], errors: list[SourceError]) -> tuple[ListItem, ...] | None:
    """A YAML list file holds one sequence of scalars (strings, numbers, booleans)."""
    if len(nodes) != 1 or not isinstance(nodes[0], yaml.SequenceNode):
        line, col = _mark(nodes[0]) if nodes else (1, 1)
        errors.append(SourceError(file, line, col, "a list file holds one YAML sequence (- item per line)"))
        return None
    loader = yaml.SafeLoader("")
    values: list[ListItem] = []
    ok = True
    for item in nodes[0].value:
        value = loader.construct_object(item, deep=True) if isinstance(item, yaml.ScalarNode) else None
        if not isinstance(value, (str, int, float, bool)):
            line, col = _mark(item)
            errors.append(SourceError(file, line, col, "a list item must be a string, number or boolean"))
            ok = False
            continue
        values.append(value)
    return _normalised(values) if ok else None


def _csv_items(file: str, data: bytes, errors: list[SourceError]) -> tuple[ListItem, ...] | None:
    """A CSV list file: the first column of every row, as strings. Blank rows and rows whose first
    cell starts with `#` are skipped; there is no header row (write one as a `#` comment)."""
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        errors.append(SourceError(file, 1, 1, f"not UTF-8 text: {e.reason} at byte {e.start}"))
        return None
    values: list[ListItem] = []
    reader = csv.reader(io.StringIO(text), strict=True)
    try:
        for row in reader:
            first = row[0].strip() if row else ""
            if first and not first.startswith("#"):
                values.append(first)
    except csv.Error as e:
        errors.append(SourceError(file, reader.line_num, 1, f"bad CSV: {e}"))
        return None
    return tuple(values)


def _kind_items(name: str, spec: ListSpec, file: str, here: yaml.Node | None, files: dict[str, bytes],
                composed: dict[str, list[yaml.Node]], display: Callable[[str], str],
                errors: list[SourceError]) -> ListValue | None:
    """A `{kind, items}` list's values: patterns checked with RE2 (each error at its item's line),
    map values normalised as list values are."""
    items_node = _child(here, "items") if here is not None else None
    where_file = file
    nodes: list[yaml.Node] = [items_node] if items_node is not None else []
    raw: object = spec.items
    if isinstance(spec.items, str):
        rel = posixpath.normpath(spec.items)
        if rel not in files:
            line, col = _mark(items_node or here) if (items_node or here) is not None else (1, 1)
            errors.append(SourceError(file, line, col, f"list {name!r}: file {spec.items!r} is not in the bundle folder"))
            return None
        where_file = display(rel)
        nodes = composed.get(rel, [])
        want = yaml.SequenceNode if spec.kind == PATTERNS else yaml.MappingNode
        if len(nodes) != 1 or not isinstance(nodes[0], want):
            line, col = _mark(nodes[0]) if nodes else (1, 1)
            shape = "one YAML sequence of strings" if spec.kind == PATTERNS else "one YAML mapping (key: value)"
            errors.append(SourceError(where_file, line, col, f"a {spec.kind} list file holds {shape}"))
            return None
        raw = yaml.SafeLoader("").construct_document(nodes[0])
    if len(raw) > MAX_LIST_ITEMS:  # type: ignore[arg-type]
        line, col = _mark(here) if here is not None else (1, 1)
        errors.append(SourceError(file, line, col, f"list {name!r} has {len(raw)} items; at most {MAX_LIST_ITEMS}"))  # type: ignore[arg-type]
        return None
    node = nodes[0] if nodes else None
    if spec.kind == PATTERNS:
        return _patterns(raw, node, where_file, errors)
    return _map(raw, node, where_file, errors)


def _item_mark(node: yaml.Node | None, i: int) -> tuple[int, int]:
    if isinstance(node, yaml.SequenceNode) and i < len(node.value):
        return _mark(node.value[i])
    if isinstance(node, yaml.MappingNode) and i < len(node.value):
        return _mark(node.value[i][1])
    return _mark(node) if node is not None else (1, 1)


def _patterns(raw: object, node: yaml.Node | None, file: str, errors: list[SourceError]) -> tuple[ListItem, ...] | None:
    if not isinstance(raw, list):
        line, col = _mark(node) if node is not None else (1, 1)
        errors.append(SourceError(file, line, col, "a patterns list holds strings (RE2 regular expressions)"))
        return None
    ok = True
    for i, p in enumerate(raw):
        line, col = _item_mark(node, i)
        if not isinstance(p, str):
            errors.append(SourceError(file, line, col, "a pattern must be a string (an RE2 regular expression)"))
            ok = False
            continue
        try:
            re2.compile(p, _RE2_OPTIONS)
        except re2.error as e:
            why = e.args[0].decode(errors="replace") if e.args and isinstance(e.args[0], bytes) else str(e)
            errors.append(SourceError(file, line, col, f"invalid RE2 pattern {p!r}: {why}"))
            ok = False
    return tuple(raw) if ok else None


def _map(raw: object, node: yaml.Node | None, file: str, errors: list[SourceError]) -> dict[str, MapValue] | None:
    if not isinstance(raw, dict):
        line, col = _mark(node) if node is not None else (1, 1)
        errors.append(SourceError(file, line, col, "a map list holds key: value entries"))
        return None
    out: dict[str, MapValue] = {}
    ok = True
    for i, (k, v) in enumerate(raw.items()):
        scalar = (str, int, float, bool)
        if not isinstance(k, str) or not (isinstance(v, scalar) or (isinstance(v, list)
                                                                      and all(isinstance(x, scalar) for x in v))):
            line, col = _item_mark(node, i)
            errors.append(SourceError(file, line, col, "a map entry is a string key with a string, number, "
                                                       "boolean or list of those as its value"))
            ok = False
            continue
        out[k] = list(_normalised(v)) if isinstance(v, list) else _normalised((v,))[0]
    return out if ok else None
