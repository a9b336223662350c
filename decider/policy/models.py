"""Policy models: the YAML documents of a bundle source (SPEC §2), validated with pydantic.

These are the *source* form. `bundle.compile_bundle` turns them into the runtime form the
engine uses; nothing on the request path touches these models.
"""

from __future__ import annotations

import re
from typing import Any, Literal, get_args

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

__all__ = [
    "API_VERSION",
    "Effect",
    "ToolInfo",
    "AgentsSpec",
    "AgentSpec",
    "AgentMetadata",
    "AgentDoc",
    "BudgetSpec",
    "BundleSpec",
    "SessionSpec",
    "RuleEffect",
    "BundleMetadata",
    "BundleDoc",
    "Match",
    "Rule",
    "PolicySpec",
    "PolicyMetadata",
    "PolicyDoc",
    "parse_duration",
    "ListItem",
    "ListSpec",
    "MapValue",
    "LIST_FILE_SUFFIXES",
]

API_VERSION = "decider/v1"

Effect = Literal["allow", "deny", "require_approval"]
# A rule's effect: a vote, or `label` (SPEC §10: the rule only labels the call's record, no vote).
RuleEffect = Literal["allow", "deny", "require_approval", "label"]
BudgetScope = Literal["agent", "team", "workflow", "session", "owner"]
BUDGET_SCOPES: tuple[str, ...] = get_args(BudgetScope)   # the one list of budget scopes
BudgetWindow = Literal["1h", "1d", "30d", "total"]

_NAME = r"^[A-Za-z0-9][A-Za-z0-9_.:\-]*$"
# A list name is a CEL identifier: conditions write `lists.<name>`.
_LIST_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
LIST_FILE_SUFFIXES = (".yaml", ".yml", ".csv")
ListItem = str | int | float | bool
# A map list's value: a scalar, or a list of scalars (e.g. tool -> the arguments that hold its object id).
MapValue = ListItem | list[ListItem]
LABEL_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.:\-]{0,63}$"
_LABEL = re.compile(LABEL_PATTERN)
_DURATION = re.compile(r"^(\d+)(s|m|h|d)$")
_DURATION_SECONDS = {"s": 1, "m": 60, "h": 3600, "d": 86400}


def parse_duration(text: str) -> int:
    """`"4h"` → 14400 seconds. Raises ValueError for anything else."""
    m = _DURATION.match(text)
    if not m:
        raise ValueError(f"invalid duration {text!r}: use a number and one of s, m, h, d (e.g. 4h)")
    return int(m.group(1)) * _DURATION_SECONDS[m.group(2)]


class _Strict(BaseModel):
    # Unknown keys are errors: a typo like `whne:` must not silently disable a condition.
    model_config = ConfigDict(extra="forbid", frozen=True)


class ToolInfo(_Strict):
    risk_tier: int | None = Field(default=None, ge=0, le=4)
    # The tool's argument schema: JSON Schema in the MCP `inputSchema` dialect (SPEC §9). Checked
    # as a schema at load; calls whose arguments violate it are denied `invalid_arguments`.
    args: dict[str, Any] | None = None
    # The estimated cost of a call that carries none (SPEC §11): a number, or a CEL expression over
    # the call (`tool.args.pages * 0.01`) that gives one.
    cost: float | str | None = None

    @field_validator("cost")
    @classmethod
    def _cost(cls, v: float | str | None) -> float | str | None:
        if isinstance(v, str) and not v.strip():
            raise ValueError("cost: an empty expression")
        if isinstance(v, (int, float)) and not (v >= 0 and v != float("inf")):
            raise ValueError(f"cost: {v} must be a finite number >= 0")
        return v


class AgentsSpec(_Strict):
    # An agent id no `kind: Agent` manifest covers. None: `deny` once any manifest exists.
    unregistered: Literal["deny", "allow"] | None = None


class BudgetSpec(_Strict):
    scope: BudgetScope
    limit: float = Field(ge=0)
    window: BudgetWindow = "total"


class SessionSpec(_Strict):
    """How much of a session's history conditions see (SPEC §10): at most `max_calls` earlier calls,
    none older than `window` before the decision. `key`: whose calls they are: the call's
    `agent.session_id` (default), or every call of its `agent.id` (`agent`), so that an agent which
    opens a fresh session (a reconnecting MCP client) does not reset what a policy sees (SPEC §8)."""

    max_calls: int = Field(default=200, ge=1, le=10_000)
    window: str = "24h"
    key: Literal["session", "agent"] = "session"

    @field_validator("window")
    @classmethod
    def _window(cls, v: str) -> str:
        parse_duration(v)
        return v


class ListSpec(_Strict):
    """A named list that is not a plain list of values (SPEC §10 round two): `kind: patterns` holds
    RE2 regular expressions (matched with `re.any`, and in `match.tools`); `kind: map` holds
    key -> value. `items` inline, or the path of a YAML file inside the bundle folder."""

    kind: Literal["patterns", "map"]
    items: list[ListItem] | dict[str, MapValue] | str

    @model_validator(mode="after")
    def _items_fit_the_kind(self) -> ListSpec:
        if isinstance(self.items, str):
            if not self.items.endswith((".yaml", ".yml")):
                raise ValueError(f"items: a {self.kind} list file is YAML (.yaml or .yml), not {self.items!r}")
        elif self.kind == "patterns" and not (isinstance(self.items, list)
                                              and all(isinstance(x, str) for x in self.items)):
            raise ValueError("items: a patterns list holds strings (RE2 regular expressions)")
        elif self.kind == "map" and not isinstance(self.items, dict):
            raise ValueError("items: a map list holds key: value entries")
        return self


class BundleSpec(_Strict):
    default: Effect = "deny"
    session: SessionSpec = Field(default_factory=SessionSpec)
    on_error: Literal["deny", "skip"] = "deny"
    tools: dict[str, ToolInfo] = Field(default_factory=dict)
    budgets: list[BudgetSpec] = Field(default_factory=list)
    mask: list[str] = Field(default_factory=list)
    # Named constant lists (SPEC §10): inline, or the path of a YAML/CSV file inside the bundle
    # folder. The loader reads the files; the compiled bundle holds only values.
    # Or `{kind: patterns | map, items: …}` (ListSpec).
    lists: dict[str, list[ListItem] | str | ListSpec] = Field(default_factory=dict)

    @field_validator("lists")
    @classmethod
    def _list_names_and_paths(cls, lists: dict[str, list[ListItem] | str | ListSpec],
                              ) -> dict[str, list[ListItem] | str | ListSpec]:
        for name, value in lists.items():
            if not _LIST_NAME.match(name):
                raise ValueError(f"list name {name!r} must be an identifier (letters, digits, _): "
                                 f"conditions write lists.{name}")
            if isinstance(value, ListSpec) and isinstance(value.items, str):
                value = value.items
            if isinstance(value, str):
                parts = value.split("/")
                if value.startswith("/") or ".." in parts or not value.endswith(LIST_FILE_SUFFIXES):
                    raise ValueError(f"list {name!r}: {value!r} must be a relative path inside the bundle "
                                     f"folder ending in .yaml, .yml or .csv")
        return lists
    agents: AgentsSpec = Field(default_factory=AgentsSpec)

    @field_validator("mask")
    @classmethod
    def _mask_paths(cls, paths: list[str]) -> list[str]:
        for p in paths:
            root = p.split(".", 1)[0]
            if root not in ("tool", "context") or (root == "tool" and not p.startswith("tool.args.")):
                raise ValueError(f"mask path {p!r} must start with 'tool.args.' or 'context.'")
        return paths

    @model_validator(mode="after")
    def _one_budget_per_scope(self) -> BundleSpec:
        seen: set[str] = set()
        for b in self.budgets:
            if b.scope in seen:
                raise ValueError(f"more than one budget for scope {b.scope!r}")
            seen.add(b.scope)
        return self


class BundleMetadata(_Strict):
    name: str = Field(pattern=_NAME)
    version: str = Field(default="0.0.0", pattern=_NAME)
    description: str = ""


class BundleDoc(_Strict):
    apiVersion: Literal["decider/v1"]  # noqa: N815 - the YAML key
    kind: Literal["Bundle"]
    metadata: BundleMetadata
    spec: BundleSpec = Field(default_factory=BundleSpec)


class Match(_Strict):
    """Cheap pre-filter: every listed field must match one of its globs; empty means any."""

    tools: list[str] = Field(default_factory=list)
    servers: list[str] = Field(default_factory=list)
    teams: list[str] = Field(default_factory=list)
    agents: list[str] = Field(default_factory=list)
    workflows: list[str] = Field(default_factory=list)


class Rule(_Strict):
    id: str = Field(pattern=_NAME)
    effect: RuleEffect
    when: str = "true"
    reason: str = ""
    # Attached to the call's record when the condition holds, whatever the combined outcome.
    labels: list[str] = Field(default_factory=list)
    approvers: list[str] = Field(default_factory=list)
    approval_ttl: str | None = None
    # `outcome` (SPEC §10 round two): the rule runs when the call's outcome is reported, sees the
    # tool's `result`, and only labels (`effect: label`).
    on: Literal["call", "outcome"] = "call"

    @field_validator("approval_ttl")
    @classmethod
    def _ttl(cls, v: str | None) -> str | None:
        if v is not None:
            parse_duration(v)
        return v

    @field_validator("approvers")
    @classmethod
    def _approver_form(cls, v: list[str]) -> list[str]:
        for a in v:
            if not re.match(r"^(user|group):.+$", a):
                raise ValueError(f"approver {a!r} must be 'user:NAME' or 'group:NAME'")
        return v

    @field_validator("labels")
    @classmethod
    def _label_form(cls, v: list[str]) -> list[str]:
        for label in v:
            if not _LABEL.match(label):
                raise ValueError(f"label {label!r} must be 1-64 of letters, digits and . _ : -")
        return v

    @model_validator(mode="after")
    def _label_rules_label(self) -> Rule:
        if self.effect == "label" and not self.labels:
            raise ValueError("a rule with effect label needs labels: [...]")
        return self

    @model_validator(mode="after")
    def _outcome_rules_only_label(self) -> Rule:
        if self.on == "outcome" and self.effect != "label":
            raise ValueError("a rule with on: outcome only labels: effect must be label")
        return self

    @model_validator(mode="after")
    def _approval_fields_only_for_approvals(self) -> Rule:
        if self.effect != "require_approval" and (self.approvers or self.approval_ttl):
            raise ValueError("approvers and approval_ttl are only for effect require_approval")
        return self


class PolicySpec(_Strict):
    match: Match = Field(default_factory=Match)
    # The policy's vote when its match covers the call and none of its rules hold (SPEC §10);
    # None: no vote (the bundle default applies if no policy votes).
    default: Effect | None = None
    rules: list[Rule] = Field(min_length=1)


class PolicyMetadata(_Strict):
    name: str = Field(pattern=_NAME)
    owner: str = ""
    description: str = ""


class PolicyDoc(_Strict):
    apiVersion: Literal["decider/v1"]  # noqa: N815 - the YAML key
    kind: Literal["Policy"]
    metadata: PolicyMetadata
    spec: PolicySpec


class AgentSpec(_Strict):
    """An agent's capability manifest (SPEC §9): who it is and what it may use. Empty request
    fields are filled from it; a contradicting field or a tool/server outside it is denied."""

    owner: str = ""
    team: str = ""
    workflows: list[str] = Field(default_factory=list)
    models: list[str] = Field(default_factory=list)
    capabilities: list[str] = Field(default_factory=list)
    tools: list[str] = Field(default_factory=list)        # globs; least privilege: none listed, none allowed
    servers: list[str] = Field(default_factory=list)      # globs over tool.server
    labels: dict[str, str] = Field(default_factory=dict)


class AgentMetadata(_Strict):
    # The agent id it describes, or a glob over instance ids ("refund-bot-*"). Matched exactly
    # (case and every character count): `KILLME` is not `killme`.
    name: str = Field(pattern=r"^[A-Za-z0-9*?\[][A-Za-z0-9_.:*?\[\]\-]*$")
    description: str = ""


class AgentDoc(_Strict):
    apiVersion: Literal["decider/v1"]  # noqa: N815 - the YAML key
    kind: Literal["Agent"]
    metadata: AgentMetadata
    spec: AgentSpec = Field(default_factory=AgentSpec)
