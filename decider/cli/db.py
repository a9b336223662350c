"""`decider db upgrade | current | prune | backup`: the database's schema (Alembic migrations), its
retention (archive, then delete: decider/archives) and a consistent copy of it while it serves."""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sqlite3
import subprocess
from datetime import datetime, timezone
from pathlib import Path

from decider.errors import DeciderError, InvalidRequest

__all__ = ["register"]

EXIT_OK, EXIT_FAIL = 0, 1


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    db = sub.add_parser("db", help="database schema: upgrade, current revision")
    verbs = db.add_subparsers(dest="db_command", required=True, metavar="VERB")
    up = verbs.add_parser("upgrade", help="create a new database at the newest schema, or migrate an older one")
    up.add_argument("--db", default="sqlite:///decider.db", help="database URL or SQLite file path")
    up.add_argument("--format", choices=["text", "json"], default="text")
    up.set_defaults(func=_upgrade)
    cur = verbs.add_parser("current", help="the database's schema revision and whether it is the newest")
    cur.add_argument("--db", default="sqlite:///decider.db", help="database URL or SQLite file path")
    cur.add_argument("--format", choices=["text", "json"], default="text")
    cur.set_defaults(func=_current)
    pr = verbs.add_parser("prune", help="archive the decisions older than a horizon, then delete them "
                                        "(pending approvals and open reservations stay)")
    pr.add_argument("--db", default="sqlite:///decider.db", help="database URL or SQLite file path")
    pr.add_argument("--older-than", required=True, metavar="AGE", help="the horizon: 90d, 12h, 2w, 7y")
    pr.add_argument("--archive-dir", required=True, help="folder the archives and their manifests go to")
    pr.add_argument("--archive-format", choices=["parquet", "jsonl"], default="parquet",
                    help="Parquet (zstd) or gzip JSON lines")
    pr.add_argument("--dry-run", action="store_true", help="say what would be archived and deleted; change nothing")
    pr.add_argument("--force", action="store_true",
                    help="prune even when an exporter cursor has not sent some of the records (they are lost to it)")
    pr.add_argument("--batch", type=int, default=500, help="records per read and per delete transaction")
    pr.add_argument("--throttle", type=float, default=1.0, metavar="RATIO",
                    help="after each batch pause RATIO times the batch's time (default 1: busy at most half the "
                         "time, leaving serving replicas the database; 0: full speed)")
    pr.add_argument("--format", choices=["text", "json"], default="text")
    pr.set_defaults(func=_prune)
    bk = verbs.add_parser("backup", help="a consistent copy of the database, taken while it serves "
                                         "(SQLite: online backup API; PostgreSQL: pg_dump -Fc)")
    bk.add_argument("file", help="where the copy goes (must not exist)")
    bk.add_argument("--db", default="sqlite:///decider.db", help="database URL or SQLite file path")
    bk.add_argument("--pg-dump", default="pg_dump", help="the pg_dump program (PostgreSQL)")
    bk.add_argument("--format", choices=["text", "json"], default="text")
    bk.set_defaults(func=_backup)


def _upgrade(args: argparse.Namespace) -> int:
    from decider.store import connect
    from decider.store.migrate import upgrade

    engine = connect(args.db, create=False)
    try:
        before, after = upgrade(engine)
    finally:
        engine.dispose()
    where = engine.url.render_as_string(hide_password=True)
    if args.format == "json":
        print(json.dumps({"db": where, "from": before, "to": after}))
    elif before is None:
        print(f"{where}: created at schema revision {after}")
    elif before == after:
        print(f"{where}: already at schema revision {after}")
    else:
        print(f"{where}: upgraded from schema revision {before} to {after}")
    return EXIT_OK


def _current(args: argparse.Namespace) -> int:
    from decider.store import connect
    from decider.store.migrate import HEAD, schema_state

    engine = connect(args.db, create=False)
    try:
        with engine.connect() as conn:
            state = schema_state(conn)
    finally:
        engine.dispose()
    revision = state.revision or ("none (empty database)" if state.empty else "none (made before migrations)")
    if args.format == "json":
        print(json.dumps({"revision": state.revision, "head": HEAD, "current": state.revision == HEAD}))
    else:
        print(f"{revision}{' (head)' if state.revision == HEAD else f'; newest is {HEAD}'}")
    return EXIT_OK


def _prune(args: argparse.Namespace) -> int:
    from decider.archives.prune import Pruner, parse_retention
    from decider.cli.stream import open_db

    age = parse_retention(args.older_than, "--older-than")
    engine = open_db(args.db)
    try:
        result = Pruner(engine, args.archive_dir, args.archive_format, args.batch, throttle=args.throttle).run(
            datetime.now(timezone.utc) - age, dry_run=args.dry_run, force=args.force)
    finally:
        engine.dispose()
    if args.format == "json":
        print(json.dumps(result.to_json()))
        return EXIT_OK
    verb = "would archive and delete" if args.dry_run else "archived"
    print(f"horizon {result.horizon.isoformat(timespec='seconds')}: {verb} {result.rows} record(s) "
          f"in {len(result.days)} day(s){'' if args.dry_run else f', deleted {result.deleted}'}; "
          f"{result.held} kept (open approvals, unsettled reservations)")
    for d in result.days:
        where = f" -> {d.archive}" if d.archive else ""
        changed = f" ({d.changed} changed while archiving: kept for the next prune)" if d.changed else ""
        print(f"  {d.day}: {d.rows}{where}{changed}")
    for name in result.dropped:
        done = "would be dropped" if args.dry_run else "dropped"
        print(f"  partition {name} {done} whole, with its journal partition (every record in it archived above)")
    for name, n in sorted(result.forced_cursors.items()):
        print(f"  --force: exporter {name!r} never sends {n} record(s)")
    return EXIT_OK


def _backup(args: argparse.Namespace) -> int:
    from decider.cli.stream import _sqlite_path

    target = Path(args.file)
    if target.exists():
        raise InvalidRequest("file", f"{target} exists: a backup never overwrites")
    path = _sqlite_path(args.db)
    if path is not None:
        if not Path(path).exists():
            raise InvalidRequest("--db", f"no database at {path}")
        # The online backup API, in one step: one read transaction, so the copy is one consistent
        # snapshot, and in WAL mode writers go on meanwhile (copied in several steps, a busy
        # server's every commit would restart it).
        tmp = target.with_name(f".{target.name}.tmp")
        src = sqlite3.connect(path, timeout=30)
        dst = sqlite3.connect(tmp)
        try:
            src.backup(dst)
            dst.execute("PRAGMA journal_mode=DELETE")   # one self-contained file, no -wal beside it
        finally:
            dst.close()
            src.close()
        os.replace(tmp, target)
        how = "sqlite online backup"
    elif args.db.startswith("postgresql"):
        from sqlalchemy.engine import make_url

        url = make_url(args.db)
        exe = shutil.which(args.pg_dump)
        if exe is None:
            raise InvalidRequest("--pg-dump", f"{args.pg_dump!r} not found: install PostgreSQL's client tools")
        env = {**os.environ, **({"PGPASSWORD": url.password} if url.password else {})}
        cmd = [exe, "-Fc", "-f", str(target), "-h", url.host or "localhost", "-p", str(url.port or 5432),
               *(["-U", url.username] if url.username else []), url.database or "postgres"]
        res = subprocess.run(cmd, env=env, capture_output=True, text=True)
        if res.returncode != 0:
            target.unlink(missing_ok=True)
            raise DeciderError(f"pg_dump failed: {res.stderr.strip()}")
        how = "pg_dump -Fc"
    else:
        raise InvalidRequest("--db", "backup knows SQLite files and PostgreSQL URLs")
    size = target.stat().st_size
    if args.format == "json":
        print(json.dumps({"file": str(target), "bytes": size, "method": how}))
    else:
        print(f"{target}: {size} bytes ({how})")
    return EXIT_OK
