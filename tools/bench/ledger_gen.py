"""Realistic decision records at size, for PostgreSQL: templates made by a real server, then COPY.

Templates: a real `decider serve` on policies/ (the example bundle) decides a mix of calls of its
agents (coder-7, support-1, refund-bot, airline-agent, CodeActAgent), so every column is what the
writer really stores (reasons, matched rules, masked args, the bundle revision, the agent's labels
and capabilities, the approval's approvers and expiry). Those rows are read back and deleted.

Records: each a copy of a template (weighted, so the outcome mix is roughly 75 % ALLOW, 15 % DENY,
10 % REQUIRE_APPROVAL) under a new time-ordered id spread evenly over `--days` ending at the first
load's start, with its own request and call ids, args hash, instance, session (a few hundred calls
each), evaluation time; approvals resolved the way they end (consumed, approved, rejected, expired,
a few pending in the last hour), ~60 % of allowed calls with a reported outcome. Its journal rows
follow it: `decided`, and one `updated` per later change (a resolution, an outcome).

Loaded with COPY in text format into the parent tables `decisions` and `decision_journal` (on a
partitioned schema PostgreSQL routes rows to the partitions), one transaction per chunk, with
`session_replication_role = replica` so the journal triggers do not fire (the journal rows are
written explicitly, in id order, in the same transaction). Progress is kept in PGDIR/ledger.json:
an interrupted load resumes where its last committed chunk ended.
"""

from __future__ import annotations

import json
import random
import tempfile
import time
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import psycopg
from ledger_pg import KeptPostgres, serve, stop

from decider.client import DeciderClient
from decider.record.ids import new_id
from decider.store.decisions import decisions

__all__ = ["CALLS", "make_templates", "load"]

# (agent, session, tool, server, args, weight): what a week of the example bundle's agents asks.
CALLS: list[tuple[str, str, str, dict[str, Any], int]] = [
    ("coder-7", "shell.exec", "", {"command": "pytest -q tests/"}, 18),
    ("coder-7", "shell.exec", "", {"command": "git status --short"}, 12),
    ("coder-7", "fs.read", "", {"path": "/workspace/app/config.yaml"}, 14),
    ("coder-7", "fs.write", "", {"path": "/workspace/src/handlers.py", "content": "def handle(req):\n    return ok()\n"}, 6),
    ("coder-7", "fs.read", "", {"path": "/etc/shadow"}, 2),
    ("coder-7", "http.fetch", "", {"url": "https://pypi.org/simple/requests/"}, 6),
    ("coder-7", "http.fetch", "", {"url": "https://paste.example.net/raw/8f3k2"}, 2),
    ("coder-7", "db.query", "", {"sql": "SELECT id, status FROM orders WHERE created_at > now() - interval '1 day'"}, 5),
    ("coder-7", "shell.exec", "", {"command": "rm -rf /srv/data"}, 2),
    ("coder-7", "shell.exec", "", {"command": "cat ~/.ssh/id_rsa"}, 1),
    ("coder-7", "shell.exec", "", {"command": "kubectl --context prod rollout restart deploy/api"}, 3),
    ("support-1", "email.send", "", {"to": "billing@acme.example", "subject": "Refund for ord_8812",
                                     "body": "Please check the refund of 42.00 EUR for order ord_8812."}, 7),
    ("support-1", "email.send", "", {"to": "customer@example.com", "subject": "Your refund",
                                     "body": "Hello, your refund of 42.00 EUR was issued today."}, 3),
    ("refund-bot", "payments.refund", "mcp://billing", {"order_id": "ord_8812", "amount": 42.0, "currency": "EUR"}, 5),
    ("refund-bot", "payments.refund", "mcp://billing", {"order_id": "ord_9920", "amount": 2400.0, "currency": "EUR"}, 1),
    ("airline-agent", "get_reservation_details", "", {"reservation_id": "ZFA04Y"}, 6),
    ("airline-agent", "cancel_reservation", "", {"reservation_id": "ZFA04Y"}, 2),
    ("CodeActAgent", "execute_bash", "", {"command": "ls -la /workspace"}, 6),
    ("CodeActAgent", "str_replace_editor", "", {"command": "view", "path": "/workspace/README.md"}, 3),
]
MODELS = {"coder-7": "claude-opus-4", "support-1": "gpt-5", "airline-agent": "gpt-4o", "refund-bot": "gpt-5"}


def make_templates(url: str, tmp: Path) -> list[dict[str, Any]]:
    """Real rows: each call of CALLS decided by a real server on `url`, read back, then deleted."""
    from sqlalchemy import select, text

    from decider.store import connect

    proc, port = serve(url, tmp, "templates")
    try:
        with DeciderClient(f"127.0.0.1:{port}") as c:
            for i, (agent, tool, server, args, _) in enumerate(CALLS):
                ident: dict[str, Any] = {"id": agent, "session_id": f"tmpl-{agent}"}
                if agent in MODELS:
                    ident["model"] = MODELS[agent]
                c.decide(agent=ident, tool=tool, tool_server=server, args=args, call_id=f"tmpl-{i}",
                         estimated_cost=0.02, request_id=f"tmpl-{i}")
    finally:
        stop(proc)
    engine = connect(url)
    with engine.connect() as conn:
        rows = [dict(r) for r in conn.execute(select(decisions).order_by(decisions.c.decision_id)).mappings()]
    with engine.begin() as conn:
        for table in ("decision_journal", "decisions", "budget_reservations", "budget_usage", "approval_askers"):
            conn.execute(text(f"DELETE FROM {table}"))
    engine.dispose()
    if len(rows) != len(CALLS):
        raise RuntimeError(f"expected {len(CALLS)} template rows, got {len(rows)}")
    for row, call in zip(rows, CALLS, strict=True):
        row["_weight"] = call[4]
    return rows


def _esc(v: Any) -> str:
    """A value in COPY text format."""
    if v is None:
        return "\\N"
    if isinstance(v, bool):
        return "t" if v else "f"
    if isinstance(v, datetime):
        return v.isoformat()
    s = str(v)
    if "\\" in s or "\t" in s or "\n" in s or "\r" in s:
        s = s.replace("\\", "\\\\").replace("\t", "\\t").replace("\n", "\\n").replace("\r", "\\r")
    return s


COLUMNS = [c.name for c in decisions.columns]
_IX = {name: i for i, name in enumerate(COLUMNS)}


@dataclass
class Plan:
    start_ms: int
    end_ms: int
    records: int
    loaded: int


def _record(i: int, plan: Plan, tmpl: dict[str, Any], fields: list[str], rng: random.Random,
            now_ms: int) -> tuple[str, list[str], int]:
    """One record's COPY line, its id, and how many `updated` journal entries follow it."""
    span = plan.end_ms - plan.start_ms
    ms = plan.start_ms + i * span // plan.records + rng.randrange(max(1, span // plan.records))
    did = new_id(ms)
    t = datetime.fromtimestamp(ms / 1000, timezone.utc)
    agent = tmpl["agent_id"]
    f = list(fields)
    f[_IX["decision_id"]] = did
    f[_IX["time"]] = t.isoformat()
    f[_IX["request_id"]] = f"req-{rng.getrandbits(64):016x}"
    f[_IX["call_id"]] = f"toolu_{rng.getrandbits(96):024x}"
    f[_IX["instance_id"]] = f"{agent}-{rng.randrange(8)}"
    f[_IX["session_id"]] = f"sess-{agent}-{i // 400:06d}"
    f[_IX["args_hash"]] = f"{rng.getrandbits(256):064x}"
    f[_IX["eval_us"]] = str(int(tmpl["eval_us"] * rng.uniform(0.6, 1.6)) + 1)
    updates = 0
    if tmpl["outcome"] == "REQUIRE_APPROVAL":
        f[_IX["approval_id"]] = did
        ttl = (tmpl["approval_expires_at"] - tmpl["time"]) if tmpl["approval_expires_at"] else timedelta(hours=1)
        f[_IX["approval_expires_at"]] = (t + ttl).isoformat()
        if now_ms - ms < 3_600_000 and rng.random() < 0.5:
            state = "pending"
        else:
            state = rng.choices(("consumed", "approved", "rejected", "expired"), (55, 10, 15, 20))[0]
        f[_IX["approval_state"]] = state
        if state in ("consumed", "approved", "rejected"):
            f[_IX["resolved_by"]] = rng.choice(("user:sre", "user:alice", "user:bob"))
            f[_IX["resolved_at"]] = (t + timedelta(seconds=rng.randrange(20, 1800))).isoformat()
            f[_IX["comment"]] = rng.choice(("\\N", "ok", "looks fine, go ahead", "not during the freeze"))
            updates += 1
        if state == "expired":
            updates += 1
        if state == "consumed":
            updates += 1
    elif tmpl["outcome"] == "ALLOW" and rng.random() < 0.6:
        ok = rng.random() < 0.92
        f[_IX["outcome_status"]] = "success" if ok else "error"
        f[_IX["actual_cost"]] = f"{rng.uniform(0.0, 0.05):.4f}"
        if rng.random() < 0.05:
            f[_IX["labels"]] = '["reviewed"]' if ok else '["flaky","retried"]'
        updates += 1
    return did, f, updates


def load(pg: KeptPostgres, db: str, records: int, days: float, chunk: int = 50_000,
         log: Any = print) -> dict[str, Any]:
    """Load up to `records` records into `db` (resuming a partial load); returns timings and sizes."""
    meta_path = pg.pgdir / f"{db}.json"
    url = pg.url(db)
    meta: dict[str, Any] = json.loads(meta_path.read_text()) if meta_path.exists() else {}
    if not meta:
        with tempfile.TemporaryDirectory() as d:
            tmpls = make_templates(url, Path(d))
        now_ms = int(time.time() * 1000)
        meta = {"start_ms": now_ms - int(days * 86_400_000), "end_ms": now_ms, "records": records, "loaded": 0,
                "load_s": 0.0, "templates": [{k: (v.isoformat() if isinstance(v, datetime) else v)
                                              for k, v in t.items()} for t in tmpls]}
        meta_path.write_text(json.dumps(meta))
    if meta["records"] != records:
        raise SystemExit(f"{db} was planned for {meta['records']:,} records; pass --records {meta['records']} "
                         f"or drop the database and {meta_path}")
    tmpls = []
    for t in meta["templates"]:
        t = dict(t)
        for k in ("time", "approval_expires_at", "resolved_at"):
            if t.get(k):
                t[k] = datetime.fromisoformat(t[k])
        tmpls.append(t)
    plan = Plan(meta["start_ms"], meta["end_ms"], records, meta["loaded"])
    fields = [[_esc(t[c]) for c in COLUMNS] for t in tmpls]
    weights = [t["_weight"] for t in tmpls]
    cols = ", ".join(f'"{c}"' for c in COLUMNS)
    with psycopg.connect(pg.dsn(db)) as conn:
        n_db = conn.execute("SELECT count(*) FROM decisions").fetchone()[0]
        if n_db != plan.loaded:
            raise SystemExit(f"{db} holds {n_db:,} records but {meta_path} says {plan.loaded:,} were loaded")
        # The journal triggers do not fire for this session: its journal rows are written below.
        conn.execute("SET session_replication_role = replica")
        conn.commit()
        i = plan.loaded
        while i < records:
            t0 = time.perf_counter()
            rng = random.Random(i)
            n = min(chunk, records - i)
            picks = rng.choices(range(len(tmpls)), weights, k=n)
            journal: list[str] = []
            later: list[str] = []
            with conn.cursor() as cur:
                with cur.copy(f"COPY decisions ({cols}) FROM STDIN") as cp:
                    buf: list[str] = []
                    for k in range(n):
                        did, f, updates = _record(i + k, plan, tmpls[picks[k]], fields[picks[k]], rng, plan.end_ms)
                        buf.append("\t".join(f))
                        journal.append(f"{did}\tdecided")
                        later.extend([f"{did}\tupdated"] * updates)
                        if len(buf) == 2000:
                            cp.write("\n".join(buf) + "\n")
                            buf = []
                        # A record's later changes commit some time after it: interleave them.
                        if len(later) > 200:
                            journal.extend(later)
                            later = []
                    if buf:
                        cp.write("\n".join(buf) + "\n")
                journal.extend(later)
                with cur.copy("COPY decision_journal (decision_id, change) FROM STDIN") as cp:
                    for s in range(0, len(journal), 5000):
                        cp.write("\n".join(journal[s:s + 5000]) + "\n")
            conn.commit()
            i += n
            meta["loaded"] = i
            meta["load_s"] = round(meta["load_s"] + time.perf_counter() - t0, 2)
            meta_path.write_text(json.dumps(meta))
            if (i // chunk) % 20 == 0 or i == records:
                log(f"  {i:>11,} records loaded, {meta['load_s']:.0f} s")
    return meta
