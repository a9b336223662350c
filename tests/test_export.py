"""`decider export`: a durable cursor, so killing the exporter or the receiver mid-stream loses
nothing — every record arrives at least once, in commit order. Real exporter processes, a real
HTTP receiver on 127.0.0.1, a real SQLite file."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from opentelemetry.proto.collector.logs.v1.logs_service_pb2 import ExportLogsServiceRequest

from decider.export.naming import cursor_name
from decider.store import DecisionStore, connect
from decider.store.journal import CursorStore

from .helpers import ROOT
from .test_store import row

N = 60


class Receiver:
    """An HTTP receiver that records every request body; it can answer errors, or hold a request
    (never answering until released) so the exporter can be killed with a batch in flight."""

    def __init__(self, port: int = 0) -> None:
        self.bodies: list[bytes] = []
        self.fail_next = 0
        self.hold_after: int | None = None     # hold every request once this many were acknowledged
        self.held = threading.Event()
        self.release = threading.Event()
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 - http.server's name
                body = self.rfile.read(int(self.headers["Content-Length"]))
                if outer.fail_next > 0:
                    outer.fail_next -= 1
                    self.send_response(503)
                    self.end_headers()
                    return
                if outer.hold_after is not None and len(outer.bodies) >= outer.hold_after:
                    outer.held.set()
                    outer.release.wait(30)
                    return   # no answer: the connection closes without an acknowledgement
                outer.bodies.append(body)
                self.send_response(200)
                self.end_headers()

            def log_message(self, *a: object) -> None:
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", port), Handler)
        self.port = self.httpd.server_address[1]
        self.thread = threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
        self.thread.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/hook"

    def stop(self) -> None:
        self.release.set()
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    r = Receiver()
    try:
        yield r
    finally:
        r.stop()


@pytest.fixture
def db(tmp_path: Path) -> str:
    url = f"sqlite:///{tmp_path / 'export.db'}"
    DecisionStore(connect(url)).insert_many([row(agent=f"a{i}") for i in range(N)])
    return url


def exporter(db: str, url: str, *extra: str, to: str = "webhook") -> subprocess.Popen[str]:
    return subprocess.Popen([sys.executable, "-m", "decider", "export", "--db", db, "--to", to, "--url", url,
                             "--batch", "7", "--poll", "0.05", "--max-backoff", "0.2", "--timeout", "5", *extra],
                            cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def seqs_of(bodies: list[bytes]) -> list[list[int]]:
    return [[line["seq"] for line in json.loads(b)["decisions"]] for b in bodies]


def assert_complete_and_in_order(batches: list[list[int]], expected: list[int]) -> None:
    """Every seq arrived; in arrival order each batch continues the stream or resends from an
    acknowledged point, never jumping ahead; each batch is in order."""
    seen: list[int] = []
    for b in batches:
        assert b == sorted(b)
        assert seen == expected[: len(seen)]
        if len(seen) < len(expected):
            assert b[0] <= expected[len(seen)], f"batch {b} skips past {expected[len(seen)]}"
        seen += [s for s in b if not seen or s > seen[-1]]
    assert seen == expected


def wait_for(cond, timeout: float = 30) -> bool:  # noqa: ANN001
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if cond():
            return True
        time.sleep(0.05)
    return False


def all_seqs(db: str) -> list[int]:
    from decider.store.journal import JournalReader

    return [r["seq"] for r in JournalReader(connect(db)).after(0, 10_000)]


def test_exporter_killed_mid_stream_resumes_from_its_cursor(db: str, receiver: Receiver) -> None:
    receiver.hold_after = 3            # the 4th batch is in flight, unacknowledged, when we kill
    first = exporter(db, receiver.url)
    try:
        assert receiver.held.wait(30), first.stderr.read() if first.poll() is not None else "no 4th batch"
        first.send_signal(signal.SIGKILL)
        first.wait(10)
    finally:
        if first.poll() is None:
            first.kill()
    assert len(receiver.bodies) == 3
    assert CursorStore(connect(db)).get(cursor_name(f"webhook:{receiver.url}")) == seqs_of(receiver.bodies)[-1][-1]
    receiver.hold_after = None
    receiver.release.set()
    again = exporter(db, receiver.url, "--once")
    out, err = again.communicate(timeout=60)
    assert again.returncode == 0, err
    expected = all_seqs(db)
    assert len(expected) == N
    assert_complete_and_in_order(seqs_of(receiver.bodies), expected)
    # Nothing was resent: the unacknowledged batch was never recorded, so it arrives once now.
    assert sum(len(b) for b in seqs_of(receiver.bodies)) == N
    lines = [line for b in receiver.bodies for line in json.loads(b)["decisions"]]
    assert {x["decision_id"] for x in lines} == DecisionStore(connect(db)).ids()
    assert all(x["change"] == "decided" and "outcome" in x for x in lines)


def test_receiver_down_or_failing_then_back_gets_everything_in_order(db: str, tmp_path: Path) -> None:
    r = Receiver()
    port = r.port
    r.stop()                                   # nothing listens: every send fails
    proc = exporter(db, f"http://127.0.0.1:{port}/hook")
    try:
        time.sleep(0.5)                        # a few failed attempts (retry pause ≤ 0.2 s)
        back = Receiver(port)                  # the receiver returns on the same port ...
        back.fail_next = 2                     # ... and refuses its first two batches
        try:
            assert wait_for(lambda: sum(len(b) for b in seqs_of(back.bodies)) >= N), proc.stderr
            assert_complete_and_in_order(seqs_of(back.bodies), all_seqs(db))
            # New records committed while the exporter runs follow the old ones.
            DecisionStore(connect(db)).insert_many([row(agent="late")])
            assert wait_for(lambda: sum(len(b) for b in seqs_of(back.bodies)) >= N + 1)
            assert_complete_and_in_order(seqs_of(back.bodies), all_seqs(db))
        finally:
            back.stop()
    finally:
        proc.terminate()
        proc.wait(10)
    assert "will resend" in proc.stderr.read()


def test_otlp_logs_exporter_sends_each_record_as_a_log_record(db: str, receiver: Receiver) -> None:
    run = exporter(db, f"http://127.0.0.1:{receiver.port}", "--once", to="otlp-logs")
    _, err = run.communicate(timeout=60)
    assert run.returncode == 0, err
    records = []
    for body in receiver.bodies:
        req = ExportLogsServiceRequest.FromString(body)
        [rl] = req.resource_logs
        assert {a.key: a.value.string_value for a in rl.resource.attributes}["service.name"] == "decider"
        records += [lr for sl in rl.scope_logs for lr in sl.log_records]
    assert len(records) == N
    attrs = [{a.key: (a.value.string_value or a.value.int_value) for a in lr.attributes} for lr in records]
    assert [a["decider.seq"] for a in attrs] == all_seqs(db)
    assert {a["decider.decision_id"] for a in attrs} == DecisionStore(connect(db)).ids()
    first = json.loads(records[0].body.string_value)
    assert first["decision_id"] == attrs[0]["decider.decision_id"] and attrs[0]["gen_ai.tool.name"] == "fs.read"
    assert records[0].time_unix_nano > 0 and records[0].event_name == "decider.decision"


def test_export_on_postgresql_keeps_its_cursor(postgres, receiver: Receiver) -> None:  # noqa: ANN001
    url = postgres.create_database("export_cursor")
    DecisionStore(connect(url)).insert_many([row(agent=f"p{i}") for i in range(10)])
    for _ in range(2):   # the second run finds the cursor at the end: nothing is sent again
        run = exporter(url, receiver.url, "--once")
        _, err = run.communicate(timeout=60)
        assert run.returncode == 0, err
    assert_complete_and_in_order(seqs_of(receiver.bodies), all_seqs(url))
    assert sum(len(b) for b in seqs_of(receiver.bodies)) == 10
    assert CursorStore(connect(url)).get(cursor_name(f"webhook:{receiver.url}")) == all_seqs(url)[-1]


def test_a_redirect_is_not_an_acknowledgement(db: str) -> None:
    """A receiver answering 302 to a page that answers GET with 200: the batch is not delivered, so
    the cursor stays and the batch is sent again; the redirect is never followed (issue 24)."""
    arrived: list[tuple[str, str]] = []

    class Handler(BaseHTTPRequestHandler):
        def _any(self) -> None:
            self.rfile.read(int(self.headers.get("Content-Length") or 0))
            arrived.append((self.command, self.path))
            if self.path == "/hook":
                self.send_response(302)
                self.send_header("Location", "/landing")
            else:
                self.send_response(200)
            self.send_header("Content-Length", "0")
            self.end_headers()

        do_GET = do_POST = _any  # noqa: N815 - http.server's names

        def log_message(self, *a: object) -> None:
            pass

    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
    url = f"http://127.0.0.1:{httpd.server_address[1]}/hook"
    proc = exporter(db, url)
    try:
        assert wait_for(lambda: len(arrived) >= 3), proc.stderr
    finally:
        proc.terminate()
        proc.wait(10)
        httpd.shutdown()
        httpd.server_close()
    assert {m for m, p in arrived} == {"POST"} and {p for m, p in arrived} == {"/hook"}
    assert CursorStore(connect(db)).get(cursor_name(f"webhook:{url}")) in (None, 0)
    assert "redirect not followed" in proc.stderr.read()
