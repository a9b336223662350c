"""The bundle lifecycle against real servers: signatures required at start and at reload, hot reload
under load, activation and rollback across replicas sharing one database, shadow evaluation, Status."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

import grpc
import pytest

from decider.bundle.archive import generate_keypair
from decider.bundle.compile import load_bundle
from decider.client import DeciderClient
from decider.v1 import decider_pb2 as pb
from decider.v1 import decider_pb2_grpc as pb_grpc

from .helpers import POLICIES, ROOT, ServerProcess, start_server, tar_gz

CODER = {"id": "coder-7", "team": "platform", "capabilities": ["shell"]}
README = {"path": "/workspace/README.md"}
POLL = ("--poll-interval", "0.2")
# A second revision of the example bundle: one more policy, which denies reading the README.
EXTRA = """apiVersion: decider/v1
kind: Policy
metadata: {name: readme-lockdown}
spec:
  match: {tools: ["fs.read"]}
  rules:
    - id: v2-deny-readme
      effect: deny
      when: tool.args.path.endsWith("README.md")
      reason: "v2: the README is off limits"
"""


def cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "decider", *args], capture_output=True, text=True, cwd=ROOT,
                          timeout=60, env={k: v for k, v in os.environ.items() if k != "DECIDER_TOKEN"})


def write_atomically(path: Path, data: bytes) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)


def v2_folder(tmp: Path, name: str = "v2") -> Path:
    d = tmp / name
    shutil.copytree(POLICIES, d)
    (d / "readme.yaml").write_text(EXTRA)
    return d


def build(folder: Path, out: Path, *extra: str) -> Path:
    run = cli("bundle", "build", str(folder), "-o", str(out), *extra)
    assert run.returncode == 0, run.stderr
    return Path(run.stdout.split()[0])


def status(srv: ServerProcess) -> pb.StatusResponse:
    with grpc.insecure_channel(srv.target) as ch:
        return pb_grpc.ControlStub(ch).Status(pb.StatusRequest(), timeout=5)


def wait_for(check: Callable[[], bool], timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return
        time.sleep(0.1)
    raise AssertionError("condition not reached in time")


def read_readme(srv: ServerProcess) -> pb.DecideResponse:
    with srv.client() as c:
        return c.decide(agent=CODER, tool="fs.read", args=README)


@pytest.fixture(scope="module")
def keys(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("keys")
    private, public = generate_keypair()
    (d / "k.pem").write_bytes(private)
    (d / "k.pub.pem").write_bytes(public)
    return {"private": d / "k.pem", "public": d / "k.pub.pem"}


V1 = load_bundle(POLICIES).revision


def test_serve_refuses_an_unsigned_bundle_when_signatures_are_required(tmp_path: Path, keys: dict[str, Path]) -> None:
    unsigned = build(POLICIES, tmp_path / "out")
    with pytest.raises(RuntimeError, match="the bundle is not signed"):
        start_server(tmp_path, unsigned, None, "--require-signature", "--pubkey", str(keys["public"]))
    with pytest.raises(RuntimeError, match="a folder cannot carry a signature"):
        start_server(tmp_path, POLICIES, None, "--require-signature", "--pubkey", str(keys["public"]))


def test_tampered_bundle_is_refused_at_reload_and_the_old_one_keeps_serving(tmp_path: Path,
                                                                             keys: dict[str, Path]) -> None:
    signed = build(POLICIES, tmp_path / "out", "--sign", str(keys["private"]))
    served = tmp_path / "served.bundle"
    shutil.copy(signed, served)
    srv = start_server(tmp_path, served, None, "--require-signature", "--pubkey", str(keys["public"]), *POLL)
    try:
        assert read_readme(srv).bundle.revision == V1
        # Swap in a bundle of other sources that carries the old (now wrong) signature.
        v2_signed = build(v2_folder(tmp_path), tmp_path / "out2", "--sign", str(keys["private"]))
        v1_members = _members(signed.read_bytes())
        v2_members = _members(v2_signed.read_bytes())
        v2_members["manifest.sig"] = v1_members["manifest.sig"]
        write_atomically(served, tar_gz(v2_members))
        wait_for(lambda: "signature does not verify" in status(srv).last_reload_error)
        resp = read_readme(srv)
        assert (resp.bundle.revision, resp.deciding_rule, resp.outcome) == (V1, "fs-read-workspace", pb.ALLOW)
        # An unsigned bundle is refused the same way; a properly signed one is then taken.
        write_atomically(served, build(v2_folder(tmp_path, "v2b"), tmp_path / "out3").read_bytes())
        wait_for(lambda: "not signed" in status(srv).last_reload_error)
        assert read_readme(srv).bundle.revision == V1
        write_atomically(served, v2_signed.read_bytes())
        wait_for(lambda: status(srv).active.revision != V1)
        st = status(srv)
        assert st.last_reload_error == "" and st.active.signed
        assert read_readme(srv).deciding_rule == "v2-deny-readme"
    finally:
        srv.stop()
    assert "bundle refused" in srv.log()


def test_a_source_that_stops_type_checking_never_replaces_the_active_bundle(tmp_path: Path) -> None:
    src = tmp_path / "src"
    shutil.copytree(POLICIES, src)
    srv = start_server(tmp_path, src, None, *POLL)
    try:
        write_atomically(src / "readme.yaml", EXTRA.replace("tool.args.path.endsWith", "tool.agrs.path.endsWith")
                         .encode())
        wait_for(lambda: "readme.yaml" in status(srv).last_reload_error)
        assert "agrs" in status(srv).last_reload_error
        assert read_readme(srv).bundle.revision == V1
    finally:
        srv.stop()


def test_reload_under_concurrent_load_fails_no_request_and_each_decision_is_from_one_revision(tmp_path: Path) -> None:
    src = tmp_path / "src"
    shutil.copytree(POLICIES, src)
    srv = start_server(tmp_path, src, None, *POLL)
    seen: list[tuple[str, str, int, str]] = []
    failures: list[BaseException] = []
    lock = threading.Lock()
    switched = threading.Event()

    def worker() -> None:
        with DeciderClient(srv.target, timeout=10) as c:
            for _ in range(400):   # bounded: stops once both revisions were seen, or after 400 calls
                try:
                    r = c.decide(agent=CODER, tool="fs.read", args=README)
                except grpc.RpcError as e:
                    with lock:
                        failures.append(e)
                    return
                with lock:
                    seen.append((r.decision_id, r.bundle.revision, r.outcome, r.deciding_rule))
                    if switched.is_set() and sum(1 for s in seen if s[1] != V1) >= 40:
                        return

    try:
        threads = [threading.Thread(target=worker) for _ in range(4)]
        for t in threads:
            t.start()
        wait_for(lambda: len(seen) >= 40)
        write_atomically(src / "readme.yaml", EXTRA.encode())
        switched.set()
        for t in threads:
            t.join(60)
        v2 = load_bundle(src).revision
        assert failures == []
        by_rev = {rev for _, rev, _, _ in seen}
        assert by_rev == {V1, v2}
        for _, rev, outcome, rule in seen:
            # The rule that decided exists in the revision the response names: never a mix.
            expected = (pb.ALLOW, "fs-read-workspace") if rev == V1 else (pb.DENY, "v2-deny-readme")
            assert (outcome, rule) == expected
        # The records say the same as the answers.
        with srv.client() as c:
            for decision_id, rev, _, rule in seen[:: max(1, len(seen) // 25)]:
                rec = c.get_decision(decision_id)
                assert (rec.bundle.revision, rec.deciding_rule) == (rev, rule)
    finally:
        srv.stop()


def test_activate_and_rollback_switch_every_replica_sharing_the_database(tmp_path: Path, db_url: str) -> None:
    db = db_url
    src = tmp_path / "src"
    shutil.copytree(POLICIES, src)
    a = start_server(tmp_path, src, db, *POLL, name="a")
    b = start_server(tmp_path, POLICIES, db, *POLL, name="b")
    try:
        assert read_readme(b).bundle.revision == V1
        # A deploy on replica a (its source changes) becomes active on b too.
        write_atomically(src / "readme.yaml", EXTRA.encode())
        v2 = load_bundle(src).revision
        wait_for(lambda: read_readme(b).bundle.revision == v2)
        listed = cli("bundle", "list", "--server", a.target)
        assert listed.returncode == 0, listed.stderr
        assert V1[:12] in listed.stdout and f"*  {v2[:12]}" in listed.stdout
        # Roll back through a: a switches within the request, b within its poll.
        rb = cli("bundle", "rollback", "--server", a.target)
        assert rb.returncode == 0, rb.stderr
        assert V1[:12] in rb.stdout
        assert read_readme(a).bundle.revision == V1
        wait_for(lambda: read_readme(b).bundle.revision == V1)
        assert read_readme(b).deciding_rule == "fs-read-workspace"
        # Activate by prefix through b: a follows.
        act = cli("bundle", "activate", v2[:8], "--server", b.target)
        assert act.returncode == 0, act.stderr
        assert read_readme(b).bundle.revision == v2
        wait_for(lambda: read_readme(a).bundle.revision == v2)
        bad = cli("bundle", "activate", "ffffffff", "--server", b.target)
        assert bad.returncode == 1 and "NOT_FOUND" in bad.stderr
        # A restarted replica keeps the cluster's choice rather than re-deploying its own source.
        rb = cli("bundle", "rollback", "--server", a.target)
        assert rb.returncode == 0, rb.stderr
        b.stop()
        b = start_server(tmp_path, src, db, *POLL, name="b2")
        assert read_readme(b).bundle.revision == V1
    finally:
        a.stop()
        b.stop()


def test_shadow_outcomes_are_recorded_and_never_in_responses(tmp_path: Path, db_url: str) -> None:
    shadow_src = v2_folder(tmp_path)
    v2 = load_bundle(shadow_src).revision
    srv = start_server(tmp_path, POLICIES, db_url, "--shadow-bundle", str(shadow_src), *POLL)
    try:
        with srv.client() as c:
            resp = c.decide(agent=CODER, tool="fs.read", args=README)
            other = c.decide(agent=CODER, tool="fs.read", args={"path": "/workspace/src/app.py"})
            rec = c.get_decision(resp.decision_id)
        # The response is the active bundle's alone: nothing of the shadow's rule or revision.
        assert (resp.outcome, resp.deciding_rule, resp.bundle.revision) == (pb.ALLOW, "fs-read-workspace", V1)
        wire = resp.SerializeToString()
        assert b"v2-deny-readme" not in wire and v2.encode() not in wire
        assert "v2-deny-readme" not in resp.matched_rules
        # The record carries both.
        assert rec.outcome == pb.ALLOW and rec.shadow_outcome == pb.DENY
        assert list(rec.shadow_rules) == ["fs-read-workspace", "v2-deny-readme"]
        assert rec.shadow_bundle.revision == v2
        st = status(srv)
        assert (st.active.revision, st.shadow.revision) == (V1, v2)
        assert st.decisions_by_outcome["ALLOW"] == 2
        # The evidence before promoting: where shadow and active disagree.
        diff = cli("log", "--db", srv.db_url, "--shadow-diff", "--format", "jsonl")
        assert diff.returncode == 0, diff.stderr
        report = json.loads(diff.stdout)
        assert (report["decisions_with_shadow"], report["agree"], report["disagree"]) == (2, 1, 1)
        assert report["by_outcome_pair"] == [{"active": "ALLOW", "shadow": "DENY", "count": 1}]
        assert report["by_rule"][0]["active_rule"] == "fs-read-workspace"
        assert report["examples"]["ALLOW -> DENY"][0]["decision_id"] == resp.decision_id
        text = cli("log", "--db", srv.db_url, "--shadow-diff")
        assert "1 agree, 1 disagree" in text.stdout and "ALLOW -> DENY" in text.stdout
        assert other.outcome == pb.ALLOW
        # Clearing the shadow over Control: no more shadow columns.
        assert cli("bundle", "shadow", "--clear", "--server", srv.target).returncode == 0
        with srv.client() as c:
            rec = c.get_decision(c.decide(agent=CODER, tool="fs.read", args=README).decision_id)
        assert rec.shadow_outcome == pb.OUTCOME_UNSPECIFIED and not rec.shadow_bundle.revision
        # …and setting it again by revision prefix.
        on = cli("bundle", "shadow", v2[:10], "--server", srv.target)
        assert on.returncode == 0, on.stderr
        with srv.client() as c:
            rec = c.get_decision(c.decide(agent=CODER, tool="fs.read", args=README).decision_id)
        assert rec.shadow_outcome == pb.DENY
    finally:
        srv.stop()


def test_status_command_shows_revisions_reload_error_and_counts(tmp_path: Path) -> None:
    srv = start_server(tmp_path, POLICIES, None, *POLL)
    try:
        read_readme(srv)
        run = cli("status", "--server", srv.target)
        assert run.returncode == 0, run.stderr
        assert f"active:    {V1[:12]}  acme-agents 1.0.0" in run.stdout
        assert "shadow:    none" in run.stdout and "error: none" in run.stdout
        assert "ALLOW 1" in run.stdout
        js = json.loads(cli("status", "--server", srv.target, "--format", "json").stdout)
        assert js["active"]["revision"] == V1 and js["decisions_by_outcome"] == {"ALLOW": "1"}
    finally:
        srv.stop()


def _members(data: bytes) -> dict[str, bytes]:
    import io
    import tarfile

    with tarfile.open(fileobj=io.BytesIO(data), mode="r:gz") as tar:
        return {m.name: tar.extractfile(m).read() for m in tar if m.isreg()}  # type: ignore[union-attr]


