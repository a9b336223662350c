"""A real, throw-away PostgreSQL server for the tests: initdb into a temp dir, listen on 127.0.0.1
with an ephemeral port, stop and delete at the end. Postgres refuses to run as root, so as root it
runs as the `postgres` user (created by the Debian package; created here if missing)."""

from __future__ import annotations

import os
import pwd
import shutil
import socket
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from .helpers import ROOT

__all__ = ["PostgresServer", "start_postgres", "PostgresUnavailable"]


class PostgresUnavailable(RuntimeError):
    pass


@dataclass
class PostgresServer:
    bindir: Path
    datadir: Path
    port: int
    user: str | None

    @property
    def url(self) -> str:
        return f"postgresql+psycopg://decider@127.0.0.1:{self.port}/postgres"

    def create_database(self, name: str) -> str:
        _run([str(self.bindir / "createdb"), "-h", "127.0.0.1", "-p", str(self.port), "-U", "decider", name],
             self.user)
        return f"postgresql+psycopg://decider@127.0.0.1:{self.port}/{name}"

    def stop(self) -> None:
        _run([str(self.bindir / "pg_ctl"), "-D", str(self.datadir), "-m", "fast", "-w", "stop"], self.user,
             check=False)
        shutil.rmtree(self.datadir.parent, ignore_errors=True)


def _bindir() -> Path:
    out = subprocess.run([str(ROOT / "tools/scripts/ensure-postgres.sh")], capture_output=True, text=True)
    for line in out.stdout.splitlines():
        if line.startswith("postgresql binaries: "):
            return Path(line.split(": ", 1)[1].strip())
    raise PostgresUnavailable(out.stderr.strip() or "ensure-postgres.sh found no PostgreSQL")


def _run(cmd: list[str], user: str | None, check: bool = True) -> subprocess.CompletedProcess[str]:
    if user:
        cmd = ["runuser", "-u", user, "--", *cmd]
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    if check and res.returncode != 0:
        raise PostgresUnavailable(f"{' '.join(cmd)} failed: {res.stdout}\n{res.stderr}")
    return res


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_postgres() -> PostgresServer:
    bindir = _bindir()
    user = None
    if os.geteuid() == 0:
        user = "postgres"
        try:
            pwd.getpwnam(user)
        except KeyError:
            subprocess.run(["useradd", "--system", "--no-create-home", user], check=True)
    base = Path(tempfile.mkdtemp(prefix="decider-pg-"))
    datadir = base / "data"
    if user:
        os.chmod(base, 0o755)
        shutil.chown(base, user)
    _run([str(bindir / "initdb"), "-D", str(datadir), "-U", "decider", "--auth=trust", "-E", "UTF8",
          "--no-sync"], user)
    port = _free_port()
    opts = f"-c listen_addresses=127.0.0.1 -p {port} -k {base} -c fsync=off -c max_connections=200"
    _run([str(bindir / "pg_ctl"), "-D", str(datadir), "-l", str(base / "log"), "-o", opts, "-w", "-t", "60",
          "start"], user)
    srv = PostgresServer(bindir, datadir, port, user)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if _run([str(bindir / "pg_isready"), "-h", "127.0.0.1", "-p", str(port)], user, check=False).returncode == 0:
            return srv
        time.sleep(0.2)
    srv.stop()
    raise PostgresUnavailable("postgres did not become ready")
