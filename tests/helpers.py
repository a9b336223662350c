"""Test helpers: start a real `decider serve` process on 127.0.0.1 with an ephemeral port."""

from __future__ import annotations

import gzip
import io
import os
import signal
import subprocess
import sys
import tarfile
import time
from dataclasses import dataclass
from pathlib import Path

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from decider.client import DeciderClient

ROOT = Path(__file__).resolve().parents[1]
POLICIES = ROOT / "policies"


@dataclass
class ServerProcess:
    proc: subprocess.Popen[bytes]
    port: int
    db_url: str
    log_path: Path

    @property
    def target(self) -> str:
        return f"127.0.0.1:{self.port}"

    def client(self) -> DeciderClient:
        return DeciderClient(self.target)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 20.0) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        return self.proc.returncode


def start_server(tmp: Path, bundle: Path = POLICIES, db_url: str | None = None, *extra: str,
                 name: str = "server", health: bool = True) -> ServerProcess:
    """Start `decider serve` and wait until it serves. `health=False` (a TLS server, which a plaintext
    health check cannot reach) waits only for the port file, written once the server is serving."""
    db_url = db_url or f"sqlite:///{tmp / 'decider.db'}"
    port_file = tmp / f"{name}.port"
    port_file.unlink(missing_ok=True)
    log_path = tmp / f"{name}.log"
    log = log_path.open("wb")
    proc = subprocess.Popen(
        [sys.executable, "-m", "decider", "serve", "--bundle", str(bundle), "--db", db_url,
         "--listen", "127.0.0.1:0", "--port-file", str(port_file), *extra],
        stdout=log, stderr=subprocess.STDOUT, cwd=ROOT, env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited with {proc.returncode}:\n{log_path.read_text()}")
        if port_file.exists() and port_file.read_text().strip():
            port = int(port_file.read_text())
            if not health or _healthy(port):
                return ServerProcess(proc, port, db_url, log_path)
        time.sleep(0.05)
    proc.kill()
    raise RuntimeError(f"server did not become healthy:\n{log_path.read_text()}")


def _healthy(port: int) -> bool:
    with grpc.insecure_channel(f"127.0.0.1:{port}") as ch:
        try:
            resp = health_pb2_grpc.HealthStub(ch).Check(health_pb2.HealthCheckRequest(service=""), timeout=1)
        except grpc.RpcError:
            return False
        return resp.status == health_pb2.HealthCheckResponse.SERVING


def tar_gz(files: dict[str, bytes]) -> bytes:
    """A tar.gz holding exactly these members: for bundle files built (or tampered with) by hand."""
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w") as tar:
        for name, content in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(content)
            tar.addfile(info, io.BytesIO(content))
    return gzip.compress(raw.getvalue())
