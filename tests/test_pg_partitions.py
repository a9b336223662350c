"""PostgreSQL partitioning of the ledger (issue 25 item 3, store/partitions.py): `decisions` and
`decision_journal` are range-partitioned by month of the decision id, made ahead by the servers;
one pending approval per call holds across partitions and replicas (the side table
`decision_pending_calls`); a prune drops whole archived partitions older than the horizon and
keeps one that holds a pending approval; a database from revision 0008 keeps every record, its
journal and a pending approval through the conversion. A real PostgreSQL, real servers."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import grpc
import pytest
from alembic import command
from sqlalchemy import Engine, delete, select, text, update
from sqlalchemy.exc import IntegrityError

from decider.archives.files import Manifest, archive_files, read_file, read_manifest
from decider.archives.prune import Pruner
from decider.record.ids import id_time_ms, new_id
from decider.store import DecisionStore, connect
from decider.store.decisions import decisions
from decider.store.journal import journal
from decider.store.migrate import HEAD, REVISIONS, alembic_config
from decider.store.partitions import ensure_partitions, month_bounds, partitions
from decider.v1 import decider_pb2 as pb

from .helpers import POLICIES, start_server
from .pg import PostgresServer
from .stateful import REFUND_BOT, client, write_bundle, write_tokens
from .test_retention import cli, decide_some, log_lines

_names = iter(range(1_000_000))


@pytest.fixture
def url(postgres: PostgresServer) -> str:
    return postgres.create_database(f"part_{next(_names)}_{threading.get_ident() % 10_000}")


def partition_of(engine: Engine, decision_id: str) -> str:
    with engine.connect() as conn:
        return conn.execute(text("SELECT tableoid::regclass::text FROM decisions WHERE decision_id = :d"),
                            {"d": decision_id}).scalar_one()


def names(engine: Engine, table: str) -> list[str]:
    with engine.connect() as conn:
        return [p.name for p in partitions(conn, table)]


def pending_calls(engine: Engine) -> list[str]:
    with engine.connect() as conn:
        return list(conn.execute(text("SELECT decision_id FROM decision_pending_calls ORDER BY 1")).scalars())


def months_back(k: int, now: datetime | None = None) -> datetime:
    """The 15th, noon UTC, `k` months before now's month."""
    now = now or datetime.now(timezone.utc)
    y, m = divmod(now.year * 12 + now.month - 1 - k, 12)
    return datetime(y, m + 1, 15, 12, tzinfo=timezone.utc)


def move_to(engine: Engine, placement: dict[str, datetime]) -> dict[str, str]:
    """Reinsert each record (old id → new time) under an id drawn at its new time, as if the ledger
    had run then (the journal triggers record them again). Returns old id → new id."""
    with engine.connect() as conn:
        rows = {r["decision_id"]: dict(r) for r in conn.execute(select(decisions)).mappings()}
    moved, copies = {}, []
    for i, (old, at) in enumerate(sorted(placement.items())):
        r = rows[old]
        at = at + timedelta(seconds=i)
        new = new_id(int(at.timestamp() * 1000))
        moved[old] = new
        copies.append({**r, "decision_id": new, "approval_id": new if r["approval_id"] else None, "time": at})
    with engine.begin() as conn:
        conn.execute(delete(journal))
        conn.execute(delete(decisions))
    DecisionStore(engine).insert_many(copies)
    return moved


# ---- the schema ------------------------------------------------------------------------------------

def test_a_server_makes_the_months_ahead_and_records_land_in_their_month(url: str, tmp_path: Path) -> None:
    srv = start_server(tmp_path, POLICIES, url, "--partitions-ahead", "2")
    try:
        with srv.client() as c:
            d = c.decide(agent={"id": "coder-7"}, tool="shell.exec", args={"command": "ls"}).decision_id
    finally:
        srv.stop()
    engine = connect(url)
    now = datetime.now(timezone.utc)
    want = [f"decisions_{month_bounds(months_back(k, now).date())[0]}" for k in (1, 0, -1, -2)]
    assert names(engine, "decisions") == [*want, "decisions_default"]
    assert names(engine, "decision_journal") == [w.replace("decisions", "decision_journal")
                                                 for w in [*want, "decisions_default"]]
    assert partition_of(engine, d) == want[1]
    with engine.connect() as conn:   # the journal entry is in the journal's partition of the same month
        assert conn.execute(text("SELECT tableoid::regclass::text FROM decision_journal WHERE decision_id = :d"),
                            {"d": d}).scalar_one() == want[1].replace("decisions", "decision_journal")
    # Again, from several replicas at once: nothing new, nothing fails.
    with ThreadPoolExecutor(4) as pool:
        made = list(pool.map(lambda _: ensure_partitions(connect(url), 2), range(4)))
    assert made == [[], [], [], []]


def test_rows_in_default_move_into_their_month_when_it_is_made(url: str) -> None:
    """A month with no partition (a clock far off, a server down for longer than its months ahead):
    the row goes to DEFAULT, and making that month's partition moves it there, journal and
    pending guard included; several makers at once make it once."""
    engine = connect(url)
    at = months_back(-20)   # 20 months ahead: no partition
    row = _pending_row(new_id(int(at.timestamp() * 1000)), "x" * 64)
    DecisionStore(engine).insert_many([row])
    assert partition_of(engine, row["decision_id"]) == "decisions_default"
    with ThreadPoolExecutor(4) as pool:
        made = list(pool.map(lambda _: ensure_partitions(connect(url), 0, now=at, months_back=0), range(4)))
    suffix = month_bounds(at.date())[0]
    assert sorted(made, key=len) == [[], [], [], [f"decisions_{suffix}", f"decision_journal_{suffix}"]]
    assert partition_of(engine, row["decision_id"]) == f"decisions_{suffix}"
    with engine.connect() as conn:
        assert conn.execute(text(f"SELECT count(*) FROM decision_journal_{suffix}")).scalar() == 1
        assert conn.execute(text("SELECT count(*) FROM decision_journal_default")).scalar() == 0
    assert pending_calls(engine) == [row["decision_id"]]
    with pytest.raises(IntegrityError, match="ux_decisions_pending_call"):
        DecisionStore(engine).insert_many([_pending_row(new_id(), "x" * 64)])


def _pending_row(decision_id: str, args_hash: str) -> dict[str, Any]:
    return {"decision_id": decision_id, "time": datetime.fromtimestamp(id_time_ms(decision_id) / 1000, timezone.utc),
            "agent_id": "refund-bot", "tool_name": "payments.refund", "tool_server": "", "args_hash": args_hash,
            "risk_tier": 3, "outcome": "REQUIRE_APPROVAL", "reasons": "[]", "matched_rules": "[]",
            "deciding_rule": "r", "bundle_name": "b", "bundle_version": "1", "bundle_revision": "r", "eval_us": 1,
            "approval_state": "pending", "approval_id": decision_id}


# ---- one pending approval per call --------------------------------------------------------------------

def test_one_pending_approval_per_call_across_partitions(url: str) -> None:
    """The guard a unique index on a partitioned table could not give (it would be per partition):
    two pending approvals of one call, in two different months, cannot both exist; once the first
    is settled the call may be pending again."""
    engine = connect(url)
    ensure_partitions(engine, 1)
    store = DecisionStore(engine)
    this_month = new_id()
    last_month = new_id(int(months_back(1).timestamp() * 1000))
    store.insert_many([_pending_row(last_month, "h" * 64)])
    with pytest.raises(IntegrityError, match="ux_decisions_pending_call"):
        store.insert_many([_pending_row(this_month, "h" * 64)])
    assert partition_of(engine, last_month) == f"decisions_{month_bounds(months_back(1).date())[0]}"
    store.insert_many([_pending_row(this_month, "other" + "h" * 59)])   # another call: no conflict
    assert partition_of(engine, this_month) == f"decisions_{month_bounds(datetime.now(timezone.utc).date())[0]}"
    with engine.begin() as conn:   # settled (any state but pending): the call is free again
        conn.execute(update(decisions).where(decisions.c.decision_id == last_month).values(approval_state="expired"))
    assert pending_calls(engine) == [this_month]
    again = new_id()
    store.insert_many([_pending_row(again, "h" * 64)])
    assert pending_calls(engine) == sorted([this_month, again])
    with engine.begin() as conn:   # a pending record deleted by hand frees its call too
        conn.execute(delete(decisions).where(decisions.c.decision_id == again))
    assert pending_calls(engine) == [this_month]


def test_identical_calls_at_once_on_two_replicas_open_one_pending_approval(url: str, tmp_path: Path) -> None:
    bundle, tokens = write_bundle(tmp_path), str(write_tokens(tmp_path))
    a = start_server(tmp_path, bundle, url, "--tokens", tokens, name="a")
    b = start_server(tmp_path, bundle, url, "--tokens", tokens, name="b")
    args = {"amount": 4200, "order": "o-race"}
    try:
        with client(a, "gw-token") as gw_a, client(b, "gw-token") as gw_b, client(a, "carol-token") as carol:
            def ask(i: int) -> str:
                try:
                    r = (gw_a if i % 2 else gw_b).decide(agent=REFUND_BOT, tool="payments.refund", args=args)
                except grpc.RpcError as e:   # the replica whose insert lost to the other's pending record
                    assert e.code() == grpc.StatusCode.UNAVAILABLE, e
                    return "lost"
                assert r.outcome == pb.REQUIRE_APPROVAL
                return r.decision_id

            for _round in range(2):
                barrier = threading.Barrier(16)

                def at_once(i: int, barrier: threading.Barrier = barrier) -> str:
                    barrier.wait(10)
                    return ask(i)

                with ThreadPoolExecutor(16) as pool:
                    got = list(pool.map(at_once, range(16)))
                ids = {g for g in got if g != "lost"}
                assert len(ids) == 1, got     # every answer names the same pending approval
                (pending,) = ids
                engine = connect(url)
                with engine.connect() as conn:
                    stored = conn.execute(select(decisions.c.decision_id).where(
                        decisions.c.approval_state == "pending")).scalars().all()
                assert stored == [pending] and pending_calls(engine) == [pending]
                assert partition_of(engine, pending).startswith("decisions_p")
                # Resolved on a, used on b: the next round opens a new one.
                carol.resolve_approval(pending, True)
                assert gw_b.decide(agent=REFUND_BOT, tool="payments.refund", args=args).outcome == pb.ALLOW
                assert pending_calls(engine) == []
    finally:
        a.stop()
        b.stop()


# ---- prune: whole partitions --------------------------------------------------------------------------

@pytest.fixture
def two_old_months(url: str, tmp_path: Path) -> Iterator[dict[str, Any]]:
    """Real records, placed in two old months with partitions: the older holds only prunable ones;
    the newer also the pending approval."""
    pending = decide_some(tmp_path, url)
    engine = connect(url)
    ids = sorted(DecisionStore(engine).ids())
    others = [i for i in ids if i != pending]
    old, newer = months_back(5), months_back(4)
    placement = {d: old + timedelta(days=k % 3) for k, d in enumerate(others[:10])}
    placement |= {d: newer + timedelta(days=k % 2) for k, d in enumerate([*others[10:], pending])}
    moved = move_to(engine, placement)
    made = ensure_partitions(engine, 0, now=old, months_back=0) + ensure_partitions(engine, 0, now=newer,
                                                                                    months_back=0)
    old_p, newer_p = (f"decisions_{month_bounds(t.date())[0]}" for t in (old, newer))
    assert made == [old_p, old_p.replace("decisions", "decision_journal"),
                    newer_p, newer_p.replace("decisions", "decision_journal")]   # rows moved out of DEFAULT
    yield {"engine": engine, "old": old_p, "newer": newer_p, "pending": moved[pending],
           "old_ids": sorted(moved[d] for d in others[:10]), "newer_ids": sorted(moved[d] for d in others[10:])}


def test_prune_drops_a_whole_archived_partition_and_keeps_one_holding_a_pending_approval(
        two_old_months: dict[str, Any], url: str, tmp_path: Path) -> None:
    engine, old_p, newer_p = two_old_months["engine"], two_old_months["old"], two_old_months["newer"]
    arch = tmp_path / "arch"
    before_all = log_lines("--db", url)
    before_deny = log_lines("--db", url, "--outcome", "deny", "--reverse")
    assert {partition_of(engine, d) for d in two_old_months["old_ids"]} == {old_p}

    # Archive before drop: each archive is complete (file, manifest, rows) while its partition still exists.
    seen: list[tuple[str, bool, list[str]]] = []

    def on_archived(m: Manifest) -> None:
        f = arch / m.file
        seen.append((m.day, old_p in names(engine, "decisions"), [r["decision_id"] for r in read_file(f)]))

    result = Pruner(engine, arch, on_archived=on_archived, throttle=0).run(
        datetime.now(timezone.utc) - timedelta(days=60))
    assert result.dropped == [old_p]
    assert seen and all(present for _, present, _ in seen)
    old_days = {m.day for m in result.manifests if m.first_decision_id in two_old_months["old_ids"]}
    assert sorted(d for day, _, ids in seen if day in old_days for d in ids) == two_old_months["old_ids"]

    # The old month is gone, decisions and journal alike; the other stays, holding only the pending record.
    assert old_p not in names(engine, "decisions")
    assert old_p.replace("decisions", "decision_journal") not in names(engine, "decision_journal")
    with engine.connect() as conn:
        assert conn.execute(text("SELECT to_regclass(:t)"), {"t": old_p}).scalar() is None
        assert conn.execute(text("SELECT count(*) FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid "
                                 "WHERE c.relname = :t"), {"t": old_p}).scalar() == 0
        left = conn.execute(text(f"SELECT decision_id FROM {newer_p}")).scalars().all()
        journaled = conn.execute(select(journal.c.decision_id)).scalars().all()
    assert newer_p in names(engine, "decisions") and left == [two_old_months["pending"]]
    assert journaled == [two_old_months["pending"]]          # the journal followed the decisions
    assert pending_calls(engine) == [two_old_months["pending"]]
    out = result.to_json()
    assert out["deleted"] == 16 and out["held"] == 1 and out["partitions_dropped"] == [old_p]

    # `decider log --archive` answers the same questions the database answered before.
    expect = [x for x in before_all if json.loads(x)["decision_id"] != two_old_months["pending"]]
    assert log_lines("--archive", str(arch)) == expect
    assert log_lines("--archive", str(arch), "--outcome", "deny", "--reverse") == before_deny
    assert sum(read_manifest(f).rows for f in archive_files([arch])) == 16   # type: ignore[union-attr]


def test_a_record_changed_after_it_was_archived_keeps_its_partition(two_old_months: dict[str, Any],
                                                                     tmp_path: Path) -> None:
    """Reported on after the archive was written, before the drop: dropping would lose that state."""
    engine, old_p = two_old_months["engine"], two_old_months["old"]
    changed = two_old_months["old_ids"][0]

    def on_archived(m: Manifest) -> None:
        if m.first_decision_id == changed:
            with engine.begin() as conn:
                conn.execute(update(decisions).where(decisions.c.decision_id == changed).values(outcome_status="late"))

    result = Pruner(engine, tmp_path / "arch", on_archived=on_archived, throttle=0).run(
        datetime.now(timezone.utc) - timedelta(days=60))
    assert result.dropped == []
    assert old_p in names(engine, "decisions")   # row deletes instead: all but the changed record
    with engine.connect() as conn:
        assert conn.execute(text(f"SELECT decision_id, outcome_status FROM {old_p}")).all() == [(changed, "late")]


def test_db_prune_cli_reports_the_dropped_partition(two_old_months: dict[str, Any], url: str,
                                                    tmp_path: Path) -> None:
    dry = cli("db", "prune", "--db", url, "--older-than", "60d", "--archive-dir", str(tmp_path / "arch"),
              "--dry-run")
    assert dry.returncode == 0, dry.stderr
    assert f"partition {two_old_months['old']} would be dropped whole" in dry.stdout
    assert two_old_months["old"] in names(two_old_months["engine"], "decisions")
    res = cli("db", "prune", "--db", url, "--older-than", "60d", "--archive-dir", str(tmp_path / "arch"),
              "--format", "json")
    assert res.returncode == 0, res.stderr
    out = json.loads(res.stdout)
    assert out["partitions_dropped"] == [two_old_months["old"]] and out["deleted"] == 16


# ---- from revision 0008 ----------------------------------------------------------------------------

def test_upgrade_from_0008_keeps_every_record_the_journal_the_log_and_a_pending_approval(
        url: str, tmp_path: Path) -> None:
    bundle, tokens = write_bundle(tmp_path), str(write_tokens(tmp_path))
    args = {"amount": 4200, "order": "o-mig"}
    srv = start_server(tmp_path, bundle, url, "--tokens", tokens, name="before")
    try:
        with client(srv, "gw-token") as gw:
            for i in range(5):
                gw.decide(agent={"id": "w-1", "team": "ops"}, tool="work.do", args={"i": i})
            pending = gw.decide(agent=REFUND_BOT, tool="payments.refund", args=args).decision_id
    finally:
        srv.stop()
    logged = log_lines("--db", url)
    engine = connect(url, create=False)
    with engine.begin() as conn:   # the database as revision 0008 had it
        command.downgrade(alembic_config(conn), REVISIONS[-2])
    with engine.connect() as conn:
        assert conn.execute(text("SELECT count(*) FROM pg_partitioned_table")).scalar() == 0
        records = [dict(r) for r in conn.execute(select(decisions).order_by(decisions.c.decision_id)).mappings()]
        entries = [tuple(r) for r in conn.execute(select(journal).order_by(journal.c.seq))]
    assert len(records) == 6 and len(entries) == 6

    up = cli("db", "upgrade", "--db", url)
    assert up.returncode == 0 and f"to {HEAD}" in up.stdout, up.stderr
    with engine.connect() as conn:
        assert [dict(r) for r in conn.execute(select(decisions).order_by(decisions.c.decision_id)).mappings()] \
            == records
        assert [tuple(r) for r in conn.execute(select(journal).order_by(journal.c.seq))] == entries
    assert {partition_of(engine, r["decision_id"]) for r in records} == {"decisions_p0"}
    assert pending_calls(engine) == [pending]
    assert log_lines("--db", url) == logged
    assert sorted(json.loads(x)["decision_id"] for x in logged) == [r["decision_id"] for r in records]

    srv = start_server(tmp_path, bundle, url, "--tokens", tokens, name="after")
    try:
        with client(srv, "gw-token") as gw, client(srv, "carol-token") as carol:
            # The pending approval still binds the identical call, and resolves.
            assert gw.decide(agent=REFUND_BOT, tool="payments.refund", args=args).decision_id == pending
            carol.resolve_approval(pending, True)
            used = gw.decide(agent=REFUND_BOT, tool="payments.refund", args=args)
            assert used.outcome == pb.ALLOW
    finally:
        srv.stop()
    with engine.connect() as conn:   # the journal goes on from where it was
        after = conn.execute(select(journal.c.seq, journal.c.decision_id).order_by(journal.c.seq)).all()
    assert after[:6] == [(s, d) for s, d, _ in entries]
    assert [s for s, _ in after] == list(range(1, len(after) + 1)) and len(after) > 6
    assert used.decision_id in {d for _, d in after}
    assert names(engine, "decisions")[0] == "decisions_p0"


def test_the_previous_months_partition_is_never_dropped(url: str, tmp_path: Path) -> None:
    """The servers make it again every hour (it takes late rows at a month's start): its old records
    are row deletes, so a short retention does not drop and remake it over and over."""
    engine = connect(url)
    ensure_partitions(engine, 1)
    prev = f"decisions_{month_bounds(months_back(1).date())[0]}"
    row = {**_pending_row(new_id(int(months_back(1).timestamp() * 1000)), "p" * 64),
           "approval_state": None, "approval_id": None, "outcome": "ALLOW"}
    DecisionStore(engine).insert_many([row])
    result = Pruner(engine, tmp_path / "arch", throttle=0).run(datetime.now(timezone.utc) - timedelta(days=1))
    assert result.dropped == [] and result.deleted == 1
    assert prev in names(engine, "decisions")
