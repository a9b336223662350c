"""Retention (SPEC §11, issue 25): records past the horizon are archived, the archive checked, and only
then deleted; pending approvals and unsettled reservations stay; an exporter that has not sent a
record blocks the prune; `decider log --archive` and `decider replay` answer from the archives as
they answered from the database. Real servers, a real SQLite file and a real PostgreSQL."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest
from sqlalchemy import delete, insert, select, update

from decider.archives.files import Manifest, archive_files, read_file, read_manifest, sha256_of
from decider.archives.prune import PruneBusy, Pruner
from decider.archives.schema import DECISION_COLUMNS
from decider.record.ids import first_id_at, id_time_ms, new_id
from decider.store import DecisionStore, connect
from decider.store.budgets import budget_reservations
from decider.store.decisions import decisions
from decider.store.journal import CursorStore, journal

from .helpers import ROOT, start_server

DAY_MS = 86_400_000


def cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "decider", *args], capture_output=True, text=True, cwd=ROOT,
                          timeout=120)


def decide_some(target_tmp: Path, db_url: str) -> str:
    """Real decisions through a real server: allows, denies and one pending approval (whose id is
    returned). The server is stopped before the records are aged."""
    srv = start_server(target_tmp, db_url=db_url)
    try:
        with srv.client() as client:
            for i in range(12):
                client.decide(agent={"id": "coder-7", "team": "platform"}, tool="shell.exec", args={"command": f"ls {i}"})
            for i in range(4):
                client.decide(agent={"id": "coder-7", "team": "platform"}, tool="shell.exec",
                              args={"command": f"rm -rf /tmp/x{i}"})
            pending = client.decide(agent={"id": "coder-7", "team": "platform"}, tool="shell.exec",
                                    args={"command": "kubectl --context prod rollout restart deploy/api"})
    finally:
        srv.stop()
    return pending.decision_id


def age(db_url: str, days: int, spread_days: int = 3) -> dict[str, str]:
    """Move every record `days` (+ up to `spread_days`) back in time, ids and times alike, as if
    the ledger had run then: the rows the server wrote, reinserted under ids drawn at the earlier
    time (the journal triggers record them again). Returns old id → new id."""
    engine = connect(db_url)
    with engine.connect() as conn:
        rows = [dict(r) for r in conn.execute(select(decisions).order_by(decisions.c.decision_id)).mappings()]
    moved: dict[str, str] = {}
    copies = []
    for i, r in enumerate(rows):
        back = timedelta(days=days + i * spread_days // max(1, len(rows)))
        new = new_id(id_time_ms(r["decision_id"]) - int(back.total_seconds() * 1000))
        moved[r["decision_id"]] = new
        copies.append({**r, "decision_id": new, "approval_id": new if r["approval_id"] else None,
                       "time": r["time"] - back})
    with engine.begin() as conn:
        conn.execute(delete(journal))
        conn.execute(delete(decisions))
    DecisionStore(engine).insert_many(copies)
    engine.dispose()
    return moved


def log_lines(*args: str) -> list[str]:
    res = cli("log", "--format", "jsonl", *args)
    assert res.returncode == 0, res.stderr
    return res.stdout.splitlines()


@pytest.mark.parametrize("fmt", ["parquet", "jsonl"])
def test_prune_archives_then_deletes_and_log_answers_from_the_archive(db_url: str, tmp_path: Path, fmt: str) -> None:
    if fmt == "jsonl" and db_url.startswith("postgresql"):
        pytest.skip("the archive format does not depend on the database: one backend is enough")
    pending = decide_some(tmp_path, db_url)
    moved = age(db_url, days=100)
    before_all = log_lines("--db", db_url)
    before_agent = log_lines("--db", db_url, "--agent", "coder-7", "--outcome", "deny", "--reverse")
    before_table = cli("log", "--db", db_url).stdout
    assert len(before_all) == 17

    dry = cli("db", "prune", "--db", db_url, "--older-than", "90d", "--archive-dir", str(tmp_path / "arch"),
              "--archive-format", fmt, "--dry-run", "--format", "json")
    assert dry.returncode == 0, dry.stderr
    assert json.loads(dry.stdout)["records"] == 16 and json.loads(dry.stdout)["held"] == 1
    assert not (tmp_path / "arch").exists() or not list((tmp_path / "arch").iterdir())
    assert len(log_lines("--db", db_url)) == 17   # a dry run changes nothing

    res = cli("db", "prune", "--db", db_url, "--older-than", "90d", "--archive-dir", str(tmp_path / "arch"),
              "--archive-format", fmt, "--format", "json")
    assert res.returncode == 0, res.stderr
    out = json.loads(res.stdout)
    assert out["deleted"] == 16 and out["held"] == 1
    # What is left is the pending approval, nothing else.
    assert [json.loads(x)["decision_id"] for x in log_lines("--db", db_url)] == [moved[pending]]

    files = archive_files([tmp_path / "arch"])
    assert files and all(f.name.endswith(".parquet" if fmt == "parquet" else ".jsonl.gz") for f in files)
    total = 0
    for f in files:
        m = read_manifest(f)
        assert m is not None and m.sha256 == sha256_of(f) and m.format == fmt
        ids = [r["decision_id"] for r in read_file(f)]
        assert (len(ids), ids[0], ids[-1]) == (m.rows, m.first_decision_id, m.last_decision_id)
        total += m.rows
    assert total == 16

    # The same questions, answered from the archive: byte for byte, except the pending record
    # (still in the database, so not in the archive).
    arch = ("--archive", str(tmp_path / "arch"))
    expect_all = [x for x in before_all if json.loads(x)["decision_id"] != moved[pending]]
    assert log_lines(*arch) == expect_all
    assert log_lines(*arch, "--agent", "coder-7", "--outcome", "deny", "--reverse") == before_agent
    table = cli("log", *arch).stdout
    assert table.splitlines() == [line for line in before_table.splitlines() if moved[pending] not in line]
    assert log_lines(*arch, "--limit", "3") == expect_all[:3]
    # One file named explicitly reads too.
    assert log_lines("--archive", str(files[0]))


def test_archive_schema_is_the_table_without_the_binding_hash() -> None:
    assert [name for name, _, _ in DECISION_COLUMNS] == [col.name for col in decisions.columns
                                                           if col.name != "args_hash"]


def test_first_id_at_splits_ids_by_millisecond() -> None:
    ms = 1_790_000_000_123
    assert new_id(ms - 1) < first_id_at(ms) <= new_id(ms) < first_id_at(ms + 1)
    assert id_time_ms(first_id_at(ms)) == ms


def test_unsent_exporter_record_blocks_prune_unless_forced(tmp_path: Path) -> None:
    db_url = f"sqlite:///{tmp_path / 'decider.db'}"
    decide_some(tmp_path, db_url)
    age(db_url, days=100)
    engine = connect(db_url)
    CursorStore(engine).set("webhook:http://siem.example/in", 3)
    engine.dispose()
    args = ("db", "prune", "--db", db_url, "--older-than", "90d", "--archive-dir", str(tmp_path / "arch"))
    res = cli(*args)
    assert res.returncode == 2
    assert "webhook:http://siem.example/in" in res.stderr and "--force" in res.stderr
    assert len(log_lines("--db", db_url)) == 17
    assert not (tmp_path / "arch").exists() or not archive_files([tmp_path / "arch"])
    forced = cli(*args, "--force")
    assert forced.returncode == 0, forced.stderr
    assert "webhook:http://siem.example/in" in forced.stdout
    assert len(log_lines("--db", db_url)) == 1


def test_archive_that_cannot_be_written_deletes_nothing(tmp_path: Path) -> None:
    db_url = f"sqlite:///{tmp_path / 'decider.db'}"
    decide_some(tmp_path, db_url)
    age(db_url, days=100)
    blocker = tmp_path / "not-a-folder"
    blocker.write_text("a file where the archive folder should be")
    res = cli("db", "prune", "--db", db_url, "--older-than", "90d", "--archive-dir", str(blocker))
    assert res.returncode != 0
    assert "archive" in res.stderr.lower()
    assert len(log_lines("--db", db_url)) == 17


def test_unsettled_reservation_and_live_approvals_are_kept(tmp_path: Path) -> None:
    db_url = f"sqlite:///{tmp_path / 'decider.db'}"
    decide_some(tmp_path, db_url)
    moved = age(db_url, days=100)
    engine = connect(db_url)
    ids = sorted(moved.values())
    now = datetime.now(timezone.utc)
    with engine.begin() as conn:
        # A call whose spend is still held against a budget: its record must outlive the hold.
        conn.execute(insert(budget_reservations).values(decision_id=ids[0], budget_key="team|day|0|platform",
                                                        amount=5.0, state="reserved", created_at=now,
                                                        expires_at=now + timedelta(hours=1)))
        conn.execute(insert(budget_reservations).values(decision_id=ids[1], budget_key="team|day|0|platform",
                                                        amount=5.0, state="settled", created_at=now,
                                                        expires_at=now + timedelta(hours=1)))
        # An approval granted but not yet used: it still allows the identical call once.
        conn.execute(update(decisions).where(decisions.c.decision_id == ids[2]).values(
            approval_state="approved", approval_id=ids[2], approval_expires_at=now + timedelta(minutes=10)))
    engine.dispose()
    res = cli("db", "prune", "--db", db_url, "--older-than", "90d", "--archive-dir", str(tmp_path / "arch"),
              "--format", "json")
    assert res.returncode == 0, res.stderr
    left = {json.loads(x)["decision_id"] for x in log_lines("--db", db_url)}
    assert ids[0] in left and ids[2] in left and ids[1] not in left
    assert json.loads(res.stdout)["held"] == 3    # + the pending approval
    engine = connect(db_url)
    with engine.connect() as conn:
        kept = {r[0] for r in conn.execute(select(budget_reservations.c.decision_id))}
    engine.dispose()
    assert kept == {ids[0]}   # the settled one left with its record


def test_tampered_archive_is_refused(tmp_path: Path) -> None:
    db_url = f"sqlite:///{tmp_path / 'decider.db'}"
    decide_some(tmp_path, db_url)
    age(db_url, days=100, spread_days=0)
    res = cli("db", "prune", "--db", db_url, "--older-than", "90d", "--archive-dir", str(tmp_path / "arch"),
              "--archive-format", "jsonl")
    assert res.returncode == 0, res.stderr
    [f] = archive_files([tmp_path / "arch"])
    data = bytearray(f.read_bytes())
    data[-9] ^= 0x01
    f.write_bytes(bytes(data))
    bad = cli("log", "--archive", str(tmp_path / "arch"))
    assert bad.returncode == 2 and "sha256" in bad.stderr


def test_replay_reads_archives_as_it_reads_the_log(tmp_path: Path) -> None:
    db_url = f"sqlite:///{tmp_path / 'decider.db'}"
    decide_some(tmp_path, db_url)
    age(db_url, days=100)
    (tmp_path / "log.jsonl").write_text("\n".join(log_lines("--db", db_url, "--reverse")) + "\n")
    res = cli("db", "prune", "--db", db_url, "--older-than", "90d", "--archive-dir", str(tmp_path / "arch"))
    assert res.returncode == 0, res.stderr
    # The pending record stayed in the database: replay the log without it, and the archive folder.
    lines = [x for x in (tmp_path / "log.jsonl").read_text().splitlines() if json.loads(x).get("approval") is None
             or json.loads(x)["approval"].get("state") != "pending"]
    (tmp_path / "log.jsonl").write_text("\n".join(lines) + "\n")
    from_log = cli("replay", str(ROOT / "policies"), str(tmp_path / "log.jsonl"), "--format", "json")
    from_archive = cli("replay", str(ROOT / "policies"), str(tmp_path / "arch"), "--format", "json")
    assert from_log.returncode == 0 and from_archive.returncode == 0, from_archive.stderr
    a, b = _without_sources(json.loads(from_log.stdout)), _without_sources(json.loads(from_archive.stdout))
    assert a["total"] == 16 and a == b


def _without_sources(report: object) -> object:
    """A replay report without where each call was read (a file and line: the one thing that differs)."""
    if isinstance(report, dict):
        return {k: _without_sources(v) for k, v in report.items() if k not in ("source", "first_source")}
    if isinstance(report, list):
        return [_without_sources(v) for v in report]
    return report


def test_serve_retain_prunes_while_serving(db_url: str, tmp_path: Path) -> None:
    decide_some(tmp_path, db_url)
    age(db_url, days=40)
    arch = tmp_path / "arch"
    srv = start_server(tmp_path, ROOT / "policies", db_url, "--retain", "30d", "--archive-dir", str(arch),
                       name="retained")
    try:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and len(log_lines("--db", db_url)) > 1:
            time.sleep(0.2)
        assert len(log_lines("--db", db_url)) == 1, srv.log()
        with srv.client() as client:   # still serving, and new records are not touched
            client.decide(agent={"id": "coder-7"}, tool="shell.exec", args={"command": "ls"})
        assert sum(read_manifest(f).rows for f in archive_files([arch])) == 16  # type: ignore[union-attr]
    finally:
        srv.stop()
    assert len(log_lines("--db", db_url)) == 2


def test_retain_needs_an_archive_dir(tmp_path: Path) -> None:
    res = cli("serve", "--bundle", str(ROOT / "policies"), "--db", str(tmp_path / "d.db"), "--retain", "90d")
    assert res.returncode == 2 and "--archive-dir" in res.stderr
    res = cli("db", "prune", "--db", str(tmp_path / "d.db"), "--older-than", "90 days", "--archive-dir", "x")
    assert res.returncode == 2 and "--older-than" in res.stderr


def test_horizon_boundary_is_exact(tmp_path: Path) -> None:
    """A record drawn one millisecond before the horizon goes; one drawn at it stays."""
    horizon = datetime(2026, 3, 1, tzinfo=timezone.utc)
    assert new_id(int(horizon.timestamp() * 1000) - 1) < first_id_at(int(horizon.timestamp() * 1000))
    assert first_id_at(int(horizon.timestamp() * 1000)) <= new_id(int(horizon.timestamp() * 1000))
    assert id_time_ms(first_id_at(0)) == 0 and first_id_at(0) == "0" * 26
    assert DAY_MS == 24 * 3600 * 1000


def test_record_changed_after_archiving_is_kept_and_archived_again(db_url: str, tmp_path: Path) -> None:
    """An outcome reported on a record between its archive and its delete: the record stays (the
    archive holds its old state) and the next prune archives it again; the archive reader answers
    with the newest state."""
    decide_some(tmp_path, db_url)
    moved = age(db_url, days=100, spread_days=0)
    engine = connect(db_url)
    target = sorted(moved.values())[0]
    touched: list[str] = []

    def label_one(manifest: Manifest) -> None:
        if not touched:
            DecisionStore(engine).add_labels(target, ["audited"])
            touched.append(manifest.file)

    arch = tmp_path / "arch"
    horizon = datetime.now(timezone.utc) - timedelta(days=90)
    first = Pruner(engine, arch, on_archived=label_one).run(horizon)
    assert first.rows == 16 and first.deleted == 15 and first.days[0].changed == 1
    assert DecisionStore(engine).get(target) is not None
    second = Pruner(engine, arch).run(horizon)
    assert second.deleted == 1 and second.manifests[0].file.endswith(".2.parquet")
    engine.dispose()
    [line] = [json.loads(x) for x in log_lines("--archive", str(arch)) if json.loads(x)["decision_id"] == target]
    assert line["labels"] == ["audited"]
    assert len(log_lines("--archive", str(arch))) == 16


def test_one_prune_at_a_time(db_url: str, tmp_path: Path) -> None:
    """Two prunes of one database (two replicas with --retain, or `db prune` beside a server): the
    second finds the first at work and leaves everything to it."""
    decide_some(tmp_path, db_url)
    age(db_url, days=100, spread_days=0)
    engine = connect(db_url)
    horizon = datetime.now(timezone.utc) - timedelta(days=90)
    refused: list[str] = []

    def second_prune(_m: Manifest) -> None:
        # Another archive folder on purpose: on PostgreSQL the database's lock stops it too.
        other = tmp_path / ("arch" if db_url.startswith("sqlite") else "arch2")
        try:
            Pruner(engine, other).run(horizon)
        except PruneBusy as e:
            refused.append(str(e))

    result = Pruner(engine, tmp_path / "arch", on_archived=second_prune).run(horizon)
    engine.dispose()
    assert result.deleted == 16 and len(refused) == 1


def test_leftovers_of_an_interrupted_archive_are_ignored(tmp_path: Path) -> None:
    """A prune killed mid-write leaves a hidden temporary file, or a manifest whose file never took
    its name: readers skip both (their records are still in the database), the next prune goes on."""
    db_url = f"sqlite:///{tmp_path / 'decider.db'}"
    decide_some(tmp_path, db_url)
    age(db_url, days=100, spread_days=0)
    arch = tmp_path / "arch"
    arch.mkdir()
    (arch / ".decisions-2026-01-01.parquet.tmp").write_bytes(b"PAR1 half a file")
    (arch / "decisions-2026-01-02.parquet.manifest.json").write_text('{"file": "decisions-2026-01-02.parquet"}')
    res = cli("db", "prune", "--db", db_url, "--older-than", "90d", "--archive-dir", str(arch))
    assert res.returncode == 0, res.stderr
    assert len(log_lines("--archive", str(arch))) == 16
    replay = cli("replay", str(ROOT / "policies"), str(arch), "--format", "json")
    assert replay.returncode == 0, replay.stderr
    assert json.loads(replay.stdout)["total"] == 16


def test_serve_retain_never_forces_past_an_exporter(tmp_path: Path) -> None:
    db_url = f"sqlite:///{tmp_path / 'decider.db'}"
    decide_some(tmp_path, db_url)
    age(db_url, days=40)
    engine = connect(db_url)
    CursorStore(engine).set("otlp-logs:http://collector:4318", 0)
    engine.dispose()
    srv = start_server(tmp_path, ROOT / "policies", db_url, "--retain", "30d", "--archive-dir",
                       str(tmp_path / "arch"), name="retained")
    try:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and "prune refused" not in srv.log():
            time.sleep(0.2)
        assert "prune refused" in srv.log() and "otlp-logs:http://collector:4318" in srv.log()
    finally:
        srv.stop()
    assert len(log_lines("--db", db_url)) == 17
