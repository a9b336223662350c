"""A real, throw-away Prometheus server for the tests: Debian's `prometheus` (installed by
tools/scripts/ensure-prometheus.sh), on 127.0.0.1 with an ephemeral port, a temp config and storage
dir, scraping the targets it is given every second; stopped and deleted at the end."""

from __future__ import annotations

import json
import shutil
import subprocess
import tempfile
import time
import urllib.parse
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .helpers import ROOT
from .pg import _free_port

__all__ = ["PrometheusServer", "PrometheusUnavailable", "start_prometheus", "free_port"]

free_port = _free_port


class PrometheusUnavailable(RuntimeError):
    pass


@dataclass
class PrometheusServer:
    proc: subprocess.Popen[bytes]
    port: int
    base: Path

    def query(self, promql: str) -> list[dict[str, Any]]:
        url = f"http://127.0.0.1:{self.port}/api/v1/query?" + urllib.parse.urlencode({"query": promql})
        with urllib.request.urlopen(url, timeout=10) as resp:
            body = json.load(resp)
        assert body["status"] == "success", body
        return body["data"]["result"]

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        shutil.rmtree(self.base, ignore_errors=True)


def _binary() -> str:
    out = subprocess.run([str(ROOT / "tools/scripts/ensure-prometheus.sh")], capture_output=True, text=True)
    for line in out.stdout.splitlines():
        if line.startswith("prometheus: "):
            return line.split(": ", 1)[1].strip()
    raise PrometheusUnavailable(out.stderr.strip() or "ensure-prometheus.sh found no prometheus")


def start_prometheus(targets: list[str]) -> PrometheusServer:
    binary = _binary()
    base = Path(tempfile.mkdtemp(prefix="decider-prom-"))
    config = base / "prometheus.yml"
    config.write_text(json.dumps({   # YAML is a superset of JSON
        "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
        "scrape_configs": [{"job_name": "decider", "scrape_interval": "1s", "scrape_timeout": "1s",
                            "static_configs": [{"targets": targets}]}],
    }))
    port = free_port()
    log = (base / "prometheus.log").open("wb")
    proc = subprocess.Popen([binary, f"--config.file={config}", f"--storage.tsdb.path={base / 'data'}",
                             f"--web.listen-address=127.0.0.1:{port}"], stdout=log, stderr=subprocess.STDOUT)
    srv = PrometheusServer(proc, port, base)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            text = (base / "prometheus.log").read_text(errors="replace")
            srv.stop()
            raise PrometheusUnavailable(f"prometheus exited with {proc.returncode}: {text[-2000:]}")
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/-/ready", timeout=1) as resp:
                if resp.status == 200:
                    return srv
        except OSError:
            pass
        time.sleep(0.2)
    srv.stop()
    raise PrometheusUnavailable("prometheus did not become ready")
