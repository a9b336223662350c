"""Console event streams do not amplify load (issue 24 item 8): every `/events/approvals` stream of
one token reads one shared poll (one ListApprovals per tick, whatever the number of streams), and a
session holds at most --max-streams open streams. Real `decider serve` and `decider console`; a
transparent gRPC relay between them counts the calls the console makes."""

from __future__ import annotations

import asyncio
import http.client
import json
import re
import threading
import time
from collections import Counter
from collections.abc import Iterator
from concurrent import futures

import grpc
import pytest

from decider.v1 import decider_pb2 as pb

from .console_helpers import ConsoleProcess, start_console
from .helpers import ServerProcess, start_server
from .stateful import REFUND_BOT, client, write_bundle, write_tokens
from .test_console_login import log_in

MAX_STREAMS = 3
STREAMING = {f"/{s.full_name}/{m.name}" for s in pb.DESCRIPTOR.services_by_name.values()
             for m in s.methods if m.server_streaming}


class CountingRelay(grpc.GenericRpcHandler):
    """Forwards every call, bytes as they are, metadata included, to decider; counts them by method."""

    def __init__(self, target: str) -> None:
        self.channel = grpc.insecure_channel(target)
        self.calls: Counter[str] = Counter()
        self.lock = threading.Lock()
        self.server = grpc.server(futures.ThreadPoolExecutor(max_workers=16), handlers=[self])
        self.port = self.server.add_insecure_port("127.0.0.1:0")
        self.server.start()

    def service(self, details: grpc.HandlerCallDetails) -> grpc.RpcMethodHandler:
        method = details.method
        ident = {"request_deserializer": None, "response_serializer": None}

        def meta(context: grpc.ServicerContext) -> list[tuple[str, str]]:
            with self.lock:
                self.calls[method.rsplit("/", 1)[-1]] += 1
            return [(k, v) for k, v in context.invocation_metadata() if not k.startswith(":")]

        if method in STREAMING:
            def stream(request: bytes, context: grpc.ServicerContext) -> Iterator[bytes]:
                try:
                    yield from self.channel.unary_stream(method)(request, metadata=meta(context))
                except grpc.RpcError as e:
                    context.abort(e.code(), e.details())
            return grpc.unary_stream_rpc_method_handler(stream, **ident)

        def unary(request: bytes, context: grpc.ServicerContext) -> bytes:
            try:
                return self.channel.unary_unary(method)(request, metadata=meta(context), timeout=10)
            except grpc.RpcError as e:
                context.abort(e.code(), e.details())
        return grpc.unary_unary_rpc_method_handler(unary, **ident)

    def count(self, method: str) -> int:
        with self.lock:
            return self.calls[method]

    def stop(self) -> None:
        self.server.stop(0)
        self.channel.close()


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[ServerProcess, CountingRelay, ConsoleProcess]]:
    tmp = tmp_path_factory.mktemp("streams")
    tokens = write_tokens(tmp)
    srv = start_server(tmp, write_bundle(tmp), None, "--tokens", str(tokens))
    relay = CountingRelay(srv.target)
    try:
        con = start_console(tmp, f"127.0.0.1:{relay.port}", "--tokens", str(tokens),
                            "--max-streams", str(MAX_STREAMS))
        try:
            yield srv, relay, con
        finally:
            con.stop()
    finally:
        relay.stop()
        srv.stop()


class Stream:
    """One open `/events/approvals` stream, read line by line."""

    def __init__(self, con: ConsoleProcess, cookie: str) -> None:
        self.conn = http.client.HTTPConnection("127.0.0.1", con.port, timeout=20)
        self.conn.request("GET", "/events/approvals", headers={"Cookie": cookie})
        self.resp = self.conn.getresponse()
        self.status = self.resp.status

    def ticks(self, n: int) -> list[str]:
        """Read until `n` ticks arrived (each tick ends in a `queue` event or a heartbeat)."""
        got: list[str] = []
        for _ in range(10_000):
            line = self.resp.fp.readline().decode()
            assert line, "the stream ended"
            if line.startswith((": still here", "event: queue")):
                got.append(line.strip())
                if len(got) == n:
                    return got
        raise AssertionError("no ticks")

    def first_queue(self) -> tuple[set[str], list[str]]:
        """The decisions of the `add` events before the first `queue` event, and that queue."""
        added: set[str] = set()
        event = ""
        for _ in range(10_000):
            line = self.resp.fp.readline().decode()
            assert line, "the stream ended"
            if line.startswith("event: "):
                event = line.split(":", 1)[1].strip()
            elif line.startswith("data: ") and event == "add":
                added |= set(re.findall(r'data-decision-id="([0-9A-Z]{26})"', line))
            elif line.startswith("data: ") and event == "queue":
                return added, json.loads(line.split(":", 1)[1])
        raise AssertionError("no queue event")

    def close(self) -> None:
        self.conn.close()


@pytest.fixture(scope="module")
def pending(stack) -> str:  # noqa: ANN001
    """One approval waiting, so every stream has a queue to show."""
    srv, _, _ = stack
    with client(srv, "gw-token") as c:
        resp = c.decide(agent=REFUND_BOT, tool="payments.refund", args={"amount": 2500, "order": "s-1"})
    assert resp.outcome == pb.REQUIRE_APPROVAL
    return resp.decision_id


def test_every_stream_of_a_token_reads_one_shared_poll(stack, pending: str) -> None:  # noqa: ANN001
    _, relay, con = stack
    sessions = [log_in(con, "ana-token")[1] for _ in range(2)]       # two sessions of one approver
    streams = [Stream(con, cookie) for cookie in sessions for _ in range(MAX_STREAMS)]
    try:
        assert [s.status for s in streams] == [200] * 2 * MAX_STREAMS
        for s in streams:
            assert s.ticks(1) == ["event: queue"]                    # each got the queue
        before = relay.count("ListApprovals")
        ticks = 4
        for s in streams:
            s.ticks(ticks)
        made = relay.count("ListApprovals") - before
        # Six streams, four ticks each: one shared poll makes about four queries, not 24.
        assert made <= ticks + 2, made
    finally:
        for s in streams:
            s.close()


def test_a_session_holds_at_most_max_streams(stack, pending: str) -> None:  # noqa: ANN001
    _, _, con = stack
    cookie = log_in(con, "bo-token")[1]
    other = log_in(con, "bo-token")[1]
    streams = [Stream(con, cookie) for _ in range(MAX_STREAMS)]
    try:
        assert [s.status for s in streams] == [200] * MAX_STREAMS
        extra = Stream(con, cookie)
        assert extra.status == 429 and "too many open event streams" in extra.resp.read().decode()
        extra.close()
        decisions = http.client.HTTPConnection("127.0.0.1", con.port, timeout=20)   # the decision feed counts too
        decisions.request("GET", "/events/decisions", headers={"Cookie": cookie})
        assert decisions.getresponse().status == 429
        decisions.close()
        elsewhere = Stream(con, other)
        assert elsewhere.status == 200                                # another session has its own slots
        elsewhere.close()
        # A closed stream gives its slot back.
        streams.pop().close()
        for _ in range(200):
            again = Stream(con, cookie)
            if again.status == 200:
                break
            again.close()
            time.sleep(0.05)
        streams.append(again)
        assert again.status == 200 and again.ticks(1) == ["event: queue"]
    finally:
        for s in streams:
            s.close()
    assert "console event stream refused: too many open" in con.log()


def test_a_failing_poll_tells_its_streams_and_keeps_polling() -> None:
    """An unexpected failure (not one of decider's refusals) must not end the shared poll silently,
    which would leave every stream of the token waiting forever."""
    from decider.console.streams import Problem, SharedApprovals

    answers: list[object] = [RuntimeError("boom"), ValueError("known"), ["a"]]

    async def fetch(token: str) -> object:
        item = answers.pop(0)
        if isinstance(item, Exception):
            raise item
        return item

    async def run() -> list[object]:
        feed = SharedApprovals(fetch, 0.001, lambda e: str(e) if isinstance(e, ValueError) else None)
        got = []
        async with feed.watch("t") as poll:
            seen = 0
            for _ in range(3):
                seen, result = await asyncio.wait_for(poll.after(seen), 10)
                got.append(result)
        return got

    assert asyncio.run(run()) == [Problem("could not read the approvals queue; retrying"), Problem("known"), ["a"]]


def test_a_page_whose_stream_was_refused_says_it_is_not_live(stack, pending: str) -> None:  # noqa: ANN001
    """The browser side of the cap: a tab opened past it says it is not live (EventSource gives up
    on a 429), instead of "reconnecting…" forever. Real Chromium."""
    from .console_helpers import CHROMIUM_ARGS, ensure_chromium

    playwright_sync = pytest.importorskip("playwright.sync_api")
    path = ensure_chromium()
    if path is None:
        pytest.skip("chromium unavailable")
    _, _, con = stack
    with playwright_sync.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=path, args=CHROMIUM_ARGS)
        try:
            ctx = browser.new_context()
            ctx.set_default_timeout(20_000)
            page = ctx.new_page()
            page.goto(con.url + "/login")
            page.fill("#token", "olga-token")
            page.click("#login")
            page.wait_for_url(re.compile(r"/approvals$"))
            page.wait_for_selector(f"article[data-decision-id='{pending}']")
            cookie = next(f"{c['name']}={c['value']}" for c in ctx.cookies() if c["name"] == "decider_console")
            others = [Stream(con, cookie) for _ in range(MAX_STREAMS - 1)]   # the page holds one slot
            try:
                assert [s.status for s in others] == [200] * (MAX_STREAMS - 1)
                second = ctx.new_page()
                second.goto(con.url + "/approvals")
                # (A locator assertion, polled by Playwright: the page's CSP forbids evaluating strings.)
                playwright_sync.expect(second.locator("#live-status")).to_have_text(re.compile(r"^not live"))
                assert "too many console tabs" in second.inner_text("#live-status")
                assert page.inner_text("#live-status") == "live"               # the first tab still is
            finally:
                for s in others:
                    s.close()
        finally:
            browser.close()


def test_a_new_stream_never_shows_a_queue_read_before_it_opened(stack, pending: str) -> None:  # noqa: ANN001
    """The shared poll's last result may predate an approval resolved a moment ago; the page that
    resolved it reloads, and its new stream must not bring the resolved card back."""
    srv, _, con = stack
    with client(srv, "gw-token") as c:
        made = c.decide(agent=REFUND_BOT, tool="payments.refund", args={"amount": 2500, "order": "stale-1"})
    cookie = log_in(con, "ana-token")[1]
    keeper = Stream(con, cookie)            # keeps the token's poll alive, with a result that holds `made`
    try:
        for _ in range(100):
            if made.decision_id in keeper.first_queue()[1]:
                break
        with client(srv, "ana-token") as c:
            c.resolve_approval(made.decision_id, True, comment="ok")
        fresh = Stream(con, cookie)         # the reloaded page's stream, right after
        try:
            added, queue = fresh.first_queue()
            assert made.decision_id not in added and made.decision_id not in queue
            assert pending in queue
        finally:
            fresh.close()
    finally:
        keeper.close()
