"""Test helpers for the console: a real `decider console` process, a real Chromium (Debian's, driven
by Playwright) and a local webhook receiver."""

from __future__ import annotations

import json
import os
import ssl
import subprocess
import sys
import threading
import time
import urllib.request
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from .helpers import ROOT

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]


@dataclass
class ConsoleProcess:
    proc: subprocess.Popen[bytes]
    port: int
    log_path: Path
    scheme: str = "http"

    @property
    def url(self) -> str:
        return f"{self.scheme}://127.0.0.1:{self.port}"

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)


def start_console(tmp: Path, decider: str, *extra: str, name: str = "console",
                  tls_ca: Path | None = None) -> ConsoleProcess:
    """Start `decider console` and wait until /healthz answers (over HTTPS, trusting `tls_ca`, when given)."""
    port_file = tmp / f"{name}.port"
    port_file.unlink(missing_ok=True)
    log_path = tmp / f"{name}.log"
    proc = subprocess.Popen(
        [sys.executable, "-m", "decider", "console", "--decider", decider, "--listen", "127.0.0.1:0",
         "--port-file", str(port_file), *extra],
        stdout=log_path.open("wb"), stderr=subprocess.STDOUT, cwd=ROOT, env={**os.environ, "PYTHONUNBUFFERED": "1"})
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"console exited with {proc.returncode}:\n{log_path.read_text()}")
        if port_file.exists() and port_file.read_text().strip():
            port = int(port_file.read_text())
            scheme = "https" if tls_ca else "http"
            ctx = ssl.create_default_context(cafile=str(tls_ca)) if tls_ca else None
            with urllib.request.urlopen(f"{scheme}://127.0.0.1:{port}/healthz", timeout=5, context=ctx) as resp:
                assert resp.status == 200
            return ConsoleProcess(proc, port, log_path, scheme)
        time.sleep(0.05)
    proc.kill()
    raise RuntimeError(f"console did not start:\n{log_path.read_text()}")


def ensure_chromium() -> str | None:
    """Install Debian's chromium if missing (tools/scripts/ensure-chromium.sh); its path, or None."""
    if not os.access(CHROMIUM, os.X_OK):
        subprocess.run([str(ROOT / "tools" / "scripts" / "ensure-chromium.sh")], check=False, timeout=900)
    return CHROMIUM if os.access(CHROMIUM, os.X_OK) else None


@dataclass
class WebhookReceiver:
    """A local HTTP receiver that records every POST body; can be taken down and brought back on
    the same port (to test retries)."""

    port: int = 0
    received: list[dict[str, Any]] = field(default_factory=list)
    headers: list[dict[str, str]] = field(default_factory=list)
    _server: ThreadingHTTPServer | None = None
    _thread: threading.Thread | None = None
    _lock: threading.Lock = field(default_factory=threading.Lock)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/hooks/approvals"

    def start(self) -> WebhookReceiver:
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 - http.server's name
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                with receiver._lock:
                    receiver.received.append(json.loads(body))
                    receiver.headers.append(dict(self.headers.items()))
                self.send_response(200)
                self.send_header("Content-Length", "2")
                self.end_headers()
                self.wfile.write(b"ok")

            def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - quiet
                return None

        ThreadingHTTPServer.allow_reuse_address = True
        self._server = ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        self.port = self._server.server_address[1]
        self._thread = threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.05},
                                        daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
        if self._thread is not None:
            self._thread.join(10)
            self._thread = None

    def decision_ids(self) -> list[str]:
        with self._lock:
            return [h.get("X-Decider-Decision-Id", "") for h in self.headers]
