"""The decision store: group commit batches concurrent writes; one bad row fails alone."""

from __future__ import annotations

import asyncio
import sqlite3
import threading
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest
from sqlalchemy.exc import IntegrityError

from decider.bundle.compile import load_bundle
from decider.client import build_request
from decider.engine.decide import decide
from decider.record.ids import id_time_ms, new_id
from decider.record.record import build_record
from decider.store import DecisionStore, GroupCommitWriter, connect
from decider.store.decisions import LogFilter, decisions
from decider.store.writer import WriteGroup

from .helpers import POLICIES

BUNDLE = load_bundle(POLICIES)


def row(agent: str = "a1", tool: str = "fs.read") -> dict:
    req = build_request(agent={"id": agent}, tool=tool, args={"path": "/workspace/x"})
    return build_record(new_id(), req, decide(BUNDLE, req), BUNDLE, datetime.now(timezone.utc), b"test-key").to_row()


def test_concurrent_writes_are_committed_in_fewer_batches(db_url: str) -> None:
    engine = connect(db_url)
    writer = GroupCommitWriter(engine, decisions)
    rows = [row(agent=f"a{i}") for i in range(400)]
    threads = [threading.Thread(target=writer.write_sync, args=(r,)) for r in rows]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    writer.close()
    assert writer.rows == 400
    assert writer.batches < 400  # at least some were grouped
    assert DecisionStore(engine).ids() == {r["decision_id"] for r in rows}


def test_a_bad_row_fails_alone_and_its_neighbours_commit(db_url: str) -> None:
    engine = connect(db_url)
    writer = GroupCommitWriter(engine, decisions)
    good = row()
    writer.write_sync(good)
    # An SQLite file: the writer uses the stdlib driver; PostgreSQL: SQLAlchemy.
    with pytest.raises((sqlite3.IntegrityError, IntegrityError)):
        writer.write_sync(dict(good))  # same primary key
    other = row()
    writer.write_sync(other)
    writer.close()
    assert DecisionStore(engine).ids() == {good["decision_id"], other["decision_id"]}


def test_a_write_group_settles_once_with_each_records_own_outcome(db_url: str) -> None:
    """A batch's records staged as one WriteGroup (DeciderService.decide_many): one wait for all,
    and each record's own result: a bad one fails alone, its neighbours are committed."""
    engine = connect(db_url)
    writer = GroupCommitWriter(engine, decisions)
    first, other = row(), row()

    async def stage_and_wait() -> list[BaseException | None]:
        group = WriteGroup()
        # Same primary key as `first`, staged in the same hand-over: the batch fails, each is retried alone.
        slots = [writer.stage(r, group) for r in (first, dict(first), other)]
        assert slots == [0, 1, 2] and len(group) == 3
        await asyncio.wait_for(group.wait(), 30)
        return group.errors

    try:
        errors = asyncio.run(stage_and_wait())
    finally:
        writer.close()
    assert errors[0] is None and errors[2] is None
    assert isinstance(errors[1], (sqlite3.IntegrityError, IntegrityError))
    assert DecisionStore(engine).ids() == {first["decision_id"], other["decision_id"]}


def test_an_empty_write_group_is_settled_at_once() -> None:
    asyncio.run(asyncio.wait_for(WriteGroup().wait(), 5))


def test_close_flushes_and_refuses_new_rows(db_url: str) -> None:
    engine = connect(db_url)
    writer = GroupCommitWriter(engine, decisions)
    done: list[BaseException | None] = []
    r = row()
    writer.submit(r, done.append)
    writer.close()
    assert done == [None]
    assert DecisionStore(engine).get(r["decision_id"]) is not None
    with pytest.raises(RuntimeError):
        writer.submit(row(), done.append)


def test_log_filters(db_url: str) -> None:
    engine = connect(db_url)
    store = DecisionStore(engine)
    # Agents with manifests in the example bundle (an unregistered id would be denied).
    store.insert_many([row(agent="coder-7", tool="fs.read"), row(agent="support-1", tool="shell.exec"),
                       row(agent="coder-7")])
    assert len(list(store.query(LogFilter(agent_id="coder-7")))) == 2
    assert [r["tool_name"] for r in store.query(LogFilter(outcome="deny"))] == ["shell.exec"]
    assert len(list(store.query(LogFilter(limit=1)))) == 1


def test_decision_ids_sort_by_time() -> None:
    a, b = new_id(1_000), new_id(2_000)
    assert a < b and id_time_ms(a) == 1_000 and len(a) == 26


def test_a_batch_keeps_columns_that_only_later_rows_carry(db_url: str) -> None:
    # An executemany takes its columns from the first row: a plain decision first, then an approval
    # row with approval_id and a shadow outcome, in one batch. Nothing of the second may be lost.
    engine = connect(db_url)
    writer = GroupCommitWriter(engine, decisions)
    plain = {k: v for k, v in row().items() if v is not None}   # a sparse row, as other writers may send
    approval = dict(row(agent="a2"), approval_id="A-1", approval_state="pending", shadow_outcome="DENY",
                    shadow_rules='["r"]', shadow_bundle_revision="abc")
    assert "approval_id" not in plain and "shadow_outcome" not in plain
    done: list[BaseException | None] = []
    with writer._cv:  # queue both before the writer thread can take the first alone
        writer._pending.extend([(plain, done.append), (approval, done.append)])
        writer._cv.notify()
    writer.close()
    assert done == [None, None] and writer.batches == 1
    stored = DecisionStore(engine).get(approval["decision_id"])
    assert stored is not None
    assert (stored["approval_id"], stored["approval_state"], stored["shadow_outcome"], stored["shadow_bundle_revision"]) == (
        "A-1", "pending", "DENY", "abc")
    assert DecisionStore(engine).get(plain["decision_id"])["approval_id"] is None


def test_open_approval_lookup_probes_the_partial_index_not_every_earlier_decision(tmp_path: Path) -> None:
    # Identical calls repeat (the same `ls`, the same refund); the look-up for an open approval must
    # not read every earlier decision of the call, which is what the full index on the call did.
    from sqlalchemy import select

    from decider.store.approvals import OPEN

    engine = connect(f"sqlite:///{tmp_path / 'd.db'}")
    c = decisions.c
    q = select(decisions).where(c.args_hash == "h", c.agent_id == "a", c.tool_name == "t", c.tool_server == "s",
                                OPEN, c.approval_id == c.decision_id)
    with engine.connect() as conn:
        plan = " ".join(str(r) for r in conn.connection.driver_connection.execute(
            "EXPLAIN QUERY PLAN " + str(q.compile(engine)), ("h", "a", "t", "s")))
    assert "USING INDEX ix_decisions_open_approval" in plan, plan


def _approval_row(agent: str, state: str, now: datetime) -> dict:
    return dict(row(agent=agent, tool="payments.refund"), approval_state=state, approvers='["group:finance"]',
                approval_expires_at=now + timedelta(hours=1), resolved_by="user:ana", resolved_at=now,
                comment="ok", dry_run=True, actual_cost=1.25, outcome_status="ok")


def test_rows_written_on_the_sqlite_driver_read_back_as_if_sqlalchemy_wrote_them(tmp_path: Path) -> None:
    # The group-commit writer bypasses SQLAlchemy on an SQLite file; DecisionStore.insert_many does
    # not. The same record through both must read back identically through SQLAlchemy: datetimes
    # (with microseconds), booleans, floats, NULLs, column defaults.
    engine = connect(f"sqlite:///{tmp_path / 'd.db'}")
    now = datetime(2026, 11, 22, 4, 5, 6, 789012, tzinfo=timezone.utc)
    via_raw = _approval_row("a1", "approved", now)
    via_sqlalchemy = dict(via_raw, decision_id=new_id())
    writer = GroupCommitWriter(engine, decisions)
    assert writer._raw is not None  # the stdlib path is the one under test
    writer.write_sync(via_raw)
    writer.close()
    store = DecisionStore(engine)
    store.insert_many([via_sqlalchemy])
    a, b = store.get(via_raw["decision_id"]), store.get(via_sqlalchemy["decision_id"])
    assert a is not None and b is not None
    a.pop("decision_id"), b.pop("decision_id")
    assert a == b
    assert a["dry_run"] is True and a["approval_expires_at"] == (now + timedelta(hours=1)).replace(tzinfo=None)
    assert a["kill_switch_id"] is None and a["shadow_outcome"] is None


def test_open_approval_lookup_on_the_sqlite_driver_matches_sqlalchemy(tmp_path: Path) -> None:
    from decider.store.approvals import ApprovalStore

    engine = connect(f"sqlite:///{tmp_path / 'd.db'}")
    now = datetime.now(timezone.utc)
    rows = [_approval_row("a1", state, now) for state in ("pending", "approved", "consumed", "rejected")]
    for r in rows:
        r["approval_id"] = r["decision_id"]
    rows.append(dict(_approval_row("a1", "approved", now), approval_id=rows[1]["decision_id"]))  # not an approval itself
    DecisionStore(engine).insert_many(rows)
    approvals = ApprovalStore(engine)
    assert approvals.inline
    key = (rows[0]["agent_id"], rows[0]["tool_name"], rows[0]["tool_server"], rows[0]["args_hash"])
    got = approvals.open_for_call_inline(*key)
    # pending, approved and rejected (a rejection binds until its ttl), never consumed; oldest
    # first, each exactly as SQLAlchemy reads it
    assert got is not None
    assert [g["decision_id"] for g in got] == sorted(r["decision_id"] for r in (rows[0], rows[1], rows[3]))
    assert got == approvals.open_for_call(*key)
    store = DecisionStore(engine)
    assert got == [store.get(g["decision_id"]) for g in got]


def test_the_sqlite_driver_lookup_probes_the_partial_index(tmp_path: Path) -> None:
    from decider.store.approvals import ApprovalStore

    engine = connect(f"sqlite:///{tmp_path / 'd.db'}")
    raw = ApprovalStore(engine)._open_raw
    assert raw is not None
    conn = sqlite3.connect(tmp_path / "d.db")
    plan = " ".join(str(r) for r in conn.execute("EXPLAIN QUERY PLAN " + raw.sql, ("h", "a", "t", "s")))
    conn.close()
    assert "USING INDEX ix_decisions_open_approval" in plan, plan


def test_the_open_approval_lookup_stays_one_index_probe_on_a_table_of_many_decisions(tmp_path: Path) -> None:
    # Issue 27: asked to ORDER BY decision_id, SQLite's planner chose `ix_decisions_agent` (agent_id,
    # decision_id) and read every decision of the agent, ~1.1 ms per require_approval call at 10k rows
    # and growing. Both look-ups (the loop's and SQLAlchemy's) must probe the partial index on a
    # table full of one agent's decisions, and still answer oldest first.
    from sqlalchemy import select

    from decider.store.approvals import OPEN, ApprovalStore

    path = tmp_path / "d.db"
    engine = connect(f"sqlite:///{path}")
    now = datetime.now(timezone.utc)
    many = [row(agent="a1", tool="payments.refund") for _ in range(300)]
    opened = [_approval_row("a1", state, now) for state in ("pending", "rejected", "approved")]
    for r in opened:
        r["approval_id"] = r["decision_id"]
    DecisionStore(engine).insert_many(many + opened)
    approvals = ApprovalStore(engine)
    c = decisions.c
    key = ("a1", opened[0]["tool_name"], opened[0]["tool_server"], opened[0]["args_hash"])
    q = select(decisions).where(c.args_hash == "h", c.agent_id == "a", c.tool_name == "t", c.tool_server == "s",
                                OPEN, c.approval_id == c.decision_id)
    conn = sqlite3.connect(path)
    try:
        for sql in (approvals._open_raw.sql if approvals._open_raw else "", str(q.compile(engine))):
            plan = " ".join(str(r) for r in conn.execute("EXPLAIN QUERY PLAN " + sql, ("h", "a", "t", "s")))
            assert "USING INDEX ix_decisions_open_approval" in plan, plan
    finally:
        conn.close()
    oldest_first = sorted(r["decision_id"] for r in opened)
    assert [g["decision_id"] for g in approvals.open_for_call_inline(*key) or []] == oldest_first
    assert [g["decision_id"] for g in approvals.open_for_call(*key)] == oldest_first


def test_the_answer_from_a_stored_row_carries_the_records_response_fields(tmp_path: Path) -> None:
    # The identical-call answer is built from the row directly (not via a full DecisionRecord):
    # every field it shares with the record must be the record's.
    from decider.record.record import record_to_proto, response_from_row

    engine = connect(f"sqlite:///{tmp_path / 'd.db'}")
    r = _approval_row("a1", "pending", datetime.now(timezone.utc))
    r["approval_id"] = r["decision_id"]
    DecisionStore(engine).insert_many([r])
    stored = DecisionStore(engine).get(r["decision_id"])
    req = build_request(agent={"id": "a1"}, tool="payments.refund", args={}, request_id="req-7")
    resp, rec = response_from_row(stored, req), record_to_proto(stored)
    assert resp.request_id == "req-7" and resp.approval.state != 0 and resp.reasons
    for name in ("decision_id", "outcome", "reasons", "bundle", "matched_rules", "deciding_rule", "eval_us",
                 "approval"):
        assert getattr(resp, name) == getattr(rec, name), name


def test_a_decision_alone_is_committed_on_the_event_loop_and_others_go_to_the_writer_thread(tmp_path: Path) -> None:
    import asyncio

    engine = connect(f"sqlite:///{tmp_path / 'd.db'}")
    writer = GroupCommitWriter(engine, decisions)
    store = DecisionStore(engine)

    async def scenario() -> None:
        alone = row(agent="alone")
        await writer.write(alone, alone=True)
        # Committed by the time write returns, on the loop: no batch went through the thread.
        assert writer.inline_commits == 1 and store.get(alone["decision_id"]) is not None
        await writer.write(row(agent="crowd"))
        assert writer.inline_commits == 1
        # While the thread has work queued, even a decision alone joins the queue (keeps order
        # with the batch and never waits on the thread's write lock from the loop).
        gate = threading.Event()
        writer.submit(row(agent="first"), lambda _e: gate.wait(5))  # holds the thread after its commit
        with writer._cv:
            queued = row(agent="queued")
            writer._pending.append((queued, lambda _e: None))
        late = row(agent="late")
        task = asyncio.ensure_future(writer.write(late, alone=True))
        await asyncio.sleep(0.05)
        assert writer.inline_commits == 1
        gate.set()
        await asyncio.wait_for(task, 10)
        assert store.get(late["decision_id"]) is not None

    asyncio.run(scenario())
    writer.close()
    assert writer.inline_commits == 1


def test_decision_ids_are_crockford_base32_of_time_and_randomness(monkeypatch: pytest.MonkeyPatch) -> None:
    import os

    from decider.record import ids

    for ms, rnd in ((0, bytes(10)), (1_763_784_000_123, bytes(range(1, 11))), (2**48 - 1, b"\xff" * 10)):
        monkeypatch.setattr(os, "urandom", lambda _n, rnd=rnd: rnd)
        n = (ms << 80) | int.from_bytes(rnd, "big")
        expected = "".join("0123456789ABCDEFGHJKMNPQRSTVWXYZ"[(n >> (5 * i)) & 31] for i in reversed(range(26)))
        assert ids.new_id(ms) == expected and id_time_ms(expected) == ms


def test_the_wal_is_checkpointed_by_the_writer_thread_not_inside_commits(tmp_path: Path) -> None:
    # Commits never checkpoint (a checkpoint inside an inline commit would stall the event loop);
    # the writer thread checkpoints every CHECKPOINT_EVERY commits, inline ones included, so the
    # WAL stays bounded.
    import asyncio
    import time as _time

    from decider.store.writer import CHECKPOINT_EVERY

    db = tmp_path / "d.db"
    engine = connect(f"sqlite:///{db}")
    writer = GroupCommitWriter(engine, decisions)
    assert writer._inline_conn is not None and writer._conn is not None
    assert writer._inline_conn.execute("PRAGMA wal_autocheckpoint").fetchone()[0] == 0
    assert writer._conn.execute("PRAGMA wal_autocheckpoint").fetchone()[0] == 0
    wal = Path(f"{db}-wal")
    commits = CHECKPOINT_EVERY * 6

    async def scenario() -> int:
        per_commit = 0
        for i in range(commits):
            await writer.write(row(agent=f"w{i}"), alone=True)
            if i == CHECKPOINT_EVERY // 2:
                per_commit = wal.stat().st_size // i
            if writer.inline_commits % CHECKPOINT_EVERY == 0:
                await asyncio.sleep(0.02)  # let the woken thread run its checkpoint
        return per_commit

    per_commit = asyncio.run(scenario())
    deadline = _time.monotonic() + 5
    while writer.checkpoints < 5 and _time.monotonic() < deadline:
        _time.sleep(0.01)
    writer.close()
    assert writer.inline_commits == commits and writer.checkpoints >= 5
    # Without checkpoints the WAL would hold every commit; with them it is reused from its start.
    assert wal.stat().st_size < per_commit * CHECKPOINT_EVERY * 3, (wal.stat().st_size, per_commit)
    assert len(DecisionStore(engine).ids()) == commits


def test_an_inline_commit_that_finds_the_database_locked_goes_to_the_writer_thread(tmp_path: Path) -> None:
    # Another connection (a replica's commit, a control RPC) holds the write lock: the event loop
    # must not wait on it for long; the row is committed by the thread once the lock is released.
    import asyncio

    from decider.store.sqlite_raw import LOOP_BUSY_TIMEOUT_MS

    db = tmp_path / "d.db"
    engine = connect(f"sqlite:///{db}")
    writer = GroupCommitWriter(engine, decisions)
    other = sqlite3.connect(db, isolation_level=None)
    other.execute("BEGIN IMMEDIATE")
    r = row(agent="locked-out")

    async def scenario() -> None:
        task = asyncio.ensure_future(writer.write(r, alone=True))
        await asyncio.sleep(0)           # the inline attempt runs and gives up after its short wait
        await asyncio.sleep(0.3)
        assert not task.done() and writer.inline_busy == 1 and writer.inline_commits == 0
        other.execute("COMMIT")
        await asyncio.wait_for(task, 30)

    # The loop's connection waits LOOP_BUSY_TIMEOUT_MS for a lock; the thread's waits 30 s.
    assert writer._inline_conn is not None and writer._conn is not None
    assert writer._inline_conn.execute("PRAGMA busy_timeout").fetchone()[0] == LOOP_BUSY_TIMEOUT_MS < 1000
    assert writer._conn.execute("PRAGMA busy_timeout").fetchone()[0] == 30_000
    asyncio.run(scenario())
    writer.close()
    other.close()
    assert DecisionStore(engine).get(r["decision_id"]) is not None


def test_the_loops_approval_lookup_gives_way_when_the_database_is_locked(tmp_path: Path) -> None:
    from decider.store.approvals import ApprovalStore

    db = tmp_path / "d.db"
    engine = connect(f"sqlite:///{db}")
    engine.dispose()  # no pooled connection keeps the file open: `other` below can lock it whole
    other = sqlite3.connect(db, isolation_level=None)
    other.execute("PRAGMA locking_mode=EXCLUSIVE")
    other.execute("BEGIN EXCLUSIVE")
    approvals = ApprovalStore(engine)
    try:
        assert approvals.open_for_call_inline("a", "t", "s", "h") is None   # gave way: ask a thread
    finally:
        other.execute("COMMIT")
        other.close()
    assert approvals.open_for_call_inline("a", "t", "s", "h") == []
