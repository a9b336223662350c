"""Approval-webhook delivery (issue 24 item 10): a redirect is a failed delivery (never followed,
never "delivered"), deliveries run concurrently and bounded, and one that hangs does not hold up
the others; each is abandoned after its timeout and retried. Real `decider serve`, real HTTP
receivers on 127.0.0.1."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from decider.store import connect
from decider.store.notifications import NotificationStore
from decider.v1 import decider_pb2 as pb

from .helpers import ROOT, ServerProcess, start_server
from .stateful import REFUND_BOT, client, write_bundle, write_tokens
from .test_approval_webhook import wait_for


@dataclass
class Receiver:
    """Answers each request by `answer(order, method)`: ("ok",), ("redirect", url), ("hang",) or
    ("endless",) (200 and a body that never ends).
    Records what arrived, in arrival order; a hung request is held until `release`."""

    answer: Any = None
    arrived: list[tuple[str, str]] = field(default_factory=list)   # (method, the order argument)
    hanging: list[str] = field(default_factory=list)
    answered_hung: list[str] = field(default_factory=list)
    release: threading.Event = field(default_factory=threading.Event)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def start(self) -> Receiver:
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def _any(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                order = ""
                if body:
                    order = json.loads(json.loads(body)["blocks"][1]["text"]["text"].strip("`"))["order"]
                with outer.lock:
                    outer.arrived.append((self.command, order))
                how = outer.answer(order, self.command) if outer.answer else ("ok",)
                if how[0] == "hang":
                    with outer.lock:
                        outer.hanging.append(order)
                    outer.release.wait(60)
                    with outer.lock:
                        outer.answered_hung.append(order)
                if how[0] == "redirect":
                    self.send_response(302)
                    self.send_header("Location", how[1])
                elif how[0] == "endless":
                    # 200, then a body announced at 10 GB of which a first chunk comes, then nothing.
                    self.send_response(200)
                    self.send_header("Content-Length", str(10**10))
                    self.end_headers()
                    self.wfile.write(b"x" * 65536)
                    self.wfile.flush()
                    with outer.lock:
                        outer.hanging.append(order)
                    outer.release.wait(60)
                    return
                else:
                    self.send_response(200)
                self.send_header("Content-Length", "0")
                self.end_headers()

            do_POST = do_GET = _any  # noqa: N815 - http.server's names

            def log_message(self, *a: object) -> None:
                return None

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.port = self.httpd.server_address[1]
        threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
        return self

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/hooks/T0/B0/secret"

    def orders(self, method: str = "POST") -> list[str]:
        with self.lock:
            return [o for m, o in self.arrived if m == method]

    def stop(self) -> None:
        self.release.set()
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def receivers() -> Iterator[list[Receiver]]:
    made: list[Receiver] = []
    try:
        yield made
    finally:
        for r in made:
            r.stop()


def serve(tmp: Path, url: str, *extra: str) -> tuple[ServerProcess, NotificationStore]:
    srv = start_server(tmp, write_bundle(tmp), None, "--tokens", str(write_tokens(tmp)), "--poll-interval", "0.2",
                       "--approval-webhook", url, "--approval-webhook-max-backoff", "0.5", *extra)
    return srv, NotificationStore(connect(srv.db_url))


def ask(srv: ServerProcess, order: str) -> str:
    with client(srv, "gw-token") as c:
        resp = c.decide(agent=REFUND_BOT, tool="payments.refund", args={"amount": 2500, "order": order})
    assert resp.outcome == pb.REQUIRE_APPROVAL
    return resp.decision_id


def test_a_redirect_is_a_failed_delivery_and_is_never_followed(tmp_path: Path, receivers: list[Receiver]) -> None:
    elsewhere = Receiver().start()
    hook = Receiver(answer=lambda order, method: ("redirect", elsewhere.url)).start()
    receivers += [elsewhere, hook]
    srv, outbox = serve(tmp_path, hook.url)
    try:
        made = ask(srv, "r-1")
        wait_for(lambda: (outbox.get(made) or {}).get("attempts", 0) >= 2, "two failed attempts")
        item = outbox.get(made)
        assert item["state"] == "pending" and item["delivered_at"] is None
        assert "HTTP 302" in item["last_error"] and "not followed" in item["last_error"]
        assert elsewhere.arrived == []           # neither a GET nor a POST went to where it pointed
        assert len(hook.orders()) >= 2           # retried, each time a POST to the webhook itself
        # Redirected later to nowhere: it still never counts as delivered until a 2xx.
        hook.answer = None
        wait_for(lambda: outbox.get(made)["state"] == "delivered", "delivered once the webhook answers 200")
        assert elsewhere.arrived == []
    finally:
        srv.stop()
        outbox.engine.dispose()


def test_a_hanging_delivery_does_not_hold_up_the_others(tmp_path: Path, receivers: list[Receiver]) -> None:
    hook = Receiver(answer=lambda order, method: ("hang",) if order == "slow" else ("ok",)).start()
    receivers.append(hook)
    srv, outbox = serve(tmp_path, hook.url)
    try:
        slow = ask(srv, "slow")
        wait_for(lambda: hook.hanging == ["slow"], "the slow delivery in flight")
        fast = [ask(srv, f"fast-{i}") for i in range(3)]
        wait_for(lambda: all((outbox.get(i) or {}).get("state") == "delivered" for i in fast),
                 "the fast deliveries")
        # They arrived while the slow one was still in flight: not answered, not timed out, not retried.
        assert sorted(hook.orders()) == ["fast-0", "fast-1", "fast-2", "slow"]
        assert hook.answered_hung == []
        item = outbox.get(slow)
        assert item["state"] == "pending" and item["attempts"] == 0 and item["last_error"] is None
        hook.release.set()
        wait_for(lambda: outbox.get(slow)["state"] == "delivered", "the slow one, once answered")
    finally:
        srv.stop()
        outbox.engine.dispose()


def test_a_delivery_past_its_timeout_is_abandoned_and_retried(tmp_path: Path, receivers: list[Receiver]) -> None:
    hung_once: list[str] = []

    def answer(order: str, method: str) -> tuple[str, ...]:
        if not hung_once:
            hung_once.append(order)
            return ("hang",)
        return ("ok",)

    hook = Receiver(answer=answer).start()
    receivers.append(hook)
    srv, outbox = serve(tmp_path, hook.url, "--approval-webhook-timeout", "0.5")
    try:
        made = ask(srv, "t-1")
        wait_for(lambda: (outbox.get(made) or {}).get("state") == "delivered", "delivered on a later attempt")
        item = outbox.get(made)
        assert item["attempts"] >= 2
        assert hook.answered_hung == []          # the first attempt was abandoned, not answered
        assert "timed out" in srv.log()
        assert "secret" not in srv.log()         # the webhook's path is never logged
    finally:
        srv.stop()
        outbox.engine.dispose()


def test_at_most_the_configured_deliveries_are_in_flight(tmp_path: Path, receivers: list[Receiver]) -> None:
    hook = Receiver(answer=lambda order, method: ("hang",)).start()
    receivers.append(hook)
    srv, outbox = serve(tmp_path, hook.url, "--approval-webhook-concurrency", "2")
    try:
        made = [ask(srv, f"c-{i}") for i in range(4)]
        wait_for(lambda: len(hook.hanging) == 2, "two deliveries in flight")
        # More ticks pass; the other two wait for a free slot.
        wait_for(lambda: "approval webhook tick" not in srv.log() and len(hook.arrived) == 2 and
                 all(outbox.get(i) is not None for i in made), "all four queued")
        assert len(hook.hanging) == 2
        hook.release.set()
        wait_for(lambda: all(outbox.get(i)["state"] == "delivered" for i in made), "all four delivered")
    finally:
        srv.stop()
        outbox.engine.dispose()


def test_the_answer_body_is_never_read(tmp_path: Path, receivers: list[Receiver]) -> None:
    """A 200 counts as soon as it arrives: a receiver announcing an endless body neither holds the
    attempt until its timeout nor has it read into memory."""
    hook = Receiver(answer=lambda order, method: ("endless",)).start()
    receivers.append(hook)
    srv, outbox = serve(tmp_path, hook.url, "--approval-webhook-timeout", "60")
    try:
        made = ask(srv, "e-1")
        wait_for(lambda: (outbox.get(made) or {}).get("state") == "delivered", "delivered on the 200 alone")
        assert hook.orders() == ["e-1"] and outbox.get(made)["attempts"] == 1
    finally:
        srv.stop()
        outbox.engine.dispose()


@pytest.mark.parametrize(("command", "flag", "value"), [
    ("serve", "--approval-webhook-concurrency", "0"), ("serve", "--approval-webhook-concurrency", "-3"),
    ("serve", "--approval-webhook-concurrency", "many"), ("serve", "--approval-webhook-timeout", "0"),
    ("serve", "--approval-webhook-timeout", "nan"), ("serve", "--approval-webhook-timeout", "inf"),
    ("console", "--max-streams", "0"), ("console", "--login-attempts", "0"), ("console", "--login-window", "-1"),
])
def test_a_bad_limit_is_refused_naming_its_flag(command: str, flag: str, value: str) -> None:
    proc = subprocess.run([sys.executable, "-m", "decider", command, flag, value], capture_output=True, text=True,
                          timeout=60, cwd=ROOT)
    assert proc.returncode == 2 and f"argument {flag}:" in proc.stderr, proc.stderr
