"""Console sessions (issue 24 item 9): log-out revokes the cookie server-side (a copy taken before
is refused), and log-in is rate-limited per client address. Real `decider serve` and `decider
console` with tokens; raw HTTP from several loopback source addresses (127.0.0.x are distinct
clients to the console)."""

from __future__ import annotations

import http.client
import re
import urllib.parse
from collections.abc import Iterator

import pytest

from decider.console.login_limit import LoginLimiter, client_key
from decider.console.sessions import Session, SessionCodec, load_secret

from .console_helpers import ConsoleProcess, start_console
from .helpers import ServerProcess, start_server
from .stateful import write_bundle, write_tokens

ATTEMPTS = 5


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[ServerProcess, ConsoleProcess]]:
    tmp = tmp_path_factory.mktemp("login")
    tokens = write_tokens(tmp)
    srv = start_server(tmp, write_bundle(tmp), None, "--tokens", str(tokens))
    try:
        con = start_console(tmp, srv.target, "--tokens", str(tokens), "--login-attempts", str(ATTEMPTS),
                            "--login-window", "3600")   # nothing is regained while the test runs
        try:
            yield srv, con
        finally:
            con.stop()
    finally:
        srv.stop()


def call(con: ConsoleProcess, method: str, path: str, form: dict[str, str] | None = None, cookie: str = "",
         source: str = "127.0.0.1") -> tuple[int, dict[str, str], str]:
    conn = http.client.HTTPConnection("127.0.0.1", con.port, timeout=10, source_address=(source, 0))
    try:
        headers = {"Cookie": cookie} if cookie else {}
        body = urllib.parse.urlencode(form) if form is not None else None
        if body is not None:
            headers["Content-Type"] = "application/x-www-form-urlencoded"
        conn.request(method, path, body=body, headers=headers)
        resp = conn.getresponse()
        return resp.status, {k.lower(): v for k, v in resp.getheaders()}, resp.read().decode()
    finally:
        conn.close()


def cookie_of(headers: dict[str, str]) -> str:
    return headers["set-cookie"].split(";")[0]


def csrf_in(html: str) -> str:
    return re.search(r'name="csrf" value="([^"]+)"', html).group(1)


def log_in(con: ConsoleProcess, token: str, source: str = "127.0.0.1") -> tuple[int, str, dict[str, str]]:
    """(status, session cookie, headers) of one log-in, with a fresh pre-log-in cookie and CSRF token."""
    _, headers, html = call(con, "GET", "/login", source=source)
    status, headers, _ = call(con, "POST", "/login", {"csrf": csrf_in(html), "token": token},
                              cookie_of(headers), source)
    return status, cookie_of(headers) if "set-cookie" in headers else "", headers


def test_a_copy_of_the_cookie_is_refused_after_log_out(stack) -> None:  # noqa: ANN001
    _, con = stack
    status, cookie, _ = log_in(con, "admin-token", source="127.0.0.2")
    assert status == 303
    stolen = cookie                                  # what an attacker copied while the user was in
    status, _, html = call(con, "GET", "/kill-switches", cookie=cookie)
    assert status == 200 and "user:root" in html
    csrf = csrf_in(html)
    status, headers, _ = call(con, "POST", "/logout", {"csrf": csrf}, cookie)
    assert status == 303 and headers["location"] == "/login"
    # The stolen copy: no page, no action, even with the CSRF token it carried.
    status, headers, _ = call(con, "GET", "/kill-switches", cookie=stolen)
    assert status == 303 and headers["location"] == "/login"
    status, _, _ = call(con, "POST", "/kill-switches", {"csrf": csrf, "scope": "platform", "reason": "stolen"}, stolen)
    assert status == 403
    status, _, html = call(con, "GET", "/kill-switches", cookie=log_in(con, "admin-token", "127.0.0.2")[1])
    assert status == 200 and "stolen" not in html     # nothing was engaged
    # Logging in again makes a new session; the old one stays revoked.
    assert call(con, "GET", "/approvals", cookie=stolen)[0] == 303


def test_log_in_is_rate_limited_per_client_address(stack) -> None:  # noqa: ANN001
    _, con = stack
    for i in range(ATTEMPTS):
        assert log_in(con, f"guess-{i}", source="127.0.0.3")[0] == 401
    # The bucket is empty: even the right token is not looked at, and the answer says when to retry.
    status, cookie, headers = log_in(con, "ana-token", source="127.0.0.3")
    assert status == 429 and cookie == "" and int(headers["retry-after"]) >= 1
    for i in range(20):                               # guessing on stays refused, all of it
        assert log_in(con, f"guess-more-{i}", source="127.0.0.3")[0] == 429
    # Another address is another client.
    assert log_in(con, "ana-token", source="127.0.0.4")[0] == 303
    assert "console log-in rate-limited" in con.log()


def test_successful_log_ins_do_not_use_up_the_limit(stack) -> None:  # noqa: ANN001
    _, con = stack
    for _ in range(ATTEMPTS * 2):
        assert log_in(con, "carol-token", source="127.0.0.5")[0] == 303


def test_the_bucket_refills_over_the_window() -> None:
    now = [0.0]
    lim = LoginLimiter(attempts=3, window_s=60, clock=lambda: now[0])
    assert [lim.take("10.0.0.1") for _ in range(3)] == [0.0, 0.0, 0.0]
    assert lim.take("10.0.0.1") == pytest.approx(20.0)
    now[0] += 20
    assert lim.take("10.0.0.1") == 0.0 and lim.take("10.0.0.1") > 0
    assert lim.take("10.0.0.2") == 0.0


@pytest.mark.parametrize(("a", "b", "same"), [
    ("2001:db8::1", "2001:db8::ffff:1", True),         # one /64: one client
    ("2001:db8:0:1::1", "2001:db8:0:2::1", False),
    ("::ffff:10.0.0.1", "10.0.0.1", True),             # v4-mapped is the v4 address
    ("10.0.0.1", "10.0.0.2", False),
])
def test_ipv6_clients_are_counted_per_64(a: str, b: str, same: bool) -> None:
    assert (client_key(a) == client_key(b)) is same


def test_a_cookie_without_a_session_id_is_no_session() -> None:
    codec = SessionCodec(load_secret(None), ttl_s=60)
    s = Session(token="t", principal="user:ana")
    assert codec.decode(codec.encode(s)) is not None
    codec.revoke(s)
    assert codec.decode(codec.encode(s)) is None
    s.sid = ""                                          # as a cookie from before session ids decodes
    assert SessionCodec(load_secret(None), ttl_s=60).decode(codec.encode(s)) is None
