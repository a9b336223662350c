"""docs/testing.md documents every key of the test-suite format (issue 12, item 17): a key added to
the models without a line in the reference fails here."""

from __future__ import annotations

import re
import typing
from typing import Any

from pydantic import BaseModel

from decider.verify.suites import TestSuite

from .helpers import ROOT


def _keys(model: type[BaseModel], prefix: str = "") -> set[str]:
    out: set[str] = set()
    for name, f in model.model_fields.items():
        path = f"{prefix}{name}"
        out.add(path)
        for t in _models(f.annotation):
            out |= _keys(t, f"{path}.")
    return out


def _models(t: Any) -> list[type[BaseModel]]:
    if isinstance(t, type) and issubclass(t, BaseModel):
        return [t]
    return [m for arg in typing.get_args(t) for m in _models(arg)]


def test_every_suite_key_is_in_the_reference() -> None:
    doc = (ROOT / "docs" / "testing.md").read_text(encoding="utf-8")
    keys = _keys(TestSuite)
    assert {"cases.state.approval", "fixtures.agents", "cases.expect.reason"} <= keys
    # Documented as `key`, `key.sub…` or `key[]`, with or without the leading `cases.`; a tool's own
    # fields (`name`, `server`, `risk_tier`) are documented once, in the fixtures table.
    def documented(key: str) -> bool:
        if key.startswith(("fixtures.tools.", "cases.tool.")):
            key = key.rsplit(".", 1)[-1]
        parts = key.removeprefix("cases.").split(".")
        between = r"(?:\.<\w+>|\[\])?\."      # `state.budgets.<scope>.spent`, `kill_switches[].scope`
        return re.search(r"`(cases\.)?" + between.join(map(re.escape, parts)) + r"[`.\[]", doc) is not None

    missing = [k for k in sorted(keys) if not documented(k)]
    assert not missing, f"not documented in docs/testing.md: {missing}"
