"""Retention at (modest) size: Decide latency before and during a prune, archive size per million records.

    .venv/bin/python tools/bench/retention_bench.py [--records 60000] [--days 30] [--seconds 5]
    .venv/bin/python tools/bench/retention_bench.py --db postgresql+psycopg://decider@127.0.0.1:5432/bench

Bounded (well under a minute at the defaults on a 2-core box): loads `--records` realistic rows
(copies of real decisions made by a real server on policies/, under ids and times spread over
`--days` back, through the store's insert path so the journal triggers fire), starts `decider serve`
on that database (127.0.0.1, ephemeral port), measures Decide with one closed-loop client for
`--seconds`, then again while `Pruner` archives and deletes every record older than `--days / 2`
(half the ledger) in this process. Before that, times the console's queries (QueryStore) on the
loaded ledger and names the indexes their plans use. Prints p50/p99/throughput of both phases, the prune's duration,
and the Parquet bytes per million records. Writes tools/bench/results/retention.json.
Issue 25 item 4 asks for 10 M rows on PostgreSQL and a 3-replica kill test: not this bench.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
sys.path.insert(0, str(ROOT))

from procs import stop_group  # noqa: E402
from sqlalchemy import delete, select  # noqa: E402

from decider.archives.prune import DEFAULT_BATCH, DEFAULT_THROTTLE, Pruner  # noqa: E402
from decider.client import DeciderClient  # noqa: E402
from decider.record.ids import new_id  # noqa: E402
from decider.store import DecisionStore, connect  # noqa: E402
from decider.store.decisions import decisions  # noqa: E402
from decider.store.journal import journal  # noqa: E402

CALLS = [("coder-7", "shell.exec", {"command": "pytest -q tests/"}),
         ("coder-7", "shell.exec", {"command": "rm -rf /srv/data"}),
         ("coder-7", "fs.read", {"path": "/srv/app/config.yaml"}),
         ("support-1", "email.send", {"to": "customer@example.com", "subject": "Your refund", "body": "Done."})]


# Every replica must hash arguments with the same key, from outside the database as in production.
SERVE_ENV = {**os.environ, "DECIDER_BINDING_KEY": os.environ.get("DECIDER_BINDING_KEY") or os.urandom(32).hex()}


def serve(db: str, tmp: Path, name: str) -> tuple[subprocess.Popen[bytes], int]:
    port_file = tmp / f"{name}.port"
    proc = subprocess.Popen([sys.executable, "-m", "decider", "serve", "--bundle", str(ROOT / "policies"),
                             "--db", db, "--listen", "127.0.0.1:0", "--port-file", str(port_file),
                             "--log-level", "warning"], cwd=ROOT, stdout=subprocess.DEVNULL,
                            stderr=open(tmp / f"{name}.log", "wb"), start_new_session=True, env=SERVE_ENV)
    deadline = time.monotonic() + 60
    while not (port_file.exists() and port_file.read_text()):
        if proc.poll() is not None or time.monotonic() > deadline:
            raise RuntimeError((tmp / f"{name}.log").read_text()[-2000:])
        time.sleep(0.1)
    return proc, int(port_file.read_text())


def stop(proc: subprocess.Popen[bytes]) -> None:
    stop_group(proc, timeout_s=20)


def templates(db: str, tmp: Path) -> list[dict[str, Any]]:
    """Real records: a few decisions through a real server, read back as rows."""
    proc, port = serve(db, tmp, "templates")
    try:
        with DeciderClient(f"127.0.0.1:{port}") as c:
            for i, (agent, tool, args) in enumerate(CALLS * 4):
                c.decide(agent={"id": agent, "session_id": f"s-{i % 3}"}, tool=tool, args=args)
    finally:
        stop(proc)
    engine = connect(db)
    with engine.connect() as conn:
        rows = [dict(r) for r in conn.execute(select(decisions)).mappings()]
    with engine.begin() as conn:
        conn.execute(delete(journal))
        conn.execute(delete(decisions))
    engine.dispose()
    return rows


def load(db: str, rows: list[dict[str, Any]], n: int, days: int) -> float:
    engine = connect(db)
    store = DecisionStore(engine)
    now_ms = int(time.time() * 1000)
    span = days * 86_400_000
    t0 = time.perf_counter()
    chunk: list[dict[str, Any]] = []
    for i in range(n):
        ms = now_ms - span + i * span // n
        r = rows[i % len(rows)]
        chunk.append({**r, "decision_id": new_id(ms), "approval_id": None, "approval_state": None,
                      "time": datetime.fromtimestamp(ms / 1000, timezone.utc), "session_id": f"s-{i % 5000}"})
        if len(chunk) == 5000:
            store.insert_many(chunk)
            chunk = []
    if chunk:
        store.insert_many(chunk)
    engine.dispose()
    return time.perf_counter() - t0


def measure(port: int, seconds: float, until: threading.Event | None = None) -> list[float]:
    lat: list[float] = []
    with DeciderClient(f"127.0.0.1:{port}") as c:
        end = time.monotonic() + seconds
        i = 0
        while time.monotonic() < end and not (until is not None and until.is_set()):
            agent, tool, args = CALLS[i % len(CALLS)]
            t = time.perf_counter()
            c.decide(agent={"id": agent}, tool=tool, args={**args, "n": i})
            lat.append(time.perf_counter() - t)
            i += 1
    return lat


def summary(lat: list[float], seconds: float) -> dict[str, float]:
    q = statistics.quantiles(lat, n=100)
    return {"calls": len(lat), "per_s": round(len(lat) / seconds, 1), "p50_ms": round(q[49] * 1000, 2),
            "p99_ms": round(q[98] * 1000, 2)}


def console_queries(db: str, reps: int = 20) -> dict[str, dict[str, Any]]:
    """The console's queries (QueryStore, as the Queries service runs them) on the loaded ledger: p50
    over `reps`, and on PostgreSQL the indexes the plan uses."""
    import re

    from sqlalchemy import text

    from decider.store.queries import DecisionQuery, QueryStore

    engine = connect(db)
    store = QueryStore(engine)
    day_old = new_id(int(time.time() * 1000) - 86_400_000)[:10] + "0" * 16
    cases = {
        "newest page": lambda: store.decisions(DecisionQuery(limit=50, newest_first=True)),
        "by agent": lambda: store.decisions(DecisionQuery(agent_id="support-1", limit=50, newest_first=True)),
        "by session": lambda: store.decisions(DecisionQuery(session_id="s-17", limit=50, newest_first=True)),
        "catch-up from a day ago": lambda: store.ids_after(day_old, 500),
    }
    sql = {
        "newest page": "SELECT * FROM decisions ORDER BY decision_id DESC LIMIT 50",
        "by agent": "SELECT * FROM decisions WHERE agent_id = 'support-1' ORDER BY decision_id DESC LIMIT 50",
        "by session": "SELECT * FROM decisions WHERE session_id = 's-17' ORDER BY decision_id DESC LIMIT 50",
        "catch-up from a day ago": f"SELECT decision_id FROM decisions WHERE decision_id > '{day_old}' "
                                   "ORDER BY decision_id LIMIT 500",
    }
    out: dict[str, dict[str, Any]] = {}
    for name, run in cases.items():
        times = []
        for _ in range(reps):
            t = time.perf_counter()
            run()
            times.append(time.perf_counter() - t)
        plan = ""
        with engine.connect() as conn:
            explain = "EXPLAIN " if engine.dialect.name == "postgresql" else "EXPLAIN QUERY PLAN "
            lines = [" ".join(map(str, r)) for r in conn.execute(text(explain + sql[name]))]
            plan = ", ".join(sorted(set(re.findall(r"(?:ix|pk|ux|sqlite_autoindex)_\w+|decisions_pkey", " ".join(lines)))))
        out[name] = {"p50_ms": round(statistics.median(times) * 1000, 2), "indexes": plan or "none"}
    engine.dispose()
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--db", help="database URL (default: a new SQLite file in a temp folder)")
    ap.add_argument("--records", type=int, default=60_000)
    ap.add_argument("--days", type=int, default=30)
    ap.add_argument("--seconds", type=float, default=5.0)
    ap.add_argument("--batch", type=int, default=DEFAULT_BATCH, help="the prune's records per read and per delete")
    ap.add_argument("--throttle", type=float, default=DEFAULT_THROTTLE, help="the prune's pause ratio")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        db = args.db or f"sqlite:///{tmp / 'bench.db'}"
        rows = templates(db, tmp)
        load_s = load(db, rows, args.records, args.days)
        queries = console_queries(db)
        proc, port = serve(db, tmp, "bench")
        try:
            measure(port, 1.0)   # warm-up
            before = measure(port, args.seconds)
            engine = connect(db)
            pruner = Pruner(engine, tmp / "archives", batch=args.batch, throttle=args.throttle)
            done, out = threading.Event(), {}

            def prune() -> None:
                t = time.perf_counter()
                out["result"] = pruner.run(datetime.now(timezone.utc) - timedelta(days=args.days / 2))
                out["seconds"] = time.perf_counter() - t
                done.set()

            worker = threading.Thread(target=prune)
            t_during = time.perf_counter()
            worker.start()
            during = measure(port, 120.0, until=done)
            during_s = time.perf_counter() - t_during
            worker.join()
            engine.dispose()
        finally:
            stop(proc)
        result = out["result"]
        archive_bytes = sum(m.bytes for m in result.manifests)
        report = {
            "machine": {"python": platform.python_version(), "cpus": os.cpu_count()},
            "db": "postgresql" if db.startswith("postgresql") else "sqlite",
            "records": args.records, "batch": args.batch, "throttle": args.throttle, "load_s": round(load_s, 1),
            "console_queries": queries,
            "before": summary(before, args.seconds), "during_prune": summary(during, during_s),
            "prune": {"records": result.rows, "deleted": result.deleted, "days": len(result.days),
                      "seconds": round(out["seconds"], 1),
                      "records_per_s": round(result.deleted / out["seconds"]),
                      "archive_bytes": archive_bytes,
                      "archive_mb_per_million": round(archive_bytes / max(1, result.rows) * 1e6 / 2**20, 1)},
        }
    (HERE / "results").mkdir(exist_ok=True)
    (HERE / "results" / "retention.json").write_text(json.dumps(report, indent=2))
    b, p = report["before"], report["during_prune"]
    print(f"{args.records:,} records loaded in {report['load_s']} s ({report['db']})")
    for name, q in queries.items():
        print(f"console query {name:24}: p50 {q['p50_ms']:>6} ms  indexes: {q['indexes']}")
    print(f"Decide before prune : {b['per_s']:>7}/s  p50 {b['p50_ms']:>6} ms  p99 {b['p99_ms']:>6} ms  ({b['calls']} calls)")
    print(f"Decide during prune : {p['per_s']:>7}/s  p50 {p['p50_ms']:>6} ms  p99 {p['p99_ms']:>6} ms  ({p['calls']} calls)")
    pr = report["prune"]
    print(f"prune: {pr['deleted']:,} of {pr['records']:,} records archived and deleted in {pr['days']} day files, "
          f"{pr['seconds']} s ({pr['records_per_s']:,}/s); Parquet {pr['archive_mb_per_million']} MiB per million records")
    return 0


if __name__ == "__main__":
    sys.exit(main())
