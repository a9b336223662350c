"""`decider serve --workers N`: several processes share one port; each decision is still durable."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
from pathlib import Path

import grpc

from decider.client import DeciderClient
from decider.store import DecisionStore, connect
from decider.v1 import decider_pb2 as pb
from decider.v1 import decider_pb2_grpc as pb_grpc

from .helpers import POLICIES, ROOT, start_server

CODER = {"id": "coder-7", "capabilities": ["shell"]}


def instances_seen(target: str, tries: int = 40) -> set[str]:
    seen: set[str] = set()
    for _ in range(tries):
        # A fresh connection each time: the kernel picks a worker per connection.
        with grpc.insecure_channel(target, options=[("grpc.use_local_subchannel_pool", 1)]) as ch:
            seen.add(pb_grpc.ControlStub(ch).Status(pb.StatusRequest(), timeout=10).instance)
        if len(seen) > 1:
            break
    return seen


def test_two_workers_share_the_port_record_every_decision_and_stop_cleanly(tmp_path: Path, db_url: str) -> None:
    srv = start_server(tmp_path, POLICIES, db_url, "--workers", "2")
    try:
        assert len(instances_seen(srv.target)) == 2
        ids: list[str] = []
        lock = threading.Lock()

        def client(i: int) -> None:
            with DeciderClient(srv.target, timeout=10) as c:
                for n in range(40):
                    d = c.decide(agent=CODER, tool="shell.exec", args={"command": f"echo {i}-{n}"})
                    assert d.outcome == pb.ALLOW
                    with lock:
                        ids.append(d.decision_id)

        threads = [threading.Thread(target=client, args=(i,)) for i in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
        assert len(ids) == 160
        assert set(ids) <= DecisionStore(connect(srv.db_url)).ids()

        # The single-process safety stays: a plain second server cannot take the workers' port.
        taken = subprocess.run(
            [sys.executable, "-m", "decider", "serve", "--bundle", str(POLICIES), "--db",
             f"sqlite:///{tmp_path / 'other.db'}", "--listen", srv.target],
            cwd=ROOT, capture_output=True, text=True, timeout=60)
        assert taken.returncode != 0
    finally:
        code = srv.stop()
    assert code == 0
    stopped = [json.loads(x) for x in srv.log().splitlines() if x.startswith("{") and '"workers"' in x
               and '"stopped"' in x]
    assert stopped and stopped[0]["exit_codes"] == [0, 0]
