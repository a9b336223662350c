"""In-process evaluation speed: `engine.decide` alone on generated bundles of 20 / 200 / 2,000 rules.

    python tools/bench/eval_bench.py                      # 20, 200, 2000 rules; ~2 s per bundle
    python tools/bench/eval_bench.py --rules 200 --seconds 5
    python tools/bench/eval_bench.py --ab-extensions      # same bundles with / without the CEL
                                                          # standard extensions, rounds alternating
    python tools/bench/eval_bench.py --identity-ab        # the example bundle with vs without manifests
                                                          # and argument schemas (same run, interleaved)

Each bundle is written as YAML, loaded and compiled exactly as `decider serve` does (`load_bundle`).
Rules come five to a tool, in the shapes real bundles use (SPEC §2): a baseline allow, a path or
prefix deny, a list-membership deny on the agent, an amount or environment approval, and a regex
deny on one tool in four. Tools are spread over the families of the example bundle (shell, fs,
payments, email, db, http), so the rule index decides how many rules one request evaluates.
Requests pick a tool at random (seeded) with arguments that hit each rule sometimes.

Reported per bundle: decisions per CPU-second of the one thread doing them (no I/O; CPU time, so
other load on a shared box does not count against it), µs per decision, and the mean
number of rules evaluated per decision. Table on stdout, JSON to tools/bench/results/.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parents[2]
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

from google.protobuf import struct_pb2  # noqa: E402

from decider.bundle.compile import Bundle, load_bundle  # noqa: E402
from decider.engine.decide import decide  # noqa: E402
from decider.v1 import decider_pb2 as pb  # noqa: E402

RESULTS_DIR = Path(__file__).resolve().parent / "results"


def write_results(args: argparse.Namespace, prefix: str, body: dict[str, Any]) -> Path:
    """`body` with the machine's facts as tools/bench/results/<--name or prefix-time>.json; prints the path."""
    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    path = RESULTS_DIR / f"{args.name or time.strftime(prefix + '-%Y%m%d-%H%M%S')}.json"
    meta = {"python": platform.python_version(), "platform": platform.platform(), "cpus": os.cpu_count(),
            "loadavg_at_start": os.getloadavg(), "args": vars(args)}
    path.write_text(json.dumps({"meta": meta, **body}, indent=2) + "\n")
    print(f"wrote {path}")
    return path
RULES_PER_TOOL = 5
FAMILIES = ("shell", "fs", "payments", "email", "db", "http")
MODELS = ("gpt-5", "claude-opus-4", "llama-4", "mistral-large")


def _tool_rules(family: str, tool: str, i: int) -> list[dict[str, Any]]:
    """Five rules for one tool; the fifth is a regex on one tool in four."""
    rules: list[dict[str, Any]] = [
        {"id": f"{tool}-baseline-allow", "effect": "allow", "when": "true"},
        {"id": f"{tool}-stay-in-workspace", "effect": "deny",
         "when": '!tool.args.target.startsWith("/workspace/") || tool.args.target.contains("..")'},
        {"id": f"{tool}-reviewed-models", "effect": "deny",
         "when": '!(agent.model in ["gpt-5", "claude-opus-4"])'},
        {"id": f"{tool}-big-needs-approval", "effect": "require_approval",
         "when": 'tool.args.amount > 1000.0 || request.environment == "production"'},
    ]
    if i % 4 == 0:
        rules.append({"id": f"{tool}-no-destructive", "effect": "deny",
                      "when": 'tool.args.target.matches("rm\\\\s+-rf|mkfs|shutdown|(?i)drop\\\\s+table")'})
    else:
        rules.append({"id": f"{tool}-external-needs-approval", "effect": "require_approval",
                      "when": f'tool.args.target.endsWith(".{family}.external")'})
    for r in rules:
        r["reason"] = f"generated rule {r['id']}"
    return rules


def write_bundle(root: Path, n_rules: int) -> list[str]:
    """Write a bundle of `n_rules` rules (one policy per tool) under `root`; returns the tool names."""
    n_tools = max(1, n_rules // RULES_PER_TOOL)
    (root / "policies").mkdir(parents=True)
    (root / "bundle.yaml").write_text(
        f"apiVersion: decider/v1\nkind: Bundle\nmetadata:\n  name: eval-{n_rules}\n  version: 1.0.0\n"
        "spec:\n  default: deny\n  on_error: deny\n"
    )
    tools = []
    for i in range(n_tools):
        family = FAMILIES[i % len(FAMILIES)]
        tool = f"{family}.op{i}"
        tools.append(tool)
        doc = {
            "apiVersion": "decider/v1",
            "kind": "Policy",
            "metadata": {"name": f"p{i}-{family}", "owner": "team:bench"},
            "spec": {"match": {"tools": [tool]}, "rules": _tool_rules(family, tool, i)},
        }
        # JSON is valid YAML: no extra dependency to write it.
        (root / "policies" / f"p{i:04d}.yaml").write_text(json.dumps(doc, indent=1))
    return tools


def requests_for(tools: list[str], n: int, seed: int) -> list[pb.DecideRequest]:
    rng = random.Random(seed)
    out = []
    for k in range(n):
        tool = rng.choice(tools)
        target = rng.choice(["/workspace/a.txt", "/workspace/../etc/passwd", "/etc/hosts", "rm -rf /",
                             f"x.{tool.split('.')[0]}.external", "/workspace/report.md"])
        args = struct_pb2.Struct()
        args.update({"target": target, "amount": rng.choice([10.0, 250.0, 2500.0])})
        out.append(pb.DecideRequest(
            agent=pb.Agent(id=f"agent-{k % 50}", team="bench", model=rng.choice(MODELS)),
            tool=pb.ToolCall(name=tool, args=args),
            request=pb.Request(id=f"r{k}", environment=rng.choice(["dev", "staging", "production"])),
        ))
    return out


def measure(bundle: Bundle, reqs: list[pb.DecideRequest], seconds: float, rounds: int) -> dict[str, Any]:
    for r in reqs[:200]:  # warm caches (index memo, functions) outside the timing
        decide(bundle, r)
    rates = []
    for _ in range(rounds):
        done, start, cpu0 = 0, time.perf_counter(), time.thread_time()
        deadline = start + seconds / rounds
        while time.perf_counter() < deadline:
            for r in reqs:
                decide(bundle, r)
            done += len(reqs)
        # CPU time of this thread, not wall time: "on one core" even when the box is shared.
        rates.append(done / (time.thread_time() - cpu0))
    evaluated = statistics.mean(sum(len(p.rules) for p in bundle.candidates(r.tool.name)) for r in reqs)
    best = max(rates)
    return {"decisions_per_s": best, "us_per_decision": 1e6 / best, "rates": rates,
            "rules_evaluated_per_decision": evaluated}


def load_without_extensions(root: Path) -> Bundle:
    """The bundle compiled in an environment without the CEL standard extensions, for --ab-extensions.
    Only a benchmark does this: the product always has them on (SPEC §10)."""
    from decider.cel import env as cel_env

    saved = cel_env._CONFIG
    cel_env._CONFIG = "extensions: []\n"
    cel_env.environment.cache_clear()
    try:
        return load_bundle(root)
    finally:
        cel_env._CONFIG = saved
        cel_env.environment.cache_clear()


def ab_extensions(args: argparse.Namespace) -> int:
    """Alternate timed rounds A (extensions off) / B (on) on the same requests; best round of each."""
    rows = []
    with tempfile.TemporaryDirectory(prefix="decider-eval-bench-") as tmp:
        for n in args.rules:
            root = Path(tmp) / f"b{n}"
            tools = write_bundle(root, n)
            reqs = requests_for(tools, args.requests, args.seed)
            off, on = load_without_extensions(root), load_bundle(root)
            best = {"off": 0.0, "on": 0.0}
            for _ in range(args.rounds):
                for label, bundle in (("off", off), ("on", on)):
                    rate = measure(bundle, reqs, args.seconds / args.rounds, 1)["decisions_per_s"]
                    best[label] = max(best[label], rate)
            rows.append({"rules": n, "off_decisions_per_s": best["off"], "on_decisions_per_s": best["on"],
                         "on_over_off": best["on"] / best["off"]})
    header = f"{'rules':>6} {'ext off dec/s':>14} {'ext on dec/s':>13} {'on/off':>7}"
    print(header)
    print("-" * len(header))
    for r in rows:
        print(f"{r['rules']:>6} {r['off_decisions_per_s']:>14,.0f} {r['on_decisions_per_s']:>13,.0f} "
              f"{r['on_over_off']:>7.3f}")
    write_results(args, "eval-ab-extensions", {"rows": rows})
    return 0
IDENTITY_RULES = {"unregistered_agent", "identity_mismatch", "not_in_manifest", "invalid_arguments"}


def _without_identity(src: Path, dst: Path) -> None:
    """The example bundle minus what issue 13 added: no `kind: Agent` documents, no `args` schemas."""
    import shutil

    import yaml

    shutil.copytree(src, dst)
    (dst / "agents.yaml").unlink()
    doc = yaml.safe_load((dst / "bundle.yaml").read_text())
    doc["spec"].pop("agents", None)
    for info in doc["spec"].get("tools", {}).values():
        info.pop("args", None)
    (dst / "bundle.yaml").write_text(yaml.safe_dump(doc, sort_keys=False))


def identity_ab(seconds: float, rounds: int) -> dict[str, Any]:
    """Same-run A/B on the example bundle (policies/): A with its agent manifests and argument
    schemas, B without them. Requests: the example suites' cases that both decide alike and that
    no identity or schema check decides (the cost those checks add to an ordinary decision), with
    the identity given in full (A: looked up and checked, nothing to fill). Rounds alternate A, B."""
    from decider.verify.suites import _build, find_suites, load_suites  # the suites' own request builder

    policies = REPO_ROOT / "policies"
    import dataclasses

    from decider.bundle.manifests import EMPTY_INDEX

    with tempfile.TemporaryDirectory(prefix="decider-identity-ab-") as tmp:
        _without_identity(policies, Path(tmp) / "b")
        a, b = load_bundle(policies), load_bundle(Path(tmp) / "b")
    # C: A's own compiled bundle with the two checks switched off (same programs, same memory).
    c = dataclasses.replace(a, agents=EMPTY_INDEX, schemas={}, _schema_globs=(), _cache={}, _needs={},
                            _schema_cache={})
    reqs: list[pb.DecideRequest] = []
    for suite in load_suites(find_suites([policies])):
        for case in suite.suite.cases:
            if case.steps:   # multi-call cases (sessions) are not single requests
                continue
            req, state = _build(suite.suite, case)
            if state.kill_switches or state.budget_usage:
                continue
            da, db = decide(a, req), decide(b, req)
            if da.deciding_rule in IDENTITY_RULES or (da.outcome, da.deciding_rule) != (db.outcome, db.deciding_rule):
                continue
            if da.agent is not None:
                continue   # the manifest filled something: not the same request for B
            reqs.append(req)
    reqs = reqs * max(1, 1000 // max(1, len(reqs)))
    for r in reqs[:200]:
        for x in (a, b, c):
            decide(x, r)
    # Many short passes, alternating A and B, best pass of each: on a shared box the minimum of many
    # short samples is what is least disturbed by other load (each pass is ~1,000 decisions).
    labels = {"A (manifests + schemas)": a, "B (neither)": b, "C (A, checks off)": c}
    per: dict[str, list[float]] = {k: [] for k in labels}
    deadline = time.perf_counter() + seconds
    passes = 0
    while passes < rounds or (time.perf_counter() < deadline and passes < 400):
        passes += 1
        for label, bundle in labels.items():
            cpu0 = time.thread_time()
            for r in reqs:
                decide(bundle, r)
            per[label].append((time.thread_time() - cpu0) / len(reqs) * 1e6)
    best = {k: min(v) for k, v in per.items()}
    overhead = best["A (manifests + schemas)"] / best["B (neither)"] - 1
    # Each A pass ran right before its B pass: the median of those paired ratios cancels the
    # drift of the other load on the box better than comparing two separate minima.
    paired = statistics.median(x / y for x, y in zip(per["A (manifests + schemas)"], per["B (neither)"],
                                                     strict=True)) - 1
    paired_c = statistics.median(x / y for x, y in zip(per["A (manifests + schemas)"], per["C (A, checks off)"],
                                                       strict=True)) - 1
    print(f"{'bundle':26} {'µs/decision (best pass)':>24} {'median pass':>12} {'passes':>7}")
    for k, v in per.items():
        print(f"{k:26} {best[k]:>24.2f} {statistics.median(v):>12.2f} {len(v):>7}")
    print(f"manifest + schema overhead: {overhead * 100:+.1f}% (best passes), {paired * 100:+.1f}% (median of "
          f"paired passes) over {len(set(map(id, reqs)))} distinct requests")
    print(f"against C (same compiled bundle, checks off): {paired_c * 100:+.1f}% (median of paired passes)")
    return {"distinct_requests": len(set(map(id, reqs))), "best": best, "overhead": overhead,
            "overhead_paired_median": paired, "overhead_vs_checks_off_paired_median": paired_c,
            "median": {k: statistics.median(v) for k, v in per.items()}, "passes": passes}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rules", type=lambda t: [int(x) for x in t.split(",")], default=[20, 200, 2000])
    ap.add_argument("--seconds", type=float, default=2.0, help="timed seconds per bundle (bounded)")
    ap.add_argument("--rounds", type=int, default=3, help="best of this many timed rounds")
    ap.add_argument("--requests", type=int, default=1000, help="distinct requests cycled")
    ap.add_argument("--seed", type=int, default=7)
    ap.add_argument("--name", default=None)
    ap.add_argument("--identity-ab", action="store_true",
                    help="A/B the example bundle with and without manifests and argument schemas")
    ap.add_argument("--ab-extensions", action="store_true",
                    help="compare the same bundles compiled without / with the CEL standard extensions")
    args = ap.parse_args(argv)
    if args.ab_extensions:
        return ab_extensions(args)
    if args.identity_ab:
        res = identity_ab(args.seconds * 4, max(args.rounds, 20))
        write_results(args, "identity-ab", res)
        return 0
    rows = []
    with tempfile.TemporaryDirectory(prefix="decider-eval-bench-") as tmp:
        for n in args.rules:
            root = Path(tmp) / f"b{n}"
            tools = write_bundle(root, n)
            t0 = time.perf_counter()
            bundle = load_bundle(root)
            load_s = time.perf_counter() - t0
            n_rules = sum(len(p.rules) for p in bundle.policies)
            res = measure(bundle, requests_for(tools, args.requests, args.seed), args.seconds, args.rounds)
            rows.append({"rules": n_rules, "tools": len(tools), "load_s": load_s, **res})
            print(f"  {n_rules} rules: {res['decisions_per_s']:,.0f} decisions/s", file=sys.stderr, flush=True)
    header = f"{'rules':>6} {'tools':>6} {'load s':>7} {'rules eval/dec':>15} {'decisions/s':>12} {'µs/decision':>12}"
    print(header)
    print("-" * len(header))
    for r in rows:
        print(f"{r['rules']:>6} {r['tools']:>6} {r['load_s']:>7.2f} {r['rules_evaluated_per_decision']:>15.1f} "
              f"{r['decisions_per_s']:>12,.0f} {r['us_per_decision']:>12.1f}")
    write_results(args, "eval", {"rows": rows})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
