"""tools/bench/ledger_gen.py (the ledger-at-size generator) on a real, throw-away PostgreSQL: the rows it
COPYs are records the real readers accept, each with its journal entries, ids in the planned span,
and a second load resumes instead of duplicating."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from .helpers import ROOT

sys.path.insert(0, str(ROOT / "tools" / "bench"))

from ledger_gen import load  # noqa: E402
from ledger_pg import KeptPostgres  # noqa: E402

from decider.record.ids import id_time_ms  # noqa: E402
from decider.record.record import record_to_proto  # noqa: E402
from decider.store import connect  # noqa: E402
from decider.store.queries import DecisionQuery, QueryStore  # noqa: E402
from tests.pg import PostgresUnavailable  # noqa: E402

RECORDS = 3000


@pytest.fixture(scope="module")
def pg() -> Iterator[KeptPostgres]:
    base = Path(tempfile.mkdtemp(prefix="decider-ledger-gen-"))
    try:
        server = KeptPostgres(base)
        server.ensure()
    except PostgresUnavailable as exc:
        shutil.rmtree(base, ignore_errors=True)
        pytest.skip(f"no PostgreSQL: {exc}")
    try:
        server.create_database("gen")
        subprocess.run([sys.executable, "-m", "decider", "db", "upgrade", "--db", server.url("gen")], cwd=ROOT,
                       check=True, capture_output=True)
        yield server
    finally:
        server.stop()
        shutil.rmtree(base, ignore_errors=True)


def test_loaded_records_are_readable_with_their_journal(pg: KeptPostgres) -> None:
    meta = load(pg, "gen", RECORDS, days=2.0, chunk=1000, log=lambda _: None)
    assert meta["loaded"] == RECORDS
    engine = connect(pg.url("gen"), create=False)
    try:
        with engine.connect() as conn:
            ids = [r[0] for r in conn.exec_driver_sql("SELECT decision_id FROM decisions ORDER BY decision_id")]
            decided = [r[0] for r in conn.exec_driver_sql(
                "SELECT decision_id FROM decision_journal WHERE change = 'decided' ORDER BY seq")]
            updated = conn.exec_driver_sql("SELECT count(*) FROM decision_journal j WHERE change = 'updated' AND "
                                           "NOT EXISTS (SELECT 1 FROM decisions d WHERE d.decision_id = j.decision_id)"
                                           ).scalar()
            changed = conn.exec_driver_sql("SELECT count(*) FROM decisions WHERE outcome_status IS NOT NULL OR "
                                           "approval_state IN ('consumed', 'approved', 'rejected', 'expired')").scalar()
            n_updated = conn.exec_driver_sql(
                "SELECT count(DISTINCT decision_id) FROM decision_journal WHERE change = 'updated'").scalar()
            outcomes = dict(conn.exec_driver_sql("SELECT outcome, count(*) FROM decisions GROUP BY 1").all())
        # One `decided` entry per record, in id order (commit order); `updated` only for records that changed.
        assert len(ids) == RECORDS and decided == ids
        assert updated == 0 and n_updated == changed > 0
        assert set(outcomes) == {"ALLOW", "DENY", "REQUIRE_APPROVAL"}
        assert meta["start_ms"] <= id_time_ms(ids[0]) and id_time_ms(ids[-1]) <= meta["end_ms"]
        # The console's reader and the record's proto accept every row as the writer's own.
        rows = QueryStore(engine).decisions(DecisionQuery(limit=RECORDS))
        assert len(rows) == RECORDS
        for row in rows:
            rec = record_to_proto(row)
            assert rec.decision_id == row["decision_id"] and rec.tool_name == row["tool_name"]
            assert rec.agent.id == row["agent_id"] and len(rec.reasons) >= 1
            assert id_time_ms(row["decision_id"]) == int(row["time"].timestamp() * 1000)
    finally:
        engine.dispose()


def test_a_second_load_resumes_and_refuses_another_size(pg: KeptPostgres) -> None:
    load(pg, "gen", RECORDS, days=2.0, chunk=1000, log=lambda _: None)
    meta = load(pg, "gen", RECORDS, days=2.0, chunk=1000, log=lambda _: None)
    assert meta["loaded"] == RECORDS
    engine = connect(pg.url("gen"), create=False)
    try:
        with engine.connect() as conn:
            assert conn.exec_driver_sql("SELECT count(*) FROM decisions").scalar() == RECORDS
    finally:
        engine.dispose()
    with pytest.raises(SystemExit, match="planned for 3,000 records"):
        load(pg, "gen", RECORDS * 2, days=2.0, log=lambda _: None)
    assert json.loads((pg.pgdir / "gen.json").read_text())["loaded"] == RECORDS
