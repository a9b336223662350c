"""Named lists of a bundle (`spec.lists` in bundle.yaml, SPEC §10): inline, or read from a YAML or
CSV file inside the bundle folder.

A list file is part of the bundle's sources (its bytes are in the revision and in the `.bundle`
archive), so the values a condition sees are always those of the revision that decided. Every
problem is reported as `file:line:col`, like any other load error.
"""

from __future__ import annotations

import csv
import io
import posixpath
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING

import yaml

from decider.errors import SourceError
from decider.policy.models import ListItem

if TYPE_CHECKING:
    from decider.policy.loader import Source

__all__ = ["list_paths", "read_lists", "element_type", "MAX_LIST_ITEMS"]

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
                    if isinstance(v, yaml.ScalarNode) and v.tag == "tag:yaml.org,2002:str":
                        found.add(posixpath.normpath(v.value))
    return found


def element_type(items: tuple[ListItem, ...]) -> str:
    """The CEL element type of a list: string, double (any numbers: JSON arguments are doubles),
    bool, or dyn for a mix."""
    kinds = {type(v) for v in items}
    if kinds <= {str}:
        return "string"
    if kinds <= {bool}:
        return "bool"
    if kinds <= {int, float}:
        return "double"
    return "dyn"


def read_lists(
    spec_lists: dict[str, list[ListItem] | str],
    bundle_src: Source,
    files: dict[str, bytes],
    composed: dict[str, list[yaml.Node]],
    display: Callable[[str], str],
    errors: list[SourceError],
) -> dict[str, tuple[ListItem, ...]]:
    """Each named list's values; a missing or malformed file adds an error and leaves the list out."""
    out: dict[str, tuple[ListItem, ...]] = {}
    lists_node = _child(_child(bundle_src.node, "spec") or bundle_src.node, "lists")
    for name, value in spec_lists.items():
        here = _child(lists_node, name) if lists_node is not None else None
        line, col = _mark(here) if here is not None else _mark(bundle_src.node)
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
