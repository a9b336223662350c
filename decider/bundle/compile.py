"""Compile a loaded bundle source into its immutable runtime form.

The runtime `Bundle` holds compiled CEL programs and a rule index built once, so the request
path never touches YAML or pydantic and evaluates only the rules whose `match` fits the tool.
"""

from __future__ import annotations

import difflib
import fnmatch
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import re2
import yaml
from cel_expr_python import cel

from decider.bundle.costs import ToolCost, compile_cost
from decider.bundle.identity_lint import identity_warnings
from decider.bundle.manifests import EMPTY_INDEX, AgentIndex, compile_manifests
from decider.bundle.revision import revision_of
from decider.bundle.schemas import ToolSchema, argument_reads, compile_schemas, tools_covered
from decider.cel.env import ListDecl, compile_combined, compile_condition, environment
from decider.errors import PolicyLoadError, SourceError
from decider.policy.lists import PATTERNS, ListValue, element_type
from decider.policy.loader import LoadedSource, Source, load_files, load_source, locate
from decider.policy.models import BudgetSpec, Rule, ToolInfo, parse_duration
from decider.v1 import decider_pb2 as pb

__all__ = ["Reason", "Bundle", "CompiledPolicy", "CompiledRule", "compile_bundle", "load_bundle", "open_bundle",
           "open_bundle_bytes", "OpenedBundle", "load_bundle_files", "revision_of", "bundle_lists", "list_declarations",
           "lists_named"]

EFFECT_OUTCOME = {"allow": pb.ALLOW, "deny": pb.DENY, "require_approval": pb.REQUIRE_APPROVAL}
EFFECT_PB = {"allow": pb.EFFECT_ALLOW, "deny": pb.EFFECT_DENY, "require_approval": pb.EFFECT_REQUIRE_APPROVAL}
DEFAULT_APPROVAL_TTL_S = 3600
# A tool neither the request nor the catalogue rates is treated as critical: fail closed.
UNKNOWN_RISK_TIER = 4
_INDEX_CACHE_MAX = 4096
_MISS = object()


@dataclass(frozen=True, slots=True)
class Reason:
    """Why a decision came out as it did: a rule (or a built-in such as `default`, `killed`)."""

    rule_id: str
    text: str
    policy: str = ""
    effect: str = ""


# The CEL variables a condition can name; a policy binds only those its conditions mention.
_VARIABLE = re.compile(r"\b(agent|tool|request|context|budget|session|call)\b")
# `lists.<name>` not followed by `(`: `lists.range(3)` is the CEL lists extension, not a named list.
_LIST_REF = re.compile(r"\blists\s*\.\s*([A-Za-z_]\w*)\b(?!\s*\()")
_UNKNOWN_LIST = re.compile(r"undeclared reference to 'lists\.([A-Za-z_]\w*)'")


def lists_named(expression: str) -> frozenset[str]:
    """The named lists an expression may read (textual, like `variables_named`)."""
    return frozenset(_LIST_REF.findall(expression))


def variables_named(expression: str) -> frozenset[str]:
    """The activation variables an expression may read (a textual scan: over-inclusion only costs
    a little time; CEL has no other way to reach a variable than by its name)."""
    return frozenset(_VARIABLE.findall(expression))


@dataclass(frozen=True, slots=True)
class CompiledRule:
    id: str
    policy: str
    effect: str                      # allow | deny | require_approval
    outcome: int                     # pb.Outcome of the effect
    program: cel.Expression
    reason: str
    approvers: tuple[str, ...]
    approval_ttl_s: int
    location: str                    # file:line of the rule, for reports
    when: str
    # The condition is the literal `true` (a baseline allow): it holds without evaluating CEL,
    # which saves a whole eval (~5 µs) per request for the most common rule shape.
    always: bool = False
    # Built once: the reason a decision carries when this rule decides.
    reason_of: Reason = Reason("", "")
    # Attached to the call's record when the condition holds (SPEC §10). An `effect: label` rule
    # has outcome OUTCOME_UNSPECIFIED: it never votes.
    labels: tuple[str, ...] = ()
    # A policy's `spec.default` (`<policy>.default`): on a tie with explicit rules, they decide.
    policy_default: bool = False
    # `on: outcome` (SPEC §10 round two): run when the outcome is reported, on the tool's result.
    on_outcome: bool = False


def _policy_default(policy: str, effect: str, location: str) -> CompiledRule:
    """A policy's `spec.default` as a rule that always holds; the engine counts its vote only when
    none of the policy's own rules held. Its id is `<policy>.default`."""
    rid = f"{policy}.default"
    text = f"no rule of policy {policy} held; policy default is {effect}"
    return CompiledRule(
        id=rid, policy=policy, effect=effect, outcome=EFFECT_OUTCOME[effect], program=None,  # type: ignore[arg-type]
        reason=text, approvers=(), approval_ttl_s=DEFAULT_APPROVAL_TTL_S, location=location, when="true",
        always=True, reason_of=Reason(rid, text, policy, effect), policy_default=True,
    )


@dataclass(frozen=True, slots=True)
class CompiledPolicy:
    name: str
    order: int
    rules: tuple[CompiledRule, ...]
    tools: tuple[str, ...]                  # names and globs (a plain list named in match.tools: its items)
    # Matchers for the non-tool match fields; None means "any".
    servers: Callable[[str], object] | None
    teams: Callable[[str], object] | None
    agents: Callable[[str], object] | None
    workflows: Callable[[str], object] | None
    # Every non-`always` condition of the policy as one CEL list program: one evaluation per policy
    # instead of one per rule (each eval has a fixed cost of a few µs). None when it cannot be built;
    # on an error value the engine falls back to evaluating rule by rule for exact messages.
    program: cel.Expression | None = None
    # For each rule, its index in the program's list (-1 for an `always` rule).
    slots: tuple[int, ...] = ()
    needs: frozenset[str] = frozenset()     # activation variables the conditions mention
    lists: frozenset[str] = frozenset()     # named lists the conditions mention
    # `spec.default`: this vote counts when the policy fits and none of its rules held.
    default: CompiledRule | None = None
    # RE2 patterns of the `kind: patterns` lists `match.tools` names (the whole tool name must match).
    tool_patterns: tuple[str, ...] = ()
    any_tool: bool = True                   # no `match.tools` at all (an empty list named there: no tool)
    # `on: outcome` rules (engine/outcome.py), never evaluated when the call is decided.
    outcome_rules: tuple[CompiledRule, ...] = ()

    def fits(self, agent: pb.Agent, tool: pb.ToolCall) -> bool:
        return (
            (self.servers is None or self.servers(tool.server) is not None)
            and (self.teams is None or self.teams(agent.team) is not None)
            and (self.agents is None or self.agents(agent.id) is not None)
            and (self.workflows is None or self.workflows(agent.workflow) is not None)
        )


@dataclass(slots=True)
class Bundle:
    """A compiled bundle: immutable after construction (the index cache only memoises)."""

    name: str
    version: str
    revision: str
    default: str
    on_error: str
    policies: tuple[CompiledPolicy, ...]
    budgets: tuple[BudgetSpec, ...]
    mask: tuple[str, ...]
    tool_tiers: dict[str, int]
    tier_globs: tuple[tuple[re.Pattern[str], int], ...]
    _exact: dict[str, tuple[int, ...]]
    _globbed: tuple[tuple[re.Pattern[str] | _ToolPatterns, int], ...]
    _always: tuple[int, ...]
    _cache: dict[str, tuple[CompiledPolicy, ...]] = field(default_factory=dict)
    _needs: dict[str, frozenset[str]] = field(default_factory=dict)
    # The named lists (`spec.lists`), and the CEL env whose `lists.<name>` variables they fill.
    lists: dict[str, ListValue] = field(default_factory=dict)
    env: object = None
    outcome_env: object = None      # the env of `on: outcome` rules (declares `result`); None without any
    _list_data: dict[str, dict[str, object]] = field(default_factory=dict)
    agents: AgentIndex = EMPTY_INDEX                       # `kind: Agent` manifests (SPEC §9)
    schemas: dict[str, ToolSchema] = field(default_factory=dict)   # catalogue key → argument schema
    _schema_globs: tuple[tuple[re.Pattern[str], ToolSchema], ...] = ()
    _schema_cache: dict[str, ToolSchema | None] = field(default_factory=dict)
    warnings: tuple[SourceError, ...] = ()                  # for `decider check`; never fatal
    # `spec.session`: how much history `session` shows (SPEC §10).
    session_max_calls: int = 200
    session_window_s: int = 86400
    session_key: str = "session"     # whose history: "session" (agent.session_id) | "agent" (agent.id)
    # Does any policy read `session`? (The server keeps session history only then.)
    reads_session: bool = False
    # Does any rule carry `labels:`? (The engine collects labels only then.)
    labels_rules: bool = False
    # `spec.tools.<name>.cost`: the estimate of a call that carries none (SPEC §11).
    costs: dict[str, ToolCost] = field(default_factory=dict)
    _cost_globs: tuple[tuple[re.Pattern[str], ToolCost], ...] = ()
    _cost_cache: dict[str, ToolCost | None] = field(default_factory=dict)

    def cost(self, tool_name: str) -> ToolCost | None:
        """The tool's default cost: its own entry, else the longest catalogue glob with one (memoised)."""
        if not self.costs:
            return None
        hit = self._cost_cache.get(tool_name, _MISS)
        if hit is not _MISS:
            return hit  # type: ignore[return-value]
        hit = self.costs.get(tool_name)
        if hit is None:
            hit = next((c for rx, c in self._cost_globs if rx.match(tool_name)), None)
        if len(self._cost_cache) < _INDEX_CACHE_MAX:
            self._cost_cache[tool_name] = hit
        return hit

    def history_key(self, agent: pb.Agent) -> str:
        """The key a call's session history is kept under: its session id, or with
        `spec.session.key: agent` its agent id ("" = no history)."""
        return agent.id if self.session_key == "agent" else agent.session_id

    def reads_session_for(self, tool_name: str) -> bool:
        """Does a policy this tool's calls meet read `session`? (No history is read otherwise.)"""
        return self.reads_session and "session" in self.needs(tool_name)

    @property
    def rules(self) -> tuple[CompiledRule, ...]:
        return tuple(r for p in self.policies for r in p.rules)

    def candidates(self, tool_name: str) -> tuple[CompiledPolicy, ...]:
        """The policies whose `match.tools` fit this tool name, in bundle order (memoised)."""
        hit = self._cache.get(tool_name)
        if hit is not None:
            return hit
        idx = set(self._exact.get(tool_name, ()))
        idx.update(self._always)
        idx.update(i for rx, i in self._globbed if rx.match(tool_name))
        found = tuple(self.policies[i] for i in sorted(idx))
        if len(self._cache) < _INDEX_CACHE_MAX:
            self._cache[tool_name] = found
        return found

    def needs(self, tool_name: str) -> frozenset[str]:
        """The activation variables the candidate policies of this tool read (memoised)."""
        hit = self._needs.get(tool_name)
        if hit is None:
            hit = frozenset().union(*(p.needs for p in self.candidates(tool_name)))
            if len(self._needs) < _INDEX_CACHE_MAX:
                self._needs[tool_name] = hit
        return hit

    def list_data(self, tool_name: str) -> dict[str, object]:
        """`{"lists.<name>": values}` for the lists this tool's candidate policies name (memoised):
        CEL copies each bound list per decision, so a list no candidate reads is not bound."""
        hit = self._list_data.get(tool_name)
        if hit is None:
            names = frozenset().union(*(p.lists for p in self.candidates(tool_name)))
            hit = {f"lists.{n}": _cel_value(self.lists[n]) for n in sorted(names) if n in self.lists}
            if len(self._list_data) < _INDEX_CACHE_MAX:
                self._list_data[tool_name] = hit
        return hit

    def schema(self, tool_name: str) -> ToolSchema | None:
        """The tool's argument schema: its own entry, else the longest catalogue glob that has
        one (memoised; None for a tool without a schema, which behaves as before schemas)."""
        if not self.schemas:
            return None
        hit = self._schema_cache.get(tool_name, _MISS)
        if hit is not _MISS:
            return hit  # type: ignore[return-value]
        hit = self.schemas.get(tool_name)
        if hit is None:
            for rx, sch in self._schema_globs:
                if rx.match(tool_name):
                    hit = sch
                    break
        if len(self._schema_cache) < _INDEX_CACHE_MAX:
            self._schema_cache[tool_name] = hit
        return hit

    def risk_tier(self, tool_name: str) -> int:
        tier = self.tool_tiers.get(tool_name)
        if tier is not None:
            return tier
        for rx, t in self.tier_globs:
            if rx.match(tool_name):
                return t
        return UNKNOWN_RISK_TIER


_LIST_ENTRY = re.compile(r"^lists\.([A-Za-z_]\w*)$")
_RE2_OPTIONS = re2.Options()
_RE2_OPTIONS.log_errors = False


class _ToolPatterns:
    """`match.tools` patterns from `kind: patterns` lists: RE2, matching the whole tool name (as a
    glob there does), all of a policy's in one set."""

    __slots__ = ("_set",)

    def __init__(self, patterns: tuple[str, ...]) -> None:
        self._set = re2.Set.FullMatchSet(_RE2_OPTIONS)
        for p in patterns:
            self._set.Add(p)
        self._set.Compile()

    def match(self, name: str) -> bool:
        return self._set.Match(name) is not None


def _match_tools(entries: list[str], source: Source, src: LoadedSource,
                 errors: list[SourceError], what: str = "tools") -> tuple[tuple[str, ...], tuple[str, ...]]:
    """`match.<what>` (tools, servers, teams, agents, workflows) with each `lists.<name>` entry
    replaced by the list: a plain list's strings are names and globs, a `kind: patterns` list's are
    RE2 patterns. (names and globs, patterns)."""
    tools: list[str] = []
    patterns: list[str] = []
    for i, entry in enumerate(entries):
        m = _LIST_ENTRY.match(entry)
        if m is None:
            tools.append(entry)
            continue
        name = m[1]
        node = locate(source.node, ("spec", "match", what, i))
        line, col = node.start_mark.line + 1, node.start_mark.column + 1
        items = src.lists.get(name)
        if items is None:
            if src.bundle is not None and name not in src.bundle.spec.lists:
                known = ", ".join(sorted(src.bundle.spec.lists)) or "none"
                errors.append(SourceError(source.file, line, col,
                                          f"match.{what}: unknown list {name!r} (the bundle's lists: {known})"))
            continue   # a list whose file did not load has its own error
        if isinstance(items, dict):
            errors.append(SourceError(source.file, line, col,
                                      f"match.{what}: list {name!r} is a map; name a list of "
                                      f"{'tool names' if what == 'tools' else 'names'} or patterns"))
        elif not all(isinstance(x, str) for x in items):
            errors.append(SourceError(source.file, line, col,
                                      f"match.{what}: list {name!r} holds values that are not strings"))
        elif src.list_kinds.get(name) == PATTERNS:
            patterns.extend(str(x) for x in items)
        else:
            tools.extend(str(x) for x in items)
    return tuple(tools), tuple(patterns)


def _glob_rx(pattern: str) -> re.Pattern[str]:
    return re.compile(fnmatch.translate(pattern))


def _is_glob(pattern: str) -> bool:
    return any(c in pattern for c in "*?[")


def _matcher(patterns: list[str] | tuple[str, ...]) -> Callable[[str], object] | None:
    if not patterns:
        return None
    return re.compile("|".join(f"(?:{fnmatch.translate(p)})" for p in patterns)).match


def _field_matcher(entries: list[str], source: Source, src: LoadedSource, errors: list[SourceError],
                   what: str) -> Callable[[str], object] | None:
    """The matcher of `match.servers` / `teams` / `agents` / `workflows`: names and globs, and the
    lists they name (a `kind: patterns` list's RE2 patterns match the whole value). None: any value;
    a field that names only empty lists matches no value."""
    if not entries:
        return None
    globs, patterns = _match_tools(entries, source, src, errors, what)
    by_glob = _matcher(globs)
    by_pattern = _ToolPatterns(patterns).match if patterns else None
    if by_pattern is None:
        return by_glob or _no_value
    if by_glob is None:
        return lambda v: True if by_pattern(v) else None
    return lambda v: by_glob(v) or (True if by_pattern(v) else None)


def _no_value(_value: str) -> None:
    return None


@dataclass(frozen=True, slots=True)
class OpenedBundle:
    """A compiled bundle and what it was read from."""

    bundle: Bundle
    signed: bool
    archive: bytes          # the `.bundle` file bytes (built from the sources for a folder, when asked)


def open_bundle(root: str | Path, *, pubkey: object | None = None, require_signature: bool = False,
                with_archive: bool = False) -> OpenedBundle:
    """The one bundle loader (CLI and server): load, validate and compile a bundle source folder or
    a `.bundle` file. Raises PolicyLoadError with every error, or BundleVerifyError when a bundle
    file fails verification.

    A bundle file is verified (manifest hashes; the signature when `pubkey`, an Ed25519 public key,
    is given) and then compiled exactly like the folder it was built from: same revision, and
    error positions name the file inside the bundle (`x.bundle!/payments.yaml:14:11`).
    `with_archive`: also build a folder's `.bundle` bytes (the server stores every revision it runs).
    """
    from decider.bundle.archive import BundleVerifyError, build_archive, build_manifest, read_archive_bytes

    path = Path(root)
    if path.is_file():
        return open_bundle_bytes(read_archive_bytes(path),  # size-checked before it is read
                                 str(path), pubkey=pubkey, require_signature=require_signature)
    if require_signature:
        raise BundleVerifyError(str(path), ["a folder cannot carry a signature: serve a signed .bundle file"])
    src = load_source(path)
    bundle = compile_bundle(src)
    archive = b""
    if with_archive:
        archive = build_archive(build_manifest(bundle.name, bundle.version, bundle.revision, src.files, None),
                                src.files)
    return OpenedBundle(bundle, False, archive)


def open_bundle_bytes(data: bytes, display: str, *, pubkey: object | None = None,
                      require_signature: bool = False) -> OpenedBundle:
    """A `.bundle` file's bytes (a file, or a revision from the store), verified and compiled."""
    from decider.bundle.archive import read_bundle_bytes

    bf = read_bundle_bytes(data, display, pubkey, require_signature)  # type: ignore[arg-type]
    return OpenedBundle(compile_bundle(load_bundle_files(bf.files, display)), bf.signed, data)


def load_bundle(root: str | Path, *, pubkey: object | None = None, require_signature: bool = False) -> Bundle:
    """`open_bundle(...).bundle`: the compiled bundle of a folder or `.bundle` file."""
    return open_bundle(root, pubkey=pubkey, require_signature=require_signature).bundle


def load_bundle_files(files: dict[str, bytes], display: str) -> LoadedSource:
    """The sources of a bundle file, validated; files are named `<display>!/<path>` in errors."""
    return load_files(files, Path(display), lambda rel: f"{display}!/{rel}")


def list_declarations(lists: dict[str, ListValue]) -> ListDecl:
    """The CEL declarations (name, element type) of a bundle's named lists."""
    return tuple((name, element_type(items)) for name, items in sorted(lists.items()))


def _cel_value(items: ListValue) -> object:
    # A fresh list / dict: what CEL is handed must not alias the bundle's own values.
    return dict(items) if isinstance(items, dict) else list(items)


def bundle_lists(bundle: Bundle) -> dict[str, object]:
    """A bundle's named lists as plain values, e.g. for `decider eval --bundle` (bind each as
    `lists.<name>` in `environment(list_declarations(bundle.lists))`)."""
    return {name: _cel_value(items) for name, items in bundle.lists.items()}


def compile_bundle(src: LoadedSource) -> Bundle:
    """Compile every condition and build the index; raises PolicyLoadError with every error found
    here and while loading, so one run reports them all."""
    errors: list[SourceError] = list(src.errors)
    lines_of: dict[str, list[str]] = {}
    seen_ids: dict[str, str] = {}
    policies: list[CompiledPolicy] = []
    # A list whose file could not be read is still declared (already reported: no cascade of
    # "unknown list" errors); with no valid Bundle document, list names are not checked at all.
    unread = [n for n in (src.bundle.spec.lists if src.bundle is not None else ()) if n not in src.lists]
    declared = tuple(sorted(list_declarations(src.lists) + tuple((n, "dyn") for n in unread)))
    env = environment(declared)
    # The env that declares `result`, only for a bundle with `on: outcome` rules (an env costs ~ms).
    wants_outcome = any(r.on == "outcome" for lp in src.policies for r in lp.doc.spec.rules) or any(
        r.on == "outcome" for pp in src.partial for _, r in pp.rules)
    outcome_env = environment(declared, outcome=True) if wants_outcome else None
    list_names = sorted([*src.lists, *unread]) if src.bundle is not None else None
    for order, lp in enumerate(src.policies):
        doc = lp.doc
        compiled_rules = _compile_rules(doc.metadata.name, lp.source, list(enumerate(doc.spec.rules)), seen_ids,
                                        lines_of, errors, src.texts, env, list_names, outcome_env)
        rules = [r for r in compiled_rules if not r.on_outcome]
        default = None
        if doc.spec.default is not None:
            node = locate(lp.source.node, ("spec", "default"))
            here = f"{lp.source.file}:{node.start_mark.line + 1}:{node.start_mark.column + 1}"
            default = _policy_default(doc.metadata.name, doc.spec.default, here)
            if default.id in seen_ids:
                errors.append(SourceError(lp.source.file, node.start_mark.line + 1, node.start_mark.column + 1,
                                          f"policy default id {default.id!r} is also the id of the rule at "
                                          f"{seen_ids[default.id]}"))
            else:
                seen_ids[default.id] = here
        m = doc.spec.match
        tools, tool_patterns = _match_tools(m.tools, lp.source, src, errors)
        evaluated = [r for r in rules if not r.always]
        slots, k = [], 0
        for r in rules:
            slots.append(-1 if r.always else k)
            k += 0 if r.always else 1
        policies.append(
            CompiledPolicy(
                name=doc.metadata.name,
                order=order,
                rules=tuple(rules),
                tools=tools,
                tool_patterns=tool_patterns,
                any_tool=not m.tools,
                servers=_field_matcher(m.servers, lp.source, src, errors, "servers"),
                teams=_field_matcher(m.teams, lp.source, src, errors, "teams"),
                agents=_field_matcher(m.agents, lp.source, src, errors, "agents"),
                workflows=_field_matcher(m.workflows, lp.source, src, errors, "workflows"),
                program=compile_combined([r.when for r in evaluated], env) if len(evaluated) > 1 else None,
                slots=tuple(slots),
                needs=frozenset().union(*(variables_named(r.when) for r in evaluated)),
                lists=frozenset().union(*(lists_named(r.when) for r in evaluated)),
                default=default,
                outcome_rules=tuple(r for r in compiled_rules if r.on_outcome),
            )
        )
    for pp in src.partial:
        _compile_rules(pp.name, pp.source, pp.rules, seen_ids, lines_of, errors, src.texts, env, list_names,
                       outcome_env)
    agents, schemas, costs = EMPTY_INDEX, {}, {}
    if src.bundle is not None:
        agents = compile_manifests(src.agents, src.bundle.spec.agents.unregistered,
                                   lambda f, ln, c, msg: errors.append(SourceError(f, ln, c, msg)))
        schemas = _compile_schemas(src, errors)
        _check_argument_reads(src, src.bundle.spec.tools, schemas, lines_of, errors)
        costs = _compile_costs(src, env, lines_of, errors)
    if errors or src.bundle is None:
        raise PolicyLoadError(errors)

    exact: dict[str, list[int]] = {}
    globbed: list[tuple[re.Pattern[str] | _ToolPatterns, int]] = []
    always: list[int] = []
    for i, p in enumerate(policies):
        if p.any_tool:
            always.append(i)
        if p.tool_patterns:
            globbed.append((_ToolPatterns(p.tool_patterns), i))
        for t in p.tools:
            if _is_glob(t):
                globbed.append((_glob_rx(t), i))
            else:
                exact.setdefault(t, []).append(i)
    spec = src.bundle.spec
    meta = src.bundle.metadata
    tiers = {k: v.risk_tier for k, v in spec.tools.items() if not _is_glob(k) and v.risk_tier is not None}
    # Most specific glob first: the longest pattern that matches decides the tier.
    tier_globs = tuple(
        (_glob_rx(k), v.risk_tier) for k, v in sorted(spec.tools.items(), key=lambda kv: -len(kv[0]))
        if _is_glob(k) and v.risk_tier is not None
    )
    return Bundle(
        name=meta.name,
        version=meta.version,
        revision=revision_of(src.files),
        default=spec.default,
        on_error=spec.on_error,
        policies=tuple(policies),
        budgets=tuple(spec.budgets),
        mask=tuple(spec.mask),
        tool_tiers=tiers,
        tier_globs=tier_globs,
        _exact={k: tuple(v) for k, v in exact.items()},
        _globbed=tuple(globbed),
        _always=tuple(always),
        lists=dict(src.lists),
        env=env,
        outcome_env=outcome_env if any(p.outcome_rules for p in policies) else None,
        agents=agents,
        schemas=schemas,
        _schema_globs=tuple((_glob_rx(k), v) for k, v in sorted(schemas.items(), key=lambda kv: -len(kv[0]))
                            if _is_glob(k)),
        warnings=tuple(identity_warnings(src, agents, spec.default)),
        session_max_calls=spec.session.max_calls,
        session_window_s=parse_duration(spec.session.window),
        session_key=spec.session.key,
        reads_session=any("session" in p.needs for p in policies),
        labels_rules=any(r.labels for p in policies for r in p.rules),
        costs=costs,
        _cost_globs=tuple((_glob_rx(k), v) for k, v in sorted(costs.items(), key=lambda kv: -len(kv[0]))
                          if _is_glob(k)),
    )


def _compile_costs(src: LoadedSource, env: cel.Env, lines_of: dict[str, list[str]],
                   errors: list[SourceError]) -> dict[str, ToolCost]:
    assert src.bundle is not None and src.bundle_source is not None
    bsrc = src.bundle_source
    out: dict[str, ToolCost] = {}
    for tool, info in src.bundle.spec.tools.items():
        if info.cost is None:
            continue
        compiled = compile_cost(info.cost, env)
        if isinstance(compiled, ToolCost):
            out[tool] = compiled
            continue
        node = locate(bsrc.node, ("spec", "tools", tool, "cost"))
        if bsrc.file not in lines_of:
            data = src.texts.get(bsrc.file)
            text = data.decode("utf-8") if data is not None else Path(bsrc.file).read_text(encoding="utf-8")
            lines_of[bsrc.file] = text.splitlines()
        for ce in compiled:
            if isinstance(node, yaml.ScalarNode):
                line, col = _expression_position(node, lines_of[bsrc.file], ce.line, ce.column)
            else:
                line, col = node.start_mark.line + 1, node.start_mark.column + 1
            errors.append(SourceError(bsrc.file, line, col, f"spec.tools.{tool}.cost: {ce.message}"))
    return out


def _compile_schemas(src: LoadedSource, errors: list[SourceError]) -> dict[str, ToolSchema]:
    assert src.bundle is not None and src.bundle_source is not None
    bsrc = src.bundle_source

    def error(tool: str, message: str) -> None:
        node = locate(bsrc.node, ("spec", "tools", tool, "args"))
        errors.append(SourceError(bsrc.file, node.start_mark.line + 1, node.start_mark.column + 1, message))

    return compile_schemas(src.bundle.spec.tools, error)


def _check_argument_reads(src: LoadedSource, catalogue: dict[str, ToolInfo], schemas: dict[str, ToolSchema],
                          lines_of: dict[str, list[str]], errors: list[SourceError]) -> None:
    """A condition reading `tool.args.X` where every tool its policy matches has a schema and none
    declares X is a typo: a build error at X's line:col (SPEC §9)."""
    if not schemas:
        return
    for lp in src.policies:
        covered = tools_covered(tuple(lp.doc.spec.match.tools), catalogue)
        if not covered or any(t not in schemas or schemas[t].declared is None for t in covered):
            continue
        declared = frozenset().union(*(schemas[t].declared or frozenset() for t in covered))
        file = lp.source.file
        for i, rule in enumerate(lp.doc.spec.rules):
            for read in argument_reads(rule.when):
                if read.name in declared:
                    continue
                when_node = locate(lp.source.node, ("spec", "rules", i, "when"))
                if not isinstance(when_node, yaml.ScalarNode) or file not in lines_of:
                    continue
                line, col = _expression_position(when_node, lines_of[file], read.line, read.column)
                close = difflib.get_close_matches(read.name, sorted(declared), n=1)
                hint = f"; did you mean {close[0]!r}?" if close else ""
                errors.append(SourceError(file, line, col, (
                    f"tool.args.{read.name}: no tool this policy matches declares argument {read.name!r} "
                    f"(declared: {', '.join(sorted(declared)) or 'none'}){hint}")))


def _compile_rules(
    policy: str,
    source: Source,
    indexed: list[tuple[int, Rule]],
    seen_ids: dict[str, str],
    lines_of: dict[str, list[str]],
    errors: list[SourceError],
    texts: dict[str, bytes],
    env: cel.Env,
    list_names: list[str] | None,
    outcome_env: cel.Env | None = None,
) -> list[CompiledRule]:
    file = source.file
    if file not in lines_of:
        # From the bytes already read (a bundle file's sources exist only in memory).
        data = texts.get(file)
        text = data.decode("utf-8") if data is not None else Path(file).read_text(encoding="utf-8")
        lines_of[file] = text.splitlines()
    rules: list[CompiledRule] = []
    for i, rule in indexed:
        id_node = locate(source.node, ("spec", "rules", i, "id"))
        line, col = id_node.start_mark.line + 1, id_node.start_mark.column + 1
        here = f"{file}:{line}:{col}"
        if rule.id in seen_ids:
            errors.append(SourceError(file, line, col, f"duplicate rule id {rule.id!r} (first at {seen_ids[rule.id]})"))
        else:
            seen_ids[rule.id] = here
        on_outcome = rule.on == "outcome"
        compiled = compile_condition(rule.when, outcome_env if on_outcome and outcome_env is not None else env)
        if isinstance(compiled, list):
            when_node = locate(source.node, ("spec", "rules", i, "when"))
            if not isinstance(when_node, yaml.ScalarNode):  # no `when:` key: cannot fail
                when_node = id_node
            for ce in compiled:
                column = ce.column
                if _UNKNOWN_LIST.search(ce.message):
                    # CEL points at the `.` of `lists.x`; point at `lists`, where the name starts.
                    text = rule.when.splitlines()[ce.line - 1] if ce.line <= len(rule.when.splitlines()) else ""
                    if text[max(column - 6, 0):column - 1] == "lists":
                        column -= 5
                eline, ecol = _expression_position(when_node, lines_of[file], ce.line, column)
                message = _explain(ce.message, list_names)
                if message and not on_outcome and "undeclared reference to 'result." in message:
                    message += " (the tool's result is seen by `on: outcome` rules only)"
                if message is not None:
                    errors.append(SourceError(file, eline, ecol, message))
            continue
        rules.append(
            CompiledRule(
                id=rule.id,
                policy=policy,
                effect=rule.effect,
                outcome=EFFECT_OUTCOME.get(rule.effect, pb.OUTCOME_UNSPECIFIED),
                program=compiled,
                reason=rule.reason or rule.id,
                approvers=tuple(rule.approvers),
                approval_ttl_s=parse_duration(rule.approval_ttl) if rule.approval_ttl else DEFAULT_APPROVAL_TTL_S,
                location=here,
                when=rule.when,
                always=rule.when.strip() == "true",
                reason_of=Reason(rule.id, rule.reason or rule.id, policy, rule.effect),
                labels=tuple(rule.labels),
                on_outcome=on_outcome,
            )
        )
    return rules


def _explain(message: str, list_names: list[str] | None) -> str | None:
    """CEL says `undeclared reference to 'lists.x'`; say which lists there are instead (None: the
    Bundle document itself is invalid, so which lists exist is unknown and that error says enough)."""
    m = _UNKNOWN_LIST.search(message)
    if m is None:
        return message
    if list_names is None:
        return None
    known = ", ".join(list_names) if list_names else "none"
    return f"unknown list {m.group(1)!r} (bundle.yaml spec.lists has: {known})"


def _expression_position(node: yaml.ScalarNode, lines: list[str], line: int, column: int) -> tuple[int, int]:
    """Map a line/column inside a `when:` expression to a 1-based position in the file."""
    start_line, start_col = node.start_mark.line, node.start_mark.column
    if node.style in ("|", ">"):
        # Block scalar: the expression starts on the line after the indicator, and every line
        # loses the block's indentation (that of its first line).
        first = lines[start_line + 1] if start_line + 1 < len(lines) else ""
        indent = len(first) - len(first.lstrip())
        return start_line + line + 1, indent + column
    # Plain or quoted scalar, possibly folded over several lines: CEL saw the lines joined by
    # single spaces, so walk the source lines to find which one holds the column.
    quoted = 1 if node.style in ("'", '"') else 0
    offset = column - 1
    idx, col0 = start_line, start_col + quoted
    end_line = node.end_mark.line
    while idx <= end_line and idx < len(lines):
        segment = lines[idx][col0:] if idx == start_line else lines[idx].lstrip()
        seg_start = col0 if idx == start_line else len(lines[idx]) - len(lines[idx].lstrip())
        if offset <= len(segment) or idx == end_line:
            return idx + 1, seg_start + offset + 1
        offset -= len(segment) + 1
        idx += 1
    return start_line + 1, start_col + column
