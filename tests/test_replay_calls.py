"""`decider replay --format json` lists every call, and every call says where it is in its file,
a one-line JSONL file too (issue 26 item 7)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from decider.replay.traces import read_traces

from .helpers import ROOT
from .traces.conftest import FIXTURES

BUNDLE = """\
apiVersion: decider/v1
kind: Bundle
metadata: {name: calls, version: 1.0.0}
spec: {default: allow}
"""

POLICY = """\
apiVersion: decider/v1
kind: Policy
metadata: {name: files}
spec:
  rules:
    - id: no-passwd
      effect: deny
      when: tool.name == "read_file" && tool.args.path == "/etc/passwd"
"""


def _lines(fixture: str) -> list[str]:
    return [line for line in (FIXTURES / fixture).read_text().splitlines() if line.strip()]


def cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "decider", *args], capture_output=True, text=True, cwd=ROOT,
                          timeout=120)


@pytest.mark.parametrize("fixture", ["decider/decisions.jsonl", "openai/responses_items.jsonl",
                                     "langchain/toolemu_gpt-4o-mini_cases.jsonl"])
def test_a_call_from_a_one_line_file_has_the_line_number(tmp_path: Path, fixture: str) -> None:
    # The line that holds a call, alone in its file, after a blank line: the call is at line 2.
    for line in _lines(fixture):
        one = tmp_path / "one.jsonl"
        one.write_text("\n" + line + "\n")
        calls = list(read_traces([str(one)]))
        if calls:
            break
    assert calls
    for c in calls:
        assert c.source.startswith(f"{one}:2"), c.source


def test_replay_json_lists_every_call_with_its_location(tmp_path: Path) -> None:
    bundle = tmp_path / "bundle"
    bundle.mkdir()
    (bundle / "bundle.yaml").write_text(BUNDLE)
    (bundle / "files.yaml").write_text(POLICY)
    lines = _lines("decider/decisions.jsonl")
    many = tmp_path / "many.jsonl"
    many.write_text("\n".join(lines) + "\n")
    one = tmp_path / "one.jsonl"
    one.write_text(lines[1] + "\n")
    out = cli("replay", str(bundle), str(many), str(one), "--format", "json")
    assert out.returncode == 0, out.stderr
    report = json.loads(out.stdout)
    calls = report["calls"]
    assert len(calls) == report["total"] == len(lines) + 1
    assert [c["source"] for c in calls] == [f"{many}:{i}" for i in range(1, len(lines) + 1)] + [f"{one}:1"]
    # Allowed calls are listed too, not only the flagged ones, each as `--format jsonl` prints it.
    assert {c["outcome"] for c in calls} >= {"ALLOW", "DENY"}
    jsonl = [json.loads(x) for x in cli("replay", str(bundle), str(many), str(one), "--format", "jsonl")
             .stdout.splitlines()]
    assert calls == jsonl
    assert [c["rule"] for c in calls if c["outcome"] == "DENY"] == ["no-passwd", "no-passwd"]
