"""One agent's (or session's) newest page of decisions is an index range on (agent_id | session_id,
decision_id), also on PostgreSQL when the agent is quiet and the ledger is large: the planner
otherwise read the primary key backwards and filtered (issue 25 item 4: 825,326 rows and 405 ms for
a quiet agent's page at 10 M records)."""

from __future__ import annotations

import json

from sqlalchemy import event, text

from decider.store.db import connect
from decider.store.queries import DecisionQuery, QueryStore
from tests.pg import PostgresServer

ROWS = 60_000
QUIET = 3_000    # the quiet agent's records: the oldest ids of the ledger

_FILL = f"""
INSERT INTO decisions (decision_id, time, request_id, agent_id, instance_id, owner, team, workflow, model,
    session_id, agent_labels, agent_capabilities, tool_name, tool_server, call_id, args, args_hash, context,
    risk_tier, environment, estimated_cost, outcome, reasons, matched_rules, deciding_rule, errors,
    bundle_name, bundle_version, bundle_revision, eval_us, dry_run)
SELECT 'ID' || lpad(i::text, 24, '0'), now(), '', CASE WHEN i <= {QUIET} THEN 'quiet' ELSE 'busy' END, '', '',
    '', '', '', 's-' || (i % 50), '{{}}', '[]', 'fs.read', '', '', '{{}}', md5(i::text), '{{}}', 1, '', 0, 'ALLOW',
    '[]', '[]', 'r', '[]', 'b', '1', 'rev', 1, false
FROM generate_series(1, {ROWS}) AS i
"""


def _plan_of(engine, run) -> str:  # noqa: ANN001
    """EXPLAIN of the SQL the store itself sends while `run()` runs (its last statement)."""
    sent: list[tuple[str, object]] = []

    def grab(_conn, _cursor, statement, parameters, _context, _many) -> None:  # noqa: ANN001
        sent.append((statement, parameters))

    event.listen(engine, "before_cursor_execute", grab)
    try:
        run()
    finally:
        event.remove(engine, "before_cursor_execute", grab)
    statement, parameters = sent[-1]
    with engine.connect() as conn:
        return json.dumps(conn.exec_driver_sql("EXPLAIN (FORMAT JSON) " + statement, parameters).scalar())  # type: ignore[arg-type]


def test_a_quiet_agents_newest_page_is_an_index_range_on_postgresql(postgres: PostgresServer) -> None:
    engine = connect(postgres.create_database("agent_page_plan"))
    with engine.begin() as conn:
        conn.execute(text(_FILL))
        conn.execute(text("ANALYZE decisions"))
    store = QueryStore(engine)
    q = DecisionQuery(agent_id="quiet", limit=50, newest_first=True)
    rows = store.decisions(q)
    assert [r["decision_id"] for r in rows] == [f"ID{i:024d}" for i in range(QUIET, QUIET - 50, -1)]
    plan = json.loads(_plan_of(engine, lambda: store.decisions(q)))[0]["Plan"]["Plans"][0]
    # ix_decisions_agent (on a partition: its copy, `<partition>_agent_id_decision_id_idx`), the agent
    # in the index condition, not a filter over the primary key read backwards
    assert plan["Node Type"] == "Index Scan" and "agent_id_decision_id" in plan["Index Name"] or \
        plan["Index Name"] == "ix_decisions_agent", plan
    assert "agent_id" in plan["Index Cond"] and "Filter" not in plan, plan
    # a page before an id, and the session filter, give the same rows as a plain filter would
    before = store.decisions(DecisionQuery(agent_id="quiet", limit=5, newest_first=True, before_id=f"ID{100:024d}"))
    assert [r["decision_id"] for r in before] == [f"ID{i:024d}" for i in range(99, 94, -1)]
    session = store.decisions(DecisionQuery(session_id="s-7", limit=3, after_id=f"ID{100:024d}"))
    assert [r["decision_id"] for r in session] == [f"ID{i:024d}" for i in (107, 157, 207)]
    engine.dispose()
