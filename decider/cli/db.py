"""`decider db upgrade --db URL` — bring a database's schema to this release's (Alembic migrations)."""

from __future__ import annotations

import argparse
import json

__all__ = ["register"]

EXIT_OK = 0


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
