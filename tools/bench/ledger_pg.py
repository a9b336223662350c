"""A kept PostgreSQL server for the ledger-at-size benchmarks (tools/bench/ledger_scale.py), and the
`decider serve` processes they start on it.

The data directory lives in `--pgdir` (default /work/pgscale) and survives between runs, so the 10 M
records are loaded once and items 2-4 re-run against them. Same commands as tests/pg.py (initdb,
pg_ctl; as root the server runs as the `postgres` user), same flags (127.0.0.1, fsync=off,
max_connections=200), plus a bigger shared_buffers and max_wal_size (a bulk load otherwise spends
its time in checkpoints). The port is chosen once and kept in PGDIR/port.
"""

from __future__ import annotations

import os
import pwd
import shutil
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
sys.path.insert(0, str(ROOT))

from procs import stop_group  # noqa: E402

from tests.pg import _bindir, _free_port, _run  # noqa: E402

__all__ = ["KeptPostgres", "serve", "stop", "SERVE_ENV"]

# Every replica must hash arguments with the same key, from outside the database as in production.
SERVE_ENV = {**os.environ, "DECIDER_BINDING_KEY": os.environ.get("DECIDER_BINDING_KEY") or os.urandom(32).hex()}
SERVER_FLAGS = "-c fsync=off -c max_connections=200 -c shared_buffers=1GB -c max_wal_size=8GB"


class KeptPostgres:
    """initdb once into PGDIR/data, start if not running, stop on request; never deleted here."""

    def __init__(self, pgdir: Path) -> None:
        self.pgdir = pgdir
        self.datadir = pgdir / "data"
        self.bindir = _bindir()
        self.user: str | None = None
        if os.geteuid() == 0:
            self.user = "postgres"
            try:
                pwd.getpwnam(self.user)
            except KeyError:
                subprocess.run(["useradd", "--system", "--no-create-home", self.user], check=True)

    @property
    def port(self) -> int:
        return int((self.pgdir / "port").read_text())

    def url(self, db: str) -> str:
        return f"postgresql+psycopg://decider@127.0.0.1:{self.port}/{db}"

    def dsn(self, db: str) -> str:
        return f"host=127.0.0.1 port={self.port} user=decider dbname={db}"

    def ensure(self) -> None:
        self.pgdir.mkdir(parents=True, exist_ok=True)
        if self.user:
            os.chmod(self.pgdir, 0o755)
            shutil.chown(self.pgdir, self.user)
        if not (self.datadir / "PG_VERSION").exists():
            _run([str(self.bindir / "initdb"), "-D", str(self.datadir), "-U", "decider", "--auth=trust",
                  "-E", "UTF8", "--no-sync"], self.user)
        if not (self.pgdir / "port").exists():
            (self.pgdir / "port").write_text(str(_free_port()))
        if self.running():
            return
        opts = f"-c listen_addresses=127.0.0.1 -p {self.port} -k {self.pgdir} {SERVER_FLAGS}"
        _run([str(self.bindir / "pg_ctl"), "-D", str(self.datadir), "-l", str(self.pgdir / "log"), "-o", opts,
              "-w", "-t", "120", "start"], self.user)

    def running(self) -> bool:
        res = _run([str(self.bindir / "pg_ctl"), "-D", str(self.datadir), "status"], self.user, check=False)
        return res.returncode == 0

    def stop(self) -> None:
        _run([str(self.bindir / "pg_ctl"), "-D", str(self.datadir), "-m", "fast", "-w", "stop"], self.user,
             check=False)

    def create_database(self, name: str) -> bool:
        """Create `name` unless it exists; True if it was created."""
        res = _run([str(self.bindir / "psql"), "-h", "127.0.0.1", "-p", str(self.port), "-U", "decider", "-tAc",
                    f"SELECT 1 FROM pg_database WHERE datname = '{name}'", "postgres"], self.user)
        if res.stdout.strip() == "1":
            return False
        _run([str(self.bindir / "createdb"), "-h", "127.0.0.1", "-p", str(self.port), "-U", "decider", name],
             self.user)
        return True

    def psql(self, db: str, sql: str) -> str:
        res = _run([str(self.bindir / "psql"), "-h", "127.0.0.1", "-p", str(self.port), "-U", "decider",
                    "-X", "-v", "ON_ERROR_STOP=1", "-c", sql, db], self.user)
        return res.stdout


def serve(db: str, tmp: Path, name: str, extra: list[str] | None = None) -> tuple[subprocess.Popen[bytes], int]:
    """`decider serve` on policies/ and `db`, on an ephemeral loopback port."""
    port_file = tmp / f"{name}.port"
    port_file.unlink(missing_ok=True)
    proc = subprocess.Popen([sys.executable, "-m", "decider", "serve", "--bundle", str(ROOT / "policies"),
                             "--db", db, "--listen", "127.0.0.1:0", "--port-file", str(port_file),
                             "--log-level", "warning", *(extra or [])], cwd=ROOT, stdout=subprocess.DEVNULL,
                            stderr=open(tmp / f"{name}.log", "wb"), start_new_session=True, env=SERVE_ENV)
    deadline = time.monotonic() + 120
    while not (port_file.exists() and port_file.read_text()):
        if proc.poll() is not None or time.monotonic() > deadline:
            stop(proc)
            raise RuntimeError((tmp / f"{name}.log").read_text()[-2000:])
        time.sleep(0.1)
    return proc, int(port_file.read_text())


def stop(proc: subprocess.Popen[bytes]) -> None:
    stop_group(proc, timeout_s=30)
