"""Issue 24 item 1: a condition that errors on a masked value must not quote it. The reason text
comes from the CEL runtime (`Key not found in map : 'Hunter2…'`); through a real server, no stored
or served text — GetDecision, ListDecisions, WatchDecisions, `decider log`, `decider export` — may
hold the secret, in any quoting."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest

from decider.bundle.compile import load_bundle
from decider.engine.rules import evaluate
from decider.engine.scrub import WITHHELD, scrub_text
from decider.v1 import decider_pb2 as pb
from decider.v1 import decider_pb2_grpc as pb_grpc

from .helpers import ROOT, ServerProcess, start_server
from .test_export import Receiver

SECRET = 'Hunter2(S3cr3t"PW'

BUNDLE = """\
apiVersion: decider/v1
kind: Bundle
metadata: {name: masked-errors, version: 1.0.0}
spec:
  default: allow
  on_error: deny
  mask: ["tool.args.password", "context.vault.*"]
"""

POLICY = """\
apiVersion: decider/v1
kind: Policy
metadata: {name: leaky}
spec:
  rules:
    - id: map-key
      effect: deny
      when: tool.name == "login.map" && {"a":1}[tool.args.password] == 1
    - id: bad-regex
      effect: deny
      when: tool.name == "login.regex" && "x".matches(tool.args.password)
    - id: ctx-key
      effect: deny
      when: tool.name == "login.ctx" && {"a":1}[context.vault.pin] == 1
"""


def _bundle_dir(tmp: Path) -> Path:
    folder = tmp / "bundle"
    folder.mkdir(exist_ok=True)
    (folder / "bundle.yaml").write_text(BUNDLE)
    (folder / "leaky.yaml").write_text(POLICY)
    return folder


def _leaks(text: str, secret: str = SECRET) -> bool:
    """The secret in any of the quotings a runtime or a serialiser gives it."""
    forms = {secret, json.dumps(secret)[1:-1], repr(secret)[1:-1], secret.encode("unicode_escape").decode()}
    return any(f in text for f in forms) or "S3cr3t" in text


@pytest.fixture(scope="module")
def srv(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    tmp = tmp_path_factory.mktemp("masked-errors")
    s = start_server(tmp, _bundle_dir(tmp))
    try:
        yield s
    finally:
        s.stop()


def _ask(srv: ServerProcess, tool: str, args: dict[str, object], context: dict[str, object] | None = None,
         ) -> pb.DecideResponse:
    with srv.client() as c:
        return c.decide(agent={"id": "bot-1", "team": "red"}, tool=tool, args=args, context=context)


@pytest.mark.parametrize("tool", ["login.map", "login.regex"])
def test_a_condition_error_on_a_masked_value_is_denied_without_quoting_it(srv: ServerProcess, tool: str) -> None:
    resp = _ask(srv, tool, {"password": SECRET})
    assert resp.outcome == pb.DENY
    assert "condition error" in resp.reasons[0].text and "[masked]" in resp.reasons[0].text
    with srv.client() as c:
        rec = c.get_decision(resp.decision_id)
    assert not _leaks(str(rec)) and not _leaks(rec.SerializeToString().decode("utf-8", "replace"))
    assert "[masked]" in rec.reasons[0].text


def test_no_served_or_stored_text_holds_the_secret(srv: ServerProcess, tmp_path: Path) -> None:
    ids = [_ask(srv, t, {"password": SECRET}).decision_id for t in ("login.map", "login.regex")]
    ids.append(_ask(srv, "login.ctx", {}, {"vault": {"pin": SECRET}}).decision_id)
    with grpc.insecure_channel(srv.target) as ch:
        listed = pb_grpc.QueriesStub(ch).ListDecisions(pb.ListDecisionsRequest(limit=100), timeout=10)
        watched = pb_grpc.QueriesStub(ch).WatchDecisions(pb.WatchDecisionsRequest(after_id="0"), timeout=10)
        first: list[pb.DecisionRecord] = []
        for batch in watched:
            first.extend(batch.decisions)
            if {d.decision_id for d in first} >= set(ids):
                break
        watched.cancel()
    assert {d.decision_id for d in listed.decisions} >= set(ids)
    assert not _leaks(str(listed)) and not _leaks(str(first))
    log = subprocess.run([sys.executable, "-m", "decider", "log", "--db", srv.db_url, "--format", "jsonl"],
                         capture_output=True, text=True, cwd=ROOT, timeout=60)
    assert log.returncode == 0 and all(i in log.stdout for i in ids) and not _leaks(log.stdout)
    receiver = Receiver()
    try:
        out = subprocess.run([sys.executable, "-m", "decider", "export", "--db", srv.db_url, "--to", "webhook",
                              "--url", receiver.url, "--once", "--timeout", "5"],
                             capture_output=True, text=True, cwd=ROOT, timeout=60)
    finally:
        receiver.stop()
    exported = b"".join(receiver.bodies).decode()
    assert out.returncode == 0, out.stderr
    assert all(i in exported for i in ids) and not _leaks(exported)
    assert not _leaks(srv.log())
    db_file = Path(srv.db_url.removeprefix("sqlite:///"))
    raw = b"".join(p.read_bytes() for p in db_file.parent.glob(db_file.name + "*"))
    assert SECRET.encode() not in raw and b"S3cr3t" not in raw


def test_every_quoting_and_any_fragment_is_scrubbed(tmp_path: Path) -> None:
    bundle = load_bundle(_bundle_dir(tmp_path))
    for secret in (SECRET, "ab\\q'c\n", "ünï\u0007x", "pa ss", "1234"):
        for tool in ("login.map", "login.regex"):
            req = pb.DecideRequest()
            req.agent.id, req.tool.name = "bot-1", tool
            req.tool.args.update({"password": secret})
            d = evaluate(bundle, req)
            for text in (*d.errors, *(r.text for r in d.reasons)):
                assert not _leaks(text, secret), text
    # A fragment the runtime chose to quote (RE2 quotes the bad part of a pattern) withholds the text.
    assert scrub_text("invalid regular expression: missing ): S3cr3t", [SECRET]) == WITHHELD
    # A number is scrubbed as the runtime prints it.
    assert "4821" not in scrub_text("Key not found in map : 4821.0", ["4821", "4821.0"])


def test_a_schema_violation_on_a_masked_value_does_not_quote_it(tmp_path: Path) -> None:
    folder = _bundle_dir(tmp_path)
    (folder / "bundle.yaml").write_text(BUNDLE + """\
  tools:
    "login.pin":
      args: {type: object, properties: {password: {type: integer}}}
""")
    bundle = load_bundle(folder)
    req = pb.DecideRequest()
    req.agent.id, req.tool.name = "bot-1", "login.pin"
    req.tool.args.update({"password": SECRET})
    d = evaluate(bundle, req)
    assert (d.outcome, d.deciding_rule) == (pb.DENY, "invalid_arguments")
    assert "$.password" in d.reasons[0].text and not _leaks(d.reasons[0].text), d.reasons[0].text


def test_masked_values_of_a_request_with_a_nan_keep_the_number_and_take_null_as_nothing() -> None:
    # `engine.decide` called directly skips validate_request, so the arguments may hold a NaN: its
    # text is masked like any value, and a masked null contributes no text (it was "0" before).
    from decider.client import build_request
    from decider.engine.scrub import masked_values

    req = build_request(agent={"id": "a"}, tool="t", args={"pin": "4711", "n": float("nan"), "z": None})
    assert masked_values(req, ["tool.args.pin", "tool.args.n", "tool.args.z"]) == ["4711", "nan"]
