"""State files for `decider replay`: starting budget usage and kill switches over time."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import yaml

from decider.engine.memory import TimedKillSwitch
from decider.engine.state import KILL_SCOPES, BudgetUsage, KillSwitch
from decider.errors import DeciderError
from decider.policy.models import BUDGET_SCOPES
from decider.replay.traces._parse import parse_time

__all__ = ["read_budget_state", "read_kill_switches"]



def _number(path: str, where: str, v: Any) -> float:
    if isinstance(v, bool) or not isinstance(v, (int, float)) or v < 0:
        raise DeciderError(f"{path}: {where}: must be a number >= 0, not {v!r}")
    return float(v)


def read_budget_state(path: str | Path) -> Iterator[tuple[str, str, BudgetUsage]]:
    """`{scope: {value: spent | {spent, reserved}}}` → (scope, value, usage)."""
    try:
        data = yaml.safe_load(Path(path).read_text()) or {}
    except (OSError, yaml.YAMLError) as e:
        raise DeciderError(f"{path}: cannot read budget state: {e}") from None
    if not isinstance(data, dict):
        raise DeciderError(f"{path}: budget state must be a mapping of scope → value → usage")
    out = []
    for scope, values in data.items():
        if scope not in BUDGET_SCOPES:
            raise DeciderError(f"{path}: unknown budget scope {scope!r}; use {', '.join(BUDGET_SCOPES)}")
        if not isinstance(values, dict):
            raise DeciderError(f"{path}: {scope}: must map each {scope} value to its usage")
        for value, use in values.items():
            where = f"{scope}.{value}"
            if isinstance(use, dict):
                unknown = set(use) - {"spent", "reserved"}
                if unknown:
                    raise DeciderError(f"{path}: {where}: unknown keys {sorted(unknown)}; use spent, reserved")
                usage = BudgetUsage(_number(path, where + ".spent", use.get("spent", 0)),
                                    _number(path, where + ".reserved", use.get("reserved", 0)))
            else:
                usage = BudgetUsage(_number(path, where, use))
            out.append((str(scope), str(value), usage))
    return iter(out)


def read_kill_switches(path: str | Path) -> tuple[TimedKillSwitch, ...]:
    """`decider kill --list --all --format json` output: one switch per line (or a JSON list)."""
    try:
        text = Path(path).read_text()
    except OSError as e:
        raise DeciderError(f"{path}: cannot read kill switches: {e}") from None
    stripped = text.strip()
    try:
        items = json.loads(stripped) if stripped.startswith("[") else [json.loads(x) for x in text.splitlines()
                                                                      if x.strip()]
    except json.JSONDecodeError as e:
        raise DeciderError(f"{path}: not JSON: {e}") from None
    out = []
    for n, ks in enumerate(items, 1):
        if not isinstance(ks, dict) or ks.get("scope") not in KILL_SCOPES:
            raise DeciderError(f"{path}: switch {n}: needs a scope, one of {', '.join(KILL_SCOPES)}")
        since = parse_time(ks.get("createdAt") or ks.get("created_at"))
        until = parse_time(ks.get("clearedAt") or ks.get("cleared_at"))
        switch = KillSwitch(str(ks.get("id") or f"replay-{n}"), ks["scope"], str(ks.get("value") or ""),
                            str(ks.get("reason") or ""))
        out.append(TimedKillSwitch(switch, since, until))
    return tuple(out)
