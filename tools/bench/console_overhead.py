"""What open consoles cost the decision path: one decider server on the bench bundle, driven by the
same client code as the Cerbos comparison (load.py), alternately with nobody watching and with
WATCHERS open consoles' worth of reads running in a separate process (each: one unfiltered
`WatchDecisions` stream, as the live decision feed holds, and one `ListApprovals` a second, as the
approvals page polls). Server CPU includes the feed's poller and the watchers' reads.

    .venv/bin/python tools/bench/console_overhead.py --seconds 4 --rounds 2 --watchers 4
"""

from __future__ import annotations

import argparse
import asyncio
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parents[1]))

import load  # noqa: E402
from shadow_overhead import start  # noqa: E402
from workload import build_workload  # noqa: E402


async def _watch(target: str, watchers: int, seconds: float) -> None:
    """The reads of `watchers` open consoles, for `seconds` (run in its own process)."""
    import grpc

    from decider.v1 import decider_pb2 as pb
    from decider.v1 import decider_pb2_grpc as pb_grpc

    received = [0]
    async with grpc.aio.insecure_channel(target) as ch:
        queries, decider = pb_grpc.QueriesStub(ch), pb_grpc.DeciderStub(ch)

        async def feed() -> None:
            async for batch in queries.WatchDecisions(pb.WatchDecisionsRequest()):
                received[0] += len(batch.decisions)

        async def approvals() -> None:
            while True:
                await decider.ListApprovals(pb.ListApprovalsRequest(limit=1000))
                await asyncio.sleep(1.0)

        tasks = [asyncio.create_task(f()) for _ in range(watchers) for f in (feed, approvals)]
        await asyncio.sleep(seconds)
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
    print(received[0], flush=True)


async def measure(args: argparse.Namespace, target: str, pid: int) -> tuple[list[load.Summary], int]:
    items = build_workload(args.size)
    t = load.DeciderTarget(target, "decider")
    await t.open()
    t.prepare(items)
    cells = []
    streamed = 0
    for c in args.concurrency:
        for r in range(args.rounds):
            for watched in ([False, True] if r % 2 == 0 else [True, False]):
                watcher = None
                if watched:
                    watcher = subprocess.Popen(
                        [sys.executable, __file__, "--watch", target, "--watchers", str(args.watchers),
                         "--seconds", str(args.seconds + 1.5)], stdout=subprocess.PIPE, text=True)
                    await asyncio.sleep(0.5)   # streams open before the measured cell
                t.name = f"watched x{args.watchers}" if watched else "idle"
                cells.append(await load.run_cell(t, pid, items, c, args.max_requests, args.seconds, r))
                if watcher is not None:
                    out, _ = watcher.communicate(timeout=60)
                    streamed += int(out.strip() or 0)
    await t.close()
    return load.summarize(cells), streamed


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--seconds", type=float, default=4.0)
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--size", type=int, default=2000)
    p.add_argument("--max-requests", type=int, default=100_000)
    p.add_argument("--concurrency", type=int, nargs="+", default=[16])
    p.add_argument("--watchers", type=int, default=4)
    p.add_argument("--watch", metavar="TARGET", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.watch:
        asyncio.run(_watch(args.watch, args.watchers, args.seconds))
        return 0
    tmp = Path(tempfile.mkdtemp(prefix="decider-console-bench-"))
    proc = None
    try:
        proc, target = start(tmp, "server")
        started = time.perf_counter()
        summaries, streamed = asyncio.run(measure(args, target, proc.pid))
        elapsed = time.perf_counter() - started
    finally:
        if proc is not None:
            proc.terminate()
            proc.wait(30)
        shutil.rmtree(tmp, ignore_errors=True)
    print(f"{'target':14} {'C':>3} {'decisions/s':>12} {'p50 ms':>7} {'p99 ms':>7} {'server CPU µs/decision':>23}")
    by = {(s.target, s.concurrency): s for s in summaries}
    for s in summaries:
        print(f"{s.target:14} {s.concurrency:>3} {s.decisions_per_s:>12.0f} {s.p50_ms:>7.3f} {s.p99_ms:>7.3f} "
              f"{1e6 / s.decisions_per_server_cpu_s:>23.1f}")
    watched = f"watched x{args.watchers}"
    for c in args.concurrency:
        a, b = by[("idle", c)], by[(watched, c)]
        print(f"C={c}: {args.watchers} open consoles add {100 * (b.p50_ms / a.p50_ms - 1):+.1f}% p50 latency, "
              f"{100 * (a.decisions_per_server_cpu_s / b.decisions_per_server_cpu_s - 1):+.1f}% server CPU per "
              f"decision, {100 * (b.decisions_per_s / a.decisions_per_s - 1):+.1f}% throughput")
    print(f"records streamed to the watchers: {streamed} (every decision, to each of {args.watchers} streams); "
          f"run took {elapsed:.0f} s")
    out = HERE / "results" / "console_overhead.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    import json
    from dataclasses import asdict

    out.write_text(json.dumps({"meta": {**load.machine_info(), "watchers": args.watchers, "seconds": args.seconds,
                                        "rounds": args.rounds, "streamed": streamed},
                               "summary": [asdict(s) for s in summaries]}, indent=2) + "\n")
    print(f"results: {out.relative_to(HERE.parents[1])}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
