"""Write the next schema migration from the difference between the models and the head revision.

    .venv/bin/python tools/scripts/new_migration.py "add labels to decisions"

Upgrades a scratch SQLite database through every migration, lets Alembic's autogenerate compare
it with decider/store/*.py, and writes decider/store/migrations/versions/NNNN_<slug>.py (batch
operations, so it runs on SQLite and PostgreSQL). Read and edit the result — autogenerate sees a
rename as a drop plus an add — then append its id to REVISIONS in decider/store/migrate.py.
tests/test_migrations.py fails until the models and the head migration agree.
"""

from __future__ import annotations

import re
import subprocess
import sys
import tempfile

from alembic import command

from decider.store import connect
from decider.store.migrate import HEAD, alembic_config


def main(argv: list[str]) -> int:
    if not argv or not " ".join(argv).strip():
        print(__doc__, file=sys.stderr)
        return 2
    message = " ".join(argv).strip()
    number = int(HEAD.split("_", 1)[0]) + 1
    rev_id = f"{number:04d}_{re.sub(r'[^a-z0-9]+', '_', message.lower()).strip('_')[:40]}"
    with tempfile.TemporaryDirectory() as tmp:
        engine = connect(f"sqlite:///{tmp}/scratch.db", create=False)
        with engine.begin() as conn:
            cfg = alembic_config(conn)
            command.upgrade(cfg, HEAD)
            script = command.revision(cfg, message=message, autogenerate=True, rev_id=rev_id)
        engine.dispose()
    path = str(getattr(script, "path", script))
    # Sort the template's imports and drop the unused ones, as `make lint` wants them (best effort).
    subprocess.run([sys.executable, "-m", "ruff", "check", "--fix", "-q", path], check=False)
    print(f"wrote {path}: review it, then add {rev_id!r} to REVISIONS in decider/store/migrate.py")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
