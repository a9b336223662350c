"""What metrics add to one decision's server CPU, measured directly (no load generator).

The same-run A/B (`ab.py --b-args "--metrics-listen 127.0.0.1:0"`) is the end-to-end check, but
on a shared 2-core box its run-to-run noise (±10%) is larger than the effect. This times exactly
what the decision path runs when metrics are on — the three extra perf_counter() readings in
service.py and the observer call (server/observability.py → Metrics.decided) — in one process and
in multiprocess mode (`--workers`), and relates it to the server CPU a decision costs:
PERF-NOTES' floor (~435 µs unary at C=32, ~125 µs on DecideStream) or `--cpu-us` from an A/B run.

    .venv/bin/python tools/bench/metrics_overhead.py [--cpu-us 830]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results"
N = 200_000
FLOORS_US = {"unary C=32 (PERF-NOTES floor)": 435.0, "DecideStream C=32 (PERF-NOTES floor)": 125.0}

_CHILD = r"""
import sys, time
from types import SimpleNamespace
from prometheus_client import CollectorRegistry
from decider.server.metrics import Metrics
from decider.server.observability import Observability
m = Metrics(CollectorRegistry())
observe = Observability(metrics=m)._observer()
resp = SimpleNamespace(eval_us=300)
perf = time.perf_counter
n = int(sys.argv[1])
t = time.process_time()   # CPU time: the box is shared, wall time would count other processes' turns
for _ in range(n):
    started = perf(); c0 = perf(); c1 = perf()          # the readings service.py adds
    observe(None, resp, "ALLOW", started, c0, c1, None)
per_decision = (time.process_time() - t) / n * 1e6
t = time.process_time()
for _ in range(n // 10):
    m.writer_commit(1, 0)   # once per commit: at C=1 a commit per decision, under load one per batch
print(per_decision, (time.process_time() - t) / (n // 10) * 1e6)
"""


def run(multiprocess: bool) -> tuple[float, float]:
    env = dict(os.environ)
    tmp = None
    if multiprocess:
        import tempfile

        tmp = tempfile.mkdtemp(prefix="decider-mp-bench-")
        env["PROMETHEUS_MULTIPROC_DIR"] = tmp
    out = subprocess.run([sys.executable, "-c", _CHILD, str(N)], env=env, capture_output=True, text=True,
                         check=True, cwd=HERE.parent.parent)
    if tmp:
        import shutil

        shutil.rmtree(tmp, ignore_errors=True)
    decision_us, commit_us = out.stdout.split()
    return float(decision_us), float(commit_us)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--cpu-us", type=float, action="append", default=[],
                    help="also relate to this server CPU per decision (µs), e.g. from an ab.py table")
    args = ap.parse_args()
    floors = dict(FLOORS_US, **{f"measured {c:.0f} µs/decision": c for c in args.cpu_us})
    rows = [("one process", run(False)), ("multiprocess (--workers)", run(True))]
    print(f"{'metrics path':28} {'µs/decision':>12} {'µs/commit':>10}  " + "  ".join(f"{k:>38}" for k in floors))
    for name, (us, commit_us) in rows:
        print(f"{name:28} {us:12.2f} {commit_us:10.2f}  "
              + "  ".join(f"{us / v * 100:37.2f}%" for v in floors.values()))
    print("(% = the per-decision path; the per-commit hook is paid once per group-commit batch, so under "
          "load a fraction of a decision's)")
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / f"metrics-overhead-{time.strftime('%Y%m%dT%H%M%S')}.json"
    path.write_text(json.dumps({"n": N, "cpu_us_per_decision": {k: v[0] for k, v in rows},
                                "cpu_us_per_commit": {k: v[1] for k, v in rows}, "reference_cpu_us": floors},
                               indent=2) + "\n")
    print(f"results: {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
