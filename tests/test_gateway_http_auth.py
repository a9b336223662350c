"""The gateway's HTTP listener: exactly one bearer token per request, a 401 that clients show as
"invalid token", and MCP sessions bound to the token that opened them (issue 23 items 2 and 4).
Real parts: a real decider, the gateway as a subprocess on loopback, mcp-server-time, raw HTTP
(httpx2), the mcp SDK client and @modelcontextprotocol/inspector-cli."""

from __future__ import annotations

import json
import subprocess
from collections.abc import Iterator
from typing import Any

import anyio
import grpc
import httpx2
import pytest
from mcp.shared.exceptions import MCPError

from decider.v1 import decider_pb2 as pb
from decider.v1 import decider_pb2_grpc as pb_grpc

from .gateway_support import (
    HTTP_AGENT,
    HTTP_CLIENT_TOKEN,
    HttpGateway,
    Setup,
    ensure_node_tools,
    http_session,
    make_setup,
    start_http_gateway,
)
from .helpers import ROOT

pytestmark = pytest.mark.slow

OTHER_TOKEN = "coder-other-secret"
OTHER_AGENT = {"id": "coder-other", "team": "platform"}
ACCEPT = {"Accept": "application/json, text/event-stream"}
INIT = {"jsonrpc": "2.0", "id": 1, "method": "initialize",
        "params": {"protocolVersion": "2025-11-25", "capabilities": {}, "clientInfo": {"name": "t", "version": "1"}}}


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Setup]:
    ensure_node_tools()
    s = make_setup(tmp_path_factory.mktemp("http-auth"))
    try:
        yield s
    finally:
        s.decider.stop()


@pytest.fixture(scope="module")
def gw(setup: Setup) -> Iterator[HttpGateway]:
    clients = [{"token": HTTP_CLIENT_TOKEN, "agent": HTTP_AGENT}, {"token": OTHER_TOKEN, "agent": OTHER_AGENT}]
    g = start_http_gateway(setup.config("time", listen="http://127.0.0.1:0/mcp", file="gw-auth.yaml",
                                        clients=clients), name="gw-auth")
    try:
        yield g
    finally:
        g.stop()


def bearer(token: str) -> dict[str, str]:
    return {**ACCEPT, "Authorization": f"Bearer {token}"}


def reply(resp: httpx2.Response) -> dict[str, Any]:
    """The JSON-RPC reply of a POST answered as JSON or as one SSE event."""
    if resp.headers.get("content-type", "").startswith("text/event-stream"):
        data = [line[5:].strip() for line in resp.text.splitlines() if line.startswith("data:")]
        return json.loads(data[-1])
    return resp.json()


def open_session(url: str, token: str) -> str:
    init = httpx2.post(url, json=INIT, headers=bearer(token), timeout=30)
    assert init.status_code == 200, init.text
    sid = init.headers["mcp-session-id"]
    done = httpx2.post(url, json={"jsonrpc": "2.0", "method": "notifications/initialized"},
                       headers={**bearer(token), "Mcp-Session-Id": sid}, timeout=30)
    assert done.status_code == 202, done.text
    return sid


def call_time(url: str, token: str, sid: str, call_id: int) -> httpx2.Response:
    body = {"jsonrpc": "2.0", "id": call_id, "method": "tools/call",
            "params": {"name": "time__get_current_time", "arguments": {"timezone": "UTC"}}}
    return httpx2.post(url, json=body, headers={**bearer(token), "Mcp-Session-Id": sid}, timeout=30)


def decisions_of(setup: Setup, agent_id: str) -> list[Any]:
    with grpc.insecure_channel(setup.decider.target) as ch:
        resp = pb_grpc.QueriesStub(ch).ListDecisions(pb.ListDecisionsRequest(limit=1000), timeout=10,
                                                     metadata=(("authorization", "Bearer admin-token"),))
    return [r for r in resp.decisions if r.agent.id == agent_id]


def test_an_mcp_session_is_refused_to_another_token(setup: Setup, gw: HttpGateway) -> None:
    sid = open_session(gw.url, HTTP_CLIENT_TOKEN)
    mine = call_time(gw.url, HTTP_CLIENT_TOKEN, sid, 2)
    assert mine.status_code == 200 and not reply(mine)["result"].get("isError"), mine.text
    before = len(decisions_of(setup, OTHER_AGENT["id"]))

    stolen = call_time(gw.url, OTHER_TOKEN, sid, 3)
    assert stolen.status_code == 403
    assert f"MCP session {sid} belongs to another client" in stolen.json()["error"]["message"]
    assert httpx2.delete(gw.url, headers={**bearer(OTHER_TOKEN), "Mcp-Session-Id": sid}, timeout=30).status_code == 403
    assert len(decisions_of(setup, OTHER_AGENT["id"])) == before       # nothing decided, nothing recorded

    # the owner's session was neither used nor ended by the other caller
    again = call_time(gw.url, HTTP_CLIENT_TOKEN, sid, 4)
    assert again.status_code == 200 and not reply(again)["result"].get("isError")
    in_session = [r for r in decisions_of(setup, HTTP_AGENT["id"]) if r.agent.session_id == sid]
    assert len(in_session) == 2

    # the other caller opens its own session and is served in it
    own = open_session(gw.url, OTHER_TOKEN)
    assert own != sid and call_time(gw.url, OTHER_TOKEN, own, 5).status_code == 200
    # the owner may end its session; then the id is unknown to everyone
    assert httpx2.delete(gw.url, headers={**bearer(HTTP_CLIENT_TOKEN), "Mcp-Session-Id": sid}, timeout=30).is_success
    assert call_time(gw.url, HTTP_CLIENT_TOKEN, sid, 6).status_code == 404


def test_a_session_id_never_issued_is_not_found(gw: HttpGateway) -> None:
    resp = call_time(gw.url, OTHER_TOKEN, "made-up-session", 7)
    assert resp.status_code == 404 and "made-up-session not found" in resp.json()["error"]["message"]


def test_exactly_one_authorization_header_or_401(gw: HttpGateway) -> None:
    good, bad = f"Bearer {HTTP_CLIENT_TOKEN}", "Bearer wrong"
    for headers in ([("Authorization", good), ("Authorization", bad)],
                    [("Authorization", bad), ("Authorization", good)],
                    [("Authorization", good), ("Authorization", good)]):
        resp = httpx2.post(gw.url, json=INIT, headers=[*ACCEPT.items(), *headers], timeout=30)
        assert resp.status_code == 401, headers
        assert 'error_description="several Authorization headers"' in resp.headers["www-authenticate"]
    assert httpx2.post(gw.url, json=INIT, headers={**ACCEPT, "Authorization": good}, timeout=30).status_code == 200


def test_401_says_invalid_token_in_the_header_the_body_and_the_clients(gw: HttpGateway) -> None:
    for auth, why in (({}, "no Authorization header"), ({"Authorization": "Bearer wrong"}, "unknown bearer token"),
                      ({"Authorization": "Basic Y29kZXI="}, "Authorization scheme is not Bearer")):
        resp = httpx2.post(gw.url, json=INIT, headers={**ACCEPT, **auth}, timeout=30)
        assert resp.status_code == 401
        assert resp.headers["www-authenticate"] == (f'Bearer realm="decider-gateway", error="invalid_token", '
                                                    f'error_description="{why}"')
        error = resp.json()["error"]
        assert resp.json()["jsonrpc"] == "2.0" and error["message"].startswith(f"invalid token: {why};")

    async def run() -> None:       # the mcp SDK surfaces the JSON-RPC error body as the error
        with pytest.raises(BaseException) as raised:   # noqa: PT011 - the SDK wraps it in exception groups
            async with http_session(gw.url, token="wrong"):
                pass
        error: BaseException = raised.value
        while isinstance(error, BaseExceptionGroup):
            error = error.exceptions[0]
        assert isinstance(error, MCPError) and error.message.startswith("invalid token: unknown bearer token")

    anyio.run(run)

    build = ROOT / "tools" / "node" / "node_modules" / "@modelcontextprotocol" / "inspector-cli" / "build"
    out = subprocess.run(["node", str(build / "index.js"), gw.url, "--transport", "http",
                          "--header", "Authorization: Bearer wrong", "--method", "tools/list"],
                         capture_output=True, text=True, timeout=120, cwd=build)
    assert out.returncode != 0 and "invalid token: unknown bearer token" in out.stdout + out.stderr


HOSTILE = [
    ({"Host": "attacker.example:{port}"}, 421),        # DNS rebinding: the attacker's name, our port
    ({"Host": "attacker.example"}, 421),
    ({"Host": "127.0.0.1:{other}"}, 421),              # a loopback name with another port
    ({"Origin": "http://attacker.example:{port}"}, 403),
    ({"Origin": "http://localhost:3000"}, 403),        # a page of another local web server
    ({"Origin": "null"}, 403),                          # a sandboxed frame
]


@pytest.mark.parametrize("path", ["/mcp", "/hooks/claude-code"])
def test_hostile_host_and_origin_are_refused_before_anything_runs(gw: HttpGateway, path: str) -> None:
    port = int(gw.url.split(":")[2].split("/")[0])
    url = f"http://127.0.0.1:{port}{path}"
    body: dict[str, Any] = INIT if path == "/mcp" else {
        "hook_event_name": "PreToolUse", "tool_name": "mcp__time__get_current_time",
        "tool_input": {"timezone": "UTC"}, "session_id": "rebinding", "tool_use_id": "toolu_rebinding"}
    for extra, status in HOSTILE:
        headers = {k: v.format(port=port, other=port + 1) for k, v in extra.items()}
        resp = httpx2.post(url, json=body, headers={**bearer(HTTP_CLIENT_TOKEN), **headers}, timeout=30)
        assert resp.status_code == status, (path, headers, resp.status_code, resp.text)
        assert "DNS rebinding" in resp.json()["error"]["message"]
    # the listener's own names, with and without an Origin of its own, are served
    for host in (f"127.0.0.1:{port}", f"localhost:{port}"):
        for origin in ({}, {"Origin": f"http://{host}"}):
            resp = httpx2.post(url, json=body, headers={**bearer(HTTP_CLIENT_TOKEN), "Host": host, **origin}, timeout=30)
            assert resp.status_code == 200, (host, origin, resp.text)
