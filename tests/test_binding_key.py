"""Issue 24 item 12: the args_hash key lived in the same database as the hashes, so a copy of the
database gave back a masked 4-digit PIN in 0.07 s. Now `decider serve` takes the key from a file or
$DECIDER_BINDING_KEY, refuses to start without one unless `--dev`, and deletes the key an earlier
release (or `--dev`) stored. The attacker below holds only the database file."""

from __future__ import annotations

import os
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

from decider.client import build_request
from decider.v1 import decider_pb2 as pb
from decider.values.canonical import binding_hash

from .helpers import ROOT, ServerProcess, start_server

BUNDLE = """\
apiVersion: decider/v1
kind: Bundle
metadata: {name: pins, version: 1.0.0}
spec:
  default: allow
  mask: ["tool.args.pin"]
"""
AGENT = {"id": "atm-bot", "team": "cards"}


def _bundle(tmp: Path) -> Path:
    folder = tmp / "bundle"
    folder.mkdir(exist_ok=True)
    (folder / "bundle.yaml").write_text(BUNDLE)
    return folder


def _no_key_env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if k != "DECIDER_BINDING_KEY"}


def _serve(tmp: Path, *extra: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "decider", "serve", "--bundle", str(_bundle(tmp)), "--db",
                           f"sqlite:///{tmp / 'd.db'}", "--listen", "127.0.0.1:0", "--port-file", str(tmp / "port"),
                           *extra], capture_output=True, text=True, cwd=ROOT, timeout=60,
                          env=env if env is not None else _no_key_env())


def recover_pin(db_file: Path) -> str | None:
    """The attack: the key from the database, then every PIN against the recorded hash."""
    with sqlite3.connect(db_file) as db:
        row = db.execute("SELECT value FROM deployment_secrets WHERE name = 'approval-binding-hmac'").fetchone()
        recorded = db.execute("SELECT args_hash FROM decisions WHERE agent_id = 'atm-bot'").fetchone()[0]
    if row is None:
        return None
    key = bytes.fromhex(row[0])
    for n in range(10_000):
        pin = f"{n:04d}"
        if binding_hash(build_request(agent=AGENT, tool="cards.withdraw", args={"pin": pin}), key) == recorded:
            return pin
    return None


def _withdraw(srv: ServerProcess) -> None:
    with srv.client() as c:
        assert c.decide(agent=AGENT, tool="cards.withdraw", args={"pin": "4821"}).outcome == pb.ALLOW


def test_serve_refuses_to_start_without_a_key_outside_dev_mode(tmp_path: Path) -> None:
    out = _serve(tmp_path)
    assert out.returncode == 2, out.stderr
    assert "--binding-key-file" in out.stderr and "$DECIDER_BINDING_KEY" in out.stderr and "--dev" in out.stderr
    assert not (tmp_path / "port").exists()


@pytest.mark.parametrize(("key", "named"), [("abc", "not hex"), ("ab" * 16, "16 bytes"), ("", "")])
def test_a_bad_key_is_refused_naming_where_it_came_from(tmp_path: Path, key: str, named: str) -> None:
    key_file = tmp_path / "binding.key"
    key_file.write_text(key + "\n")
    out = _serve(tmp_path, "--binding-key-file", str(key_file))
    assert out.returncode == 2 and "--binding-key-file" in out.stderr and named in out.stderr, out.stderr
    out = _serve(tmp_path, env={**_no_key_env(), "DECIDER_BINDING_KEY": "zz" * 32})
    assert out.returncode == 2 and "$DECIDER_BINDING_KEY: is not hex" in out.stderr, out.stderr


def test_with_an_outside_key_a_database_copy_gives_no_masked_pin_back(tmp_path: Path,
                                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    db_url = f"sqlite:///{tmp_path / 'd.db'}"
    # An earlier release (here: --dev, no key given) kept the key in the database: the attack works.
    with monkeypatch.context() as m:
        m.delenv("DECIDER_BINDING_KEY")
        srv = start_server(tmp_path, _bundle(tmp_path), db_url, "--dev", name="dev")
    try:
        _withdraw(srv)
    finally:
        srv.stop()
    assert recover_pin(tmp_path / "d.db") == "4821"
    key_file = tmp_path / "binding.key"
    key_file.write_text("5a" * 32 + "\n")
    key_file.chmod(0o600)
    with sqlite3.connect(tmp_path / "d.db") as db:
        db.execute("DELETE FROM decisions")
    srv = start_server(tmp_path, _bundle(tmp_path), db_url, "--binding-key-file", str(key_file), name="keyed")
    try:
        _withdraw(srv)
    finally:
        srv.stop()
    with sqlite3.connect(tmp_path / "d.db") as db:
        assert db.execute("SELECT count(*) FROM deployment_secrets").fetchone()[0] == 0   # the old key is gone
    assert recover_pin(tmp_path / "d.db") is None
    assert b"4821" not in (tmp_path / "d.db").read_bytes()


def test_replicas_with_the_same_key_file_bind_one_approval(tmp_path: Path) -> None:
    from .stateful import REFUND_BOT, write_bundle

    key_file = tmp_path / "binding.key"
    key_file.write_text("c3" * 32)
    key_file.chmod(0o600)
    bundle = write_bundle(tmp_path)
    one = start_server(tmp_path, bundle, None, "--binding-key-file", str(key_file), name="one")
    try:
        with one.client() as c:
            first = c.decide(agent=REFUND_BOT, tool="payments.refund", args={"amount": 7})
        two = start_server(tmp_path, bundle, one.db_url, "--binding-key-file", str(key_file), name="two")
        try:
            with two.client() as c:
                again = c.decide(agent=REFUND_BOT, tool="payments.refund", args={"amount": 7})
        finally:
            two.stop()
    finally:
        one.stop()
    assert first.outcome == again.outcome == pb.REQUIRE_APPROVAL and again.decision_id == first.decision_id
