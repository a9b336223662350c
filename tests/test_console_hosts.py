"""A console without --tokens answers only loopback Host names (issue 24 item 6: DNS rebinding),
and every redirect it gives is relative. Real `decider serve` and `decider console`, raw HTTP with
the Host header a rebound browser would send."""

from __future__ import annotations

import http.client
import re
import urllib.parse
from collections.abc import Iterator

import pytest

from .console_helpers import ConsoleProcess, start_console
from .helpers import ServerProcess, start_server
from .stateful import write_bundle

HOSTILE_HOSTS = [
    "rebind.attacker.example", "rebind.attacker.example:8080", "localhost.attacker.example",
    "127.0.0.1.nip.io", "2130706433", "0x7f.0.0.1", "0.0.0.0", "[::ffff:127.0.0.1]", "127.0.0.1:80:81",
    "user@127.0.0.1", "127.0.0.1/x", "127.0.0.1 evil", "",
]


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[ServerProcess, ConsoleProcess]]:
    """One stack for the module: nothing here changes what the others see (no switch is engaged
    but the relative-redirect test's own `tool x.y`)."""
    tmp_path = tmp_path_factory.mktemp("hosts")
    srv = start_server(tmp_path, write_bundle(tmp_path))
    try:
        con = start_console(tmp_path, srv.target)
        try:
            yield srv, con
        finally:
            con.stop()
    finally:
        srv.stop()


def request(con: ConsoleProcess, method: str, path: str, host: str | None, body: str = "",
            cookie: str = "") -> tuple[int, dict[str, str], str]:
    conn = http.client.HTTPConnection("127.0.0.1", con.port, timeout=10)
    try:
        conn.putrequest(method, path, skip_host=True, skip_accept_encoding=True)
        if host is not None:
            conn.putheader("Host", host)
        if cookie:
            conn.putheader("Cookie", cookie)
        if body:
            conn.putheader("Content-Type", "application/x-www-form-urlencoded")
        conn.putheader("Content-Length", str(len(body)))
        conn.endheaders(body.encode() or None)
        resp = conn.getresponse()
        return resp.status, {k.lower(): v for k, v in resp.getheaders()}, resp.read().decode()
    finally:
        conn.close()


def session_of(con: ConsoleProcess) -> tuple[str, str]:
    """A real session cookie and CSRF token, got from the console's own name."""
    status, headers, html = request(con, "GET", "/kill-switches", f"127.0.0.1:{con.port}")
    assert status == 200
    cookie = headers["set-cookie"].split(";")[0]
    return cookie, re.search(r'name="csrf" value="([^"]+)"', html).group(1)


@pytest.mark.parametrize("host", HOSTILE_HOSTS)
def test_a_foreign_host_gets_no_page_no_session_and_no_action(stack, host: str) -> None:  # noqa: ANN001
    _, con = stack
    for path in ("/approvals", "/approvals/", "/kill-switches", "/healthz", "/static/console.css"):
        status, headers, body = request(con, "GET", path, host)
        assert status == 400 and "set-cookie" not in headers and "location" not in headers, (path, status)
        assert "Host not allowed" in body and "csrf" not in body
    # Even with a session and CSRF token the browser held from before the rebinding:
    cookie, csrf = session_of(con)
    form = urllib.parse.urlencode({"csrf": csrf, "scope": "platform", "reason": "rebound"})
    assert request(con, "POST", "/kill-switches", host, form, cookie)[0] == 400
    _, _, page = request(con, "GET", "/kill-switches", f"127.0.0.1:{con.port}", cookie=cookie)
    assert "rebound" not in page                 # nothing was engaged


def test_no_host_header_at_all_is_refused(stack) -> None:  # noqa: ANN001
    _, con = stack
    assert request(con, "GET", "/approvals", None)[0] == 400


@pytest.mark.parametrize("host", ["127.0.0.1", "localhost", "LOCALHOST", "127.0.0.1:{port}", "localhost:{port}"])
def test_loopback_names_are_served(stack, host: str) -> None:  # noqa: ANN001
    _, con = stack
    status, headers, body = request(con, "GET", "/approvals", host.format(port=con.port))
    assert status == 200 and "Pending approvals" in body and "set-cookie" in headers


def test_every_redirect_is_relative(stack) -> None:  # noqa: ANN001
    _, con = stack
    here = f"127.0.0.1:{con.port}"
    cookie, csrf = session_of(con)
    seen = []
    for method, path, body in [("GET", "/", ""), ("GET", "/login", ""), ("GET", "/approvals/", ""),
                               ("GET", "//evil.example/", ""), ("GET", "/kill-switches/", ""),
                               ("POST", "/kill-switches",
                                urllib.parse.urlencode({"csrf": csrf, "scope": "tool", "value": "x.y", "reason": "t"})),
                               ("POST", "/logout", urllib.parse.urlencode({"csrf": csrf}))]:   # last: it revokes
        status, headers, _ = request(con, method, path, here, body, cookie)
        if "location" in headers:
            seen.append(headers["location"])
            assert 300 <= status < 400
        else:
            assert status in (200, 404), (path, status)
    assert seen and all(loc.startswith("/") and not loc.startswith(("//", "/\\")) for loc in seen), seen
