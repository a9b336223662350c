"""What a named list costs a decision: `engine.decide` with a rule reading `lists.<name>` of 10 / 100 /
1,000 items, against the same rule with the hosts written inline and with no list at all.

    python tools/bench/lists_bench.py                 # ~10 s
    python tools/bench/lists_bench.py --sizes 10,1000 --seconds 4

CEL copies a bound list into each evaluation, so the cost grows with the list's length; the bench
shows by how much. Rounds alternate between the bundles (best round of each counts), CPU time of
this thread. Table on stdout, JSON to tools/bench/results/.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parents[2]
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

from eval_bench import write_results  # noqa: E402  (a sibling script: this folder is on sys.path)

from decider.bundle.compile import Bundle, load_bundle  # noqa: E402
from decider.client import build_request  # noqa: E402
from decider.engine.decide import decide  # noqa: E402

POLICY = """apiVersion: decider/v1
kind: Policy
metadata: {{name: web}}
spec:
  match: {{tools: ["http.fetch"]}}
  rules:
    - id: allow-listed
      effect: allow
      when: url.host(tool.args.url) {condition}
"""


def write_bundle(root: Path, hosts: list[str] | None, inline: bool) -> Bundle:
    root.mkdir(parents=True)
    lists = f"  lists:\n    hosts: {json.dumps(hosts)}\n" if hosts is not None and not inline else ""
    (root / "bundle.yaml").write_text(
        f"apiVersion: decider/v1\nkind: Bundle\nmetadata: {{name: lists-bench, version: 1.0.0}}\n"
        f"spec:\n  default: deny\n{lists}")
    if hosts is None:
        condition = '== "host0.example"'
    elif inline:
        condition = f"in {json.dumps(hosts)}"
    else:
        condition = "in lists.hosts"
    (root / "web.yaml").write_text(POLICY.format(condition=condition))
    return load_bundle(root)


def rate(bundle: Bundle, seconds: float) -> float:
    req = build_request(agent={"id": "a"}, tool="http.fetch", args={"url": "https://host0.example/x"})
    for _ in range(200):
        decide(bundle, req)
    done, cpu0, deadline = 0, time.thread_time(), time.perf_counter() + seconds
    while time.perf_counter() < deadline:
        for _ in range(200):
            decide(bundle, req)
        done += 200
    return done / (time.thread_time() - cpu0)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", type=lambda t: [int(x) for x in t.split(",")], default=[10, 100, 1000])
    ap.add_argument("--seconds", type=float, default=9.0, help="total timed seconds (bounded)")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--name", default=None)
    args = ap.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="decider-lists-bench-") as tmp:
        bundles: dict[str, Bundle] = {"no list": write_bundle(Path(tmp) / "none", None, False)}
        for n in args.sizes:
            hosts = [f"host{i}.example" for i in range(n)]
            bundles[f"lists.hosts, {n} items"] = write_bundle(Path(tmp) / f"l{n}", hosts, False)
            bundles[f"inline list, {n} items"] = write_bundle(Path(tmp) / f"i{n}", hosts, True)
        per_round = args.seconds / args.rounds / len(bundles)
        best = dict.fromkeys(bundles, 0.0)
        order = list(bundles)
        for k in range(args.rounds):
            # Each round in another order, so that no bundle always runs first (or cold).
            for label in order[k % len(order):] + order[:k % len(order)]:
                best[label] = max(best[label], rate(bundles[label], per_round))
    rows: list[dict[str, Any]] = [{"bundle": k, "decisions_per_s": v, "us_per_decision": 1e6 / v}
                                  for k, v in best.items()]
    base = rows[0]["us_per_decision"]
    header = f"{'bundle':28} {'decisions/s':>12} {'µs/decision':>12} {'+µs':>7}"
    print(header)
    print("-" * len(header))
    for r in rows:
        print(f"{r['bundle']:28} {r['decisions_per_s']:>12,.0f} {r['us_per_decision']:>12.1f} "
              f"{r['us_per_decision'] - base:>7.1f}")
    write_results(args, "lists", {"rows": rows})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
