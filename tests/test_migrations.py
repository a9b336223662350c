"""Schema migrations (Alembic): a database made by the release before migrations keeps every row
under the new column names; a new database is created at head; the models and the head revision
agree; a server refuses an older schema and names the command. Each on SQLite and PostgreSQL."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import Column, Engine, MetaData, String, Table, insert, inspect, select, text
from sqlalchemy.exc import IntegrityError

from decider.record.record import record_to_proto
from decider.store import DecisionStore, connect
from decider.store.budgets import BudgetStore
from decider.store.bundles import ACTIVE, SHADOW, BundleStore
from decider.store.journal import JournalReader
from decider.store.kill_switches import KillSwitchStore
from decider.store.migrate import (
    BASELINE,
    HEAD,
    REVISIONS,
    SchemaOutdated,
    SchemaUnknown,
    alembic_config,
    ensure_schema,
    schema_state,
    target_metadata,
    upgrade,
)
from decider.store.secrets import deployment_secrets
from decider.v1 import decider_pb2 as pb

from .helpers import POLICIES, ROOT, start_server

SCHEMA = Path(__file__).parent / "fixtures" / "schema"
# Every column the first migration renames: (table, name before, name after).
RENAMED = {("decisions", "resolution_comment"): "comment", ("decisions", "shadow_revision"): "shadow_bundle_revision",
           ("bundles", "stored_at"): "loaded_at", ("bundle_activations", "at"): "activated_at"}
T0 = datetime(2026, 11, 30, 9, 15, 42, 123456, tzinfo=timezone.utc)


def make_previous_release_db(url: str) -> Engine:
    """The database the release before migrations made: its `create_all` DDL, verbatim."""
    engine = connect(url, create=False)
    ddl = _strip_comments((SCHEMA / f"pre_migrations.{engine.dialect.name}.sql").read_text())
    statements = [s.strip() for s in ddl.split(";") if s.strip()]
    with engine.begin() as conn:
        for stmt in statements:
            conn.exec_driver_sql(stmt)
    return engine


def _strip_comments(sql: str) -> str:
    return "\n".join(line for line in sql.splitlines() if not line.startswith("--")).strip()


def rows_of_every_table() -> dict[str, list[dict[str, Any]]]:
    """Representative rows, under the previous release's column names."""
    decision = {
        "time": T0, "request_id": "req-1", "agent_id": "refund-bot", "instance_id": "i-7", "owner": "user:olga",
        "team": "finance", "workflow": "refunds", "model": "gpt-5", "session_id": "s-1",
        "agent_labels": '{"tier":"prod"}', "agent_capabilities": '["refunds"]', "tool_name": "payments.refund",
        "tool_server": "mcp://billing", "call_id": "c-1", "args": '{"amount":2500.0,"order":"o-1"}',
        "args_hash": "a" * 64, "context": '{"ticket":"T-1"}', "risk_tier": 4, "environment": "production",
        "estimated_cost": 5.5, "outcome": "REQUIRE_APPROVAL",
        "reasons": '[{"rule_id":"r1","text":"needs finance","policy":"payments","effect":"require_approval"}]',
        "matched_rules": '["r1"]', "deciding_rule": "r1", "errors": "[]", "kill_switch_id": None,
        "bundle_name": "acme-agents", "bundle_version": "1.0.0", "bundle_revision": "b" * 64,
        "shadow_outcome": None, "shadow_rules": None, "shadow_revision": None, "eval_us": 636, "dry_run": False,
        "approval_state": None, "approval_id": None, "approvers": None, "approval_expires_at": None,
        "resolved_by": None, "resolved_at": None, "resolution_comment": None, "actual_cost": None,
        "outcome_status": None,
    }
    return {
        "decisions": [
            {**decision, "decision_id": "01M80JNJ2YETS2A8BATBBMKRJ1", "approval_state": "rejected",
             "approval_id": "01M80JNJ2YETS2A8BATBBMKRJ1", "approvers": '["group:finance-oncall"]',
             "approval_expires_at": T0 + timedelta(hours=4), "resolved_by": "user:olga",
             "resolved_at": T0 + timedelta(minutes=3), "resolution_comment": "not today — zu hoch"},
            {**decision, "decision_id": "01M80JNJ2YETS2A8BATBBMKRJ2", "args_hash": "c" * 64,
             "approval_state": "pending", "approval_id": "01M80JNJ2YETS2A8BATBBMKRJ2",
             "approvers": '["user:carol"]', "approval_expires_at": T0 + timedelta(hours=1)},
            {**decision, "decision_id": "01M80JNJ2YETS2A8BATBBMKRJ3", "outcome": "ALLOW", "tool_name": "fs.read",
             "risk_tier": 0, "shadow_outcome": "DENY", "shadow_rules": '["shadow-deny"]',
             "shadow_revision": "d" * 64, "actual_cost": 4.25, "outcome_status": "ok", "dry_run": True},
        ],
        "auth_events": [{"time": T0, "method": "/decider.v1.Control/SetKillSwitch", "code": "PERMISSION_DENIED",
                         "principal": "service:gateway", "peer": "ipv4:127.0.0.1:5555", "detail": "needs admin"}],
        "budget_usage": [
            {"budget_key": "team|1d|1764460800|finance", "scope": "team", "scope_key": "finance", "window": "1d",
             "window_start": 1764460800, "spent": 12.5, "reserved": 5.5},
            {"budget_key": "agent|total|0|refund-bot", "scope": "agent", "scope_key": "refund-bot",
             "window": "total", "window_start": 0, "spent": 0.0, "reserved": 5.5},
        ],
        "budget_reservations": [
            {"decision_id": "01M80JNJ2YETS2A8BATBBMKRJ3", "budget_key": "team|1d|1764460800|finance",
             "amount": 5.5, "state": "settled", "created_at": T0, "expires_at": T0 + timedelta(hours=1),
             "actual": 4.25},
            {"decision_id": "01M80JNJ2YETS2A8BATBBMKRJ3", "budget_key": "agent|total|0|refund-bot",
             "amount": 5.5, "state": "reserved", "created_at": T0, "expires_at": T0 + timedelta(hours=1),
             "actual": None},
        ],
        "bundles": [{"revision": "b" * 64, "name": "acme-agents", "version": "1.0.0", "source": "policies",
                     "signed": True, "archive": bytes(range(256)) * 4, "stored_at": T0}],
        "bundle_activations": [
            {"role": "active", "revision": "b" * 64, "action": "load", "instance": "host-1", "at": T0},
            {"role": "shadow", "revision": None, "action": "shadow", "instance": "host-1",
             "at": T0 + timedelta(seconds=1)},
        ],
        "kill_switches": [
            {"id": "01M80KS0000000000000000001", "scope": "team", "value": "finance", "reason": "incident 7",
             "created_by": "user:root", "created_at": T0, "cleared_at": None, "cleared_by": None},
            {"id": "01M80KS0000000000000000002", "scope": "platform", "value": "", "reason": "",
             "created_by": "user:root", "created_at": T0, "cleared_at": T0 + timedelta(minutes=5),
             "cleared_by": "user:ana"},
        ],
    }


def partition_names(engine: Engine) -> set[str]:
    """PostgreSQL: the partitions of `decisions` and `decision_journal` (their rows are the
    parent's: snapshots and schemas read the parents)."""
    if engine.dialect.name != "postgresql":
        return set()
    with engine.connect() as conn:
        return set(conn.execute(text("SELECT relname FROM pg_class WHERE relispartition AND relkind = 'r'")).scalars())


def partitioning_of(engine: Engine) -> dict[str, Any]:
    """PostgreSQL: each partitioned table's key, and its partitions with their bounds."""
    if engine.dialect.name != "postgresql":
        return {}
    with engine.connect() as conn:
        keys = dict(conn.execute(text("SELECT c.relname, pg_get_partkeydef(c.oid) FROM pg_partitioned_table p "
                                      "JOIN pg_class c ON c.oid = p.partrelid")).all())
        parts = conn.execute(text("SELECT p.relname, c.relname, pg_get_expr(c.relpartbound, c.oid) FROM pg_inherits i "
                                  "JOIN pg_class c ON c.oid = i.inhrelid JOIN pg_class p ON p.oid = i.inhparent "
                                  "WHERE c.relkind = 'r' ORDER BY 1, 2")).all()
    return {t: (k, [(n, b) for p, n, b in parts if p == t]) for t, k in sorted(keys.items())}


def snapshot(engine: Engine) -> dict[str, list[dict[str, Any]]]:
    """Every row of every decider table, as the database returns it, in primary-key order."""
    md = MetaData()
    md.reflect(engine)
    out = {}
    skip = partition_names(engine)
    with engine.connect() as conn:
        for name, table in md.tables.items():
            if name == "alembic_version" or name in skip:
                continue
            pk = list(table.primary_key.columns)
            out[name] = [dict(r) for r in conn.execute(select(table).order_by(*pk)).mappings()]
    return out


# Columns later revisions add to existing tables, with the value an upgraded row gets.
ADDED: dict[str, dict[str, Any]] = {"decisions": {"caller": "", "labels": "[]"}}   # 0004, 0005


def renamed(before: dict[str, list[dict[str, Any]]]) -> dict[str, list[dict[str, Any]]]:
    """The previous release's rows as the newest schema holds them: renamed columns, added ones."""
    return {t: [{**{RENAMED.get((t, k), k): v for k, v in row.items()}, **ADDED.get(t, {})} for row in rows]
            for t, rows in before.items()}


def decider_cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "decider", *args], capture_output=True, text=True, cwd=ROOT,
                          env={**os.environ, "PYTHONUNBUFFERED": "1"}, timeout=120)


def schema_of(engine: Engine) -> dict[str, Any]:
    """Tables, columns (name, type, nullability), primary keys and indexes (with partial-index
    conditions): what two ways of making a schema must agree on."""
    insp = inspect(engine)
    out: dict[str, Any] = {}
    skip = partition_names(engine)
    for t in sorted(insp.get_table_names()):
        if t == "alembic_version" or t in skip:
            continue
        cols = [(c["name"], str(c["type"]), c["nullable"]) for c in insp.get_columns(t)]
        idx = sorted((i["name"], tuple(i["column_names"]), bool(i["unique"]),
                      str(i.get("dialect_options", {}).get(f"{engine.dialect.name}_where", "")))
                     for i in insp.get_indexes(t))
        out[t] = (cols, insp.get_pk_constraint(t)["constrained_columns"], idx)
    out["(triggers)"] = triggers_of(engine)
    out["(partitioning)"] = partitioning_of(engine)
    return out


def triggers_of(engine: Engine) -> list[tuple[str, str]]:
    """Triggers (and, on PostgreSQL, the functions they run) with their definitions, whitespace
    collapsed: the decision journal is filled by them, and Inspector does not see them."""
    if engine.dialect.name == "sqlite":
        q = "SELECT 'trigger ' || name, sql FROM sqlite_master WHERE type = 'trigger'"
    else:
        # A partitioned table's row triggers are cloned onto each partition (tgparentid): one listing each.
        q = ("SELECT 'trigger ' || tgname, pg_get_triggerdef(t.oid) FROM pg_trigger t "
             "WHERE NOT tgisinternal AND tgparentid = 0 "
             "UNION ALL SELECT 'function ' || proname, prosrc FROM pg_proc p "
             "JOIN pg_namespace n ON n.oid = p.pronamespace WHERE n.nspname = current_schema()")
    with engine.connect() as conn:
        return sorted((name, " ".join(sql.split())) for name, sql in conn.exec_driver_sql(q))


# ---- the revision chain --------------------------------------------------------------------------

def test_revision_chain_in_code_matches_the_migration_scripts() -> None:
    script = ScriptDirectory.from_config(alembic_config())
    chain = [s.revision for s in reversed(list(script.walk_revisions()))]
    assert tuple(chain) == REVISIONS
    assert script.get_current_head() == HEAD


# ---- from the previous release, with rows ----------------------------------------------------------

def test_db_upgrade_keeps_every_row_and_value_of_the_previous_release_under_the_new_names(
        db_url: str, tmp_path: Path) -> None:
    engine = make_previous_release_db(db_url)
    rows = rows_of_every_table()
    with engine.begin() as conn:
        md = MetaData()
        md.reflect(conn)
        for table, batch in rows.items():
            # Decisions inserted newest first: the journal's backfill must still list them in id order.
            conn.execute(insert(md.tables[table]), batch[::-1] if table == "decisions" else batch)
    before = snapshot(engine)
    assert {t: len(r) for t, r in before.items()} == {t: len(r) for t, r in rows.items()}

    # The code refuses it until it is upgraded, and says how.
    with pytest.raises(SchemaOutdated, match=r"decider db upgrade --db "):
        connect(db_url)

    out = decider_cli("db", "upgrade", "--db", db_url)
    assert out.returncode == 0, out.stderr
    assert f"upgraded from schema revision {BASELINE} to {HEAD}" in out.stdout

    after = snapshot(engine)
    assert {t: after[t] for t in before} == renamed(before)    # every row, every value, new column names
    ids = sorted(d["decision_id"] for d in rows["decisions"])
    # The tables later releases added: the journal lists every existing decision, oldest id first;
    # the rest start empty (the secret too: the first server to start creates it).
    added = {
        "decision_journal": [{"seq": i, "decision_id": d, "change": "decided"} for i, d in enumerate(ids, 1)],
        "export_cursors": [], "approval_notifications": [], "notifier_cursors": [], "deployment_secrets": [],
        "approval_askers": []}
    if engine.dialect.name == "postgresql":   # 0009: the one pending call, in the side table that guards it
        added["decision_pending_calls"] = [{"agent_id": "refund-bot", "tool_name": "payments.refund",
                                            "tool_server": "mcp://billing", "args_hash": "c" * 64,
                                            "decision_id": "01M80JNJ2YETS2A8BATBBMKRJ2"}]
    assert {t: r for t, r in after.items() if t not in before} == added
    for (table, old), new in RENAMED.items():
        cols = {c["name"] for c in inspect(engine).get_columns(table)}
        assert new in cols and old not in cols

    # Read back through the code's own tables and the API: the renamed values are where the API says.
    engine = connect(db_url)
    store = DecisionStore(engine)
    rejected = record_to_proto(store.get("01M80JNJ2YETS2A8BATBBMKRJ1"))
    assert rejected.approval.comment == "not today — zu hoch"
    assert rejected.approval.state == pb.APPROVAL_REJECTED and rejected.approval.resolved_by == "user:olga"
    shadowed = record_to_proto(store.get("01M80JNJ2YETS2A8BATBBMKRJ3"))
    assert shadowed.shadow_bundle.revision == "d" * 64 and shadowed.actual_cost == 4.25
    bundles = BundleStore(engine)
    assert [(b.revision, b.loaded_at) for b in bundles.list()] == [("b" * 64, T0)]
    assert bundles.archive("b" * 64)[1] == bytes(range(256)) * 4
    assert [(a.role, a.revision, a.activated_at) for a in bundles.history(ACTIVE)] == [(ACTIVE, "b" * 64, T0)]
    assert bundles.history(SHADOW)[0].activated_at == T0 + timedelta(seconds=1)
    assert [k["id"] for k in KillSwitchStore(engine).active()] == ["01M80KS0000000000000000001"]
    assert BudgetStore(engine).usage(["team|1d|1764460800|finance"]) == {"team|1d|1764460800|finance": (12.5, 5.5)}

    # Upgrading again changes nothing.
    again = decider_cli("db", "upgrade", "--db", db_url)
    assert again.returncode == 0 and "already at schema revision" in again.stdout
    assert snapshot(engine) == after

    # A server on the upgraded database: its new decision reaches the journal after the backfilled
    # ones; its binding key comes from outside the database (tests/conftest.py), so none is stored.
    srv = start_server(tmp_path, POLICIES, db_url)
    try:
        with srv.client() as client:
            new = client.decide(agent={"id": "coder-7"}, tool="fs.read").decision_id
    finally:
        srv.stop()
    assert [(e["seq"], e["decision_id"], e["change"]) for e in JournalReader(engine).after(0)] == \
        [(i, d, "decided") for i, d in enumerate([*ids, new], 1)]
    with engine.connect() as conn:
        secrets_ = conn.execute(select(deployment_secrets)).all()
    assert secrets_ == []   # issue 24 item 12: never beside the hashes outside `serve --dev`


def test_a_database_at_0002_with_decisions_gets_them_in_the_journal_in_id_order(db_url: str) -> None:
    """The release with migrations but before the journal: `decider db upgrade` backfills it, in
    decision-id order whatever order the rows were written in, and the triggers take over after."""
    engine = connect(db_url, create=False)
    with engine.begin() as conn:
        command.upgrade(alembic_config(conn), "0002_api_field_names")
    md = MetaData()
    md.reflect(engine)
    written = [{RENAMED.get(("decisions", k), k): v for k, v in row.items()}
               for row in rows_of_every_table()["decisions"]]
    with engine.begin() as conn:
        conn.execute(insert(md.tables["decisions"]), written[::-1])
    assert upgrade(engine) == ("0002_api_field_names", HEAD)
    ids = sorted(r["decision_id"] for r in written)
    reader = JournalReader(engine)
    assert [(e["seq"], e["decision_id"], e["change"]) for e in reader.after(0)] == \
        [(i, d, "decided") for i, d in enumerate(ids, 1)]
    with engine.begin() as conn:    # a change after the upgrade is journaled by the triggers
        conn.execute(text("UPDATE decisions SET outcome_status = 'ok' WHERE decision_id = :d"), {"d": ids[0]})
    assert [(e["seq"], e["decision_id"], e["change"]) for e in reader.after(len(ids))] == \
        [(len(ids) + 1, ids[0], "updated")]


def test_upgraded_database_equals_a_new_one_and_keeps_its_partial_indexes(db_url: str, tmp_path: Path) -> None:
    """At most one *pending* approval per call, but any number of settled ones: the rename must
    keep the unique index partial (a full unique index would refuse the second decision of a call)."""
    engine = make_previous_release_db(db_url)
    upgrade(engine)
    base = rows_of_every_table()["decisions"][0]
    row = {RENAMED.get(("decisions", k), k): v for k, v in base.items()}
    from decider.store.decisions import decisions

    with engine.begin() as conn:
        conn.execute(insert(decisions), [{**row, "decision_id": f"01M80JNJ2YETS2A8BATBBMKRQ{i}",
                                          "approval_state": "consumed"} for i in range(2)])
        conn.execute(insert(decisions), [{**row, "decision_id": "01M80JNJ2YETS2A8BATBBMKRP1",
                                          "approval_state": "pending"}])
    with pytest.raises(IntegrityError), engine.begin() as conn:
        conn.execute(insert(decisions), [{**row, "decision_id": "01M80JNJ2YETS2A8BATBBMKRP2",
                                          "approval_state": "pending"}])
    assert schema_of(engine) == schema_of(connect(_sibling(db_url, tmp_path)))   # = a database made new
    with engine.connect() as conn:    # the upgraded journal's triggers record what was committed, in order
        journaled = conn.execute(text("SELECT decision_id FROM decision_journal ORDER BY seq")).scalars().all()
    assert journaled == ["01M80JNJ2YETS2A8BATBBMKRQ0", "01M80JNJ2YETS2A8BATBBMKRQ1", "01M80JNJ2YETS2A8BATBBMKRP1"]


def test_baseline_revision_makes_exactly_the_previous_release_schema(db_url: str, tmp_path: Path) -> None:
    previous = make_previous_release_db(db_url)
    other = connect(_sibling(db_url, tmp_path), create=False)
    with other.begin() as conn:
        command.upgrade(alembic_config(conn), BASELINE)
    assert schema_of(other) == schema_of(previous)


def _sibling(db_url: str, tmp_path: Path) -> str:
    """Another fresh database on the same backend."""
    if db_url.startswith("sqlite"):
        return f"sqlite:///{tmp_path / 'other.db'}"
    name = db_url.rsplit("/", 1)[1]
    with connect(db_url, create=False).connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
        conn.exec_driver_sql(f"CREATE DATABASE {name}_b")
    return f"{db_url}_b"


# ---- from an empty database ------------------------------------------------------------------------

def test_every_migration_from_an_empty_database_gives_the_schema_the_code_creates(db_url: str,
                                                                                  tmp_path: Path) -> None:
    chain = connect(db_url, create=False)
    with chain.begin() as conn:
        command.upgrade(alembic_config(conn), HEAD)   # baseline, then every migration
    created = connect(_sibling(db_url, tmp_path))     # an empty database opened by the code: create_all + stamp
    assert schema_of(chain) == schema_of(created)
    for engine in (chain, created):
        with engine.connect() as conn:
            assert schema_state(conn).revision == HEAD


def test_the_newest_migration_downgrades_to_the_schema_before_it_and_upgrades_again(db_url: str,
                                                                                   tmp_path: Path) -> None:
    engine = connect(db_url, create=False)
    with engine.begin() as conn:
        command.upgrade(alembic_config(conn), REVISIONS[-2])
    before = schema_of(engine)
    with engine.begin() as conn:
        command.upgrade(alembic_config(conn), HEAD)
        command.downgrade(alembic_config(conn), REVISIONS[-2])
    assert schema_of(engine) == before
    with engine.begin() as conn:
        command.upgrade(alembic_config(conn), HEAD)
    assert schema_of(engine) == schema_of(connect(_sibling(db_url, tmp_path)))


def test_db_upgrade_creates_a_new_database_at_head(db_url: str) -> None:
    out = decider_cli("db", "upgrade", "--db", db_url)
    assert out.returncode == 0, out.stderr
    assert f"created at schema revision {HEAD}" in out.stdout
    current = decider_cli("db", "current", "--db", db_url, "--format", "json")
    assert json.loads(current.stdout) == {"revision": HEAD, "head": HEAD, "current": True}


JOURNAL_TRIGGERS = {
    "sqlite": {"trigger decision_journal_insert", "trigger decision_journal_update"},
    "postgresql": {"trigger decision_journal_order", "trigger decision_journal_row",
                   "function decider_journal_order", "function decider_journal_row",
                   # 0009: the side table of pending calls (store/partitions.py)
                   "trigger decision_pending_insert", "trigger decision_pending_update",
                   "trigger decision_pending_delete", "function decider_pending_call"},
}


def test_models_and_the_head_migration_agree(db_url: str, tmp_path: Path) -> None:
    """A column changed in decider/store/*.py without a migration fails here; so does a trigger
    (or PostgreSQL function) that the models install and the migrations do not, or differently."""
    engine = connect(db_url, create=False)
    with engine.begin() as conn:
        command.upgrade(alembic_config(conn), HEAD)
    parts = partition_names(engine)

    def models_know(obj: Any, name: str | None, kind: str, _reflected: bool, _other: Any) -> bool:
        """PostgreSQL only (0009, store/partitions.py), outside the models: the partitions (and their
        indexes), and the side table that holds `ux_decisions_pending_call` in place of the
        partial unique index the models declare for SQLite."""
        if engine.dialect.name != "postgresql":
            return True
        table = obj.table.name if kind == "index" else name
        return not (table in parts or name in ("decision_pending_calls", "ux_decisions_pending_call"))

    with engine.connect() as conn:
        ctx = MigrationContext.configure(conn, opts={"compare_type": True, "include_object": models_know})
        assert compare_metadata(ctx, target_metadata()) == []
        # The comparison can fail: a model with one column more than the migrations make.
        changed = MetaData()
        for table in target_metadata().tables.values():
            table.to_metadata(changed)
        Table("decisions", changed, Column("new_field", String(8)), extend_existing=True)
        diff = compare_metadata(ctx, changed)
    assert [d[0] for d in diff] == ["add_column"] and diff[0][3].name == "new_field"

    # Alembic compares no triggers: the head migration's must be exactly what create_all installs.
    created = connect(_sibling(db_url, tmp_path))
    assert {name for name, _ in triggers_of(engine)} == JOURNAL_TRIGGERS[engine.dialect.name]
    assert triggers_of(engine) == triggers_of(created)
    with engine.begin() as conn:   # and that comparison can fail: one trigger gone
        conn.execute(text("DROP TRIGGER decision_journal_update" if engine.dialect.name == "sqlite"
                          else "DROP TRIGGER decision_journal_row ON decisions"))
    assert triggers_of(engine) != triggers_of(created)


def test_servers_starting_at_once_on_a_new_database_create_it_once(db_url: str) -> None:
    errors: list[BaseException] = []

    def open_it() -> None:
        try:
            connect(db_url).dispose()
        except BaseException as e:  # noqa: BLE001 - reported below
            errors.append(e)

    threads = [threading.Thread(target=open_it) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert errors == []
    with connect(db_url, create=False).connect() as conn:
        assert conn.execute(text("SELECT version_num FROM alembic_version")).scalars().all() == [HEAD]


# ---- what the code does with a database it cannot use ---------------------------------------------

def test_a_database_from_a_newer_release_is_refused_and_never_touched(db_url: str) -> None:
    engine = connect(db_url)
    with engine.begin() as conn:
        conn.execute(text("UPDATE alembic_version SET version_num = '9999_from_the_future'"))
    with pytest.raises(SchemaUnknown, match="9999_from_the_future.*newer release"):
        ensure_schema(engine)
    with pytest.raises(SchemaUnknown):
        upgrade(engine)


def test_an_unversioned_database_lacking_baseline_columns_is_not_stamped(db_url: str) -> None:
    engine = make_previous_release_db(db_url)
    with engine.begin() as conn:
        conn.execute(text("ALTER TABLE decisions DROP COLUMN outcome_status"))
    with pytest.raises(SchemaUnknown, match=r"lacks columns of the baseline \(decisions.outcome_status\)"):
        upgrade(engine)
    with engine.connect() as conn:
        assert schema_state(conn).revision is None      # rolled back: nothing stamped, nothing renamed
        assert "resolution_comment" in {c["name"] for c in inspect(conn).get_columns("decisions")}


def test_serve_refuses_an_older_schema_and_names_the_command_then_serves_after_upgrade(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'old.db'}"
    engine = make_previous_release_db(url)
    md = MetaData()
    md.reflect(engine)
    with engine.begin() as conn:
        conn.execute(insert(md.tables["decisions"]), rows_of_every_table()["decisions"][:1])
    with pytest.raises(RuntimeError) as refused:
        start_server(tmp_path, POLICIES, url)
    assert f"run `decider db upgrade --db {url}`" in str(refused.value)
    assert f"schema revision {BASELINE} (made before schema migrations)" in str(refused.value)
    assert "Traceback" not in str(refused.value)

    workers = decider_cli("serve", "--bundle", str(POLICIES), "--db", url, "--listen", "127.0.0.1:0",
                          "--workers", "2")     # refused once, before any worker starts
    assert workers.returncode == 2 and f"decider db upgrade --db {url}" in workers.stderr
    assert "Traceback" not in workers.stderr
    log = decider_cli("log", "--db", url)          # other commands that open the database say the same
    assert log.returncode != 0 and f"decider db upgrade --db {url}" in log.stderr

    assert decider_cli("db", "upgrade", "--db", url).returncode == 0
    srv = start_server(tmp_path, POLICIES, url, name="upgraded")
    try:
        with srv.client() as client:
            rec = client.get_decision("01M80JNJ2YETS2A8BATBBMKRJ1")
        assert rec.approval.comment == "not today — zu hoch"
    finally:
        srv.stop()


def test_serve_refuses_a_stamped_older_revision_too(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'old.db'}"
    engine = connect(url, create=False)
    with engine.begin() as conn:
        command.upgrade(alembic_config(conn), BASELINE)
    with pytest.raises(RuntimeError) as refused:
        start_server(tmp_path, POLICIES, url)
    assert f"schema revision {BASELINE}, older than this decider's {HEAD}" in str(refused.value)
    assert f"decider db upgrade --db {url}" in str(refused.value)
