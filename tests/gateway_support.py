"""Real parts for the MCP gateway tests: a decider server with a test bundle and tokens, the gateway
as a subprocess (stdio or streamable HTTP), real upstream MCP servers (mcp-server-time,
mcp-server-git from PyPI; @modelcontextprotocol/server-filesystem and server-everything from npm) and
the mcp SDK client."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx2
import yaml
from mcp import ClientSession, StdioServerParameters, stdio_client
from mcp.client.streamable_http import streamable_http_client

from .helpers import ROOT, ServerProcess, start_server

NODE_DIR = ROOT / "tools" / "node"
NODE_BIN = NODE_DIR / "node_modules" / ".bin"
CRASHY = Path(__file__).resolve().parent / "fixtures" / "crashy_mcp_server.py"

BUNDLE = """\
apiVersion: decider/v1
kind: Bundle
metadata: {name: gateway-test, version: 1.0.0}
spec:
  default: deny
  tools:
    "get_current_time": {risk_tier: 0}
    "convert_time": {risk_tier: 1}
"""

# WORKSPACE is replaced by the test's workspace folder.
POLICY = """\
apiVersion: decider/v1
kind: Policy
metadata: {name: gateway}
spec:
  rules:
    - id: time-reads
      effect: allow
      when: tool.server == "mcp://time" && tool.name == "get_current_time"
    - id: conversions-need-approval
      effect: require_approval
      when: tool.server == "mcp://time" && tool.name == "convert_time"
      reason: "Time conversions need an approver"
      approvers: ["user:carol"]
      approval_ttl: 1h
    - id: fs-reads
      effect: allow
      when: tool.server == "mcp://fs" && tool.name in ["read_text_file", "list_directory", "list_allowed_directories"]
    - id: fs-writes-inside-workspace
      effect: allow
      when: tool.server == "mcp://fs" && tool.name == "write_file" && path.within(tool.args.path, "WORKSPACE")
    - id: fs-writes-outside-workspace
      effect: deny
      when: tool.server == "mcp://fs" && tool.name == "write_file" && !path.within(tool.args.path, "WORKSPACE")
      reason: "Agents write only inside the workspace"
    - id: git-reads
      effect: allow
      when: tool.server == "mcp://git" && tool.name in ["git_status", "git_log"]
    - id: remote-echo
      effect: allow
      when: tool.server == "mcp://remote" && tool.name == "echo"
    - id: crashy-allowed
      effect: allow
      when: tool.server == "mcp://crashy" && tool.name in ["echo", "crash", "slow", "steps"]
    - id: crashy-readme-and-greeting
      effect: allow
      when: >-
        tool.server == "mcp://crashy" && ((tool.name == "resources/read" && tool.args.uri.startsWith("crashy://"))
        || (tool.name == "prompts/get" && tool.args.name == "greet"))
    - id: everything-static-documents
      effect: allow
      when: >-
        tool.server == "mcp://everything" && tool.name in ["resources/read", "resources/subscribe"]
        && tool.args.uri.startsWith("demo://resource/static/")
    - id: everything-no-dynamic-resources
      effect: deny
      when: tool.server == "mcp://everything" && tool.name == "resources/read" && tool.args.uri.startsWith("demo://resource/dynamic/")
      reason: "Dynamic resources are not for agents"
    - id: everything-weather-prompt
      effect: allow
      when: tool.server == "mcp://everything" && tool.name == "prompts/get" && tool.args.name == "args-prompt"
    - id: everything-prompt-needs-approval
      effect: require_approval
      when: tool.server == "mcp://everything" && tool.name == "prompts/get" && tool.args.name == "resource-prompt"
      reason: "Prompts that embed resources need an approver"
      approvers: ["user:carol"]
      approval_ttl: 1h
    - id: everything-completions
      effect: allow
      when: tool.server == "mcp://everything" && tool.name == "completion/complete" && tool.args.ref.type == "ref/prompt"
    # SPEC §10 round two: a file read whose text holds instructions for a model labels the call
    # (an outcome rule sees the tool's result), and no write runs after it in the session unapproved.
    - id: read-instructions
      on: outcome
      effect: label
      labels: [untrusted-content]
      when: tool.server == "mcp://fs" && result.text.matches("(?i)ignore (all )?previous instructions")
    - id: no-writes-after-untrusted-content
      effect: require_approval
      when: tool.server == "mcp://fs" && tool.name == "write_file" && "untrusted-content" in session.labels
      reason: "This session read content with instructions in it: a human checks its writes"
      approvers: ["user:carol"]
"""

TOKENS = """\
tokens:
  - {token: gw-token, principal: "service:gateway", roles: [enforcer]}
  - {token: carol-token, principal: "user:carol", roles: [approver]}
  - {token: admin-token, principal: "user:root", roles: [admin]}
"""

AGENT = {"id": "coder-7", "team": "platform", "model": "gpt-5"}
HTTP_CLIENT_TOKEN = "coder-7-secret"
HTTP_AGENT = {"id": "coder-http", "team": "platform"}


def ensure_node_tools() -> Path:
    """Install the npm packages (server-filesystem, inspector-cli) into tools/node/node_modules."""
    subprocess.run([str(ROOT / "tools" / "scripts" / "ensure-node-tools.sh")], check=True, timeout=600)
    return NODE_BIN


@dataclass
class Setup:
    tmp: Path
    decider: ServerProcess
    workspace: Path
    outside: Path
    repo: Path

    @property
    def crashy_log(self) -> Path:
        """Every request the crashy upstream received (see crashy_mcp_server.py)."""
        return self.tmp / "crashy-seen.jsonl"

    def upstreams(self, *names: str) -> list[dict[str, Any]]:
        py = sys.executable
        all_: dict[str, dict[str, Any]] = {
            "time": {"name": "time", "command": [py, "-m", "mcp_server_time"]},
            "git": {"name": "git", "command": [py, "-m", "mcp_server_git", "--repository", str(self.repo)]},
            # The filesystem server may write anywhere under tmp: only the policy keeps writes in the
            # workspace, so a file that stays absent proves the gateway did not forward the call.
            "fs": {"name": "fs", "command": [str(NODE_BIN / "mcp-server-filesystem"), str(self.tmp)]},
            "crashy": {"name": "crashy", "command": [py, str(CRASHY)], "env": {"CRASHY_LOG": str(self.crashy_log)}},
            # resources (static and templated), prompts, completions, subscriptions
            "everything": {"name": "everything", "command": [str(NODE_BIN / "mcp-server-everything"), "stdio"]},
        }
        return [all_[n] for n in names]

    def config(self, *names: str, listen: str = "stdio", approval_wait: str = "3s", deadline: str = "5s",
               target: str | None = None, file: str = "gateway.yaml",
               extra_upstreams: list[dict[str, Any]] | None = None, **more: Any) -> Path:
        cfg: dict[str, Any] = {
            "decider": {"target": target or self.decider.target, "token": "gw-token", "deadline": deadline},
            "agent": AGENT,
            "listen": listen,
            "approval_wait": approval_wait,
            "upstreams": self.upstreams(*names) + (extra_upstreams or []),
        }
        if listen != "stdio":
            cfg["clients"] = [{"token": HTTP_CLIENT_TOKEN, "agent": HTTP_AGENT}]
        cfg.update(more)
        path = self.tmp / file
        path.write_text(yaml.safe_dump(cfg, sort_keys=False))
        return path


def make_setup(tmp: Path) -> Setup:
    workspace = tmp / "workspace"
    outside = tmp / "outside"
    repo = tmp / "repo"
    for d in (workspace, outside, repo):
        d.mkdir(exist_ok=True)
    git = shutil.which("git")
    assert git, "git is needed for mcp-server-git"
    env = {**os.environ, "GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@example.com",
           "GIT_COMMITTER_NAME": "t", "GIT_COMMITTER_EMAIL": "t@example.com"}
    subprocess.run([git, "init", "-q", str(repo)], check=True, env=env)
    (repo / "README").write_text("hello\n")
    subprocess.run([git, "-C", str(repo), "add", "README"], check=True, env=env)
    subprocess.run([git, "-C", str(repo), "commit", "-q", "-m", "first commit"], check=True, env=env)
    bundle = tmp / "bundle"
    bundle.mkdir(exist_ok=True)
    (bundle / "bundle.yaml").write_text(BUNDLE)
    (bundle / "gateway.yaml").write_text(POLICY.replace("WORKSPACE", str(workspace)))
    (tmp / "tokens.yaml").write_text(TOKENS)
    srv = start_server(tmp, bundle, None, "--tokens", str(tmp / "tokens.yaml"))
    return Setup(tmp, srv, workspace, outside, repo)


@asynccontextmanager
async def stdio_gateway(config: Path, errlog: Path | None = None) -> AsyncIterator[ClientSession]:
    """The gateway as a stdio subprocess, driven by the mcp SDK client (initialized)."""
    params = StdioServerParameters(command=sys.executable, args=["-m", "decider", "gateway", "mcp", "--config",
                                                                 str(config)], cwd=str(ROOT))
    log = (errlog or config.with_suffix(".stderr.log")).open("a")
    try:
        async with stdio_client(params, errlog=log) as (read, write), ClientSession(read, write) as session:
            await session.initialize()
            yield session
    finally:
        log.close()


@dataclass
class HttpGateway:
    proc: subprocess.Popen[bytes]
    url: str
    log_path: Path

    def stop(self, timeout: float = 20.0) -> int:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        return self.proc.returncode

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")


def start_http_gateway(config: Path, name: str = "gw-http") -> HttpGateway:
    port_file = config.parent / f"{name}.port"
    port_file.unlink(missing_ok=True)
    log_path = config.parent / f"{name}.log"
    proc = subprocess.Popen([sys.executable, "-m", "decider", "gateway", "mcp", "--config", str(config),
                             "--port-file", str(port_file)], stdout=log_path.open("wb"), stderr=subprocess.STDOUT,
                            cwd=ROOT, env={**os.environ, "PYTHONUNBUFFERED": "1"})
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"gateway exited with {proc.returncode}:\n{log_path.read_text()}")
        if port_file.exists() and port_file.read_text().strip():
            return HttpGateway(proc, f"http://127.0.0.1:{int(port_file.read_text())}/mcp", log_path)
        time.sleep(0.05)
    proc.kill()
    raise RuntimeError(f"gateway did not start:\n{log_path.read_text()}")


@dataclass
class HttpUpstream:
    proc: subprocess.Popen[bytes]
    url: str

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(20)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(5)


def start_http_upstream(tmp: Path) -> HttpUpstream:
    """The fixture MCP server over streamable HTTP on an ephemeral loopback port."""
    port_file = tmp / "upstream-http.port"
    port_file.unlink(missing_ok=True)
    proc = subprocess.Popen([sys.executable, str(CRASHY), "--http-port-file", str(port_file)],
                            stdout=subprocess.DEVNULL, stderr=(tmp / "upstream-http.log").open("wb"))
    for _ in range(1200):                       # bounded: ~60 s
        if proc.poll() is not None:
            raise RuntimeError(f"upstream exited: {(tmp / 'upstream-http.log').read_text()}")
        if port_file.exists() and port_file.read_text().strip():
            return HttpUpstream(proc, f"http://127.0.0.1:{int(port_file.read_text())}/mcp")
        time.sleep(0.05)
    proc.kill()
    raise RuntimeError("upstream did not start")


@asynccontextmanager
async def http_session(url: str, token: str | None = HTTP_CLIENT_TOKEN) -> AsyncIterator[ClientSession]:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    async with httpx2.AsyncClient(headers=headers, timeout=60) as http, \
            streamable_http_client(url, http_client=http) as (read, write), ClientSession(read, write) as session:
        await session.initialize()
        yield session


def text_of(result: Any) -> str:
    return "\n".join(getattr(c, "text", "") for c in result.content)


def decision_ids(result: Any) -> list[str]:
    meta = result.meta or {}
    return list((meta.get("dev.decider/decision") or {}).get("decision_ids") or [])
