"""Load a bundle source folder: YAML → validated policy models, with every error located.

The YAML is composed into nodes first (they carry line and column), then converted to plain
values and validated by pydantic. A validation error's `loc` path is walked back through the
nodes to find where in the file it points, so every problem is reported as `file:line:col`.
Nothing stops at the first error: the caller gets all of them at once.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ValidationError

from decider.errors import PolicyLoadError, SourceError
from decider.policy.lists import ListValue, list_paths, read_lists
from decider.policy.models import API_VERSION, AgentDoc, BundleDoc, PolicyDoc, Rule
from decider.policy.suggest import did_you_mean, valid_keys

__all__ = ["MAX_FILE_BYTES", "MAX_DEPTH", "too_large", "Source", "LoadedAgent", "LoadedPolicy", "PartialPolicy", "LoadedSource", "load_source", "load_files", "source_files", "locate"]

BUNDLE_FILE = "bundle.yaml"


@dataclass(frozen=True, slots=True)
class Source:
    """One policy document and the YAML node it came from (for positions)."""

    file: str
    node: yaml.Node


@dataclass(frozen=True, slots=True)
class LoadedPolicy:
    doc: PolicyDoc
    source: Source


@dataclass(frozen=True, slots=True)
class LoadedAgent:
    doc: AgentDoc
    source: Source


@dataclass(frozen=True, slots=True)
class PartialPolicy:
    """The rules that did validate in a policy document that did not: compiled only so their CEL
    errors are reported in the same run as the document's other errors."""

    name: str
    source: Source
    rules: list[tuple[int, Rule]]


@dataclass(slots=True)
class LoadedSource:
    """A folder's validated documents, its raw files (for the revision hash) and the errors so far.

    `bundle` is None only when `errors` is not empty.
    """

    root: Path
    bundle: BundleDoc | None
    bundle_source: Source | None
    policies: list[LoadedPolicy]
    files: dict[str, bytes] = field(default_factory=dict)
    errors: list[SourceError] = field(default_factory=list)
    partial: list[PartialPolicy] = field(default_factory=list)
    texts: dict[str, bytes] = field(default_factory=dict)   # by display name, for error positions
    lists: dict[str, ListValue] = field(default_factory=dict)   # spec.lists, files read
    agents: list[LoadedAgent] = field(default_factory=list)  # `kind: Agent` manifests
    list_kinds: dict[str, str] = field(default_factory=dict)  # lists with a `kind` (patterns, map)


def source_files(root: Path) -> list[Path]:
    """The files that make up a bundle: `*.yaml`/`*.yml` (documents, or lists named in
    `spec.lists`) and `*.csv` (lists), nested, minus `*_test.yaml` suites."""
    found = [
        p
        for p in root.rglob("*")
        if p.is_file()
        and p.suffix in (".yaml", ".yml", ".csv")
        and not p.stem.endswith("_test")
        and not any(part.startswith(".") for part in p.relative_to(root).parts)
    ]
    return sorted(found, key=lambda p: p.relative_to(root).as_posix())


def load_source(root: str | Path) -> LoadedSource:
    """Read and validate every document under `root`; problems are collected in `.errors`.

    Raises PolicyLoadError only when `root` is not a folder.
    """
    root = Path(root)
    if not root.is_dir():
        raise PolicyLoadError([SourceError(str(root), 1, 1, "bundle source is not a folder")])
    files: dict[str, bytes] = {}
    oversized: list[SourceError] = []
    for path in source_files(root):
        rel = path.relative_to(root).as_posix()
        if (err := too_large(str(path), path.stat().st_size)) is not None:
            oversized.append(err)   # never read into memory
            continue
        files[rel] = path.read_bytes()
    loaded = load_files(files, root, lambda rel: str(root / rel))
    loaded.errors[:0] = oversized
    return loaded


def load_files(files: dict[str, bytes], root: Path, display: Callable[[str], str]) -> LoadedSource:
    """Validate a bundle source given as {relative path: bytes} (a folder's files, or the sources
    inside a bundle file). `display(rel)` names a file in error positions, so an error in a bundle
    file can say `x.bundle!/payments.yaml:14:11`."""
    errors: list[SourceError] = []
    bundles: list[tuple[BundleDoc, Source]] = []
    policies: list[LoadedPolicy] = []
    partial: list[PartialPolicy] = []
    agents: list[LoadedAgent] = []
    texts: dict[str, bytes] = {}
    composed: dict[str, list[yaml.Node]] = {}
    budget = NodeBudget()
    for rel in sorted(files):
        name = display(rel)
        texts[name] = files[rel]
        if not rel.endswith(".csv"):  # CSV files are only ever lists
            composed[rel] = _compose_all(name, files[rel], errors, budget)
    # Files named by `spec.lists` are data, not documents.
    data_files = list_paths(composed.values())
    kinds: list[str | None] = []
    for rel, nodes in composed.items():
        if rel in data_files:
            continue
        for node in nodes:
            kinds.append(_load_document(display(rel), node, errors, bundles, policies, partial, agents))
    if not bundles and "Bundle" not in kinds:   # a Bundle that failed validation has its own errors
        errors.append(SourceError(display(BUNDLE_FILE), 1, 1, "no document of kind Bundle found"))
    elif len(bundles) > 1:
        for _, src in bundles[1:]:
            line, col = _mark(src.node)
            errors.append(SourceError(src.file, line, col, "a bundle source has exactly one kind: Bundle"))
    bundle_doc, bundle_src = bundles[0] if len(bundles) == 1 else (None, None)
    list_kinds: dict[str, str] = {}
    lists = read_lists(bundle_doc.spec.lists, bundle_src, files, composed, display, errors, list_kinds) \
        if bundle_doc is not None and bundle_src is not None else {}
    return LoadedSource(root, bundle_doc, bundle_src, policies, dict(files), errors, partial, texts, lists, agents,
                        list_kinds)


# A policy file is hand-written text: kilobytes. The caps keep a hostile file from costing more than
# a moment of CPU and a few MB: no file above MAX_FILE_BYTES is parsed, nesting stops at MAX_DEPTH,
# and aliases (`*name`) are refused outright — nine levels of nine aliases expand to 387 million
# nodes from a few hundred bytes (the "billion laughs"), and nothing in a policy needs them.
MAX_FILE_BYTES = 1 << 20
MAX_DEPTH = 64
# Nodes are what cost (issue 24 item 7: a 1 MiB flow list `[a,a,…]` is 350,000 nodes — 15 s of CPU and
# 430 MB in the pure-Python parser). Counted as they are composed, so composing stops at the limit
# instead of after the file: a document may hold a list file's MAX_LIST_ITEMS entries and some
# change, a bundle's files together little more.
MAX_DOCUMENT_NODES = 101_000
MAX_BUNDLE_NODES = 200_000


class NodeBudget:
    """The nodes a bundle's files may still compose (shared by every file of one bundle)."""

    def __init__(self, limit: int = MAX_BUNDLE_NODES) -> None:
        self.limit = limit
        self.left = limit


# The events come from libyaml when PyYAML has it (7x faster than its pure-Python scanner and
# parser); the nodes are composed here, in Python, so that every node is counted and checked.
_Parser: Any = getattr(getattr(yaml, "_yaml", None), "CParser", None) if yaml.__with_libyaml__ else None
_EVENTS: tuple[type, ...] = (_Parser,) if _Parser is not None else (
    yaml.reader.Reader, yaml.scanner.Scanner, yaml.parser.Parser)


class _PolicyLoader(yaml.composer.Composer, yaml.resolver.Resolver, *_EVENTS):  # type: ignore[misc]
    """A composer that refuses aliases and bounds nesting and node counts while composing, with the
    position; over libyaml's parser when available, else PyYAML's own."""

    def __init__(self, stream: str, budget: NodeBudget) -> None:
        if _Parser is not None:
            _Parser.__init__(self, stream)
        else:
            yaml.reader.Reader.__init__(self, stream)
            yaml.scanner.Scanner.__init__(self)
            yaml.parser.Parser.__init__(self)
        yaml.composer.Composer.__init__(self)
        yaml.resolver.Resolver.__init__(self)
        self._depth = 0
        self._nodes = 0
        self._budget = budget

    def compose_document(self) -> yaml.Node | None:
        self._nodes = 0   # the per-document count
        return super().compose_document()

    def compose_node(self, parent: yaml.Node | None, index: Any) -> yaml.Node | None:
        if self.check_event(yaml.AliasEvent):
            mark = self.peek_event().start_mark
            raise yaml.composer.ComposerError(
                None, None, "aliases (*name) are not allowed in policy files; write the value out", mark)
        self._nodes += 1
        self._budget.left -= 1
        if self._nodes > MAX_DOCUMENT_NODES:
            raise yaml.composer.ComposerError(
                None, None, f"more than {MAX_DOCUMENT_NODES} nodes (values, keys, list items) in one document",
                self.peek_event().start_mark)
        if self._budget.left < 0:
            raise yaml.composer.ComposerError(
                None, None, f"the bundle's files hold more than {self._budget.limit} nodes (values, keys, "
                            "list items)", self.peek_event().start_mark)
        self._depth += 1
        try:
            if self._depth > MAX_DEPTH:
                raise yaml.composer.ComposerError(
                    None, None, f"nested more than {MAX_DEPTH} levels deep", self.peek_event().start_mark)
            return super().compose_node(parent, index)
        finally:
            self._depth -= 1



def too_large(file: str, size: int) -> SourceError | None:
    """The error for a policy file above MAX_FILE_BYTES (checked before it is read), else None."""
    if size <= MAX_FILE_BYTES:
        return None
    return SourceError(file, 1, 1, f"file is {size} bytes; the limit for a policy file is {MAX_FILE_BYTES} bytes")


def _compose_all(file: str, data: bytes, errors: list[SourceError], budget: NodeBudget | None = None) -> list[yaml.Node]:
    if (err := too_large(file, len(data))) is not None:
        errors.append(err)
        return []
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as e:
        errors.append(SourceError(file, 1, 1, f"not UTF-8 text: {e.reason} at byte {e.start}"))
        return []
    if (err := unprintable(file, text)) is not None:
        errors.append(err)
        return []
    loader = _PolicyLoader(text, budget or NodeBudget())   # no bundle: this file's own budget
    try:
        nodes: list[yaml.Node] = []
        while loader.check_node():
            node = loader.get_node()
            if node is not None:
                nodes.append(node)
        return nodes
    except yaml.MarkedYAMLError as e:
        mark = e.problem_mark or e.context_mark
        line, col = (mark.line + 1, mark.column + 1) if mark else (1, 1)
        errors.append(SourceError(file, line, col, f"bad YAML: {e.problem or e.context}"))
        return []
    except yaml.YAMLError as e:   # any other refusal of the YAML library still names the file
        errors.append(SourceError(file, 1, 1, f"bad YAML: {e}"))
        return []
    finally:
        loader.dispose()


def unprintable(file: str, text: str) -> SourceError | None:
    """A control character (NUL, BEL, ESC…) where YAML allows none, as `file:line:col`; None if clean.

    PyYAML refuses such a character with a ReaderError that has no line or column (only a
    character offset), before composing anything; found here first, it is reported like any
    other error in a policy file (issue 24 item 5)."""
    m = yaml.reader.Reader.NON_PRINTABLE.search(text)
    if m is None:
        return None
    pos = m.start()
    line = text.count("\n", 0, pos) + 1
    col = pos - (text.rfind("\n", 0, pos) + 1) + 1
    return SourceError(file, line, col, f"control character U+{ord(m.group()):04X} is not allowed in a policy "
                                        "file (only tab, newline and printable characters are)")


def _load_document(
    file: str,
    node: yaml.Node,
    errors: list[SourceError],
    bundles: list[tuple[BundleDoc, Source]],
    policies: list[LoadedPolicy],
    partial: list[PartialPolicy],
    agents: list[LoadedAgent],
) -> str | None:
    """Validate one document into `bundles` or `policies` (errors into `errors`); returns its kind."""
    value = _to_python(file, node, errors)
    if value is None:
        return None
    src = Source(file, node)
    if not isinstance(value, dict):
        line, col = _mark(node)
        errors.append(SourceError(file, line, col, "a document must be a mapping with apiVersion and kind"))
        return None
    kind = value.get("kind")
    if value.get("apiVersion") != API_VERSION:
        n = _child(node, "apiVersion") or node
        line, col = _mark(n)
        errors.append(SourceError(file, line, col, f"apiVersion must be {API_VERSION!r}"))
        return None
    model: type[BundleDoc] | type[PolicyDoc] | type[AgentDoc]
    if kind == "Bundle":
        model = BundleDoc
    elif kind == "Policy":
        model = PolicyDoc
    elif kind == "Agent":
        model = AgentDoc
    else:
        n = _child(node, "kind") or node
        line, col = _mark(n)
        errors.append(SourceError(file, line, col, f"unknown kind {kind!r}: use Bundle, Policy or Agent"))
        return None
    try:
        doc = model.model_validate(value)
    except ValidationError as e:
        for err in e.errors():
            errors.append(_validation_error(file, node, err, model))
        if model is PolicyDoc:
            partial.append(_salvage_rules(value, src))
        return str(kind)
    if isinstance(doc, BundleDoc):
        bundles.append((doc, src))
    elif isinstance(doc, AgentDoc):
        agents.append(LoadedAgent(doc, src))
    else:
        policies.append(LoadedPolicy(doc, src))
    return str(kind)


def _salvage_rules(value: dict[str, Any], src: Source) -> PartialPolicy:
    spec = value.get("spec")
    raw = spec.get("rules") if isinstance(spec, dict) else None
    meta = value.get("metadata")
    name = str(meta.get("name", "?")) if isinstance(meta, dict) else "?"
    good: list[tuple[int, Rule]] = []
    for i, item in enumerate(raw if isinstance(raw, list) else []):
        try:
            good.append((i, Rule.model_validate(item)))
        except ValidationError:
            continue  # already reported through the document's own validation errors
    return PartialPolicy(name, src, good)


def _validation_error(file: str, node: yaml.Node, err: Any, model: type[BaseModel] | None = None) -> SourceError:
    loc = tuple(err["loc"])
    kind = err["type"]
    if kind == "extra_forbidden":
        target = locate(node, loc, key=True)
        hint = did_you_mean(str(loc[-1]), valid_keys(model, loc)) if model is not None else ""
        message = f"unknown key {loc[-1]!r}{hint}"
    elif kind == "missing":
        target = locate(node, loc[:-1])
        message = f"missing required key {loc[-1]!r}"
    else:
        target = locate(node, loc)
        where = ".".join(str(p) for p in loc)
        message = f"{where}: {_clean(err['msg'])}" if where else _clean(err["msg"])
    line, col = _mark(target)
    return SourceError(file, line, col, message)


def _clean(msg: str) -> str:
    # pydantic prefixes messages from our validators with "Value error, ".
    return msg.removeprefix("Value error, ")


def locate(node: yaml.Node, loc: tuple[Any, ...], key: bool = False) -> yaml.Node:
    """Walk a pydantic `loc` path down the YAML nodes; return the deepest node reached."""
    current = node
    for i, part in enumerate(loc):
        last = i == len(loc) - 1
        if isinstance(current, yaml.MappingNode):
            for k, v in current.value:
                if k.value == str(part):
                    current = k if (last and key) else v
                    break
            else:
                return current
        elif isinstance(current, yaml.SequenceNode) and isinstance(part, int) and part < len(current.value):
            current = current.value[part]
        else:
            return current
    return current


def _child(node: yaml.Node, key: str) -> yaml.Node | None:
    if isinstance(node, yaml.MappingNode):
        for k, v in node.value:
            if k.value == key:
                return v
    return None


def _mark(node: yaml.Node) -> tuple[int, int]:
    return node.start_mark.line + 1, node.start_mark.column + 1


_constructor = yaml.SafeLoader.__new__(yaml.SafeLoader)
yaml.constructor.SafeConstructor.__init__(_constructor)


def _to_python(file: str, node: yaml.Node, errors: list[SourceError]) -> Any:
    """Convert a node tree to plain values; duplicate mapping keys are errors, not last-wins."""
    if isinstance(node, yaml.MappingNode):
        out: dict[Any, Any] = {}
        for k, v in node.value:
            # A key is a name: YAML 1.1 reads a plain `on:` (`yes:`, `off:` …) as a boolean, but a
            # rule's `on: outcome` means the word (SPEC §10 round two).
            if isinstance(k, yaml.ScalarNode) and k.tag == "tag:yaml.org,2002:bool" and not k.style:
                key: Any = k.value
            else:
                key = _to_python(file, k, errors)
            if not isinstance(key, (str, int, float, bool)) and key is not None:
                line, col = _mark(k)
                errors.append(SourceError(file, line, col, "mapping keys must be scalars"))
                continue
            if key in out:
                line, col = _mark(k)
                errors.append(SourceError(file, line, col, f"duplicate key {key!r}"))
                continue
            out[key] = _to_python(file, v, errors)
        return out
    if isinstance(node, yaml.SequenceNode):
        return [_to_python(file, v, errors) for v in node.value]
    try:
        return _constructor.construct_object(node, deep=True)
    except yaml.constructor.ConstructorError as e:
        line, col = _mark(node)
        errors.append(SourceError(file, line, col, f"bad YAML value: {e.problem}"))
        return None
