"""The decision pipeline without gRPC: `DeciderService.decide_bytes` driven by C concurrent tasks.

Decode → validate → state → engine → controls (approvals, budgets) → record → group commit →
response, exactly as the server runs it, against a fresh SQLite file (WAL, synchronous=FULL), with
the bench bundle and request mix of `compare.py`. What is left out is grpcio itself, so the gap
between this and the server's decisions per CPU-second is what gRPC costs.

    .venv/bin/python tools/bench/pipeline_bench.py [--concurrency 32] [--requests 6000] [--profile out.prof]
    .venv/bin/python tools/bench/pipeline_bench.py --batch 16 --concurrency 2   # DecideBatchStream's path
    .venv/bin/python tools/bench/pipeline_bench.py --batch 16 --concurrency 2 --ab-stages 16 --requests 1600

Prints a table and writes tools/bench/results/pipeline.json. Bounded by --requests and --seconds.
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from load import DeciderTarget  # noqa: E402
from workload import build_workload  # noqa: E402

from decider.server.app import ServerConfig, start_server  # noqa: E402
from decider.v1 import decider_pb2 as pb  # noqa: E402

BUNDLE = ROOT / "tools" / "bench" / "policies" / "decider"


async def _started(db: str) -> tuple[Any, list[bytes], list[str]]:
    """The real server start-up (bundle load, stores, controls), on an ephemeral loopback port that
    this bench never calls (decisions go straight to the service), and the mix's wire bytes with
    each call's expected outcome."""
    running = await start_server(ServerConfig(bundle=str(BUNDLE), db=db, listen="127.0.0.1:0"))
    items = build_workload(2000, 7)
    target = DeciderTarget("unused")
    return running, [target.build(it).SerializeToString() for it in items], [it.expected for it in items]


async def run(concurrency: int, requests: int, seconds: float, db: str, profile: str | None,
              batch: int = 0) -> dict[str, Any]:
    running, raw, expected = await _started(db)
    svc = running.service
    try:
        # Warm-up: one pass over the mix, every answer checked.
        for i, r in enumerate(raw[:400]):
            resp = await svc.decide_bytes(r)
            assert pb.Outcome.Name(resp.outcome) == expected[i], (i, resp)
        counter = iter(range(requests))
        deadline = time.perf_counter() + seconds
        done = 0

        async def worker() -> None:
            nonlocal done
            for n in counter:
                if time.perf_counter() > deadline:
                    return
                i = n % len(raw)
                if batch:
                    # DecideBatchStream's path: `batch` consecutive calls of the mix decided together.
                    idx = [(i + k) % len(raw) for k in range(batch)]
                    results = await svc.decide_many([raw[j] for j in idx])
                    for j, resp in zip(idx, results, strict=True):
                        if pb.Outcome.Name(resp.outcome) != expected[j]:
                            raise AssertionError(f"call {j}: {pb.Outcome.Name(resp.outcome)}, expected {expected[j]}")
                    done += batch
                    continue
                resp = await svc.decide_bytes(raw[i])
                if pb.Outcome.Name(resp.outcome) != expected[i]:
                    raise AssertionError(f"call {i}: {pb.Outcome.Name(resp.outcome)}, expected {expected[i]}")
                done += 1

        prof = cProfile.Profile() if profile else None
        # The writer thread's own CPU clock: how much of the pipeline's CPU is the insert + commit.
        wclock = time.pthread_getcpuclockid(running.writer._thread.ident)  # type: ignore[arg-type]
        t0, c0, w0 = time.perf_counter(), time.process_time(), time.clock_gettime(wclock)
        if prof:
            prof.enable()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        if prof:
            prof.disable()
            prof.dump_stats(profile)
        wall, cpu = time.perf_counter() - t0, time.process_time() - c0
        writer_cpu = time.clock_gettime(wclock) - w0
    finally:
        await running.stop(1.0)
    return {"concurrency": concurrency, "batch": batch, "decisions": done, "wall_s": wall, "cpu_s": cpu,
            "decisions_per_s": done / wall, "decisions_per_cpu_s": done / cpu,
            "cpu_us_per_decision": 1e6 * cpu / max(done, 1), "writer_cpu_us_per_decision": 1e6 * writer_cpu / max(done, 1),
            "batches": running.writer.batches, "rows": running.writer.rows}


async def ab_stages(batch: int, concurrency: int, per_round: int, rounds: int, db: str) -> dict[str, Any]:
    """The batch path with and without its stage-first phases, rounds alternating in one process
    (same server, same database, same warm caches): "in turn" forces every call of a batch
    through the in-order path (as before issue 17's third round), "stage-first" is the server's."""
    running, raw, expected = await _started(db)
    svc = running.service
    stage_first = svc._state_at_hand
    in_turn = lambda *_a: None  # noqa: E731 - no state at hand: every call settles in its turn
    pos = 0
    try:
        for r in raw:   # every call once: the approvals the mix opens exist before the rounds
            await svc.decide_bytes(r)

        async def one_round() -> float:
            async def worker() -> None:
                nonlocal pos
                for _ in range(per_round // (batch * concurrency)):
                    k = pos
                    pos += batch
                    idx = [(k + j) % len(raw) for j in range(batch)]
                    for j, resp in zip(idx, await svc.decide_many([raw[j] for j in idx]), strict=True):
                        if pb.Outcome.Name(resp.outcome) != expected[j]:
                            raise AssertionError(f"call {j}: {resp}")
            n = (per_round // (batch * concurrency)) * batch * concurrency
            c0 = time.process_time()
            await asyncio.gather(*(worker() for _ in range(concurrency)))
            return 1e6 * (time.process_time() - c0) / n

        out: dict[str, list[float]] = {"in turn": [], "stage-first": []}
        for rnd in range(rounds):
            for mode in (("in turn", "stage-first") if rnd % 2 == 0 else ("stage-first", "in turn")):
                svc._state_at_hand = in_turn if mode == "in turn" else stage_first  # type: ignore[method-assign]
                out[mode].append(await one_round())
    finally:
        await running.stop(1.0)
    return {"batch": batch, "concurrency": concurrency, "per_round": per_round, "cpu_us_per_decision": out}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--concurrency", default="1,32", help="comma-separated levels")
    ap.add_argument("--requests", type=int, default=6000, help="decisions per level (upper bound)")
    ap.add_argument("--seconds", type=float, default=20.0, help="time bound per level")
    ap.add_argument("--batch", type=int, default=0,
                    help="decide N calls per decide_many (DecideBatchStream's path) instead of one decide_bytes")
    ap.add_argument("--ab-stages", type=int, default=0, metavar="ROUNDS",
                    help="with --batch: ROUNDS rounds each of the batch path in turn vs stage-first, alternating")
    ap.add_argument("--profile", help="write a cProfile of the last level here (event-loop thread only)")
    ap.add_argument("--out", default=str(ROOT / "tools" / "bench" / "results" / "pipeline.json"))
    args = ap.parse_args()
    levels = [int(x) for x in args.concurrency.split(",")]
    if args.ab_stages:
        with tempfile.TemporaryDirectory() as tmp:
            res = asyncio.run(ab_stages(args.batch or 16, levels[-1], args.requests, args.ab_stages,
                                        f"sqlite:///{tmp}/pipeline.db"))
        print(f"decide_many in-process, batches of {res['batch']}, {res['concurrency']} at once, "
              f"{res['per_round']} decisions a round; process CPU µs per decision")
        for mode, xs in res["cpu_us_per_decision"].items():
            print(f"{mode:12} median {statistics.median(xs):6.1f}   rounds: {' '.join(f'{x:.0f}' for x in xs)}")
        a, b = (statistics.median(res["cpu_us_per_decision"][m]) for m in ("in turn", "stage-first"))
        print(f"stage-first / in turn: {b / a:.2f} (CPU per decision; < 1 = stage-first cheaper)")
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(res, indent=2))
        return 0
    rows = []
    for c in levels:
        with tempfile.TemporaryDirectory() as tmp:
            rows.append(asyncio.run(run(c, args.requests, args.seconds, f"sqlite:///{tmp}/pipeline.db",
                                        args.profile if c == levels[-1] else None, args.batch)))
    print("decide_bytes in-process (no gRPC), SQLite WAL synchronous=FULL, bench bundle and mix")
    print(f"{'C':>4} {'decisions':>10} {'wall s':>8} {'CPU s':>8} {'dec/s':>9} {'dec/CPU-s':>10} {'CPU µs/dec':>11} {'writer µs':>10} {'rows/batch':>11}")
    for r in rows:
        print(f"{r['concurrency']:4} {r['decisions']:10,} {r['wall_s']:8.2f} {r['cpu_s']:8.2f} "
              f"{r['decisions_per_s']:9,.0f} {r['decisions_per_cpu_s']:10,.0f} {r['cpu_us_per_decision']:11.0f} {r['writer_cpu_us_per_decision']:10.0f} {r['rows'] / max(r['batches'], 1):11.1f}")
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(rows, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
