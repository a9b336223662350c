"""What an archived decision record holds: the `decisions` row, column for column, minus `args_hash`.

The archive is the row as stored, so that `decider log --archive` prints byte for byte what
`decider log` printed from the database, and `decider replay` resends the same requests. JSON
columns (`args`, `context`, `reasons`, …) stay the JSON text the database held (masked as recorded);
Parquet readers reach into them with their JSON functions. `args_hash` is the keyed binding hash of
a call: never exported, so never archived either (records past the horizon bind no approval).

docs/database.md shows this schema; tests/test_retention.py checks it against the table's columns.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from decider.times import utc

__all__ = ["SCHEMA_VERSION", "DECISION_COLUMNS", "TIME", "STRING", "INT", "FLOAT", "BOOL",
           "arrow_schema", "to_archive", "to_json_line", "from_json_line"]

# Bumped when a column is added, removed or changes meaning (readers accept every version ≤ theirs).
SCHEMA_VERSION = 1

TIME, STRING, INT, FLOAT, BOOL = "timestamp", "string", "int64", "float64", "bool"

# (column, type, nullable), in the table's order.
DECISION_COLUMNS: tuple[tuple[str, str, bool], ...] = (
    ("decision_id", STRING, False), ("time", TIME, False), ("request_id", STRING, False),
    ("agent_id", STRING, False), ("instance_id", STRING, False), ("owner", STRING, False),
    ("team", STRING, False), ("workflow", STRING, False), ("model", STRING, False),
    ("session_id", STRING, False), ("agent_labels", STRING, False), ("agent_capabilities", STRING, False),
    ("tool_name", STRING, False), ("tool_server", STRING, False), ("call_id", STRING, False),
    ("args", STRING, False), ("context", STRING, False), ("risk_tier", INT, False),
    ("environment", STRING, False), ("estimated_cost", FLOAT, False), ("outcome", STRING, False),
    ("reasons", STRING, False), ("matched_rules", STRING, False), ("deciding_rule", STRING, False),
    ("errors", STRING, False), ("kill_switch_id", STRING, True), ("bundle_name", STRING, False),
    ("bundle_version", STRING, False), ("bundle_revision", STRING, False), ("shadow_outcome", STRING, True),
    ("shadow_rules", STRING, True), ("shadow_bundle_revision", STRING, True), ("eval_us", INT, False),
    ("dry_run", BOOL, False), ("approval_state", STRING, True), ("approval_id", STRING, True),
    ("approvers", STRING, True), ("approval_expires_at", TIME, True), ("resolved_by", STRING, True),
    ("resolved_at", TIME, True), ("comment", STRING, True), ("actual_cost", FLOAT, True),
    ("outcome_status", STRING, True), ("caller", STRING, False), ("labels", STRING, False),
)

def arrow_schema(columns: tuple[tuple[str, str, bool], ...], table: str) -> Any:
    """The Parquet (Arrow) schema of `columns`; times are microseconds, UTC."""
    import pyarrow as pa

    types = {TIME: pa.timestamp("us", tz="UTC"), STRING: pa.string(), INT: pa.int64(), FLOAT: pa.float64(),
             BOOL: pa.bool_()}
    return pa.schema([pa.field(name, types[kind], nullable=nullable) for name, kind, nullable in columns],
                     metadata={"decider.table": table, "decider.schema_version": str(SCHEMA_VERSION)})


def _times(columns: tuple[tuple[str, str, bool], ...]) -> tuple[str, ...]:
    return tuple(name for name, kind, _ in columns if kind == TIME)


_DECISION_TIMES = _times(DECISION_COLUMNS)


def to_archive(row: dict[str, Any], columns: tuple[tuple[str, str, bool], ...] = DECISION_COLUMNS) -> dict[str, Any]:
    """A database row → the archived record (only the schema's columns; times aware UTC)."""
    out = {name: row.get(name) for name, _, _ in columns}
    for name, kind, _ in columns:
        if kind == TIME:
            out[name] = utc(out[name])
        elif kind == BOOL and out[name] is not None:
            out[name] = bool(out[name])
    return out


def to_json_line(record: dict[str, Any]) -> dict[str, Any]:
    """An archived record as one JSON line of a `.jsonl.gz` archive (times as ISO-8601 text)."""
    return {k: (v.isoformat() if isinstance(v, datetime) else v) for k, v in record.items()}


def from_json_line(line: dict[str, Any]) -> dict[str, Any]:
    """One line of a `.jsonl.gz` archive → the archived record (times aware UTC again)."""
    out = dict(line)
    for name in _DECISION_TIMES:
        if isinstance(out.get(name), str):
            out[name] = utc(datetime.fromisoformat(out[name]))
    return out
