"""Budgets against real servers: reserve atomically, deny with `budget_exceeded`, settle, release,
and never over-allow under concurrency — on SQLite and on a real PostgreSQL server."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest
from sqlalchemy import select

from decider.store import connect
from decider.store.budgets import BudgetKey, BudgetStore, budget_usage
from decider.v1 import decider_pb2 as pb

from .helpers import ServerProcess, start_server
from .stateful import client, write_bundle, write_tokens


def usage(db_url: str) -> dict[tuple[str, str], tuple[float, float]]:
    with connect(db_url).connect() as conn:
        rows = conn.execute(select(budget_usage.c.scope, budget_usage.c.scope_key, budget_usage.c.spent,
                                   budget_usage.c.reserved))
        return {(s, k): (sp, r) for s, k, sp, r in rows}


def agent(name: str, team: str = "ops") -> dict[str, str]:
    return {"id": name, "team": team}


@pytest.fixture(scope="module")
def srv(tmp_path_factory: pytest.TempPathFactory, module_db_url: str) -> Iterator[ServerProcess]:
    tmp = tmp_path_factory.mktemp("budgets")
    s = start_server(tmp, write_bundle(tmp), module_db_url, "--tokens", str(write_tokens(tmp)), "--poll-interval", "0.2")
    try:
        yield s
    finally:
        s.stop()


def test_allow_reserves_and_exceeding_is_denied_naming_the_scope(srv: ServerProcess) -> None:
    # No rule mentions budgets: the bundle's `budgets` alone enforce the limit.
    with client(srv, "gw-token") as c:
        first = c.decide(agent=agent("a1"), tool="work.do", estimated_cost=60)
        second = c.decide(agent=agent("a1"), tool="work.do", estimated_cost=50)
        free = c.decide(agent=agent("a1"), tool="work.do", estimated_cost=0)
    assert first.outcome == pb.ALLOW
    assert second.outcome == pb.DENY and second.deciding_rule == "budget_exceeded"
    assert second.reasons[0].rule_id == "budget_exceeded"
    assert "agent 'a1'" in second.reasons[0].text and "limit 100" in second.reasons[0].text
    assert free.outcome == pb.ALLOW
    assert usage(srv.db_url)[("agent", "a1")] == (0.0, 60.0)
    assert usage(srv.db_url)[("team", "ops")] == (0.0, 60.0)   # every applicable budget holds it


def test_team_budget_is_shared_by_its_agents(srv: ServerProcess) -> None:
    with client(srv, "gw-token") as c:
        outs = [c.decide(agent=agent(f"t{i}", team="big"), tool="work.do", estimated_cost=100).outcome
                for i in range(11)]
        last = c.decide(agent=agent("t99", team="big"), tool="work.do", estimated_cost=1)
    assert outs.count(pb.ALLOW) == 10 and outs[-1] == pb.DENY
    assert "team 'big' (1d window)" in last.reasons[0].text


def test_report_outcome_replaces_the_estimate_with_the_actual_cost(srv: ServerProcess) -> None:
    with client(srv, "gw-token") as c:
        d = c.decide(agent=agent("a2"), tool="work.do", estimated_cost=90)
        assert usage(srv.db_url)[("agent", "a2")] == (0.0, 90.0)
        rec = c.report_outcome(d.decision_id, 30, "ok")
        assert (rec.actual_cost, rec.outcome_status) == (30.0, "ok")
        assert usage(srv.db_url)[("agent", "a2")] == (30.0, 0.0)
        # The 60 the estimate held is free again.
        assert c.decide(agent=agent("a2"), tool="work.do", estimated_cost=70).outcome == pb.ALLOW
        assert c.decide(agent=agent("a2"), tool="work.do", estimated_cost=1).outcome == pb.DENY
        with pytest.raises(Exception) as err:
            c.report_outcome(d.decision_id, 30, "ok")
    assert "already reported" in str(err.value)


def test_unsettled_reservations_are_released_after_the_configured_time(tmp_path: Path, db_url: str) -> None:
    s = start_server(tmp_path, write_bundle(tmp_path), db_url, "--reservation-ttl", "1", "--poll-interval", "0.2")
    try:
        with s.client() as c:
            assert c.decide(agent=agent("a3"), tool="work.do", estimated_cost=100).outcome == pb.ALLOW
            assert c.decide(agent=agent("a3"), tool="work.do", estimated_cost=100).outcome == pb.DENY
            deadline = time.monotonic() + 15
            while usage(s.db_url)[("agent", "a3")] != (0.0, 0.0) and time.monotonic() < deadline:
                time.sleep(0.2)
            assert usage(s.db_url)[("agent", "a3")] == (0.0, 0.0)
            assert c.decide(agent=agent("a3"), tool="work.do", estimated_cost=100).outcome == pb.ALLOW
    finally:
        s.stop()


def fifty_concurrent_decides(servers: list[ServerProcess]) -> list[int]:
    """50 Decides of cost 10 for one agent (budget 100), spread over the servers, all at once."""
    clients = [s.client() for s in servers]
    start = threading.Barrier(50)

    def one(i: int) -> int:
        start.wait()
        return clients[i % len(clients)].decide(agent=agent("hot", team=f"team-{i}"), tool="work.do",
                                                 estimated_cost=10).outcome

    try:
        with ThreadPoolExecutor(50) as pool:
            return list(pool.map(one, range(50)))
    finally:
        for c in clients:
            c.close()


def test_fifty_concurrent_decides_on_two_replicas_allow_exactly_ten(tmp_path: Path, db_url: str) -> None:
    bundle = write_bundle(tmp_path)
    a = start_server(tmp_path, bundle, db_url, name="a")
    b = start_server(tmp_path, bundle, db_url, name="b")   # a second process on the same database
    try:
        outcomes = fifty_concurrent_decides([a, b])
    finally:
        a.stop()
        b.stop()
    assert outcomes.count(pb.ALLOW) == 10 and outcomes.count(pb.DENY) == 40
    assert usage(db_url)[("agent", "hot")] == (0.0, 100.0)


def race_store(url: str) -> int:
    """Four independent engines (as four processes would have) reserving from 8 threads each."""
    stores = [BudgetStore(connect(url)) for _ in range(4)]
    key = BudgetKey("agent|total|0|racer", "agent", "racer", "total", 0, 100.0)
    team = BudgetKey("team|total|0|x", "team", "x", "total", 0, 1e9)
    now = datetime.now(timezone.utc)
    go = threading.Barrier(32)

    def one(i: int) -> bool:
        go.wait()
        return stores[i % 4].reserve(f"D{i:025d}", [team, key], 10.0, now, now + timedelta(hours=1)) is None

    with ThreadPoolExecutor(32) as pool:
        held = sum(pool.map(one, range(32)))
    for s in stores:
        s.engine.dispose()
    return held


def test_store_reservation_is_atomic_across_engines(db_url: str) -> None:
    assert race_store(db_url) == 10


def test_racing_reports_of_one_decision_settle_it_exactly_once(srv: ServerProcess) -> None:
    with client(srv, "gw-token") as c:
        d = c.decide(agent=agent("racer"), tool="work.do", estimated_cost=40)
        assert d.outcome == pb.ALLOW
    clients = [client(srv, "gw-token") for _ in range(8)]
    start = threading.Barrier(8)

    def report(i: int) -> str:
        start.wait(10)
        try:
            clients[i].report_outcome(d.decision_id, 7, "ok")
            return "ok"
        except Exception as exc:  # noqa: BLE001 - the refusals are what this test counts
            return str(exc)

    try:
        with ThreadPoolExecutor(8) as pool:
            results = list(pool.map(report, range(8)))
    finally:
        for c in clients:
            c.close()
    assert results.count("ok") == 1
    assert all("already reported" in r for r in results if r != "ok")
    assert usage(srv.db_url)[("agent", "racer")] == (7.0, 0.0)
