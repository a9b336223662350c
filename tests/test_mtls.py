"""TLS and mutual TLS: with --tls-client-ca, only clients holding a certificate the CA signed decide."""

from __future__ import annotations

import datetime as dt
import ipaddress
from pathlib import Path

import grpc
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from decider.client import DeciderClient
from decider.v1 import decider_pb2 as pb

from .helpers import POLICIES, start_server

CODER = {"id": "coder-7", "capabilities": ["shell"]}


def _name(cn: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])


def _cert(subject: str, issuer_key: ec.EllipticCurvePrivateKey, issuer: str, key: ec.EllipticCurvePrivateKey,
          ca: bool = False, server: bool = False) -> x509.Certificate:
    now = dt.datetime.now(dt.timezone.utc)
    b = (x509.CertificateBuilder().subject_name(_name(subject)).issuer_name(_name(issuer))
         .public_key(key.public_key()).serial_number(x509.random_serial_number())
         .not_valid_before(now - dt.timedelta(minutes=5)).not_valid_after(now + dt.timedelta(days=1))
         .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True))
    if server:
        b = b.add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1")),
                                                         x509.DNSName("localhost")]), critical=False)
    return b.sign(issuer_key, hashes.SHA256())


def _pem(obj: x509.Certificate | ec.EllipticCurvePrivateKey) -> bytes:
    if isinstance(obj, x509.Certificate):
        return obj.public_bytes(serialization.Encoding.PEM)
    return obj.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


@pytest.fixture
def pki(tmp_path: Path) -> dict[str, bytes]:
    ca_key, srv_key, cli_key, rogue_key = (ec.generate_private_key(ec.SECP256R1()) for _ in range(4))
    ca = _cert("test-ca", ca_key, "test-ca", ca_key, ca=True)
    out = {
        "ca": _pem(ca),
        "server_cert": _pem(_cert("decider", ca_key, "test-ca", srv_key, server=True)),
        "server_key": _pem(srv_key),
        "client_cert": _pem(_cert("gateway", ca_key, "test-ca", cli_key)),
        "client_key": _pem(cli_key),
        # Signed by itself, not by the CA the server trusts.
        "rogue_cert": _pem(_cert("rogue", rogue_key, "rogue", rogue_key)),
        "rogue_key": _pem(rogue_key),
    }
    for k, v in out.items():
        (tmp_path / f"{k}.pem").write_bytes(v)
    return out


def test_mtls_requires_a_client_certificate_signed_by_the_ca(tmp_path: Path, pki: dict[str, bytes]) -> None:
    # The port file is written once serving; readiness is checked here over TLS, not by the helper.
    srv = start_server(tmp_path, POLICIES, None, "--tls-cert", str(tmp_path / "server_cert.pem"),
                       "--tls-key", str(tmp_path / "server_key.pem"),
                       "--tls-client-ca", str(tmp_path / "ca.pem"), health=False)
    try:
        with DeciderClient(srv.target, tls_ca=pki["ca"], tls_cert=pki["client_cert"],
                           tls_key=pki["client_key"]) as c:
            assert c.decide(agent=CODER, tool="shell.exec", args={"command": "ls"}).outcome == pb.ALLOW
        for cert, key in ((None, None), (pki["rogue_cert"], pki["rogue_key"])):
            with DeciderClient(srv.target, tls_ca=pki["ca"], tls_cert=cert, tls_key=key, timeout=5) as c:
                with pytest.raises(grpc.RpcError) as err:
                    c.decide(agent=CODER, tool="shell.exec", args={"command": "ls"})
            assert err.value.code() == grpc.StatusCode.UNAVAILABLE
        with DeciderClient(srv.target, timeout=5) as plain, pytest.raises(grpc.RpcError):
            plain.decide(agent=CODER, tool="shell.exec", args={"command": "ls"})
        # A guard's stream is opened with its client's credentials: the CA-signed one decides, a
        # rogue certificate gets no decision (fail closed).
        from decider.guard import DeciderUnavailable, Guard
        with Guard(DeciderClient(srv.target, tls_ca=pki["ca"], tls_cert=pki["client_cert"],
                                 tls_key=pki["client_key"]), agent=CODER) as g:
            assert g.check("shell.exec", {"command": "ls"}).outcome == "ALLOW"
            assert g.stream is not None and g.stream.streaming
            decider = g.stream._stream.decider
            assert decider is not None and decider.calls_sent == 1
        with Guard(DeciderClient(srv.target, tls_ca=pki["ca"], tls_cert=pki["rogue_cert"],
                                 tls_key=pki["rogue_key"], timeout=5), agent=CODER, timeout=5) as g:
            with pytest.raises(DeciderUnavailable, match="UNAVAILABLE"):
                g.check("shell.exec", {"command": "ls"})
    finally:
        srv.stop()
