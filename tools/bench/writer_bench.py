"""Decision-record writes/s through GroupCommitWriter on SQLite (WAL, synchronous=FULL), by concurrency.

    python tools/bench/writer_bench.py                         # C = 1, 8, 32, 128; ~2 s each
    python tools/bench/writer_bench.py --concurrency 1,32 --seconds 5

C asyncio tasks each build a real decision row (engine + record.build_record on the bench bundle)
and await `writer.write(row)`, i.e. wait for its commit, as the server does before answering.
Reported per C: records/s, mean rows per commit (batch), p50/p99 wait for the commit, and CPU-s of
the process. Every cell is bounded by count and time. Table on stdout, JSON to tools/bench/results/.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import os
import platform
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
REPO_ROOT = HERE.parents[1]
for p in (str(REPO_ROOT), str(HERE)):
    if p not in sys.path:
        sys.path.insert(0, p)

import load  # noqa: E402
from workload import build_workload  # noqa: E402

from decider.bundle.compile import load_bundle  # noqa: E402
from decider.engine.decide import decide  # noqa: E402
from decider.record.ids import new_id  # noqa: E402
from decider.record.record import build_record  # noqa: E402
from decider.store import GroupCommitWriter, connect  # noqa: E402
from decider.store.decisions import decisions  # noqa: E402


def _rows(n: int) -> list[dict[str, Any]]:
    bundle = load_bundle(HERE / "policies" / "decider")
    target = load.DeciderTarget("unused")
    now = datetime.now(timezone.utc)
    out = []
    for item in build_workload(n, 7):
        req = target.build(item)
        out.append(build_record("", req, decide(bundle, req), bundle, now, b"bench-key").to_row())
    return out


async def _cell(writer: GroupCommitWriter, rows: list[dict[str, Any]], c: int, max_n: int, seconds: float
                ) -> dict[str, Any]:
    counter = itertools.count()
    waits: list[float] = []
    deadline = time.perf_counter() + seconds
    b0, r0 = writer.batches, writer.rows

    async def worker() -> None:
        while (n := next(counter)) < max_n and time.perf_counter() < deadline:
            # A fresh id, and an args hash of its own: one pending approval per exact call is a
            # unique index, and the workload repeats calls.
            did = new_id()
            row = dict(rows[n % len(rows)], decision_id=did, args_hash=did)
            t = time.perf_counter()
            await writer.write(row)
            waits.append(time.perf_counter() - t)

    cpu0, t0 = time.process_time(), time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(c)))
    wall, cpu = time.perf_counter() - t0, time.process_time() - cpu0
    waits.sort()
    batches, written = writer.batches - b0, writer.rows - r0
    return {"concurrency": c, "records": written, "wall_s": wall, "records_per_s": written / wall,
            "rows_per_commit": written / batches if batches else 0.0, "cpu_s": cpu,
            "p50_ms": waits[len(waits) // 2] * 1000, "p99_ms": waits[int(len(waits) * 0.99)] * 1000}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--concurrency", type=lambda t: [int(x) for x in t.split(",")], default=[1, 8, 32, 128])
    ap.add_argument("--seconds", type=float, default=2.0)
    ap.add_argument("--max-records", type=int, default=100_000)
    ap.add_argument("--name", default=None)
    args = ap.parse_args(argv)
    rows = _rows(500)
    results = []
    with tempfile.TemporaryDirectory(prefix="decider-writer-bench-") as tmp:
        engine = connect(f"sqlite:///{tmp}/writer.db")
        writer = GroupCommitWriter(engine, decisions)
        try:
            for c in args.concurrency:
                res = asyncio.run(_cell(writer, rows, c, args.max_records, args.seconds))
                results.append(res)
                print(f"  C={c}: {res['records_per_s']:,.0f} records/s", file=sys.stderr, flush=True)
        finally:
            writer.close()
            engine.dispose()
    header = f"{'C':>4} {'records':>8} {'records/s':>10} {'rows/commit':>12} {'p50 ms':>8} {'p99 ms':>8} {'CPU-s':>6}"
    print(header)
    print("-" * len(header))
    for r in results:
        print(f"{r['concurrency']:>4} {r['records']:>8} {r['records_per_s']:>10,.0f} {r['rows_per_commit']:>12.1f} "
              f"{r['p50_ms']:>8.2f} {r['p99_ms']:>8.2f} {r['cpu_s']:>6.2f}")
    results_dir = HERE / "results"
    results_dir.mkdir(parents=True, exist_ok=True)
    path = results_dir / f"{args.name or time.strftime('writer-%Y%m%d-%H%M%S')}.json"
    meta = {"python": platform.python_version(), "platform": platform.platform(), "cpus": os.cpu_count(),
            "loadavg_at_start": os.getloadavg(), "args": vars(args), "sqlite": "WAL, synchronous=FULL"}
    path.write_text(json.dumps({"meta": meta, "rows": results}, indent=2) + "\n")
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
