"""`decider db backup FILE` (SPEC §11, issue 25 item 5): a consistent copy taken while the server
decides, restored and read back. SQLite through its online backup API; PostgreSQL through the
installed `pg_dump`, restored with `pg_restore`. Real servers, a real SQLite file, a real PostgreSQL."""

from __future__ import annotations

import json
import shutil
import sqlite3
import subprocess
import sys
import threading
from pathlib import Path

from decider.client import DeciderClient
from decider.store import connect
from decider.store.journal import JournalReader

from .helpers import ROOT, start_server
from .pg import PostgresServer


def cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "decider", *args], capture_output=True, text=True, cwd=ROOT,
                          timeout=120)


def log_ids(db: str) -> list[str]:
    res = cli("log", "--db", db, "--format", "jsonl", "--reverse")
    assert res.returncode == 0, res.stderr
    return [json.loads(line)["decision_id"] for line in res.stdout.splitlines()]


def decide_until(target: str, stop: threading.Event, done: list[str], most: int = 3000) -> None:
    with DeciderClient(target) as client:
        for i in range(most):
            if stop.is_set():
                return
            done.append(client.decide(agent={"id": "coder-7"}, tool="shell.exec",
                                      args={"command": f"ls {i}"}).decision_id)


def test_sqlite_backup_while_serving_is_consistent_and_restores(tmp_path: Path) -> None:
    db = tmp_path / "decider.db"
    srv = start_server(tmp_path, db_url=f"sqlite:///{db}")
    stop, done = threading.Event(), []
    worker = threading.Thread(target=decide_until, args=(srv.target, stop, done))
    try:
        with srv.client() as client:   # something in it before the copy, however fast the machine
            for i in range(20):
                client.decide(agent={"id": "coder-7"}, tool="shell.exec", args={"command": f"pwd {i}"})
        worker.start()
        while len(done) < 50 and worker.is_alive():
            stop.wait(0.05)
        res = cli("db", "backup", str(tmp_path / "copy.db"), "--db", f"sqlite:///{db}", "--format", "json")
        assert res.returncode == 0, res.stderr
        assert json.loads(res.stdout)["method"] == "sqlite online backup"
        # A backup never overwrites.
        again = cli("db", "backup", str(tmp_path / "copy.db"), "--db", f"sqlite:///{db}")
        assert again.returncode == 2 and "exists" in again.stderr
    finally:
        stop.set()
        worker.join(60)
        srv.stop()

    copy = tmp_path / "copy.db"
    with sqlite3.connect(copy) as conn:
        assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        # One consistent snapshot: every decision has its journal entry, and no entry lacks its decision.
        n_dec = conn.execute("SELECT count(*) FROM decisions").fetchone()[0]
        n_jrn = conn.execute("SELECT count(*) FROM decision_journal").fetchone()[0]
    assert n_dec == n_jrn >= 20

    # Restore: the copy put in place of a lost database, served again, and read back.
    restored = tmp_path / "restored" / "decider.db"
    restored.parent.mkdir()
    shutil.copyfile(copy, restored)
    original = log_ids(str(db))
    got = log_ids(str(restored))
    assert got == original[:len(got)] and len(got) == n_dec
    srv2 = start_server(restored.parent, db_url=f"sqlite:///{restored}", name="restored")
    try:
        with srv2.client() as client:
            new = client.decide(agent={"id": "coder-7"}, tool="shell.exec", args={"command": "ls"}).decision_id
    finally:
        srv2.stop()
    assert log_ids(str(restored)) == [*got, new]


def test_postgres_backup_with_pg_dump_restores(postgres: PostgresServer, tmp_path: Path) -> None:
    url = postgres.create_database("backup_src")
    srv = start_server(tmp_path, db_url=url)
    try:
        with srv.client() as client:
            for i in range(15):
                client.decide(agent={"id": "coder-7"}, tool="shell.exec", args={"command": f"ls {i}"})
        dump = tmp_path / "decider.dump"
        res = cli("db", "backup", str(dump), "--db", url, "--pg-dump", str(postgres.bindir / "pg_dump"),
                  "--format", "json")
        assert res.returncode == 0, res.stderr
        assert json.loads(res.stdout)["method"] == "pg_dump -Fc"
    finally:
        srv.stop()
    restored = postgres.create_database("backup_restored")
    dump.chmod(0o644)   # pg_restore may run as the postgres user
    res = subprocess.run([str(postgres.bindir / "pg_restore"), "-h", "127.0.0.1", "-p", str(postgres.port),
                          "-U", "decider", "-d", "backup_restored", "--no-owner", str(dump)],
                         capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr
    assert log_ids(restored) == log_ids(url) and len(log_ids(url)) == 15
    # The restored database serves (its schema is current, its journal triggers are back).
    srv2 = start_server(tmp_path, db_url=restored, name="restored")
    try:
        with srv2.client() as client:
            client.decide(agent={"id": "coder-7"}, tool="shell.exec", args={"command": "ls"})
    finally:
        srv2.stop()
    assert len(log_ids(restored)) == 16
    engine = connect(restored)
    try:   # the new record reached the journal: the triggers came back with the restore
        assert [r["decision_id"] for r in JournalReader(engine).after(0)] == log_ids(restored)
    finally:
        engine.dispose()


def test_backup_of_something_else_is_refused(tmp_path: Path) -> None:
    res = cli("db", "backup", str(tmp_path / "x"), "--db", str(tmp_path / "missing.db"))
    assert res.returncode == 2 and "--db" in res.stderr
