"""`decider tools import`: a real MCP server's tools/list as catalogue entries for bundle.yaml."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import yaml

from .gateway_support import start_http_upstream
from .helpers import ROOT


def run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "decider", *args], capture_output=True, text=True, timeout=120,
                          cwd=ROOT)


def test_import_from_a_stdio_server_guesses_risk_tiers_and_keeps_the_input_schema(tmp_path: Path) -> None:
    out = run("tools", "import", "--command", f"{sys.executable} -m mcp_server_git --repository {ROOT}")
    assert out.returncode == 0, out.stderr
    assert out.stdout.startswith("# 12 tool(s) from mcp-git")
    tools = yaml.safe_load(out.stdout)["tools"]
    assert tools["git_status"]["risk_tier"] == 0      # readOnlyHint, closed world
    assert tools["git_commit"]["risk_tier"] == 2      # writes, not destructive
    assert tools["git_reset"]["risk_tier"] == 3       # destructiveHint
    assert tools["git_add"]["args"]["required"] == ["repo_path", "files"]
    assert tools["git_add"]["args"]["properties"]["files"]["type"] == "array"


def test_imported_entries_without_schemas_are_accepted_by_decider_check(tmp_path: Path) -> None:
    # `args:` (schemas) waits for the loader to read them (SPEC §9, a later issue); the risk tiers load today.
    out = run("tools", "import", "--without-args", "--command", f"{sys.executable} -m mcp_server_time")
    assert out.returncode == 0, out.stderr
    entries = yaml.safe_load(out.stdout)["tools"]
    assert entries == {"get_current_time": {"risk_tier": 0}, "convert_time": {"risk_tier": 0}}
    bundle = tmp_path / "b"
    bundle.mkdir()
    (bundle / "bundle.yaml").write_text(yaml.safe_dump({
        "apiVersion": "decider/v1", "kind": "Bundle", "metadata": {"name": "imported", "version": "1.0.0"},
        "spec": {"default": "deny", "tools": entries}}, sort_keys=False))
    check = run("check", str(bundle))
    assert check.returncode == 0, check.stdout + check.stderr


def test_import_from_a_url(tmp_path: Path) -> None:
    upstream = start_http_upstream(tmp_path)
    try:
        out = run("tools", "import", "--url", upstream.url)
    finally:
        upstream.stop()
    assert out.returncode == 0, out.stderr
    tools = yaml.safe_load(out.stdout)["tools"]
    assert set(tools) == {"echo", "crash", "slow", "steps"}
    assert tools["echo"] == {"risk_tier": 3, "args": {"type": "object", "properties": {"text": {"type": "string"}}}}


def test_a_server_that_cannot_start_is_a_clear_error() -> None:
    out = run("tools", "import", "--timeout", "20", "--command", "/nonexistent/mcp-server")
    assert out.returncode != 0
    assert "Traceback" not in out.stderr and "/nonexistent/mcp-server" in out.stderr
