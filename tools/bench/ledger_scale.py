"""The ledger at size on PostgreSQL (issue 25 item 4): 10 M records, Decide, the console's queries, prune.

    nice -n 10 .venv/bin/python tools/bench/ledger_scale.py load    [--records 10000000] [--days 90]
    nice -n 10 .venv/bin/python tools/bench/ledger_scale.py decide  [--rounds 3] [--seconds 10]
    nice -n 10 .venv/bin/python tools/bench/ledger_scale.py queries [--calls 30]
    nice -n 10 .venv/bin/python tools/bench/ledger_scale.py prune   [--older-than 60d]
    .venv/bin/python tools/bench/ledger_scale.py stop

All share one kept PostgreSQL server in `--pgdir` (default /work/pgscale; tools/bench/ledger_pg.py):
started if it is not running, left running between items (`stop` stops it), its data kept. The
records are in database `ledger` (`load` makes it, resumes a partial load, and with the records
already there does nothing but report: `--reuse` is the default); `decide` also uses an empty
database `empty` at the same schema. Each item prints a table and writes
tools/bench/results/ledger_<item>.json. Long-running (the 10 M load takes tens of minutes on 2
shared cores): run one at a time, niced.

- load: generator of tools/bench/ledger_gen.py; COPY in chunks of 50,000; then VACUUM ANALYZE;
  reports load time and pg_total_relation_size of decisions and decision_journal per million records.
- decide: two `decider serve` at once, one on `ledger`, one on `empty` (same flags), cells alternating
  A B / B A, C=1 and C=16: decisions/s and p50/p99 of Decide.
- queries: a `decider serve` on `ledger`; through its gRPC Queries API, p50 of ListDecisions newest
  page, by agent, by session, and WatchDecisions from an id a day before the load's end (time to the
  first batch, and the whole catch-up once); then EXPLAIN (ANALYZE, BUFFERS) of the SQL each one issues (the
  store's query compiled with its parameters).
- prune: a `decider serve` on `ledger` under one closed-loop client: Decide before, then during
  `decider db prune --older-than AGE` (a subprocess, to an archive folder): p50/p99 both phases,
  prune duration, archive bytes per million records. It prunes a copy of `ledger` (CREATE DATABASE
  ledger_prune TEMPLATE ledger, dropped at the end unless --keep-copy): the kept ledger stays whole.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(HERE))

import psycopg  # noqa: E402
from ledger_pg import KeptPostgres  # noqa: E402

RESULTS = HERE / "results"
LEDGER, EMPTY, PRUNED = "ledger", "empty", "ledger_prune"


def machine() -> dict[str, Any]:
    return {"python": platform.python_version(), "cpus": os.cpu_count(), "note": "2 cores shared with 4 other engineers"}


LABEL = ""   # --label: a suffix for the results file (a control run on a smaller ledger)


def write(item: str, report: dict[str, Any]) -> Path:
    RESULTS.mkdir(exist_ok=True)
    path = RESULTS / f"ledger_{item}{'_' + LABEL if LABEL else ''}.json"
    path.write_text(json.dumps({"machine": machine(), **report}, indent=2, default=str))
    return path


def ensure_db(pg: KeptPostgres, name: str) -> str:
    """The database at the newest schema (`decider db upgrade`)."""
    import subprocess

    pg.create_database(name)
    url = pg.url(name)
    subprocess.run([sys.executable, "-m", "decider", "db", "upgrade", "--db", url], cwd=ROOT, check=True,
                   stdout=subprocess.DEVNULL)
    # A partitioned ledger (revision 0009): the months the generator writes into (up to 90 days back)
    # get their own partitions, as a server running through those months would have made them;
    # otherwise their rows land in DEFAULT, which prune never drops whole.
    from sqlalchemy import create_engine

    from decider.store.partitions import ensure_partitions

    engine = create_engine(url)
    try:
        ensure_partitions(engine, months_back=4)
    finally:
        engine.dispose()
    return url


def sizes(pg: KeptPostgres, db: str) -> dict[str, Any]:
    """Records, and bytes of each table with its indexes (partitions included: pg_partition_tree)."""
    with psycopg.connect(pg.dsn(db)) as conn:
        out: dict[str, Any] = {}
        for table in ("decisions", "decision_journal"):
            out[f"{table}_bytes"] = int(conn.execute(
                "SELECT CASE WHEN relkind = 'p' THEN (SELECT coalesce(sum(pg_total_relation_size(relid)), 0) "
                "FROM pg_partition_tree(oid)) ELSE pg_total_relation_size(oid) END "
                "FROM pg_class WHERE oid = %s::regclass", (table,)).fetchone()[0])
        out["records"] = conn.execute("SELECT count(*) FROM decisions").fetchone()[0]
        out["journal_rows"] = conn.execute("SELECT count(*) FROM decision_journal").fetchone()[0]
        out["database_bytes"] = conn.execute("SELECT pg_database_size(current_database())").fetchone()[0]
    return out


def cmd_load(pg: KeptPostgres, args: argparse.Namespace) -> int:
    from ledger_gen import load

    ensure_db(pg, LEDGER)
    t0 = time.perf_counter()
    meta = load(pg, LEDGER, args.records, args.days, chunk=args.chunk)
    fresh = time.perf_counter() - t0 > 5
    vacuum_s = meta.get("vacuum_s")
    if fresh or vacuum_s is None:
        t = time.perf_counter()
        with psycopg.connect(pg.dsn(LEDGER), autocommit=True) as conn:
            conn.execute("VACUUM (ANALYZE) decisions")
            conn.execute("VACUUM (ANALYZE) decision_journal")
        vacuum_s = round(time.perf_counter() - t, 1)
        meta_path = pg.pgdir / f"{LEDGER}.json"
        saved = json.loads(meta_path.read_text())
        saved["vacuum_s"] = vacuum_s
        meta_path.write_text(json.dumps(saved))
    sz = sizes(pg, LEDGER)
    m = max(1, sz["records"]) / 1e6
    mib = 2 ** 20
    report = {"records": sz["records"], "journal_rows": sz["journal_rows"], "days": args.days,
              "load_s": meta["load_s"], "vacuum_analyze_s": vacuum_s,
              "load_s_per_million": round(meta["load_s"] / m, 1),
              "decisions_mib_per_million": round(sz["decisions_bytes"] / mib / m, 1),
              "journal_mib_per_million": round(sz["decision_journal_bytes"] / mib / m, 1),
              "database_gib": round(sz["database_bytes"] / 2 ** 30, 2),
              "bytes_per_record": round((sz["decisions_bytes"] + sz["decision_journal_bytes"]) / max(1, sz["records"]))}
    path = write("load", report)
    print(f"{'records':>12} {'load s':>8} {'s/M':>6} {'VACUUM s':>9} {'decisions MiB/M':>16} "
          f"{'journal MiB/M':>14} {'bytes/record':>13} {'database GiB':>13}")
    print(f"{report['records']:>12,} {report['load_s']:>8.0f} {report['load_s_per_million']:>6.0f} "
          f"{vacuum_s:>9} {report['decisions_mib_per_million']:>16} {report['journal_mib_per_million']:>14} "
          f"{report['bytes_per_record']:>13} {report['database_gib']:>13}")
    print(f"results: {path}")
    return 0


def decide_requests(n: int = 400) -> list[Any]:
    """Decide requests of the generator's mix (same agents, tools, weights), each agent in sessions of
    ~50 calls (the session policies read their history). A tiny estimated cost: every call reserves
    against the team budget (a write per decision, as in production) without exhausting the 500/day
    limit of policies/ during a run (an exhausted budget would turn the mix into cheap DENYs)."""
    import random

    from ledger_gen import CALLS, MODELS

    from decider.client import build_request

    rng = random.Random(25)
    weights = [c[4] for c in CALLS]
    out = []
    for i in range(n):
        agent, tool, server, args, _ = rng.choices(CALLS, weights)[0]
        ident: dict[str, Any] = {"id": agent, "session_id": f"bench-{agent}-{i // 50}"}
        if agent in MODELS:
            ident["model"] = MODELS[agent]
        out.append(build_request(agent=ident, tool=tool, tool_server=server, args=args, call_id=f"bench-{i}",
                                 request_id=f"bench-{i}", estimated_cost=0.0001))
    return out


async def drive(addr: str, reqs: list[Any], concurrency: int, seconds: float,
                lat: list[float] | None, stop_when: Any = None) -> tuple[int, int]:
    """C closed-loop workers calling Decide for `seconds` (or until `stop_when()` is true); returns
    (answered, failed); latencies in seconds appended to `lat`."""
    import asyncio
    import itertools

    import grpc

    from decider.v1 import decider_pb2_grpc

    counter = itertools.count()
    end = time.perf_counter() + seconds
    done = failed = 0
    async with grpc.aio.insecure_channel(addr) as ch:
        stub = decider_pb2_grpc.DeciderStub(ch)

        async def worker() -> None:
            nonlocal done, failed
            while time.perf_counter() < end and not (stop_when is not None and stop_when()):
                req = reqs[next(counter) % len(reqs)]
                t = time.perf_counter()
                try:
                    await stub.Decide(req, timeout=10)
                except grpc.aio.AioRpcError:
                    failed += 1
                    continue
                if lat is not None:
                    lat.append(time.perf_counter() - t)
                done += 1

        await asyncio.gather(*(worker() for _ in range(concurrency)))
    return done, failed


def pct(values: list[float], q: float) -> float:
    """Nearest-rank percentile (an observed value), in ms."""
    if not values:
        return float("nan")
    v = sorted(values)
    return v[max(0, min(len(v) - 1, round(q * len(v) + 0.5) - 1))] * 1000


def cmd_decide(pg: KeptPostgres, args: argparse.Namespace) -> int:
    import asyncio
    import tempfile

    from ledger_pg import serve, stop
    from load import proc_tree_cpu_seconds

    ledger_url = ensure_db(pg, LEDGER)
    empty_url = ensure_db(pg, EMPTY)
    records = {name: sizes(pg, name)["records"] for name in (LEDGER, EMPTY)}
    reqs = decide_requests()
    cells: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory() as d:
        procs = {}
        try:
            for name, url in ((LEDGER, ledger_url), (EMPTY, empty_url)):
                procs[name] = serve(url, Path(d), name)
            for _, port in procs.values():   # one pass of the mix: connections and caches warm
                asyncio.run(drive(f"127.0.0.1:{port}", reqs, 1, 3.0, None))
            for conc in args.concurrency:
                for r in range(args.rounds):
                    order = [EMPTY, LEDGER] if r % 2 == 0 else [LEDGER, EMPTY]
                    for name in order:
                        proc, port = procs[name]
                        addr = f"127.0.0.1:{port}"
                        asyncio.run(drive(addr, reqs, conc, 1.0, None))   # warm-up, not measured
                        lat: list[float] = []
                        cpu0, t0 = proc_tree_cpu_seconds(proc.pid), time.perf_counter()
                        ok, failed = asyncio.run(drive(addr, reqs, conc, args.seconds, lat))
                        wall, cpu = time.perf_counter() - t0, proc_tree_cpu_seconds(proc.pid) - cpu0
                        cell = {"db": name, "concurrency": conc, "round": r, "decisions": ok, "failed": failed,
                                "per_s": round(ok / wall, 1), "p50_ms": round(pct(lat, 0.5), 2),
                                "p99_ms": round(pct(lat, 0.99), 2),
                                "server_cpu_ms_per_decision": round(cpu / max(1, ok) * 1000, 3),
                                "_lat": lat}
                        cells.append(cell)
                        print(f"  {name:<7} C={conc:<3} round {r}: {cell['per_s']:8.1f}/s  p50 {cell['p50_ms']:6.2f} ms"
                              f"  p99 {cell['p99_ms']:7.2f} ms", file=sys.stderr, flush=True)
        finally:
            for proc, _ in procs.values():
                stop(proc)
    summary = []
    for conc in args.concurrency:
        row: dict[str, Any] = {"concurrency": conc}
        for name in (EMPTY, LEDGER):
            mine = [c for c in cells if c["db"] == name and c["concurrency"] == conc]
            lat = [x for c in mine for x in c["_lat"]]
            rates = sorted(c["per_s"] for c in mine)
            row[name] = {"per_s_median": rates[len(rates) // 2], "per_s_rounds": [c["per_s"] for c in mine],
                         "p50_ms": round(pct(lat, 0.5), 2), "p99_ms": round(pct(lat, 0.99), 2),
                         "server_cpu_ms_per_decision": round(sum(c["server_cpu_ms_per_decision"] for c in mine)
                                                             / len(mine), 3),
                         "failed": sum(c["failed"] for c in mine)}
        row["throughput_ratio"] = round(row[LEDGER]["per_s_median"] / row[EMPTY]["per_s_median"], 3)
        row["p50_ratio"] = round(row[LEDGER]["p50_ms"] / row[EMPTY]["p50_ms"], 3)
        summary.append(row)
    for c in cells:
        del c["_lat"]
    path = write("decide", {"records": records, "rounds": args.rounds, "seconds_per_cell": args.seconds,
                            "summary": summary, "cells": cells})
    print(f"records: {LEDGER} {records[LEDGER]:,}, {EMPTY} {records[EMPTY]:,}; {args.rounds} rounds of "
          f"{args.seconds:g} s per cell, alternating")
    print(f"{'C':>3} {'db':<7} {'decisions/s':>12} {'p50 ms':>8} {'p99 ms':>8} {'srv CPU ms/dec':>15}  "
          f"{'ratio 10M/empty: /s':>20} {'p50':>6}")
    for row in summary:
        for name in (EMPTY, LEDGER):
            x = row[name]
            tail = f"  {row['throughput_ratio']:>20.3f} {row['p50_ratio']:>6.3f}" if name == LEDGER else ""
            print(f"{row['concurrency']:>3} {name:<7} {x['per_s_median']:>12.1f} {x['p50_ms']:>8.2f} "
                  f"{x['p99_ms']:>8.2f} {x['server_cpu_ms_per_decision']:>15.3f}{tail}")
    print(f"results: {path}")
    return 0


def _explain(url: str, cases: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """EXPLAIN (ANALYZE, BUFFERS) of the SQL each console query issues: the store's own query
    (QueryStore.decisions with the DecisionQuery the Queries service builds), captured with its
    parameters from SQLAlchemy's cursor events, then explained on the same engine."""
    import re

    from sqlalchemy import event

    from decider.store import connect
    from decider.store.queries import QueryStore

    engine = connect(url, create=False)
    seen: list[tuple[str, Any]] = []

    def capture(conn: Any, cursor: Any, statement: str, parameters: Any, context: Any, executemany: bool) -> None:
        seen.append((statement, parameters))

    store = QueryStore(engine)
    out: dict[str, dict[str, Any]] = {}
    for name, q in cases.items():
        seen.clear()
        event.listen(engine, "before_cursor_execute", capture)
        try:
            store.decisions(q)
        finally:
            event.remove(engine, "before_cursor_execute", capture)
        statement, params = seen[-1]
        with engine.connect() as conn:
            plan = [r[0] for r in conn.exec_driver_sql("EXPLAIN (ANALYZE, BUFFERS) " + statement, params)]
        text_ = "\n".join(plan)
        indexes = sorted(set(re.findall(r"(?:Index|Index Only) Scan(?: Backward)? using (\S+)", text_)))
        ms = re.search(r"Execution Time: ([\d.]+) ms", text_)
        out[name] = {"sql": " ".join(statement.split()), "params": {k: str(v) for k, v in dict(params).items()},
                     "plan": plan, "indexes": indexes, "execution_ms": float(ms.group(1)) if ms else None}
    engine.dispose()
    return out


def cmd_queries(pg: KeptPostgres, args: argparse.Namespace) -> int:
    import asyncio
    import random
    import tempfile

    import grpc
    from ledger_pg import serve, stop

    from decider.record.ids import first_id_at, id_time_ms
    from decider.store.queries import DecisionQuery
    from decider.v1 import decider_pb2 as pb
    from decider.v1 import decider_pb2_grpc

    url = ensure_db(pg, LEDGER)
    # "A day old" from the end of the generated ledger (the load's time), so a re-run on a later day
    # still catches up a day of its records rather than only what later runs added.
    plan = pg.pgdir / f"{LEDGER}.json"
    end_ms = json.loads(plan.read_text())["end_ms"] if plan.exists() else int(time.time() * 1000)
    day_old = first_id_at(end_ms - 86_400_000)
    with psycopg.connect(pg.dsn(LEDGER)) as conn:
        records = conn.execute("SELECT count(*) FROM decisions").fetchone()[0]
        day_count = conn.execute("SELECT count(*) FROM decisions WHERE decision_id > %s", (day_old,)).fetchone()[0]
        # Sessions of coder-7 (the busiest agent) from across the ledger, each a console timeline.
        oldest, newest = conn.execute("SELECT min(decision_id), max(decision_id) FROM decisions").fetchone()
        rng = random.Random(7)
        sessions = []
        span = (id_time_ms(oldest), id_time_ms(newest))
        for _ in range(args.calls):
            at = first_id_at(rng.randrange(*span))
            row = conn.execute("SELECT session_id FROM decisions WHERE decision_id >= %s AND agent_id = 'coder-7' "
                               "ORDER BY decision_id LIMIT 1", (at,)).fetchone()
            sessions.append(row[0])
        sizes_ = [conn.execute("SELECT count(*) FROM decisions WHERE session_id = %s", (s,)).fetchone()[0]
                  for s in sessions[:5]]
    cases = {
        "newest page": (pb.ListDecisionsRequest(limit=50, newest_first=True), DecisionQuery(limit=50, newest_first=True)),
        "by agent (coder-7, ~68 %)": (
            pb.ListDecisionsRequest(filter=pb.DecisionFilter(agent_id="coder-7"), limit=50, newest_first=True),
            DecisionQuery(agent_id="coder-7", limit=50, newest_first=True)),
        "by agent (refund-bot, ~6 %)": (
            pb.ListDecisionsRequest(filter=pb.DecisionFilter(agent_id="refund-bot"), limit=50, newest_first=True),
            DecisionQuery(agent_id="refund-bot", limit=50, newest_first=True)),
        "by session (timeline)": (None, DecisionQuery(session_id=sessions[0], limit=1000)),
        "by tool (cancel_reservation, ~2 %)": (
            pb.ListDecisionsRequest(filter=pb.DecisionFilter(tool_name="cancel_reservation"), limit=50,
                                    newest_first=True),
            DecisionQuery(tool_name="cancel_reservation", limit=50, newest_first=True)),
        "watch from a day ago (first batch)": (None, DecisionQuery(after_id=day_old, limit=500)),
    }
    results: dict[str, dict[str, Any]] = {}

    async def run(port: int) -> None:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as ch:
            stub = decider_pb2_grpc.QueriesStub(ch)
            for name, (req, _) in cases.items():
                times: list[float] = []
                got = 0
                for i in range(args.calls + 2):
                    t = time.perf_counter()
                    if name.startswith("by session"):
                        # The console's session page: oldest first, pages of 1000.
                        r = await stub.ListDecisions(pb.ListDecisionsRequest(
                            filter=pb.DecisionFilter(session_id=sessions[i % len(sessions)]), limit=1000))
                        got = len(r.decisions)
                    elif name.startswith("watch"):
                        call = stub.WatchDecisions(pb.WatchDecisionsRequest(after_id=day_old))
                        first = await call.read()
                        got = len(pb.WatchDecisionsResponse.FromString(first).decisions) if isinstance(first, bytes) \
                            else len(first.decisions)
                        call.cancel()
                    else:
                        r = await stub.ListDecisions(req)
                        got = len(r.decisions)
                    if i >= 2:   # the first two warm the server's connections
                        times.append(time.perf_counter() - t)
                results[name] = {"calls": len(times), "p50_ms": round(pct(times, 0.5), 2),
                                 "p90_ms": round(pct(times, 0.9), 2), "rows": got}
            # The whole day's catch-up, once: every record after the day-old id, in the stream's pages.
            call = stub.WatchDecisions(pb.WatchDecisionsRequest(after_id=day_old))
            t = time.perf_counter()
            n = 0
            first_ms = None
            while n < day_count:
                msg = await call.read()
                if msg is grpc.aio.EOF:
                    break
                n += len(msg.decisions)
                if first_ms is None:
                    first_ms = (time.perf_counter() - t) * 1000
            call.cancel()
            secs = time.perf_counter() - t
            results["watch: whole day's catch-up"] = {"records": n, "seconds": round(secs, 2),
                                                     "records_per_s": round(n / secs)}

    with tempfile.TemporaryDirectory() as d:
        proc, port = serve(url, Path(d), "queries")
        try:
            asyncio.run(run(port))
        finally:
            stop(proc)
    explain = _explain(url, {name: q for name, (_, q) in cases.items()})
    path = write("queries", {"records": records, "day_old_id": day_old, "records_in_last_day": day_count,
                             "session_sizes_sample": sizes_, "target_p50_ms": 50, "results": results,
                             "explain": explain})
    print(f"{records:,} records; {day_count:,} in the last day; sessions of coder-7 hold ~{sizes_} records")
    print(f"{'query (gRPC Queries API, real server)':<38} {'calls':>5} {'rows':>5} {'p50 ms':>8} {'p90 ms':>8}  "
          f"{'EXPLAIN ANALYZE ms':>18}  index used")
    for name, r in results.items():
        if "p50_ms" not in r:
            continue
        e = explain[name]
        print(f"{name:<38} {r['calls']:>5} {r['rows']:>5} {r['p50_ms']:>8.2f} {r['p90_ms']:>8.2f}  "
              f"{e['execution_ms'] or 0:>18.2f}  {', '.join(e['indexes']) or 'none (sequential scan)'}")
    w = results["watch: whole day's catch-up"]
    print(f"WatchDecisions whole day's catch-up: {w['records']:,} records in {w['seconds']} s "
          f"({w['records_per_s']:,}/s)")
    for name, e in explain.items():
        print(f"\n-- {name}: {e['sql'][:160]}...  {e['params']}")
        print("\n".join(e["plan"]))
    print(f"results: {path}")
    return 0


def cmd_prune(pg: KeptPostgres, args: argparse.Namespace) -> int:


    # The prune runs on a copy of the ledger (CREATE DATABASE ... TEMPLATE, a file copy), so the kept
    # 10 M records stay for the next run of every item.
    ensure_db(pg, LEDGER)
    t = time.perf_counter()
    with psycopg.connect(pg.dsn("postgres"), autocommit=True) as conn:
        conn.execute(f"DROP DATABASE IF EXISTS {PRUNED}")
        conn.execute(f"CREATE DATABASE {PRUNED} TEMPLATE {LEDGER} STRATEGY FILE_COPY")
    print(f"  copied {LEDGER} to {PRUNED} in {time.perf_counter() - t:.0f} s", file=sys.stderr, flush=True)
    url = pg.url(PRUNED)
    try:
        return _prune(pg, args, url)
    finally:
        if not args.keep_copy:
            with psycopg.connect(pg.dsn("postgres"), autocommit=True) as conn:
                conn.execute(f"DROP DATABASE IF EXISTS {PRUNED}")


def _prune(pg: KeptPostgres, args: argparse.Namespace, url: str) -> int:
    import asyncio
    import subprocess
    import tempfile

    from ledger_pg import SERVE_ENV, serve, stop

    before_sz = sizes(pg, PRUNED)
    archive = pg.pgdir / "archives" / time.strftime("%Y%m%dT%H%M%S")
    archive.mkdir(parents=True)
    reqs = decide_requests()
    phases: dict[str, Any] = {}
    with tempfile.TemporaryDirectory() as d:
        proc, port = serve(url, Path(d), "prune")
        addr = f"127.0.0.1:{port}"
        try:
            asyncio.run(drive(addr, reqs, args.concurrency, 3.0, None))   # warm-up

            def phase(name: str, seconds: float, stop_when: Any = None) -> None:
                lat: list[float] = []
                t0 = time.perf_counter()
                ok, failed = asyncio.run(drive(addr, reqs, args.concurrency, seconds, lat, stop_when))
                wall = time.perf_counter() - t0
                phases[name] = {"seconds": round(wall, 1), "decisions": ok, "failed": failed,
                                "per_s": round(ok / wall, 1), "p50_ms": round(pct(lat, 0.5), 2),
                                "p99_ms": round(pct(lat, 0.99), 2), "max_ms": round(pct(lat, 1.0), 2)}
                print(f"  {name}: {phases[name]}", file=sys.stderr, flush=True)

            phase("before", args.before)
            cmd = [sys.executable, "-m", "decider", "db", "prune", "--db", url, "--older-than", args.older_than,
                   "--archive-dir", str(archive), "--format", "json", "--batch", str(args.batch),
                   "--throttle", str(args.throttle)]
            t0 = time.perf_counter()
            pruner = subprocess.Popen(cmd, cwd=ROOT, env=SERVE_ENV, stdout=subprocess.PIPE,
                                      stderr=open(Path(d) / "prune.log", "wb"))
            try:
                phase("during prune", args.max_seconds, stop_when=lambda: pruner.poll() is not None)
            finally:
                if pruner.poll() is None:   # the bound was reached: stop it (what it deleted stays archived)
                    pruner.terminate()
                out, _ = pruner.communicate(timeout=120)
            prune_s = time.perf_counter() - t0
            phase("after", args.after)
        finally:
            stop(proc)
        prune_log = (Path(d) / "prune.log").read_text()[-2000:]
    try:
        res = json.loads(out)
    except ValueError:
        raise SystemExit(f"prune failed (exit {pruner.returncode}): {out[-1000:]!r}\n{prune_log}") from None
    files = [f for f in archive.rglob("*") if f.is_file()]
    archive_bytes = sum(f.stat().st_size for f in files)
    data_bytes = sum(f.stat().st_size for f in files if not f.name.endswith(".json"))
    after_sz = sizes(pg, PRUNED)
    m = max(1, res["records"]) / 1e6
    report = {"older_than": args.older_than, "batch": args.batch, "throttle": args.throttle,
              "concurrency": args.concurrency, "records_before": before_sz["records"],
              "records_after": after_sz["records"], "pruned": res["deleted"], "archived": res["records"],
              "held": res["held"], "days": len(res["days"]), "prune_s": round(prune_s, 1),
              "prune_records_per_s": round(res["deleted"] / prune_s), "archive_dir": str(archive),
              "archive_bytes": archive_bytes, "archive_mib_per_million": round(data_bytes / 2 ** 20 / m, 1),
              "decisions_bytes_before": before_sz["decisions_bytes"], "decisions_bytes_after": after_sz["decisions_bytes"],
              "phases": phases, "p99_ratio_during_vs_before": round(phases["during prune"]["p99_ms"]
                                                                     / phases["before"]["p99_ms"], 2)}
    path = write("prune", report)
    print(f"prune --older-than {args.older_than} --batch {args.batch} --throttle {args.throttle:g}: {res['deleted']:,} of {before_sz['records']:,} records archived and "
          f"deleted ({res['held']} held) over {len(res['days'])} days in {report['prune_s']} s "
          f"({report['prune_records_per_s']:,}/s); archive {archive_bytes / 2**20:.0f} MiB = "
          f"{report['archive_mib_per_million']} MiB per million records")
    print(f"table size (with indexes) {before_sz['decisions_bytes'] / 2**30:.2f} GiB before, "
          f"{after_sz['decisions_bytes'] / 2**30:.2f} GiB after (a DELETE leaves the space to reuse, not to the OS)")
    print(f"{'Decide, C=' + str(args.concurrency):<16} {'seconds':>8} {'decisions/s':>12} {'p50 ms':>8} {'p99 ms':>8} "
          f"{'max ms':>8} {'failed':>7}")
    for name, x in phases.items():
        print(f"{name:<16} {x['seconds']:>8} {x['per_s']:>12} {x['p50_ms']:>8} {x['p99_ms']:>8} {x['max_ms']:>8} "
              f"{x['failed']:>7}")
    print(f"p99 during / before: {report['p99_ratio_during_vs_before']} (target <= 2)")
    print(f"results: {path}")
    return 0


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--pgdir", type=Path, default=Path("/work/pgscale"))
    ap.add_argument("--label", default="", help="results go to ledger_<item>_<label>.json")
    sub = ap.add_subparsers(dest="item", required=True)
    p = sub.add_parser("load", help="generate and COPY the records (resumes; a full ledger is reused)")
    p.add_argument("--records", type=int, default=10_000_000)
    p.add_argument("--days", type=float, default=90.0)
    p.add_argument("--chunk", type=int, default=50_000)
    p.add_argument("--reuse", action="store_true", default=True,
                   help="keep the records already loaded (the default; drop database ledger to start over)")
    p = sub.add_parser("decide", help="Decide on the loaded ledger vs an empty database, alternating")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--seconds", type=float, default=10.0)
    p.add_argument("--concurrency", type=lambda t: [int(x) for x in t.split(",")], default=[1, 16])
    p = sub.add_parser("queries", help="the console's queries through a real server, and their plans")
    p.add_argument("--calls", type=int, default=30)
    p = sub.add_parser("prune", help="Decide before and during `decider db prune` on the ledger (removes records)")
    p.add_argument("--older-than", default="60d", help="the prune's horizon (60d of a 90-day ledger: its oldest month)")
    p.add_argument("--concurrency", type=int, default=4)
    p.add_argument("--before", type=float, default=30.0)
    p.add_argument("--after", type=float, default=15.0)
    p.add_argument("--max-seconds", type=float, default=3600.0, help="bound on the prune (stopped after)")
    p.add_argument("--batch", type=int, default=500, help="the prune's records per read and delete (its default 500)")
    p.add_argument("--throttle", type=float, default=1.0, help="the prune's pause ratio (its default 1)")
    p.add_argument("--keep-copy", action="store_true", help=f"keep database {PRUNED} (the pruned copy) afterwards")
    sub.add_parser("stop", help="stop the kept PostgreSQL server")
    args = ap.parse_args()
    global LABEL
    LABEL = args.label
    pg = KeptPostgres(args.pgdir)
    if args.item == "stop":
        pg.stop()
        return 0
    pg.ensure()
    return {"load": cmd_load, "decide": cmd_decide, "queries": cmd_queries, "prune": cmd_prune}[args.item](pg, args)


if __name__ == "__main__":
    sys.exit(main())
