"""Issue 24 item 7: a YAML document under every size limit still cost seconds and hundreds of MB:
one 1 MiB flow list (`[a,a,a,…]`, ~500,000 nodes) took 14.8 s and 431 MB before `check` refused it;
three in a 3.9 KB unsigned `.bundle` took `bundle verify` 43.9 s and 1.14 GB. Nodes are now counted
as they are composed (per document and per bundle) and the parse stops at the limit, over libyaml's
parser. Measured by the child's peak RSS (getrusage), never by time."""

from __future__ import annotations

from pathlib import Path

from decider.bundle.archive import build_archive, build_manifest
from decider.bundle.compile import revision_of
from decider.policy.loader import MAX_BUNDLE_NODES, MAX_DOCUMENT_NODES, MAX_FILE_BYTES

from .test_hostile_sources import BUNDLE, RSS_LIMIT_KB, folder, run_measured


def flow_list(items: int | None = None) -> str:
    """A flow list of `items` one-letter entries, or as many as fit just under MAX_FILE_BYTES."""
    n = items if items is not None else (MAX_FILE_BYTES - 16) // 2
    return "[" + "a," * (n - 1) + "a]\n"


def test_check_refuses_a_one_mib_flow_list_at_the_node_limit_with_small_memory(tmp_path: Path) -> None:
    text = flow_list()
    assert len(text.encode()) <= MAX_FILE_BYTES
    root = folder(tmp_path, **{"flow.yaml": text})
    code, out, rss = run_measured(["check", str(root)], tmp_path)
    assert code == 1
    col = 2 * MAX_DOCUMENT_NODES   # the first node over the limit: `[` then `a,` per item
    assert f"{root / 'flow.yaml'}:1:{col}: bad YAML: more than {MAX_DOCUMENT_NODES} nodes" in out, out
    assert rss < RSS_LIMIT_KB, f"peak RSS {rss} KB"


def test_files_under_the_document_limit_are_bounded_together(tmp_path: Path) -> None:
    per_file = MAX_BUNDLE_NODES // 3 + 1000   # each under the document limit, together over the bundle's
    assert per_file < MAX_DOCUMENT_NODES
    root = folder(tmp_path, **{f"f{i}.yaml": flow_list(per_file) for i in range(4)})
    code, out, rss = run_measured(["check", str(root)], tmp_path)
    assert code == 1
    assert f"{root / 'f2.yaml'}:1:" in out and f"the bundle's files hold more than {MAX_BUNDLE_NODES} nodes" in out, out
    assert f"{root / 'f3.yaml'}:1:1: bad YAML: the bundle's files hold more" in out   # at its first node
    assert rss < RSS_LIMIT_KB, f"peak RSS {rss} KB"


def test_bundle_verify_of_a_small_unsigned_bundle_of_flow_lists_is_bounded(tmp_path: Path) -> None:
    files = {"bundle.yaml": BUNDLE.encode(), **{f"l{i}.yaml": flow_list().encode() for i in range(3)}}
    manifest = build_manifest("hostile", "1.0.0", revision_of(files), files, None)
    path = tmp_path / "hostile.bundle"
    path.write_bytes(build_archive(manifest, files))
    assert path.stat().st_size < 64 * 1024   # ~3 MiB of YAML compresses to a few KB
    code, out, rss = run_measured(["bundle", "verify", str(path)], tmp_path)
    assert code != 0
    assert f"{path}!/l0.yaml:1:" in out and f"more than {MAX_DOCUMENT_NODES} nodes" in out, out
    assert rss < RSS_LIMIT_KB, f"peak RSS {rss} KB"


def test_a_reload_onto_a_flow_list_is_refused_at_the_limit_and_the_server_stays_small(tmp_path: Path) -> None:
    import shutil

    from .helpers import POLICIES, start_server
    from .test_bundle_lifecycle import POLL, read_readme, status, wait_for, write_atomically

    src = tmp_path / "src"
    shutil.copytree(POLICIES, src)
    srv = start_server(tmp_path, src, None, *POLL)
    try:
        good = status(srv).active.revision
        write_atomically(src / "flow.yaml", flow_list().encode())
        wait_for(lambda: f"more than {MAX_DOCUMENT_NODES} nodes" in status(srv).last_reload_error, timeout=60)
        assert f"{src / 'flow.yaml'}:1:" in status(srv).last_reload_error
        assert read_readme(srv).bundle.revision == good
        peak_kb = next(int(line.split()[1]) for line in Path(f"/proc/{srv.proc.pid}/status").read_text().splitlines()
                       if line.startswith("VmHWM:"))
        assert peak_kb < 2 * RSS_LIMIT_KB, f"server peak RSS {peak_kb} KB"
    finally:
        srv.stop()
