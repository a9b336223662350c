"""The console without --tokens: no log-in against a decider without tokens, loopback only."""

from __future__ import annotations

import http.cookiejar
import re
import subprocess
import sys
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

from .console_helpers import start_console
from .helpers import ROOT, start_server
from .stateful import write_bundle, write_tokens


def test_without_tokens_there_is_no_login_and_pages_are_served(tmp_path: Path) -> None:
    srv = start_server(tmp_path, write_bundle(tmp_path))
    try:
        con = start_console(tmp_path, srv.target)
        try:
            with urllib.request.urlopen(con.url + "/approvals", timeout=10) as resp:
                html = resp.read().decode()
                cookie = resp.headers["Set-Cookie"]
            assert resp.status == 200 and "Pending approvals" in html and "anonymous" in html
            assert "Log out" not in html
            assert "HttpOnly" in cookie and "SameSite=strict" in cookie
        finally:
            con.stop()
    finally:
        srv.stop()


def test_without_tokens_the_console_refuses_to_listen_beyond_loopback() -> None:
    proc = subprocess.run([sys.executable, "-m", "decider", "console", "--listen", "0.0.0.0:0"],
                          capture_output=True, text=True, timeout=60, cwd=ROOT)
    assert proc.returncode == 2
    assert "refusing to listen on 0.0.0.0:0 without --tokens" in proc.stderr


def _post(opener: urllib.request.OpenerDirector, url: str, form: dict[str, str]) -> tuple[int, str, str]:
    req = urllib.request.Request(url, data=urllib.parse.urlencode(form).encode(), method="POST")
    try:
        with opener.open(req, timeout=10) as resp:
            return resp.status, resp.geturl(), resp.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, url, e.read().decode()


def test_a_console_without_tokens_in_front_of_a_decider_with_tokens_shows_its_log_in_page(tmp_path: Path) -> None:
    # Issue 28 item 2: this was a 502 on every page. The console finds out that decider requires
    # tokens, asks for one, and lets decider check it.
    srv = start_server(tmp_path, write_bundle(tmp_path), None, "--tokens", str(write_tokens(tmp_path)))
    try:
        con = start_console(tmp_path, srv.target)
        try:
            opener = urllib.request.build_opener(urllib.request.HTTPCookieProcessor(http.cookiejar.CookieJar()))
            with opener.open(con.url + "/approvals", timeout=10) as resp:
                html = resp.read().decode()
                assert resp.status == 200 and resp.geturl().endswith("/login")
            assert "Log in" in html and 'name="token"' in html
            csrf = re.search(r'name="csrf" value="([^"]+)"', html)
            assert csrf is not None
            code, _, html = _post(opener, con.url + "/login", {"csrf": csrf.group(1), "token": "not-a-token"})
            assert code == 401 and "Unknown token." in html
            code, where, html = _post(opener, con.url + "/login", {"csrf": csrf.group(1), "token": "ana-token"})
            assert code == 200 and where.endswith("/approvals"), html
            assert "Pending approvals" in html and "user:ana" in html and "Log out" in html
        finally:
            con.stop()
    finally:
        srv.stop()
