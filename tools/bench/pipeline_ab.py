"""Two checkouts' in-process decision pipelines, paired round by round: the batch path (or the unary
one) of `pipeline_bench.run` in one fresh process per round and side, sides alternating A B / B A.

    .venv/bin/python tools/bench/pipeline_ab.py --a /tmp/base --b . [--rounds 12] [--batch 16] [--concurrency 2]

No gRPC and no client in the measurement: the CPU per decision is the process's own, over the measured
decisions only (start-up and the warm-up pass excluded), so a change of a few per cent in the pipeline
shows in the paired ratios B/A where `ab.py`'s server-level cells (±5-15 % on this VM) cannot resolve it.
Run an A-vs-A (`--a X --b X`) for the spread. Each side runs its own checkout's code with this
interpreter (PYTHONPATH = that checkout), each on its own fresh SQLite file; bounded by --requests per
round and a timeout per process.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
from pathlib import Path

_CHILD = """
import asyncio, json, logging, sys, tempfile
root, requests, batch, concurrency = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
sys.path.insert(0, root)
sys.path.insert(0, root + "/tools/bench")
logging.disable(logging.WARNING)
import pipeline_bench
with tempfile.TemporaryDirectory() as d:
    r = asyncio.run(pipeline_bench.run(concurrency, requests, 60.0, f"sqlite:///{d}/p.db", None, batch=batch))
print("RESULT " + json.dumps(r))
"""


def one(checkout: Path, requests: int, batch: int, concurrency: int) -> dict[str, float]:
    out = subprocess.run([sys.executable, "-c", _CHILD, str(checkout.resolve()), str(requests), str(batch),
                          str(concurrency)], capture_output=True, text=True, timeout=180, check=False)
    lines = [line for line in out.stdout.splitlines() if line.startswith("RESULT ")]
    if not lines:
        raise RuntimeError(f"{checkout}: no result (exit {out.returncode}):\n{out.stderr[-2000:]}")
    return json.loads(lines[0][len("RESULT "):])


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--a", required=True, type=Path, help="checkout of build A (the base)")
    ap.add_argument("--b", required=True, type=Path, help="checkout of build B (the change)")
    ap.add_argument("--rounds", type=int, default=12)
    ap.add_argument("--batch", type=int, default=16, help="calls per decide_many; 0 = unary decide_bytes")
    ap.add_argument("--concurrency", type=int, default=2)
    ap.add_argument("--requests", type=int, default=1500, help="worker iterations per round (each a batch)")
    args = ap.parse_args()
    cpu: dict[str, list[float]] = {"A": [], "B": []}
    writer: dict[str, list[float]] = {"A": [], "B": []}
    for rnd in range(args.rounds):
        for side in ("A", "B") if rnd % 2 == 0 else ("B", "A"):
            r = one(args.a if side == "A" else args.b, args.requests, args.batch, args.concurrency)
            cpu[side].append(r["cpu_us_per_decision"])
            writer[side].append(r["writer_cpu_us_per_decision"])
    ratios = [b / a for a, b in zip(cpu["A"], cpu["B"], strict=True)]
    for side in ("A", "B"):
        print(f"{side}: CPU µs per decision {[round(x, 1) for x in cpu[side]]}, median {statistics.median(cpu[side]):.1f}"
              f" (writer thread {statistics.median(writer[side]):.1f})")
    below = sum(r < 1 for r in ratios)
    print(f"B/A CPU per decision by round {[round(r, 3) for r in ratios]}: median {statistics.median(ratios):.3f}, "
          f"range {min(ratios):.3f}-{max(ratios):.3f}, {below} of {len(ratios)} rounds below 1 (< 1 = B cheaper)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
