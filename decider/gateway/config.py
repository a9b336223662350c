"""`gateway.yaml`: where decider is, who the agent is, how clients connect, which upstreams to proxy.

```yaml
decider: {target: 127.0.0.1:50051, token_env: DECIDER_TOKEN, deadline: 2s}
agent: {id: coder-7, team: platform}          # identity of stdio clients
listen: stdio                                 # or http://127.0.0.1:8800/mcp
clients:                                      # HTTP only: bearer token → agent identity
  - {token_env: CODER_TOKEN, agent: {id: coder-7, team: platform}}
approval_wait: 30s
pass_through: [completion/complete]           # governed methods forwarded without a decision
costs: {"time/*": 0.001, "docs/search": 0.02}  # estimated cost per call (<upstream>/<tool or method>)
upstreams:
  - {name: time, command: [python, -m, mcp_server_time]}
  - {name: docs, url: http://127.0.0.1:9000/mcp, token_env: DOCS_TOKEN}
```

Every mistake is reported at once as `file:line:col: message`, like policy files.
"""

from __future__ import annotations

import hashlib
import math
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import yaml

from decider.errors import DeciderError, SourceError

__all__ = ["AGENT_FIELDS", "GOVERNED_METHODS", "ClientToken", "DeciderTarget", "GatewayConfig", "GatewayConfigError", "Upstream",
           "load_config", "parse_config"]

# The Agent message's string fields a config may set (labels/capabilities handled apart).
AGENT_FIELDS = ("id", "instance_id", "owner", "team", "workflow", "model", "session_id")
# Upstream names become `mcp://<name>` and the `<name>__` prefix of tool names: no `_`, so the first
# `__` in an exposed name always ends the upstream name (collision-free, see naming.py).
_UPSTREAM_NAME = re.compile(r"^[a-z0-9][a-z0-9-]{0,62}$")
# The MCP methods that reach an upstream with an effect or a payload: each is decided (SPEC §8 Round
# two) unless listed under `pass_through:`. tools/call is always decided: it is what decider is for.
GOVERNED_METHODS = ("tools/call", "resources/read", "resources/subscribe", "prompts/get", "completion/complete")
_DURATION = re.compile(r"^(\d+(?:\.\d+)?)(ms|s|m|h)?$")


class GatewayConfigError(DeciderError):
    """A gateway config is invalid; `errors` lists every problem, each with file:line:col."""

    def __init__(self, errors: list[SourceError]) -> None:
        self.errors = sorted(errors)
        super().__init__("\n".join(str(e) for e in self.errors))


@dataclass(frozen=True)
class DeciderTarget:
    target: str
    token: str | None = None
    deadline_s: float = 2.0         # a decision later than this fails closed
    tls_ca: bytes | None = None
    tls_cert: bytes | None = None
    tls_key: bytes | None = None


@dataclass(frozen=True)
class Upstream:
    name: str
    command: tuple[str, ...] = ()
    url: str = ""
    env: dict[str, str] = field(default_factory=dict)
    cwd: str | None = None
    token: str | None = None        # url upstreams: sent as Authorization: Bearer …

    @property
    def server(self) -> str:
        return f"mcp://{self.name}"


@dataclass(frozen=True)
class ClientToken:
    """An HTTP client's bearer token (kept only as its sha256) and the agent identity it stands for."""

    sha256: str
    agent: dict[str, Any]


@dataclass(frozen=True)
class GatewayConfig:
    decider: DeciderTarget
    agent: dict[str, Any]
    listen: str                     # "stdio" or an http:// URL
    approval_wait_s: float
    upstreams: tuple[Upstream, ...]
    clients: tuple[ClientToken, ...] = ()
    tool_names: str = "prefixed"    # prefixed | plain (plain: one upstream only)
    pass_through: frozenset[str] = frozenset()   # governed methods forwarded without a decision
    costs: dict[str, float] = field(default_factory=dict)   # "<upstream>/<name>" or "<upstream>/*" → cost
    source: str = "<config>"

    def cost_of(self, upstream: str, name: str) -> float | None:
        """The configured cost of one call (tool name, or the method for resources/prompts), or None:
        the gateway then sends no estimate and no actual cost, so decider's own figures stand."""
        return self.costs.get(f"{upstream}/{name}", self.costs.get(f"{upstream}/*"))

    def governs(self, method: str) -> bool:
        return method in GOVERNED_METHODS and method not in self.pass_through

    @property
    def http(self) -> tuple[str, int, str] | None:
        """(host, port, path) when listening on HTTP."""
        if self.listen == "stdio":
            return None
        u = urlsplit(self.listen)
        return u.hostname or "127.0.0.1", u.port if u.port is not None else 80, u.path or "/mcp"

    def agent_for_token(self, token: str) -> dict[str, Any] | None:
        digest = hashlib.sha256(token.encode()).hexdigest()
        for c in self.clients:
            if c.sha256 == digest:
                return c.agent
        return None


class _Loader(yaml.SafeLoader):
    """Keeps each mapping's node so errors can name line:col."""


def _construct_mapping(loader: _Loader, node: yaml.MappingNode) -> dict[str, Any]:
    m = _Map(loader.construct_mapping(node, deep=True))
    m.node = node
    return m


class _Map(dict):  # type: ignore[type-arg]
    node: yaml.MappingNode | None = None

    def pos(self, key: str | None = None) -> tuple[int, int]:
        if self.node is None:
            return 1, 1
        if key is not None:
            for k, _v in self.node.value:
                if k.value == key:
                    return k.start_mark.line + 1, k.start_mark.column + 1
        return self.node.start_mark.line + 1, self.node.start_mark.column + 1


_Loader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _construct_mapping)


def parse_duration(text: Any) -> float | None:
    if isinstance(text, int | float) and not isinstance(text, bool):
        return float(text)
    m = _DURATION.match(str(text).strip())
    if not m:
        return None
    return float(m.group(1)) * {"ms": 0.001, "s": 1, "m": 60, "h": 3600, None: 1}[m.group(2)]


def load_config(path: str | Path, environ: dict[str, str] | None = None) -> GatewayConfig:
    p = Path(path)
    try:
        text = p.read_text()
    except OSError as e:
        raise DeciderError(f"{p}: cannot read the gateway config: {e.strerror}") from None
    return parse_config(text, str(p), environ, base=p.parent)


def parse_config(text: str, source: str = "<config>", environ: dict[str, str] | None = None,
                 base: Path | None = None) -> GatewayConfig:
    env = os.environ if environ is None else environ
    errors: list[SourceError] = []

    def err(m: _Map, key: str | None, msg: str) -> None:
        line, col = m.pos(key)
        errors.append(SourceError(source, line, col, msg))

    try:
        doc = yaml.load(text, Loader=_Loader)  # noqa: S506 - SafeLoader subclass
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        line, col = (mark.line + 1, mark.column + 1) if mark else (1, 1)
        raise GatewayConfigError([SourceError(source, line, col, f"bad YAML: {getattr(e, 'problem', e)}")]) from None
    if not isinstance(doc, _Map):
        raise GatewayConfigError([SourceError(source, 1, 1, "the gateway config must be a mapping")])
    known = {"decider", "agent", "listen", "approval_wait", "upstreams", "clients", "tool_names", "pass_through",
             "costs"}
    for k in doc:
        if k not in known:
            err(doc, k, f"unknown key '{k}' (expected one of: {', '.join(sorted(known))})")

    def secret(m: _Map, what: str) -> str | None:
        if "token" in m and "token_env" in m:
            err(m, "token", f"{what}: give token or token_env, not both")
        if "token_env" in m:
            name = str(m["token_env"])
            if not env.get(name):
                err(m, "token_env", f"{what}: environment variable {name} is not set")
            return env.get(name)
        if "token" in m:
            return str(m["token"])
        return None

    def read_file(m: _Map, key: str) -> bytes | None:
        if key not in m:
            return None
        fp = Path(str(m[key]))
        if base is not None and not fp.is_absolute():
            fp = base / fp
        try:
            return fp.read_bytes()
        except OSError as e:
            err(m, key, f"decider.{key}: cannot read {fp}: {e.strerror}")
            return None

    # decider
    d = doc.get("decider")
    decider = DeciderTarget(target="")
    if not isinstance(d, _Map) or not d.get("target"):
        err(doc, "decider" if "decider" in doc else None, "decider: a mapping with 'target' (host:port) is required")
    else:
        for k in d:
            if k not in {"target", "token", "token_env", "deadline", "tls_ca", "tls_cert", "tls_key"}:
                err(d, k, f"decider: unknown key '{k}'")
        deadline = parse_duration(d.get("deadline", "2s"))
        if deadline is None or deadline <= 0:
            err(d, "deadline", "decider.deadline: a positive duration such as 500ms or 2s")
            deadline = 2.0
        decider = DeciderTarget(target=str(d["target"]), token=secret(d, "decider"), deadline_s=deadline,
                                tls_ca=read_file(d, "tls_ca"), tls_cert=read_file(d, "tls_cert"),
                                tls_key=read_file(d, "tls_key"))

    def agent_of(m: Any, where: _Map, key: str, what: str) -> dict[str, Any]:
        if not isinstance(m, _Map) or not m.get("id"):
            err(where, key, f"{what}: a mapping with at least 'id' is required")
            return {}
        out: dict[str, Any] = {}
        for k, v in m.items():
            if k in AGENT_FIELDS:
                out[k] = str(v)
            elif k == "labels" and isinstance(v, dict):
                out[k] = {str(a): str(b) for a, b in v.items()}
            elif k == "capabilities" and isinstance(v, list):
                out[k] = [str(x) for x in v]
            else:
                err(m, k, f"{what}: unknown or malformed agent field '{k}'")
        return out

    agent = agent_of(doc.get("agent"), doc, "agent", "agent") if "agent" in doc else {}

    listen = str(doc.get("listen", "stdio"))
    if listen != "stdio":
        u = urlsplit(listen)
        if u.scheme != "http" or not u.hostname or u.port is None:
            err(doc, "listen", "listen: 'stdio' or a URL like http://127.0.0.1:8800/mcp")
    if listen == "stdio" and not agent:
        err(doc, "agent" if "agent" in doc else None, "agent: required when listen is stdio (the client's identity)")

    clients: list[ClientToken] = []
    raw_clients = doc.get("clients", [])
    if not isinstance(raw_clients, list):
        err(doc, "clients", "clients: a list of {token | token_env | sha256, agent}")
        raw_clients = []
    for c in raw_clients:
        if not isinstance(c, _Map):
            err(doc, "clients", "clients: each entry is a mapping")
            continue
        for k in c:
            if k not in {"token", "token_env", "sha256", "agent"}:
                err(c, k, f"clients: unknown key '{k}'")
        digest = str(c["sha256"]).lower() if "sha256" in c else None
        tok = secret(c, "clients")
        if tok:
            digest = hashlib.sha256(tok.encode()).hexdigest()
        if not digest:
            err(c, None, "clients: each entry needs token, token_env or sha256")
            continue
        clients.append(ClientToken(digest, agent_of(c.get("agent"), c, "agent", "clients.agent")))
    if listen != "stdio" and not clients:
        # Fail closed: an HTTP gateway without client tokens would let anyone claim the config's agent.
        err(doc, "listen", "listen: an HTTP gateway needs 'clients' (bearer token → agent identity)")

    wait = parse_duration(doc.get("approval_wait", "30s"))
    if wait is None or wait < 0:
        err(doc, "approval_wait", "approval_wait: a duration such as 30s or 5m")
        wait = 30.0

    ups: list[Upstream] = []
    seen: set[str] = set()
    raw_ups = doc.get("upstreams")
    if not isinstance(raw_ups, list) or not raw_ups:
        err(doc, "upstreams" if "upstreams" in doc else None, "upstreams: a non-empty list is required")
        raw_ups = []
    for u in raw_ups:
        if not isinstance(u, _Map):
            err(doc, "upstreams", "upstreams: each entry is a mapping with name and command or url")
            continue
        for k in u:
            if k not in {"name", "command", "url", "env", "cwd", "token", "token_env"}:
                err(u, k, f"upstreams: unknown key '{k}'")
        name = str(u.get("name", ""))
        if not _UPSTREAM_NAME.match(name):
            err(u, "name" if "name" in u else None,
                f"upstreams.name: '{name}' must be lower-case letters, digits and '-' (it becomes mcp://{name or '…'})")
        elif name in seen:
            err(u, "name", f"upstreams.name: duplicate upstream '{name}'")
        seen.add(name)
        cmd = u.get("command")
        url = u.get("url")
        if (cmd is None) == (url is None):
            err(u, None, f"upstreams '{name}': give exactly one of command (a list) or url")
            continue
        if cmd is not None and (not isinstance(cmd, list) or not cmd):
            err(u, "command", f"upstreams '{name}': command is a non-empty list, e.g. [python, -m, mcp_server_time]")
            continue
        if url is not None and urlsplit(str(url)).scheme not in ("http", "https"):
            err(u, "url", f"upstreams '{name}': url must be http(s)://…")
            continue
        token = secret(u, f"upstreams '{name}'")
        if token and url is None:
            err(u, "token" if "token" in u else "token_env", f"upstreams '{name}': a token is for url upstreams")
        ups.append(Upstream(name=name, command=tuple(str(x) for x in cmd or ()), url=str(url or ""),
                            env={str(a): str(b) for a, b in (u.get("env") or {}).items()},
                            cwd=str(u["cwd"]) if "cwd" in u else None, token=token))

    tool_names = str(doc.get("tool_names", "prefixed"))
    if tool_names not in ("prefixed", "plain"):
        err(doc, "tool_names", "tool_names: prefixed or plain")
    elif tool_names == "plain" and len(ups) > 1:
        err(doc, "tool_names", "tool_names: plain names need exactly one upstream (several would collide)")

    pass_through: set[str] = set()
    raw_pass = doc.get("pass_through", [])
    if not isinstance(raw_pass, list):
        err(doc, "pass_through", f"pass_through: a list of MCP methods (any of: {', '.join(GOVERNED_METHODS[1:])})")
        raw_pass = []
    for m in raw_pass:
        if m == "tools/call":
            err(doc, "pass_through", "pass_through: tools/call is always decided")
        elif m not in GOVERNED_METHODS:
            err(doc, "pass_through", f"pass_through: '{m}' is not a governed method "
                f"(any of: {', '.join(GOVERNED_METHODS[1:])})")
        else:
            pass_through.add(str(m))

    costs: dict[str, float] = {}
    raw_costs = doc.get("costs", {})
    if not isinstance(raw_costs, dict):
        err(doc, "costs", 'costs: a mapping "<upstream>/<tool>" (or "<upstream>/*") → estimated cost per call')
        raw_costs = {}
    names = {u.name for u in ups}
    for key, value in raw_costs.items():
        upstream, sep, tool = str(key).partition("/")
        if not sep or not tool or upstream not in names:
            err(raw_costs, key, f"costs: '{key}' must be <upstream>/<tool> or <upstream>/* with an upstream of this "
                f"config (one of: {', '.join(sorted(names))})")
        elif isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value) or value < 0:
            err(raw_costs, key, f"costs: '{key}': {value!r} is not a number >= 0")
        else:
            costs[str(key)] = float(value)

    if errors:
        raise GatewayConfigError(errors)
    return GatewayConfig(decider=decider, agent=agent, listen=listen, approval_wait_s=wait, upstreams=tuple(ups),
                         clients=tuple(clients), tool_names=tool_names, pass_through=frozenset(pass_through),
                         costs=costs, source=source)
