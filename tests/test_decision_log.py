"""`decider log` (issue 12 item 14), the resumable decision stream `log --follow`, and `decider report`,
against a real server and its SQLite file."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from datetime import datetime, timezone
from pathlib import Path

import pytest
from alembic import command

from decider.store import DecisionStore, connect
from decider.store.journal import JournalReader
from decider.store.migrate import alembic_config
from decider.v1 import decider_pb2 as pb

from .helpers import ROOT, ServerProcess, start_server
from .stateful import REFUND_BOT, client, write_bundle, write_tokens
from .test_store import row as sample_row


def cli(*args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "decider", *args], capture_output=True, text=True, cwd=ROOT,
                          timeout=timeout)


@pytest.fixture(scope="module")
def srv(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    tmp = tmp_path_factory.mktemp("decision-log")
    s = start_server(tmp, write_bundle(tmp), None, "--tokens", str(write_tokens(tmp)), "--poll-interval", "0.2")
    try:
        yield s
    finally:
        s.stop()


def work(srv: ServerProcess, n: int, agent: str = "worker", team: str = "ops") -> list[str]:
    with client(srv, "gw-token") as c:
        return [c.decide(agent={"id": agent, "team": team}, tool="work.step", args={"i": i}).decision_id
                for i in range(n)]


# ---- issue 12 item 14 -----------------------------------------------------------------------------

def test_log_with_a_mistyped_db_path_is_an_error_unless_create(tmp_path: Path) -> None:
    missing = tmp_path / "typo.db"
    run = cli("log", "--db", str(missing))
    assert run.returncode == 2 and "no database at" in run.stderr and str(missing) in run.stderr
    assert not missing.exists()
    run = cli("log", "--db", f"sqlite:///{missing}", "--create")
    assert run.returncode == 0, run.stderr
    assert missing.exists()


def test_log_limit_gives_the_newest_first_and_reverse_the_oldest(srv: ServerProcess) -> None:
    ids = work(srv, 4, agent="limit-bot")
    run = cli("log", "--db", srv.db_url, "--agent", "limit-bot", "--limit", "2", "--format", "jsonl")
    assert [json.loads(x)["decision_id"] for x in run.stdout.splitlines()] == [ids[3], ids[2]]
    run = cli("log", "--db", srv.db_url, "--agent", "limit-bot", "--limit", "2", "--reverse", "--format", "jsonl")
    assert [json.loads(x)["decision_id"] for x in run.stdout.splitlines()] == [ids[0], ids[1]]


def test_the_allow_that_consumed_an_approval_shows_who_approved_it(srv: ServerProcess) -> None:
    with client(srv, "gw-token") as c:
        pending = c.decide(agent=REFUND_BOT, tool="payments.refund", args={"amount": 7, "order": "log-1"})
    with client(srv, "ana-token") as c:
        c.resolve_approval(pending.decision_id, True)
    with client(srv, "gw-token") as c:
        allowed = c.decide(agent=REFUND_BOT, tool="payments.refund", args={"amount": 7, "order": "log-1"})
    assert allowed.outcome == pb.ALLOW
    table = cli("log", "--db", srv.db_url, "--agent", "refund-bot").stdout
    line = next(x for x in table.splitlines() if x.startswith(allowed.decision_id))
    assert f"approved by user:ana (decision {pending.decision_id})" in line
    assert "refunds-need-finance" not in line
    asked = next(x for x in table.splitlines() if x.startswith(pending.decision_id))
    assert asked.split()[-2:] == ["refunds-need-finance", "service:gateway"]   # rule, then the caller


# ---- the decision stream ---------------------------------------------------------------------------

def test_follow_streams_every_record_in_commit_order_under_concurrent_writers(srv: ServerProcess) -> None:
    start = JournalReader(connect(srv.db_url)).last_seq()
    follower = subprocess.Popen([sys.executable, "-m", "decider", "log", "--db", srv.db_url, "--follow",
                                 "--format", "jsonl", "--after", str(start), "--poll", "0.05"],
                                stdout=subprocess.PIPE, text=True, cwd=ROOT)
    lines: list[dict] = []

    def read() -> None:
        assert follower.stdout is not None
        for raw in follower.stdout:
            lines.append(json.loads(raw))

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    written: list[list[str]] = [[] for _ in range(6)]
    writers = [threading.Thread(target=lambda k=k: written[k].extend(work(srv, 25, agent=f"w{k}")))
               for k in range(6)]
    for t in writers:
        t.start()
    for t in writers:
        t.join(60)
    expected = {i for ids in written for i in ids}
    assert len(expected) == 150
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and not expected <= {x["decision_id"] for x in lines}:
        time.sleep(0.05)
    follower.terminate()
    follower.wait(10)
    mine = [x for x in lines if x["decision_id"] in expected]
    assert {x["decision_id"] for x in mine} == expected, "a committed record never reached the stream"
    seqs = [x["seq"] for x in lines]
    assert seqs == sorted(seqs) and len(set(seqs)) == len(seqs)
    assert all(x["change"] == "decided" for x in mine) and len(mine) == 150
    # Each writer's own decisions appear in the order it got its answers (each was durable first).
    for ids in written:
        assert [x["decision_id"] for x in mine if x["decision_id"] in set(ids)] == ids
    # Resumable: after the 40th line, by decision id and by seq, the rest and nothing else.
    cut = lines[39]
    for after in (cut["decision_id"], str(cut["seq"])):
        rest = _follow_until(srv.db_url, after, {x["decision_id"] for x in lines[40:]})
        assert [x["seq"] for x in rest][: len(lines) - 40] == seqs[40:]


def _follow_until(db_url: str, after: str, want: set[str], *extra: str, timeout: float = 30) -> list[dict]:
    proc = subprocess.Popen([sys.executable, "-m", "decider", "log", "--db", db_url, "--follow", "--format",
                             "jsonl", "--after", after, "--poll", "0.05", *extra], stdout=subprocess.PIPE,
                            text=True, cwd=ROOT)
    got: list[dict] = []
    deadline = time.monotonic() + timeout
    try:
        assert proc.stdout is not None
        while time.monotonic() < deadline and not want <= {x["decision_id"] for x in got}:
            raw = proc.stdout.readline()
            if not raw:
                break
            got.append(json.loads(raw))
    finally:
        proc.terminate()
        proc.wait(10)
    return got


def test_commit_order_not_id_order_a_late_commit_of_an_earlier_id_is_not_skipped(tmp_path: Path) -> None:
    # The writer thread can commit a decision after one with a later id (committed inline): a
    # reader resuming after the later id must still get the earlier one.
    engine = connect(f"sqlite:///{tmp_path / 'order.db'}")
    store = DecisionStore(engine)
    store.insert_many([{**sample_row(), "decision_id": "01J00000000000000000000002"}])
    reader = JournalReader(engine)
    first = reader.after(0)
    assert [r["decision_id"] for r in first] == ["01J00000000000000000000002"]
    store.insert_many([{**sample_row(), "decision_id": "01J00000000000000000000001"}])
    later = reader.after(first[-1]["seq"])
    assert [r["decision_id"] for r in later] == ["01J00000000000000000000001"]


def test_a_database_from_before_the_journal_streams_from_its_first_decision(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'old.db'}"
    engine = connect(url, create=False)
    with engine.begin() as conn:   # the schema of the release before the journal (revision 0002)
        command.upgrade(alembic_config(conn), "0002_api_field_names")
    from sqlalchemy import MetaData, insert

    from decider.store.decisions import decisions
    from decider.store.writer import row_completer

    complete = row_completer(decisions)
    rows = [complete(sample_row(agent=f"old{i}")) for i in range(3)]
    old = MetaData()
    old.reflect(engine)   # the table as revision 0002 made it: no column of a later revision
    columns = set(old.tables["decisions"].c.keys())
    with engine.begin() as conn:
        conn.execute(insert(old.tables["decisions"]), [{k: v for k, v in r.items() if k in columns} for r in rows[::-1]])
    engine.dispose()
    upgraded = cli("db", "upgrade", "--db", url)
    assert upgraded.returncode == 0, upgraded.stderr
    entries = JournalReader(connect(url)).after(0)
    assert [e["decision_id"] for e in entries] == sorted(r["decision_id"] for r in rows)
    assert {e["change"] for e in entries} == {"decided"}


def test_an_approval_resolved_later_reappears_in_the_stream_as_an_update(srv: ServerProcess) -> None:
    with client(srv, "gw-token") as c:
        pending = c.decide(agent=REFUND_BOT, tool="payments.refund", args={"amount": 9, "order": "stream-1"})
    seq = JournalReader(connect(srv.db_url)).seq_of(pending.decision_id)
    with client(srv, "ana-token") as c:
        c.resolve_approval(pending.decision_id, False, comment="no")
    entries = JournalReader(connect(srv.db_url)).after(seq - 1)
    changes = [(x["change"], x["approval_state"]) for x in entries if x["decision_id"] == pending.decision_id]
    assert [c for c, _ in changes] == ["decided", "updated"]
    assert changes[-1][1] == "rejected"


def test_follow_applies_the_record_filters(srv: ServerProcess) -> None:
    start = JournalReader(connect(srv.db_url)).last_seq()
    mine = work(srv, 3, agent="filter-a")
    work(srv, 3, agent="filter-b")
    last = work(srv, 1, agent="filter-a")
    got = _follow_until(srv.db_url, str(start), {*mine, *last}, "--agent", "filter-a")
    assert [x["decision_id"] for x in got] == [*mine, *last]
    run = cli("log", "--db", srv.db_url, "--follow", "--format", "jsonl", "--limit", "3")
    assert run.returncode == 2 and run.stderr.startswith("decider: --limit: does not apply to --follow")


def test_follow_after_an_unknown_decision_id_names_the_option(srv: ServerProcess) -> None:
    run = cli("log", "--db", srv.db_url, "--follow", "--format", "jsonl", "--after", "01NOSUCHDECISION0000000000")
    assert run.returncode == 2 and run.stderr.startswith("decider: --after: no decision")


# ---- decider report --------------------------------------------------------------------------------

def test_report_per_team_agent_and_workflow(tmp_path: Path) -> None:
    s = start_server(tmp_path, write_bundle(tmp_path), None, "--tokens", str(write_tokens(tmp_path)),
                     "--poll-interval", "0.2")
    try:
        with client(s, "gw-token") as c:
            allowed = [c.decide(agent={"id": "rep-a", "team": "alpha", "workflow": "wf"}, tool="work.x",
                                args={"i": i}, estimated_cost=2.0) for i in range(3)]
            c.report_outcome(allowed[0].decision_id, 5.0)
            c.decide(agent={"id": "rep-a", "team": "alpha", "workflow": "wf"}, tool="other.x", estimated_cost=7.0)
            asked = c.decide(agent=REFUND_BOT, tool="payments.refund", args={"amount": 1, "order": "r-1"})
            quick = c.decide(agent=REFUND_BOT, tool="payments.quick", args={"q": 1})   # approval_ttl: 1s
        with client(s, "ana-token") as c:
            c.resolve_approval(asked.decision_id, True)
        with client(s, "gw-token") as c:
            deadline = time.monotonic() + 15
            while (c.get_decision(quick.decision_id).approval.state != pb.APPROVAL_EXPIRED
                   and time.monotonic() < deadline):
                time.sleep(0.2)
        with client(s, "admin-token") as c:
            c.set_kill_switch("team", "alpha", reason="incident")
        time.sleep(0.5)  # > --poll-interval: every replica sees the switch (there is one here)
        with client(s, "gw-token") as c:
            killed = c.decide(agent={"id": "rep-a", "team": "alpha", "workflow": "wf"}, tool="work.x",
                              args={"i": 99}, estimated_cost=3.0)
        assert killed.outcome == pb.DENY
    finally:
        s.stop()
    run = cli("report", "--db", s.db_url, "--since", "1h", "--format", "json")
    assert run.returncode == 0, run.stderr
    rep = json.loads(run.stdout)
    alpha = next(g for g in rep["groups"]["team"] if g["team"] == "alpha")
    assert alpha["calls"] == 5
    assert (alpha["allow_rate"], alpha["deny_rate"]) == (0.6, 0.4)
    assert alpha["estimated_cost"] == 6.0 and alpha["actual_cost"] == 5.0 and alpha["denied_spend"] == 10.0
    assert alpha["kill_switch_denials"] == 1
    fin = next(g for g in rep["groups"]["team"] if g["team"] == "finance")
    assert fin["calls"] == 2 and fin["approval_rate"] == 1.0 and fin["human_intervention_rate"] == 0.5
    assert fin["expired_approvals"] == 1
    assert fin["median_time_to_approval_s"] is not None and fin["median_time_to_approval_s"] >= 0
    assert [g["workflow"] for g in rep["groups"]["workflow"]] == ["", "wf"]
    [switch] = rep["kill_switches"]
    assert switch["scope"] == "team" and switch["denials"] == 1 and switch["time_to_effect_s"] > 0
    assert switch["allowed_after"] == 0
    table = cli("report", "--db", s.db_url, "--since", "1h").stdout
    assert "alpha" in table and "refund-bot" in table
    csv = cli("report", "--db", s.db_url, "--since", datetime.now(timezone.utc).date().isoformat(), "--format",
              "csv").stdout.splitlines()
    assert csv[0].startswith("group,key,calls,allow_rate") and any(x.startswith("team,alpha,5,") for x in csv)


def test_follow_on_postgresql_misses_nothing_while_two_replicas_commit(tmp_path: Path, postgres) -> None:  # noqa: ANN001
    # Two servers on one PostgreSQL database commit concurrently while a follower reads: with
    # journal positions in commit order, a position once passed never receives a late entry.
    url = postgres.create_database("journal_follow")
    bundle = write_bundle(tmp_path)
    a = start_server(tmp_path, bundle, url, "--tokens", str(write_tokens(tmp_path)), name="a")
    b = start_server(tmp_path, bundle, url, "--tokens", str(write_tokens(tmp_path)), name="b")
    reader = JournalReader(connect(url))
    got: list[dict] = []
    done = threading.Event()

    def follow() -> None:
        cursor = 0
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            rows = reader.after(cursor, 50)   # small pages: the follower runs between commits
            got.extend(rows)
            if rows:
                cursor = rows[-1]["seq"]
            elif done.is_set():
                return
            else:
                time.sleep(0.005)

    follower = threading.Thread(target=follow)
    follower.start()
    written: list[list[str]] = [[] for _ in range(6)]
    writers = [threading.Thread(target=lambda k=k: written[k].extend(work((a, b)[k % 2], 20, agent=f"pg{k}")))
               for k in range(6)]
    try:
        for t in writers:
            t.start()
        for t in writers:
            t.join(120)
    finally:
        a.stop()
        b.stop()
    done.set()
    follower.join(130)
    expected = {i for ids in written for i in ids}
    assert len(expected) == 120
    decided = [r["decision_id"] for r in got if r["change"] == "decided"]
    assert sorted(decided) == sorted(expected), "the follower skipped a record committed behind its cursor"
    assert [r["seq"] for r in got] == sorted(r["seq"] for r in got)
