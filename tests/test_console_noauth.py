"""The console without --tokens: no log-in against a decider without tokens, loopback only."""

from __future__ import annotations

import subprocess
import sys
import urllib.error
import urllib.request
from pathlib import Path

import pytest

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


def test_a_console_without_tokens_in_front_of_a_decider_with_tokens_says_what_to_do(tmp_path: Path) -> None:
    srv = start_server(tmp_path, write_bundle(tmp_path), None, "--tokens", str(write_tokens(tmp_path)))
    try:
        con = start_console(tmp_path, srv.target)
        try:
            with pytest.raises(urllib.error.HTTPError) as err:
                urllib.request.urlopen(con.url + "/approvals", timeout=10)
            assert err.value.code == 502
            assert "start the console with --tokens FILE" in err.value.read().decode()
        finally:
            con.stop()
    finally:
        srv.stop()
