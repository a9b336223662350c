"""Three replicas on one PostgreSQL under load, one SIGKILLed halfway (issue 25 item 4).

    .venv/bin/python tools/bench/replica_bench.py [--seconds 60] [--db postgresql+psycopg://…]

Bounded (about `--seconds` + 20 s): without `--db` it starts a throw-away PostgreSQL (tests/pg.py).
Three `decider serve` on policies/ and one database (127.0.0.1, ephemeral ports, --poll-interval 0.2,
a token file: enforcer, approver in sre-oncall, admin). Replica 3 opens a pending approval; then
two client threads send Decide round-robin over the replicas for `--seconds` (each call costs 1
against the `team: 500 / 1d` budget of policies/bundle.yaml, so the budget runs out mid-run);
replica 3 gets SIGKILL at half time; at three quarters, under the same load, the probes run. Then
it checks, prints, and writes tools/bench/results/replica.json:

- answered decisions lost: every decision id a client got back must be in the database (0);
- budget: the allowed spend recorded in the database (answered or not) within the limit, equal to
  the budget counter (spent + reserved: no overspend, no double charge), and at least what the
  clients were answered ALLOW;
- a kill switch set on replica 1: how long until replica 2 denies with it (target <= 1 s);
- an approval opened on replica 1, and one opened on replica 3 before its SIGKILL, both approved on
  replica 2: their state read on replica 1 (pending approvals resolvable from any replica).
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
sys.path.insert(0, str(ROOT))

import grpc  # noqa: E402
from procs import stop_group  # noqa: E402
from sqlalchemy import func, select  # noqa: E402

from decider.client import DeciderClient  # noqa: E402
from decider.store import connect  # noqa: E402
from decider.store.budgets import budget_usage  # noqa: E402
from decider.store.decisions import decisions  # noqa: E402
from decider.v1 import decider_pb2 as pb  # noqa: E402

AGENT = {"id": "coder-7", "team": "platform"}


TOKENS = """tokens:
  - {token: gw, principal: "service:gateway", roles: [enforcer]}
  - {token: sre, principal: "user:sre", roles: [approver], groups: [sre-oncall]}
  - {token: admin, principal: "user:root", roles: [admin]}
"""


# Every replica must hash arguments with the same key, from outside the database as in production.
SERVE_ENV = {**os.environ, "DECIDER_BINDING_KEY": os.environ.get("DECIDER_BINDING_KEY") or os.urandom(32).hex()}


def serve(db: str, tmp: Path, name: str) -> tuple[subprocess.Popen[bytes], int]:
    port_file = tmp / f"{name}.port"
    (tmp / "tokens.yaml").write_text(TOKENS)
    proc = subprocess.Popen([sys.executable, "-m", "decider", "serve", "--bundle", str(ROOT / "policies"),
                             "--db", db, "--listen", "127.0.0.1:0", "--port-file", str(port_file),
                             "--poll-interval", "0.2", "--log-level", "warning",
                             "--tokens", str(tmp / "tokens.yaml")], cwd=ROOT,
                            stdout=subprocess.DEVNULL, stderr=open(tmp / f"{name}.log", "wb"), start_new_session=True, env=SERVE_ENV)
    deadline = time.monotonic() + 60
    while not (port_file.exists() and port_file.read_text()):
        if proc.poll() is not None or time.monotonic() > deadline:
            raise RuntimeError((tmp / f"{name}.log").read_text()[-2000:])
        time.sleep(0.1)
    return proc, int(port_file.read_text())


def stop(proc: subprocess.Popen[bytes], sig: int = signal.SIGTERM) -> None:
    stop_group(proc, timeout_s=20, sig=sig)


def load(ports: list[int], seconds: float, worker: int, answered: dict[str, str], errors: list[str]) -> None:
    clients = [DeciderClient(f"127.0.0.1:{p}", timeout=5.0, token="gw") for p in ports]
    end = time.monotonic() + seconds
    i = 0
    while time.monotonic() < end:
        c = clients[(i + worker) % len(clients)]
        try:
            r = c.decide(agent=AGENT, tool="shell.exec", args={"command": f"ls {worker}-{i}"}, estimated_cost=1.0)
            answered[r.decision_id] = pb.Outcome.Name(r.outcome)
        except grpc.RpcError as e:
            errors.append(e.code().name)  # type: ignore[attr-defined]
        i += 1
    for c in clients:
        c.close()


def probes(ports: list[int], pending3: str, out: dict[str, Any]) -> None:
    """Under load, after replica 3 is gone: a kill switch set on replica 1, timed until replica 2 denies
    with it (then cleared); an approval opened on replica 1 and one opened on replica 3 before its
    SIGKILL, both approved on replica 2 and read on replica 1."""
    with DeciderClient(f"127.0.0.1:{ports[0]}", token="gw") as r1, \
            DeciderClient(f"127.0.0.1:{ports[1]}", token="gw") as r2, \
            DeciderClient(f"127.0.0.1:{ports[1]}", token="sre") as approver2, \
            DeciderClient(f"127.0.0.1:{ports[0]}", token="admin") as admin1:
        # Approvals first: a kill switch on the team rejects its pending approvals.
        pending = r1.decide(agent=AGENT, tool="shell.exec",
                            args={"command": "kubectl --context prod rollout restart deploy/api"})
        approver2.resolve_approval(pending.decision_id, True, comment="from replica 2")
        out["approval_on_replica_1"] = pb.ApprovalState.Name(r1.get_decision(pending.decision_id).approval.state)
        approver2.resolve_approval(pending3, True, comment="opened on the killed replica 3")
        out["approval_of_killed_replica"] = pb.ApprovalState.Name(r1.get_decision(pending3).approval.state)
        t0 = time.monotonic()
        ks = admin1.set_kill_switch("team", "platform", "replica bench")
        effect = None
        while time.monotonic() - t0 < 10:
            if r2.decide(agent=AGENT, tool="shell.exec", args={"command": "ls"}).deciding_rule == "killed":
                effect = time.monotonic() - t0
                break
            time.sleep(0.02)
        admin1.clear_kill_switch(ks.id)
        out["kill_switch_effect_s"] = effect


def run(db: str, seconds: float, tmp: Path) -> dict[str, Any]:
    procs = [serve(db, tmp, f"replica{i}") for i in (1, 2, 3)]
    ports = [p for _, p in procs]
    answered: dict[str, str] = {}
    errors: list[str] = []
    probe: dict[str, Any] = {}
    try:
        # A pending approval opened on replica 3, which is SIGKILLed before anyone resolves it.
        with DeciderClient(f"127.0.0.1:{ports[2]}", token="gw") as r3:
            pending3 = r3.decide(agent=AGENT, tool="shell.exec",
                                 args={"command": "kubectl --context prod delete pod api-0"}).decision_id
        threads = [threading.Thread(target=load, args=(ports, seconds, w, answered, errors)) for w in (0, 1)]
        for t in threads:
            t.start()
        time.sleep(seconds / 2)
        stop(procs[2][0], signal.SIGKILL)
        killed_at = len(answered)
        time.sleep(seconds / 4)   # the probes run under the same load, three quarters in
        probes(ports, pending3, probe)
        for t in threads:
            t.join()
    finally:
        for proc, _ in procs:
            stop(proc)
    engine = connect(db)
    d = decisions.c
    with engine.connect() as conn:
        stored = set(conn.execute(select(d.decision_id)).scalars())
        spent = conn.execute(select(func.sum(budget_usage.c.spent + budget_usage.c.reserved))
                             .where(budget_usage.c.scope == "team", budget_usage.c.scope_key == "platform")).scalar()
        # What the database says was allowed and costed (answered or not: a replica killed between
        # its commit and its answer leaves a charged record no client saw).
        stored_allowed = conn.execute(select(func.sum(d.estimated_cost))
                                      .where(d.team == "platform", d.outcome == "ALLOW")).scalar()
    engine.dispose()
    allowed = sum(1 for o in answered.values() if o == "ALLOW")
    return {"answered": len(answered), "answered_before_kill": killed_at, "failed_calls": len(errors),
            "lost": len(set(answered) - stored), "allowed_spend": float(allowed), "budget_limit": 500.0,
            "stored_allowed_spend": float(stored_allowed or 0.0),
            "budget_counter": float(spent or 0.0), **probe}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--db", help="PostgreSQL URL (default: a throw-away server from tests/pg.py)")
    ap.add_argument("--seconds", type=float, default=60.0)
    args = ap.parse_args()
    pg = None
    db = args.db
    if db is None:
        from tests.pg import start_postgres

        pg = start_postgres()
        db = pg.create_database("replicas")
    try:
        with tempfile.TemporaryDirectory() as d:
            r = run(db, args.seconds, Path(d))
    finally:
        if pg is not None:
            pg.stop()
    print(f"{r['answered']} decisions answered ({r['answered_before_kill']} before replica 3 was SIGKILLed), "
          f"{r['failed_calls']} calls failed (sent to the killed replica); answered but not in the database: {r['lost']}")
    print(f"budget team=platform: answered allowed spend {r['allowed_spend']:.0f}, allowed spend in the database "
          f"{r['stored_allowed_spend']:.0f}, of limit {r['budget_limit']:.0f}; counter (spent + reserved) "
          f"{r['budget_counter']:.0f}")
    effect = r["kill_switch_effect_s"]
    print(f"kill switch set on replica 1 (under load, after the SIGKILL) denied on replica 2 after "
          f"{'never (10 s)' if effect is None else f'{effect:.2f} s'}")
    print(f"approval opened on replica 1, approved on replica 2: {r['approval_on_replica_1']} on replica 1")
    print(f"approval opened on replica 3 before its SIGKILL, approved on replica 2: "
          f"{r['approval_of_killed_replica']} on replica 1")
    ok = r["lost"] == 0 and r["allowed_spend"] <= r["stored_allowed_spend"] <= r["budget_limit"] \
        and r["stored_allowed_spend"] == r["budget_counter"] and effect is not None and effect <= 1.0 \
        and r["approval_on_replica_1"] == r["approval_of_killed_replica"] == "APPROVAL_APPROVED"
    print("OK" if ok else "FAILED")
    (HERE / "results").mkdir(exist_ok=True)
    (HERE / "results" / "replica.json").write_text(json.dumps({"seconds": args.seconds, "ok": ok, **r}, indent=2))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
