"""`decider check` warnings about agent manifests (SPEC §9): a manifest no policy can ever allow
anything for, and a policy naming agents that no manifest covers (dead once unregistered agents are
denied).

Warnings, not errors: both are legitimate while a bundle is being written (manifests first,
policies next), and neither makes a decision less safe — each only denies more than intended.
The analysis is static and over-approximates: two globs "overlap" when either matches the other
or their literal prefixes agree, so a warning means no policy *can* apply, never a guess that one
does not.
"""

from __future__ import annotations

import fnmatch

from decider.bundle.manifests import AgentIndex, Manifest, is_glob
from decider.errors import SourceError
from decider.policy.loader import LoadedPolicy, LoadedSource, locate

__all__ = ["identity_warnings", "globs_overlap"]


def _prefix(pattern: str) -> str:
    for i, c in enumerate(pattern):
        if c in "*?[":
            return pattern[:i]
    return pattern


def globs_overlap(a: str, b: str) -> bool:
    """Can some name match both globs? (Over-approximated: True when unsure.)"""
    if fnmatch.fnmatchcase(a, b) or fnmatch.fnmatchcase(b, a):
        return True
    if is_glob(a) and is_glob(b):
        pa, pb = _prefix(a), _prefix(b)
        return pa.startswith(pb) or pb.startswith(pa)
    return False


def _any_overlap(patterns: list[str], names: list[str] | tuple[str, ...]) -> bool:
    # A `lists.<name>` entry may hold anything (patterns too): never the ground for a warning.
    return any(p.startswith("lists.") or globs_overlap(p, n) for p in patterns for n in names)


def _may_allow_for(lp: LoadedPolicy, m: Manifest) -> bool:
    spec = lp.doc.spec
    if not any(r.effect == "allow" for r in spec.rules):
        return False
    match = spec.match
    if match.agents and not _any_overlap(match.agents, [m.name]):
        return False
    if match.teams and m.team and not any(t.startswith("lists.") or fnmatch.fnmatchcase(m.team, t)
                                          for t in match.teams):
        return False
    return not match.tools or _any_overlap(match.tools, m.tools)


def identity_warnings(src: LoadedSource, index: AgentIndex, default: str) -> list[SourceError]:
    warnings: list[SourceError] = []
    if not index:
        return warnings
    by_name = {la.doc.metadata.name: la for la in src.agents}
    for m in index.manifests:
        la = by_name[m.name]
        node = locate(la.source.node, ("metadata", "name"))
        line, col = node.start_mark.line + 1, node.start_mark.column + 1
        if not m.tools:
            warnings.append(SourceError(la.source.file, line, col,
                                        f"warning: agent manifest {m.name!r} lists no tools: every call it makes "
                                        "is denied not_in_manifest"))
        elif default != "allow" and not any(_may_allow_for(lp, m) for lp in src.policies):
            warnings.append(SourceError(la.source.file, line, col,
                                        f"warning: no policy can allow anything for agent manifest {m.name!r} "
                                        f"(default: {default}): every call it makes is denied"))
    if index.unregistered == "allow":
        return warnings
    names = [m.name for m in index.manifests]
    for lp in src.policies:
        for i, pattern in enumerate(lp.doc.spec.match.agents):
            if _any_overlap([pattern], names):
                continue
            node = locate(lp.source.node, ("spec", "match", "agents", i))
            warnings.append(SourceError(
                lp.source.file, node.start_mark.line + 1, node.start_mark.column + 1,
                f"warning: policy {lp.doc.metadata.name!r} names agents {pattern!r} but no agent manifest "
                "covers them: unregistered agents are denied before any policy runs"))
    return warnings
