"""`decider replay` and `decider diff`: recorded traces through bundles, offline.

Exit codes: replay 0, or 1 when a call has an outcome named in --fail-on; diff 0 when nothing
changed, 1 when some call changed; both 2 when a bundle, trace or mapping does not load.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
import xml.etree.ElementTree as ET
from collections.abc import Iterator
from typing import Any, TypeVar

from decider.bundle.compile import load_bundle
from decider.engine.memory import ASSUME, MemoryState
from decider.errors import DeciderError, PolicyLoadError
from decider.replay.parallel import default_workers
from decider.replay.replay import DiffReport, IdentityMapping, Replayed, ReplayReport, diff, replay, session_key
from decider.replay.state_files import read_budget_state, read_kill_switches
from decider.replay.traces import FORMATS, TraceFormatError, read_traces

__all__ = ["register"]

EXIT_OK, EXIT_FAIL, EXIT_LOAD = 0, 1, 2
T = TypeVar("T")
_OUTCOMES = ("allow", "deny", "require_approval", "indeterminate")


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--trace-format", choices=FORMATS, help="trace reader (default: detected from content)")
    p.add_argument("--mapping", help="YAML file with agent/environment/context for what the traces lack")
    p.add_argument("--agent-id", help="agent.id where the trace has none")
    p.add_argument("--team", help="agent.team where the trace has none")
    p.add_argument("--owner", help="agent.owner where the trace has none")
    p.add_argument("--environment", help="request.environment where the trace has none")
    p.add_argument("--no-progress", action="store_true", help="no progress line on stderr")


def register(sub: Any) -> None:
    r = sub.add_parser("replay", help="evaluate recorded tool calls through a bundle (offline)")
    r.add_argument("bundle", help="bundle folder or file")
    r.add_argument("traces", nargs="+", help="trace files or folders, - for stdin, .gz too")
    _common(r)
    r.add_argument("--format", choices=["table", "json", "jsonl", "junit"], default="table", help="report format")
    r.add_argument("--fail-on", default="", help="comma list of outcomes that fail the run, e.g. deny,require_approval")
    r.add_argument("--examples", type=int, default=20, help="flagged calls to list in the table (default 20)")
    r.add_argument("--sessions", type=int, default=20,
                   help="sessions with a deny or approval to list in the table (default 20)")
    r.add_argument("--workers", type=int, default=0,
                   help="forked processes evaluating calls (default: CPUs - 1 from 3 CPUs up, else 1 = in-process); "
                        "only when no state can change an outcome (no budgets, approvals or kill switches)")
    r.add_argument("--budget-state", help="YAML/JSON budget usage to start from: {scope: {value: spent | "
                   "{spent: X, reserved: Y}}}, e.g. {team: {finance: 480}}")
    r.add_argument("--assume", choices=ASSUME, default="pending",
                   help="approvals the replay opens: pending (wait, as no approver acts; a decider log's recorded "
                        "resolutions still apply) or approved (each identical call after it is allowed, once)")
    r.add_argument("--kill-switches", help="kill switches in force: `decider kill --list --all --format json` "
                   "output (JSON lines or a list; each active from createdAt until clearedAt)")
    r.set_defaults(func=run_replay)

    d = sub.add_parser("diff", help="which recorded calls change outcome between two bundles")
    d.add_argument("old", help="old bundle folder or file")
    d.add_argument("new", help="new bundle folder or file")
    d.add_argument("traces", nargs="+", help="trace files or folders, - for stdin")
    _common(d)
    d.add_argument("--format", choices=["table", "json"], default="table")
    d.add_argument("--examples", type=int, default=5, help="examples per changed group (default 5)")
    d.set_defaults(func=run_diff)


def _mapping(args: argparse.Namespace) -> IdentityMapping:
    base = IdentityMapping.from_file(args.mapping) if args.mapping else IdentityMapping()
    m = base.merged(id=args.agent_id, team=args.team, owner=args.owner)
    if args.environment:
        m = IdentityMapping(m.agent, args.environment, m.context)
    return m


def _progress(items: Iterator[T], enabled: bool, verb: str = "replay") -> Iterator[T]:
    """A progress line on stderr for long inputs (only on a terminal, after the first second)."""
    if not enabled or not sys.stderr.isatty():
        yield from items
        return
    start = last = time.monotonic()
    n = 0
    for n, item in enumerate(items, 1):
        now = time.monotonic()
        if now - last > 0.25 and now - start > 1.0 and n > 1:
            last = now
            print(f"\r  {verb}ing… {n:,} calls ({n / (now - start):,.0f}/s)", end="", file=sys.stderr, flush=True)
        yield item
    if last != start:
        print(f"\r  {verb}ed {n:,} calls in {time.monotonic() - start:.1f}s" + " " * 10, file=sys.stderr)


def _load_errors(e: Exception) -> int:
    if isinstance(e, PolicyLoadError):
        for err in e.errors:
            print(err, file=sys.stderr)
    else:
        print(f"decider: {e}", file=sys.stderr)
    return EXIT_LOAD


def run_replay(args: argparse.Namespace) -> int:
    fail_on = {x.strip().upper() for x in args.fail_on.split(",") if x.strip()}
    bad = {x for x in fail_on if x.lower() not in _OUTCOMES}
    if bad:
        print(f"decider: --fail-on: unknown outcome(s) {sorted(bad)}; use {', '.join(_OUTCOMES)}", file=sys.stderr)
        return EXIT_LOAD
    try:
        bundle = load_bundle(args.bundle)
        mapping = _mapping(args)
        workers = args.workers if args.workers > 0 else default_workers()
        # Progress counts evaluated calls: with workers, calls are read a window ahead of them.
        state = MemoryState(assume=args.assume)
        if args.budget_state:
            state.set_usage(read_budget_state(args.budget_state))
        if args.kill_switches:
            state.kill_switches = read_kill_switches(args.kill_switches)
        results = _progress(replay(bundle, read_traces(args.traces, args.trace_format), mapping, workers=workers,
                                   state=state), not args.no_progress)
        report = ReplayReport()
        calls: list[dict[str, Any]] = []   # every call, for --format json
        for r in results:
            report.add(r)
            if args.format == "jsonl":
                print(json.dumps(_call_json(r), default=str))
            elif args.format == "json":
                calls.append(_call_json(r))
    except (PolicyLoadError, TraceFormatError, DeciderError, OSError) as e:
        return _load_errors(e)
    if args.format == "table":
        _replay_table(report, bundle.name, bundle.revision, args.examples, args.sessions)
    elif args.format == "json":
        print(json.dumps(_replay_json(report, bundle.name, bundle.revision, calls), indent=2, default=str))
    elif args.format == "junit":
        print(_replay_junit(report, fail_on))
    failing = sum(report.by_outcome[o] for o in fail_on)
    if failing and args.format == "table":
        print(f"\nFAIL: {failing} call(s) with outcome in --fail-on {','.join(sorted(fail_on)).lower()}")
    return EXIT_FAIL if failing else EXIT_OK


def _call_json(r: Replayed) -> dict[str, Any]:
    c = r.call
    return {"source": c.source, "format": c.format, "tool": c.tool_name, "server": c.server, "call_id": c.call_id,
            "agent": c.agent, "session": session_key(c), "arguments": c.arguments, "from_text": c.from_text,
            "repeats": c.repeats or None, "outcome": r.outcome, "rule": r.rule, "reason": r.reason, "matched_rules": list(r.matched),
            "labels": list(r.labels)}


def _replay_table(rep: ReplayReport, name: str, revision: str, examples: int, sessions: int = 20) -> None:
    print(f"replayed {rep.total:,} tool calls through {name} ({revision[:12]})\n")
    print("outcome            calls")
    for o in ("ALLOW", "DENY", "REQUIRE_APPROVAL", "INDETERMINATE"):
        print(f"{o:18} {rep.by_outcome[o]:6,}")
    print(f"\n{'tool':32} {'calls':>6} {'allow':>6} {'deny':>6} {'approval':>8} {'indet.':>6}")
    for tool, cnt in sorted(rep.by_tool.items(), key=lambda kv: -sum(kv[1].values())):
        print(f"{tool[:32]:32} {sum(cnt.values()):6,} {cnt['ALLOW']:6,} {cnt['DENY']:6,} "
              f"{cnt['REQUIRE_APPROVAL']:8,} {cnt['INDETERMINATE']:6,}")
    print(f"\n{'deciding rule':40} calls")
    for rule, n in rep.by_rule.most_common():
        print(f"{rule[:40]:40} {n:6,}")
    _sessions_table(rep, sessions)
    if rep.flagged:
        print(f"\ndenied, approval-needing and indeterminate calls (first {min(examples, len(rep.flagged))} "
              f"of {len(rep.flagged):,}):")
        for r in rep.flagged[:examples]:
            args = json.dumps(r.call.arguments if r.call.arguments is not None else r.call.raw_arguments,
                              default=str)[:80]
            tool = r.call.tool_name[:28] if not r.call.from_text else f"{r.call.tool_name[:21]} (text)"
            print(f"  {r.outcome:16} {tool:28} {r.rule or '-':28} {args}")
            print(f"  {'':16} {r.reason[:100]}  [{r.call.source}]")


def _sessions_table(rep: ReplayReport, limit: int) -> None:
    """The per-session view: how many sessions (trajectories, traces, conversations) had a deny or
    an approval, and the worst of them."""
    flagged = rep.flagged_sessions()
    print(f"\nsessions: {len(rep.sessions):,}; with a DENY: {rep.sessions_with('DENY'):,}; "
          f"with a REQUIRE_APPROVAL: {rep.sessions_with('REQUIRE_APPROVAL'):,}; with either: {len(flagged):,}")
    if rep.from_text:
        print(f"calls written only as text in a final answer (from_text): {rep.from_text:,}")
    if rep.duplicates:
        print(f"text actions repeating a call made in the same turn (not decided again, not counted): "
              f"{rep.duplicates:,}")
    if not flagged or limit <= 0:
        return
    labelled = any(s.labels for _, s in flagged[:limit])
    print(f"\n{'session':40} {'calls':>6} {'allow':>6} {'deny':>6} {'approval':>8} {'indet.':>6}"
          + ("  from_text" if rep.from_text else "") + ("  labels" if labelled else ""))
    for key, s in flagged[:limit]:
        c = s.by_outcome
        print(f"{key[:40]:40} {s.calls:6,} {c['ALLOW']:6,} {c['DENY']:6,} {c['REQUIRE_APPROVAL']:8,} "
              f"{c['INDETERMINATE']:6,}" + (f"  {s.from_text:9,}" if rep.from_text else "")
              + (f"  {', '.join(s.labels)}" if labelled else ""))
    if len(flagged) > limit:
        print(f"… {len(flagged) - limit:,} more (--sessions N, or --format json for all)")


def _replay_json(rep: ReplayReport, name: str, revision: str, calls: list[dict[str, Any]]) -> dict[str, Any]:
    """The summary, the flagged calls, and `calls`: every call in input order (as `--format jsonl` prints them;
    a text action repeating a call already made is there with outcome DUPLICATE, outside the counts)."""
    return {
        "bundle": {"name": name, "revision": revision},
        "total": rep.total,
        "by_outcome": dict(rep.by_outcome),
        "by_tool": {k: dict(v) for k, v in rep.by_tool.items()},
        "by_rule": dict(rep.by_rule),
        "from_text": rep.from_text,
        "duplicates": rep.duplicates,
        "sessions": {
            "total": len(rep.sessions),
            "with_deny": rep.sessions_with("DENY"),
            "with_require_approval": rep.sessions_with("REQUIRE_APPROVAL"),
            "flagged": [{"session": key, "calls": s.calls, "by_outcome": dict(s.by_outcome), "from_text": s.from_text,
                         "first_source": s.first_source, "labels": list(s.labels)}
                        for key, s in rep.flagged_sessions()],
        },
        "flagged": [_call_json(r) for r in rep.flagged],
        "calls": calls,
    }


def _replay_junit(rep: ReplayReport, fail_on: set[str]) -> str:
    root = ET.Element("testsuites", tests=str(rep.total))
    suite = ET.SubElement(root, "testsuite", name="replay", tests=str(rep.total))
    failures = 0
    for r in rep.flagged:
        if r.outcome in fail_on:
            failures += 1
            tc = ET.SubElement(suite, "testcase", classname=r.call.tool_name, name=r.call.source or r.call.tool_name)
            ET.SubElement(tc, "failure", message=f"{r.outcome} by {r.rule or '-'}").text = r.reason
    allowed = rep.total - failures
    if allowed:
        ET.SubElement(suite, "testcase", classname="replay", name=f"{allowed} call(s) not in --fail-on")
    suite.set("failures", str(failures))
    root.set("failures", str(failures))
    return ET.tostring(root, encoding="unicode")


def run_diff(args: argparse.Namespace) -> int:
    try:
        old, new = load_bundle(args.old), load_bundle(args.new)
        report = diff(old, new, _progress(read_traces(args.traces, args.trace_format), not args.no_progress),
                      _mapping(args))
    except (PolicyLoadError, TraceFormatError, DeciderError, OSError) as e:
        return _load_errors(e)
    groups = report.groups()
    if args.format == "json":
        print(json.dumps(_diff_json(report, groups, args.examples, old.revision, new.revision), indent=2, default=str))
    else:
        _diff_table(report, groups, args.examples, old.revision, new.revision)
    return EXIT_FAIL if report.changes else EXIT_OK


def _diff_table(rep: DiffReport, groups: dict[tuple[str, str], list[Any]], examples: int, a: str, b: str) -> None:
    print(f"{rep.total:,} calls replayed through {a[:12]} (old) and {b[:12]} (new): "
          f"{len(rep.changes):,} changed\n")
    for (o, n), changes in groups.items():
        print(f"{o} -> {n}: {len(changes):,}")
        for c in changes[:examples]:
            args = json.dumps(c.call.arguments, default=str)[:70]
            print(f"    {c.call.tool_name[:28]:28} {c.old.rule or '-'} -> {c.new.rule or '-'}  {args}  [{c.call.source}]")


def _diff_json(rep: DiffReport, groups: dict[tuple[str, str], list[Any]], examples: int, a: str,
               b: str) -> dict[str, Any]:
    return {
        "old_revision": a, "new_revision": b, "total": rep.total, "changed": len(rep.changes),
        "groups": [
            {"old": o, "new": n, "count": len(ch), "examples": [
                {"tool": c.call.tool_name, "arguments": c.call.arguments, "source": c.call.source,
                 "old_rule": c.old.rule, "new_rule": c.new.rule} for c in ch[:examples]]}
            for (o, n), ch in groups.items()
        ],
    }
