"""Agent manifests (`kind: Agent`, SPEC §9) in their runtime form: an index built once at load.

`AgentIndex.find(agent)` is the only look-up on the request path: a dict hit on the exact agent id,
else the first glob (in file order) over the instance id (or the id when no instance id is sent).
Ids are found in `match_key` form (engine/agent_ids.py: NFKC, format characters removed, case-folded,
trimmed), as kill switches compare them: `KILLME`, `"killme "` and full-width `ｋｉｌｌｍｅ` find the
manifest `killme`, which then denies them as `identity_mismatch` (engine/identity.py `_variant`;
issue 24 item 13), so a variant can neither step outside its manifest nor pass as another agent. A
look-alike from another script (Cyrillic `kіllme`) is not found: it is unregistered, and denied
unless the bundle says `spec.agents.unregistered: allow` (the API refuses it as an agent id anyway).
"""

from __future__ import annotations

import fnmatch
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType

from decider.policy.loader import LoadedAgent, locate
from decider.v1 import decider_pb2 as pb
from decider.values.agent_ids import match_key

__all__ = ["Manifest", "AgentIndex", "compile_manifests", "glob_matcher", "is_glob"]


def is_glob(pattern: str) -> bool:
    return any(c in pattern for c in "*?[")


def glob_matcher(patterns: list[str] | tuple[str, ...]) -> Callable[[str], object] | None:
    """One compiled regex for a list of globs (case-sensitive); None for an empty list."""
    if not patterns:
        return None
    return re.compile("|".join(f"(?:{fnmatch.translate(p)})" for p in patterns)).match


def _never(_: str) -> None:
    return None


@dataclass(frozen=True, slots=True)
class Manifest:
    name: str                              # metadata.name: an agent id or a glob over instance ids
    owner: str
    team: str
    workflows: tuple[str, ...]
    models: tuple[str, ...]
    capabilities: frozenset[str]
    capability_list: tuple[str, ...]       # in manifest order, to fill an empty request field
    tools: tuple[str, ...]
    servers: tuple[str, ...]
    labels: Mapping[str, str]
    location: str                          # file:line:col of metadata.name, for reports
    tool_ok: Callable[[str], object]       # least privilege: no tools listed → no tool matches
    server_ok: Callable[[str], object]
    _seen: dict[object, bool] = field(default_factory=dict)   # memo of allows(): names repeat

    def allows(self, tool: str, server: str) -> bool:
        """Tool (and server, when one is sent) within the manifest (memoised, bounded)."""
        key: object = (tool, server) if server else tool
        hit = self._seen.get(key)
        if hit is None:
            hit = self.tool_ok(tool) is not None and (not server or self.server_ok(server) is not None)
            if len(self._seen) < 4096:
                self._seen[key] = hit
        return hit


@dataclass(frozen=True, slots=True)
class AgentIndex:
    """Every manifest of a bundle; `unregistered` is the effective `spec.agents.unregistered`."""

    exact: dict[str, Manifest]             # a plain dict: read on every decision (never changed)
    globs: tuple[tuple[Callable[[str], object], Manifest], ...]
    unregistered: str                      # deny | allow
    manifests: tuple[Manifest, ...]
    # Memo of the identity check by the request agent's wire bytes (engine/identity.py): a
    # gateway sends the same few identities again and again. Same bytes, same agent, same answer:
    # (manifest, fields to fill, contradiction, the manifest's allows() memo when both are empty).
    checked: dict[bytes, tuple[Manifest | None, dict[str, object], str, dict[object, bool] | None]] = \
        field(default_factory=dict)

    def __bool__(self) -> bool:
        return bool(self.manifests)

    def find(self, agent: pb.Agent) -> Manifest | None:
        hit = self.exact.get(match_key(agent.id))
        if hit is not None or not self.globs:
            return hit
        key = match_key(agent.instance_id or agent.id)
        for match, m in self.globs:
            if match(key) is not None:
                return m
        return None


EMPTY_INDEX = AgentIndex({}, (), "allow", (), {})
__all__ += ["EMPTY_INDEX"]


def compile_manifests(agents: list[LoadedAgent], unregistered: str | None,
                      error: Callable[[str, int, int, str], None]) -> AgentIndex:
    """The index of a bundle's manifests; a name given twice is reported through `error`."""
    exact: dict[str, Manifest] = {}
    globs: list[tuple[Callable[[str], object], Manifest]] = []
    seen: dict[str, str] = {}
    out: list[Manifest] = []
    for la in agents:
        doc, src = la.doc, la.source
        node = locate(src.node, ("metadata", "name"))
        line, col = node.start_mark.line + 1, node.start_mark.column + 1
        here = f"{src.file}:{line}:{col}"
        name = doc.metadata.name
        key = match_key(name)   # `Bot` and `bot` are one agent: two manifests for it are an error
        if key in seen:
            error(src.file, line, col, f"duplicate agent manifest {name!r} (first at {seen[key]})")
            continue
        seen[key] = here
        s = doc.spec
        m = Manifest(
            name=name, owner=s.owner, team=s.team, workflows=tuple(s.workflows), models=tuple(s.models),
            capabilities=frozenset(s.capabilities), capability_list=tuple(s.capabilities),
            tools=tuple(s.tools), servers=tuple(s.servers), labels=MappingProxyType(dict(s.labels)),
            location=here, tool_ok=glob_matcher(s.tools) or _never, server_ok=glob_matcher(s.servers) or _never,
        )
        out.append(m)
        if is_glob(name):
            globs.append((re.compile(fnmatch.translate(key)).match, m))
        else:
            exact[key] = m
    effective = unregistered or ("deny" if out else "allow")
    return AgentIndex(exact, tuple(globs), effective, tuple(out))
