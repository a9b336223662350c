"""ReportOutcome cost, A/B: server CPU per report and latency, two checkouts side by side.

    git worktree add /tmp/perf-base main
    .venv/bin/python tools/bench/outcome_bench.py --a /tmp/perf-base --b . [--reports 600] [--concurrency 1 16]

Each server (its own fresh SQLite file, 127.0.0.1, ephemeral port) first gets `--reports` ALLOW
decisions with an estimated cost against a budget (not measured); then those decisions are reported
(actual cost, "ok") with C concurrent callers while the server's CPU (/proc, process tree) is
sampled around the report phase only. A and B alternate per concurrency level (A B, then B A).
Prints a table and writes tools/bench/results/outcome.json. Bounded: `--reports` calls per cell.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parents[1]))

from ab import start, stop  # noqa: E402
from load import proc_tree_cpu_seconds  # noqa: E402

from decider.client import DeciderClient  # noqa: E402

BUNDLE = """\
apiVersion: decider/v1
kind: Bundle
metadata: {name: outcome-bench, version: 1.0.0}
spec:
  default: deny
  tools: {"work.*": {risk_tier: 1}}
  budgets:
    - {scope: agent, limit: 1000000000, window: total}
    - {scope: team, limit: 1000000000, window: 1d}
"""
POLICY = """\
apiVersion: decider/v1
kind: Policy
metadata: {name: bench}
spec:
  rules:
    - {id: work, effect: allow, when: 'tool.name.startsWith("work.")'}
"""


def cell(port: int, reports: int, concurrency: int, pid: int, tag: str) -> dict[str, Any]:
    clients = [DeciderClient(f"127.0.0.1:{port}") for _ in range(concurrency)]
    try:
        ids = [clients[0].decide(agent={"id": f"bot-{tag}-{i % 8}", "team": "bench"}, tool="work.do",
                                 args={"n": i}, estimated_cost=2.0).decision_id for i in range(reports)]
        lat: list[float] = []
        lock = threading.Lock()

        def worker(k: int) -> None:
            mine = []
            for decision_id in ids[k::concurrency]:
                t0 = time.perf_counter()
                rec = clients[k].report_outcome(decision_id, 1.0, "ok")
                mine.append(time.perf_counter() - t0)
                assert rec.outcome_status == "ok"
            with lock:
                lat.extend(mine)

        cpu0, t0 = proc_tree_cpu_seconds(pid), time.perf_counter()
        with ThreadPoolExecutor(concurrency) as pool:
            list(pool.map(worker, range(concurrency)))
        cpu1, t1 = proc_tree_cpu_seconds(pid), time.perf_counter()
    finally:
        for c in clients:
            c.close()
    lat.sort()
    return {"reports": len(lat), "reports_per_s": len(lat) / (t1 - t0), "p50_ms": statistics.median(lat) * 1e3,
            "p99_ms": lat[int(len(lat) * 0.99) - 1] * 1e3, "server_cpu_ms_per_report": (cpu1 - cpu0) / len(lat) * 1e3}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--a", required=True, type=Path, help="checkout of build A (the base)")
    ap.add_argument("--b", required=True, type=Path, help="checkout of build B (the change)")
    ap.add_argument("--reports", type=int, default=600)
    ap.add_argument("--concurrency", type=int, nargs="+", default=[1, 16])
    args = ap.parse_args()
    rows: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        bundle = tmp / "bundle"
        bundle.mkdir()
        (bundle / "bundle.yaml").write_text(BUNDLE)
        (bundle / "bench.yaml").write_text(POLICY)
        procs = {}
        try:
            for name, repo in (("A", args.a), ("B", args.b)):
                procs[name] = start(repo.resolve(), tmp, name, {}, ["--bundle", str(bundle)])
            for n, c in enumerate(args.concurrency):
                order = ("A", "B") if n % 2 == 0 else ("B", "A")
                for name in order:
                    proc, port = procs[name]
                    rows.append({"build": name, "C": c, **cell(port, args.reports, c, proc.pid, f"{name}{n}")})
        finally:
            for proc, _ in procs.values():
                stop(proc)
    print(f"{'build':5} {'C':>3} {'reports/s':>10} {'p50 ms':>8} {'p99 ms':>8} {'server CPU ms/report':>21}")
    for r in sorted(rows, key=lambda r: (r["C"], r["build"])):
        print(f"{r['build']:5} {r['C']:>3} {r['reports_per_s']:>10.1f} {r['p50_ms']:>8.2f} {r['p99_ms']:>8.2f} "
              f"{r['server_cpu_ms_per_report']:>21.3f}")
    for c in args.concurrency:
        a = next(r for r in rows if r["C"] == c and r["build"] == "A")
        b = next(r for r in rows if r["C"] == c and r["build"] == "B")
        print(f"C={c}: B/A server CPU per report {b['server_cpu_ms_per_report'] / a['server_cpu_ms_per_report']:.2f}, "
              f"B/A reports/s {b['reports_per_s'] / a['reports_per_s']:.2f}")
    out = HERE / "results" / "outcome.json"
    out.parent.mkdir(exist_ok=True)
    out.write_text(json.dumps({"a": str(args.a), "b": str(args.b), "rows": rows}, indent=2))
    print(f"wrote {out.relative_to(HERE.parents[1])}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
