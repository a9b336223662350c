"""The console over TLS: served over HTTPS with a `Secure` session cookie, and talking to a decider
that itself serves TLS (`--decider-ca`)."""

from __future__ import annotations

import http.cookiejar
import re
import ssl
import urllib.parse
import urllib.request
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric import ec

from .console_helpers import start_console
from .helpers import start_server
from .stateful import write_bundle, write_tokens
from .test_mtls import _cert, _pem


def test_console_over_https_sets_a_secure_cookie_and_reaches_a_tls_decider(tmp_path: Path) -> None:
    ca_key, srv_key = ec.generate_private_key(ec.SECP256R1()), ec.generate_private_key(ec.SECP256R1())
    (tmp_path / "ca.pem").write_bytes(_pem(_cert("test-ca", ca_key, "test-ca", ca_key, ca=True)))
    (tmp_path / "cert.pem").write_bytes(_pem(_cert("localhost", ca_key, "test-ca", srv_key, server=True)))
    (tmp_path / "key.pem").write_bytes(_pem(srv_key))
    tls = ("--tls-cert", str(tmp_path / "cert.pem"), "--tls-key", str(tmp_path / "key.pem"))
    tokens = write_tokens(tmp_path)
    srv = start_server(tmp_path, write_bundle(tmp_path), None, "--tokens", str(tokens), *tls, health=False)
    try:
        con = start_console(tmp_path, srv.target, "--tokens", str(tokens), *tls,
                            "--decider-ca", str(tmp_path / "ca.pem"), tls_ca=tmp_path / "ca.pem")
        try:
            jar = http.cookiejar.CookieJar()
            opener = urllib.request.build_opener(
                urllib.request.HTTPSHandler(context=ssl.create_default_context(cafile=str(tmp_path / "ca.pem"))),
                urllib.request.HTTPCookieProcessor(jar))
            with opener.open(con.url + "/login", timeout=10) as resp:
                csrf = re.search(r'name="csrf" value="([^"]+)"', resp.read().decode()).group(1)
                assert "Secure" in resp.headers["Set-Cookie"] and "HttpOnly" in resp.headers["Set-Cookie"]
            body = urllib.parse.urlencode({"csrf": csrf, "token": "ana-token"}).encode()
            with opener.open(con.url + "/login", data=body, timeout=10) as resp:
                page = resp.read().decode()
            assert resp.url.endswith("/approvals") and "user:ana" in page   # decider answered over TLS
            assert all(c.secure for c in jar) and "Pending approvals" in page
        finally:
            con.stop()
    finally:
        srv.stop()
