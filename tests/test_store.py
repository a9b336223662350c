"""The decision store: group commit batches concurrent writes; one bad row fails alone."""

from __future__ import annotations

import threading
from datetime import datetime, timezone
from pathlib import Path

import pytest
from sqlalchemy.exc import IntegrityError

from decider.bundle import load_bundle
from decider.client import build_request
from decider.engine import decide
from decider.ids import id_time_ms, new_id
from decider.record import build_record
from decider.store import DecisionStore, GroupCommitWriter, connect
from decider.store.decisions import LogFilter, decisions

from .helpers import POLICIES

BUNDLE = load_bundle(POLICIES)


def row(agent: str = "a1", tool: str = "fs.read") -> dict:
    req = build_request(agent={"id": agent}, tool=tool, args={"path": "/workspace/x"})
    return build_record(new_id(), req, decide(BUNDLE, req), BUNDLE, datetime.now(timezone.utc))


def test_concurrent_writes_are_committed_in_fewer_batches(tmp_path: Path) -> None:
    engine = connect(f"sqlite:///{tmp_path / 'd.db'}")
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


def test_a_bad_row_fails_alone_and_its_neighbours_commit(tmp_path: Path) -> None:
    engine = connect(f"sqlite:///{tmp_path / 'd.db'}")
    writer = GroupCommitWriter(engine, decisions)
    good = row()
    writer.write_sync(good)
    with pytest.raises(IntegrityError):
        writer.write_sync(dict(good))  # same primary key
    other = row()
    writer.write_sync(other)
    writer.close()
    assert DecisionStore(engine).ids() == {good["decision_id"], other["decision_id"]}


def test_close_flushes_and_refuses_new_rows(tmp_path: Path) -> None:
    engine = connect(f"sqlite:///{tmp_path / 'd.db'}")
    writer = GroupCommitWriter(engine, decisions)
    done: list[BaseException | None] = []
    r = row()
    writer.submit(r, done.append)
    writer.close()
    assert done == [None]
    assert DecisionStore(engine).get(r["decision_id"]) is not None
    with pytest.raises(RuntimeError):
        writer.submit(row(), done.append)


def test_log_filters(tmp_path: Path) -> None:
    engine = connect(f"sqlite:///{tmp_path / 'd.db'}")
    store = DecisionStore(engine)
    store.insert_many([row(agent="x", tool="fs.read"), row(agent="y", tool="shell.exec"), row(agent="x")])
    assert len(list(store.query(LogFilter(agent_id="x")))) == 2
    assert [r["tool_name"] for r in store.query(LogFilter(outcome="deny"))] == ["shell.exec"]
    assert len(list(store.query(LogFilter(limit=1)))) == 1


def test_decision_ids_sort_by_time() -> None:
    a, b = new_id(1_000), new_id(2_000)
    assert a < b and id_time_ms(a) == 1_000 and len(a) == 26


def test_a_batch_keeps_columns_that_only_later_rows_carry(tmp_path: Path) -> None:
    # An executemany takes its columns from the first row: a plain decision first, then an approval
    # row with approval_id and a shadow outcome, in one batch. Nothing of the second may be lost.
    engine = connect(f"sqlite:///{tmp_path / 'd.db'}")
    writer = GroupCommitWriter(engine, decisions)
    plain = row()
    approval = dict(row(agent="a2"), approval_id="A-1", approval_state="pending", shadow_outcome="DENY",
                    shadow_rules='["r"]', shadow_revision="abc")
    assert "approval_id" not in plain and "shadow_outcome" not in plain
    done: list[BaseException | None] = []
    with writer._cv:  # queue both before the writer thread can take the first alone
        writer._pending.extend([(plain, done.append), (approval, done.append)])
        writer._cv.notify()
    writer.close()
    assert done == [None, None] and writer.batches == 1
    stored = DecisionStore(engine).get(approval["decision_id"])
    assert stored is not None
    assert (stored["approval_id"], stored["approval_state"], stored["shadow_outcome"], stored["shadow_revision"]) == (
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
