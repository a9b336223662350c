"""The core (load → compile → decide → record → verify/replay) never imports a shell package."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "decider"
CORE = ("api", "bundle", "cel", "engine", "policy", "record", "replay", "values", "verify")
SHELLS = ("decider.server", "decider.store", "decider.cli", "decider.gateway", "decider.console", "decider.guard",
          "decider.export")


def imported_modules(path: Path) -> list[tuple[int, str]]:
    """Every module a file imports, at any depth (function-local imports count too)."""
    tree = ast.parse(path.read_text(), filename=str(path))
    found: list[tuple[int, str]] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module:
            assert node.level == 0, f"{path}:{node.lineno}: relative import (the layout rule reads absolute ones)"
            found += [(node.lineno, node.module)] + [(node.lineno, f"{node.module}.{a.name}") for a in node.names]
    return found


def shell_imports(path: Path) -> list[str]:
    return [
        f"{path.relative_to(PACKAGE.parent)}:{line}: imports {module}"
        for line, module in imported_modules(path)
        if any(module == shell or module.startswith(shell + ".") for shell in SHELLS)
    ]


@pytest.mark.parametrize("package", CORE)
def test_core_package_never_imports_a_shell(package: str) -> None:
    files = sorted((PACKAGE / package).rglob("*.py"))
    assert files, f"core package decider/{package} is missing"
    offenders = [line for f in files for line in shell_imports(f)]
    assert offenders == []


def test_the_rule_catches_a_shell_import(tmp_path: Path) -> None:
    # The check itself must be able to fail: a core-like module that reaches into the store.
    bad = PACKAGE / "engine" / "_layout_probe.py"
    bad.write_text("def f():\n    from decider.store import connect\n    return connect\n")
    try:
        assert shell_imports(bad) == ["decider/engine/_layout_probe.py:2: imports decider.store",
                                      "decider/engine/_layout_probe.py:2: imports decider.store.connect"]
    finally:
        bad.unlink()


# Below the engine: what the engine, the bundle compiler and the request values use never reaches up
# into the record, the replay or the test runner (issue 22: no import runs upward).
# Each layer and what it may not import: `api` and `values` are the bottom (what a request is and how
# its values are written), the engine sits on them, the record, replay and test runner on the engine.
ABOVE = {
    "api": ("decider.engine", "decider.bundle", "decider.record", "decider.replay", "decider.verify"),
    "values": ("decider.engine", "decider.bundle", "decider.record", "decider.replay", "decider.verify"),
    "cel": ("decider.engine", "decider.record", "decider.replay", "decider.verify"),
    "policy": ("decider.engine", "decider.record", "decider.replay", "decider.verify"),
    "bundle": ("decider.engine", "decider.record", "decider.replay", "decider.verify"),
    "engine": ("decider.record", "decider.replay", "decider.verify"),
}


@pytest.mark.parametrize("package", sorted(ABOVE))
def test_lower_layers_never_import_upward(package: str) -> None:
    offenders = [
        f"{f.relative_to(PACKAGE.parent)}:{line}: imports {module}"
        for f in sorted((PACKAGE / package).rglob("*.py"))
        for line, module in imported_modules(f)
        if any(module == up or module.startswith(up + ".") for up in ABOVE[package])
    ]
    assert offenders == []
