"""Issue 24 item 5: a control byte (NUL, BEL, ESC) in a policy file. Before: hot reload failed
silently (`last_reload_error` empty, only a "bundle poll failed" warning, never retried) and
`decider check` exited with a traceback. Now the error is named with file:line:col in
Status.last_reload_error, the reload metric and the log, the good bundle keeps serving, and a fixed
file is picked up again."""

from __future__ import annotations

import shutil
import urllib.request
from pathlib import Path

import pytest

from decider.v1 import decider_pb2 as pb

from .helpers import POLICIES, start_server
from .prometheus import free_port
from .test_bundle_lifecycle import EXTRA, POLL, cli, read_readme, status, wait_for, write_atomically

# The byte lands inside the `when:` string on line 9, column 44 of readme.yaml.
BAD = {name: EXTRA.replace('endsWith("README.md")', f'endsWith("README{c}.md")')
       for name, c in (("nul", "\x00"), ("bel", "\x07"), ("esc", "\x1b"), ("del", "\x7f"))}


def _metric(port: int, line_start: str) -> float:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as resp:
        for line in resp.read().decode().splitlines():
            if line.startswith(line_start):
                return float(line.split()[-1])
    return 0.0


@pytest.mark.parametrize("byte", sorted(BAD))
def test_decider_check_names_the_control_byte_with_its_position(tmp_path: Path, byte: str) -> None:
    src = tmp_path / "src"
    shutil.copytree(POLICIES, src)
    (src / "readme.yaml").write_text(BAD[byte])
    run = cli("check", str(src))
    assert run.returncode == 1 and "Traceback" not in run.stderr + run.stdout
    out = run.stdout + run.stderr
    assert f"{src / 'readme.yaml'}:9:44: control character U+" in out, out


def test_a_control_byte_fails_hot_reload_loudly_and_the_good_bundle_keeps_serving(tmp_path: Path) -> None:
    src = tmp_path / "src"
    shutil.copytree(POLICIES, src)
    metrics = free_port()
    srv = start_server(tmp_path, src, None, *POLL, "--metrics-listen", f"127.0.0.1:{metrics}")
    try:
        failed = 'decider_bundle_reloads_total{result="failed"}'
        before = _metric(metrics, failed)
        for name in ("nul", "bel"):
            good = status(srv).active.revision
            write_atomically(src / "readme.yaml", BAD[name].encode())
            wait_for(lambda: "readme.yaml:9:44" in status(srv).last_reload_error)
            err = status(srv).last_reload_error
            assert f"U+{ord(BAD[name][BAD[name].index('README') + 6]):04X}" in err, err
            assert read_readme(srv).outcome == pb.ALLOW and read_readme(srv).bundle.revision == good
            write_atomically(src / "readme.yaml", b"")   # an empty file: valid, no documents
            wait_for(lambda: status(srv).last_reload_error == "")
        assert _metric(metrics, failed) >= before + 2
        assert "readme.yaml:9:44: control character U+0000" in srv.log()
        assert "bundle poll failed" not in srv.log()
        write_atomically(src / "readme.yaml", EXTRA.encode())   # fixed: the new revision goes live
        wait_for(lambda: read_readme(srv).outcome == pb.DENY)
    finally:
        srv.stop()
