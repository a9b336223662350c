"""The decision stream on the command line: `decider log --follow` and `decider export`.

Both read the decision journal (store/journal.py) in commit order. Each JSONL line is the record as
`decider log --format jsonl` prints it plus `seq` (its journal position) and `change` (`decided`
when the record was committed, `updated` when an approval or outcome changed it later; the line
always carries the record's current state).
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from sqlalchemy import Engine

from decider.errors import InvalidRequest
from decider.record.lines import line_of

__all__ = ["register", "open_db", "follow_lines", "resolve_after", "line_of"]

log = logging.getLogger("decider.export")

# How long `--follow` and `export` sleep when they have caught up.
DEFAULT_POLL_S = 0.5


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    lg = sub.choices.get("log")
    if lg is not None:
        lg.add_argument("--create", action="store_true",
                        help="create the SQLite file if it does not exist (otherwise a missing file is an error)")
        lg.add_argument("--reverse", action="store_true", help="oldest first (default: newest first)")
        lg.add_argument("--follow", action="store_true",
                        help="keep printing records as they are committed, in commit order (Ctrl-C stops)")
        lg.add_argument("--after", help="with --follow: start after this decision id, or after this seq number "
                                        "(each line carries its seq); default: from the first record")
        lg.add_argument("--poll", type=float, default=DEFAULT_POLL_S, help=argparse.SUPPRESS)

    ex = sub.add_parser("export", help="send the decision stream to a webhook or an OTLP logs endpoint, "
                                       "resumably (durable cursor in the database)")
    ex.add_argument("--db", default="sqlite:///decider.db")
    ex.add_argument("--to", choices=["webhook", "otlp-logs"], required=True)
    ex.add_argument("--url", required=True,
                    help="webhook URL, or the OTLP/HTTP endpoint (…/v1/logs is appended when missing)")
    ex.add_argument("--name", help="cursor name (default: TO:URL, where a URL beyond scheme://host:port becomes its origin "
                                     "and a sha256 fingerprint: the path or query is often a secret); two exporters "
                                     "with one name share a cursor")
    ex.add_argument("--batch", type=int, default=100, help="records per request")
    ex.add_argument("--header", action="append", default=[], help="extra HTTP header 'Name: value' (repeatable)")
    ex.add_argument("--after", help="where a NEW cursor starts: a decision id or seq (default: the first record); "
                                    "ignored once the cursor exists")
    ex.add_argument("--once", action="store_true", help="export what is committed now, then exit")
    ex.add_argument("--timeout", type=float, default=10.0, help="seconds per HTTP request")
    ex.add_argument("--poll", type=float, default=DEFAULT_POLL_S, help="seconds between looks when caught up")
    ex.add_argument("--max-backoff", type=float, default=10.0, help="longest wait between retries of a failed send")
    ex.add_argument("--log-level", default="info")
    ex.set_defaults(func=_export)


def open_db(url: str, create: bool = False) -> Engine:
    """The database of `--db`. A mistyped SQLite path is an error, not a new empty database,
    unless `create`."""
    from decider.store import connect

    path = _sqlite_path(url)
    if path is not None and not create and not Path(path).exists():
        raise InvalidRequest("--db", f"no database at {path} (give --create to start an empty one)")
    return connect(url)


def _sqlite_path(url: str) -> str | None:
    if "://" not in url:
        return url
    if url.startswith("sqlite") and ":///" in url:
        path = url.split(":///", 1)[1].split("?", 1)[0]
        return None if path in ("", ":memory:") else path
    return None


def resolve_after(engine: Engine, after: str | None) -> int:
    """`--after` as a journal position: a seq number as given, or the position of a decision id."""
    from decider.store.journal import JournalReader

    if not after:
        return 0
    if after.isdigit():
        return int(after)
    seq = JournalReader(engine).seq_of(after)
    if seq is None:
        raise InvalidRequest("--after", f"no decision {after!r} in this database")
    return seq


def follow_lines(engine: Engine, after: int, poll_s: float = DEFAULT_POLL_S, batch: int = 500,
                 stop: Callable[[], bool] = lambda: False,
                 where: dict[str, Any] | None = None) -> Iterator[dict[str, Any]]:
    """Every journal entry after `after`, in commit order, waiting for new ones until `stop()`;
    with `where`, only those whose decisions row has these column values."""
    from decider.store.journal import JournalReader

    reader = JournalReader(engine)
    while not stop():
        rows = reader.after(after, batch)
        for row in rows:
            after = row["seq"]
            if where and any(row.get(k) != v for k, v in where.items()):
                continue
            yield line_of(row)
        if len(rows) < batch:
            time.sleep(poll_s)


def follow(args: argparse.Namespace, engine: Engine) -> int:
    if args.format != "jsonl":
        raise InvalidRequest("--follow", "streams JSONL: give --format jsonl")
    for flag, value in (("--since", args.since), ("--until", args.until), ("--limit", args.limit),
                        ("--revision", args.revision), ("--shadow-diff", args.shadow_diff)):
        if value:
            raise InvalidRequest(flag, "does not apply to --follow (use --after to choose where it starts)")
    # The record filters, on each entry's decisions row: its columns are flat (agent_id, team), while
    # the exported line nests them (agent.id); the stream's positions stay those of the journal.
    want = {k: v for k, v in (("agent_id", args.agent_id), ("team", args.team), ("tool_name", args.tool),
                              ("outcome", args.outcome.upper() if args.outcome else None)) if v}
    after = resolve_after(engine, args.after)
    try:
        for line in follow_lines(engine, after, args.poll, where=want):
            sys.stdout.write(json.dumps(line, separators=(",", ":")) + "\n")
            sys.stdout.flush()
    except KeyboardInterrupt:
        pass
    return 0


def _export(args: argparse.Namespace) -> int:
    from decider.export import Exporter, OtlpLogsSink, WebhookSink
    from decider.logs import setup_logging

    setup_logging(args.log_level)
    if args.batch < 1:
        raise InvalidRequest("--batch", "must be at least 1")
    headers: dict[str, str] = {}
    for h in args.header:
        name, sep, value = h.partition(":")
        if not sep or not name.strip():
            raise InvalidRequest("--header", f"not 'Name: value': {h!r}")
        headers[name.strip()] = value.strip()
    engine = open_db(args.db)
    sink = (WebhookSink(args.url, headers, args.timeout) if args.to == "webhook"
            else OtlpLogsSink(args.url, headers, args.timeout))
    exporter = Exporter(engine, sink, name=args.name or f"{args.to}:{args.url}", batch=args.batch,
                        poll_s=args.poll, max_backoff_s=args.max_backoff)
    exporter.start_at(resolve_after(engine, args.after))
    try:
        sent = exporter.run(once=args.once)
    except KeyboardInterrupt:
        sent = exporter.sent
    log.info("export stopped", extra={"sent": sent, "cursor": exporter.cursor})
    return 0
