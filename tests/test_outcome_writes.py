"""ReportOutcome's write: one transaction that rides the group-commit writer's batch on SQLite,
fails alone, and settles a decision exactly once however many reports race."""

from __future__ import annotations

import asyncio
import sqlite3
import threading
from pathlib import Path
from typing import Any

import pytest

from decider.store import DecisionStore, GroupCommitWriter, connect
from decider.store.decisions import decisions
from decider.store.outcomes import OutcomeOp, OutcomeRefused

from .test_store import row as decided_row


def row(agent: str) -> dict[str, Any]:
    """An ALLOW record (an outcome is only for a call that ran), named `agent` for the test: decided
    for coder-7, whose manifest allows fs.read, since the example bundle denies unregistered agents."""
    r = decided_row(agent="coder-7")
    assert r["outcome"] == "ALLOW", r["reasons"]
    return {**r, "agent_id": agent}


def _writer(tmp_path: Path) -> tuple[Any, GroupCommitWriter]:
    engine = connect(f"sqlite:///{tmp_path / 'd.db'}")
    return engine, GroupCommitWriter(engine, decisions)


def test_an_outcome_commits_in_the_same_transaction_as_the_queued_decisions(tmp_path: Path) -> None:
    engine, writer = _writer(tmp_path)
    store = DecisionStore(engine)
    op = OutcomeOp(engine)
    first = row(agent="first")
    writer.write_sync(first)

    async def scenario() -> list[Any]:
        gate = threading.Event()
        # Hold the writer thread so the next decisions and the outcome queue up into one batch.
        writer.submit(row(agent="holder"), lambda _e: gate.wait(5))
        await asyncio.sleep(0.05)
        batches_before = writer.batches
        pending = [asyncio.ensure_future(writer.write(row(agent=f"d{i}"))) for i in range(3)]
        report = asyncio.ensure_future(writer.run(op.bind(first["decision_id"], 2.5, "ok", lambda _r: [])))
        await asyncio.sleep(0.05)
        gate.set()
        out = await asyncio.wait_for(asyncio.gather(*pending, report), 10)
        assert writer.batches == batches_before + 1   # three records and the outcome: one commit
        return out

    results = asyncio.run(scenario())
    writer.close()
    reported = results[-1]
    assert (reported["actual_cost"], reported["outcome_status"]) == (2.5, "ok")
    stored = store.get(first["decision_id"])
    assert stored is not None and (stored["actual_cost"], stored["outcome_status"]) == (2.5, "ok")
    assert writer.rows == 5   # outcomes are not counted as records


def test_a_refused_outcome_fails_alone_and_its_batch_commits(tmp_path: Path) -> None:
    engine, writer = _writer(tmp_path)
    store = DecisionStore(engine)
    op = OutcomeOp(engine)

    async def scenario() -> tuple[BaseException | None, dict[str, Any]]:
        gate = threading.Event()
        writer.submit(row(agent="holder"), lambda _e: gate.wait(5))
        await asyncio.sleep(0.05)
        neighbour = row(agent="neighbour")
        write = asyncio.ensure_future(writer.write(neighbour))
        missing = asyncio.ensure_future(writer.run(op.bind("no-such-decision", 1.0, "ok", lambda _r: [])))
        await asyncio.sleep(0.05)
        gate.set()
        done = await asyncio.wait_for(asyncio.gather(write, missing, return_exceptions=True), 10)
        return done[1], neighbour

    err, neighbour = asyncio.run(scenario())
    writer.close()
    assert isinstance(err, OutcomeRefused) and err.kind == "not_found"
    assert store.get(neighbour["decision_id"]) is not None


def test_an_outcome_alone_commits_on_the_event_loop(tmp_path: Path) -> None:
    engine, writer = _writer(tmp_path)
    op = OutcomeOp(engine)
    first = row(agent="first")
    writer.write_sync(first)

    async def scenario() -> dict[str, Any]:
        return await writer.run(op.bind(first["decision_id"], 0.0, "error", lambda _r: []), alone=True)

    before = writer.inline_commits
    reported = asyncio.run(scenario())
    assert writer.inline_commits == before + 1
    assert reported["outcome_status"] == "error"
    with pytest.raises(OutcomeRefused, match="already reported"):
        asyncio.run(scenario())
    writer.close()


def test_ops_are_refused_where_the_writer_is_not_on_an_sqlite_file(tmp_path: Path) -> None:
    engine = connect("sqlite://")   # in memory: the SQLAlchemy path, no stdlib connection
    writer = GroupCommitWriter(engine, decisions)
    assert not writer.runs_ops

    async def scenario() -> None:
        await writer.run(lambda conn: None)

    with pytest.raises(RuntimeError, match="SQLite file"):
        asyncio.run(scenario())
    writer.close()


def test_the_raw_outcome_matches_what_sqlalchemy_reads_back(tmp_path: Path) -> None:
    engine, writer = _writer(tmp_path)
    first = row(agent="typed")
    writer.write_sync(first)
    writer.close()
    conn = sqlite3.connect(str(tmp_path / "d.db"), isolation_level=None)
    conn.execute("BEGIN IMMEDIATE")
    got = OutcomeOp(engine).run(conn, first["decision_id"], 1.25, "ok", lambda _r: [])
    conn.execute("COMMIT")
    stored = DecisionStore(engine).get(first["decision_id"])
    assert stored == got
