"""Every decision a client received is on disk: SIGKILL the server mid-load, then look."""

from __future__ import annotations

import signal
import threading
import time
from pathlib import Path

import grpc
import pytest

from decider.client import DeciderClient
from decider.store import DecisionStore, connect

from .helpers import POLICIES, start_server

CODER = {"id": "coder-7", "team": "platform", "model": "claude-opus-4", "capabilities": ["shell"]}
MAX_CALLS_PER_CLIENT = 2000
MAX_SECONDS = 20.0


# One client: every decision is alone, so it is committed on the event loop (GroupCommitWriter.write
# with alone=True); eight: group commit on the writer thread. Both must be durable before answering.
@pytest.mark.parametrize("CLIENTS", [1, 8])
def test_sigkill_under_load_loses_no_answered_decision(tmp_path: Path, db_url: str, CLIENTS: int) -> None:  # noqa: N803
    srv = start_server(tmp_path, POLICIES, db_url)
    received: list[list[str]] = [[] for _ in range(CLIENTS)]
    failures: list[int] = [0] * CLIENTS
    stop = threading.Event()

    def client(i: int) -> None:
        with DeciderClient(srv.target, timeout=5) as c:
            for n in range(MAX_CALLS_PER_CLIENT):
                if stop.is_set():
                    return
                try:
                    resp = c.decide(agent={**CODER, "session_id": f"s{i}"}, tool="shell.exec",
                                    args={"command": f"echo {i}-{n}"})
                except grpc.RpcError:
                    failures[i] += 1
                    if failures[i] > 3:
                        return
                    continue
                received[i].append(resp.decision_id)

    threads = [threading.Thread(target=client, args=(i,)) for i in range(CLIENTS)]
    for t in threads:
        t.start()
    deadline = time.monotonic() + MAX_SECONDS
    # Let the load build up, then kill without warning while calls are in flight.
    while sum(map(len, received)) < 200 * CLIENTS and time.monotonic() < deadline:
        time.sleep(0.01)
    srv.proc.send_signal(signal.SIGKILL)
    srv.proc.wait(10)
    time.sleep(0.5)
    stop.set()
    for t in threads:
        t.join(30)
    ids = {d for per_client in received for d in per_client}
    assert len(ids) >= 200 * CLIENTS, "the load never got going"
    assert sum(failures) > 0 or len(ids) < CLIENTS * MAX_CALLS_PER_CLIENT  # the kill happened mid-load

    # Restart on the same database: the server must come up, and every answered id must be there.
    srv2 = start_server(tmp_path, POLICIES, db_url, name="restarted")
    try:
        stored = DecisionStore(connect(srv.db_url)).ids()
        missing = ids - stored
        assert not missing, f"{len(missing)} answered decisions were lost, e.g. {sorted(missing)[:3]}"
        with srv2.client() as c:
            assert c.get_decision(sorted(ids)[-1]).decision_id == sorted(ids)[-1]
    finally:
        srv2.stop()
