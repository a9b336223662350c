"""Bundle files: deterministic build, verification that names the tampered file, Ed25519 signatures,
and loading a .bundle exactly like the folder it was built from."""

from __future__ import annotations

import gzip
import io
import shutil
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest

from decider.bundle.archive import (
    BundleVerifyError,
    build_archive,
    generate_keypair,
    read_bundle_bytes,
    read_bundle_file,
    sign_archive,
)
from decider.bundle.compile import load_bundle
from decider.errors import PolicyLoadError

from .helpers import POLICIES, ROOT, tar_gz

EXAMPLE_BUNDLES = ROOT / "bundles"


def cli(*args: str, cwd: Path = ROOT, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "decider", *args], capture_output=True, text=True, cwd=cwd,
                          timeout=60, env=env)


def build(folder: Path, out: Path, *extra: str) -> Path:
    run = cli("bundle", "build", str(folder), "-o", str(out), *extra)
    assert run.returncode == 0, run.stderr
    return Path(run.stdout.split()[0])


def members(data: bytes) -> dict[str, bytes]:
    with tarfile.open(fileobj=io.BytesIO(data), mode="r:gz") as tar:
        return {m.name: tar.extractfile(m).read() for m in tar if m.isreg()}  # type: ignore[union-attr]


def repack(data: bytes, change: dict[str, bytes | None]) -> bytes:
    """The archive with members replaced, added (bytes) or removed (None), the manifest untouched."""
    files = members(data)
    for name, content in change.items():
        if content is None:
            files.pop(name, None)
        else:
            files[name] = content
    return tar_gz(files)


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build(POLICIES, tmp_path_factory.mktemp("built"))


@pytest.fixture(scope="module")
def keys(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("keys")
    out = {}
    for who in ("good", "other"):
        private, public = generate_keypair()
        (d / f"{who}.pem").write_bytes(private)
        (d / f"{who}.pub.pem").write_bytes(public)
        out[who], out[f"{who}.pub"] = d / f"{who}.pem", d / f"{who}.pub.pem"
    return out


def test_build_names_the_file_name_version_revision12(built: Path) -> None:
    rev = load_bundle(POLICIES).revision
    assert built.name == f"acme-agents-1.0.0-{rev[:12]}.bundle"


def test_same_sources_build_a_byte_identical_file(tmp_path: Path, built: Path) -> None:
    # A copy of the sources (new mtimes, new inodes) built again gives the very same bytes.
    copy = tmp_path / "copy"
    shutil.copytree(POLICIES, copy)
    again = build(copy, tmp_path / "out")
    assert again.read_bytes() == built.read_bytes()


def test_manifest_lists_every_file_with_its_hash_and_the_build_time_from_source_date_epoch(tmp_path: Path) -> None:
    import json
    import os

    out = tmp_path / "stamped"
    run = cli("bundle", "build", str(POLICIES), "-o", str(out), env={**os.environ, "SOURCE_DATE_EPOCH": "1700000000"})
    assert run.returncode == 0, run.stderr
    bf = read_bundle_file(next(out.iterdir()))
    m = bf.manifest
    assert m["build_time"] == "2023-11-14T22:13:20+00:00"
    assert m["builder"].startswith("decider")
    # Policy files, and the list files bundle.yaml names (spec.lists): they are sources too.
    sources = {p.relative_to(POLICIES).as_posix() for p in [*POLICIES.glob("*.yaml"), *POLICIES.glob("lists/*")]}
    assert {"lists/shorteners.yaml", "lists/disposable_mail.csv"} <= sources
    assert {f["path"] for f in m["files"]} == {p for p in sources if not p.endswith("_test.yaml")}
    assert all(len(f["sha256"]) == 64 for f in m["files"])
    assert json.loads(bf.manifest_bytes)["revision"] == load_bundle(POLICIES).revision


def test_a_bundle_file_loads_with_the_folders_revision(built: Path) -> None:
    assert load_bundle(built).revision == load_bundle(POLICIES).revision


def test_build_refuses_a_folder_that_does_not_check(tmp_path: Path) -> None:
    bad = tmp_path / "bad"
    shutil.copytree(POLICIES, bad)
    (bad / "files.yaml").write_text((bad / "files.yaml").read_text().replace("tool.name ==", "tool.nmae =="))
    run = cli("bundle", "build", str(bad), "-o", str(tmp_path / "out"))
    assert run.returncode == 1
    assert "files.yaml:12:" in run.stderr and "nmae" in run.stderr
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())


def test_errors_inside_a_bundle_file_name_the_file_inside_it(tmp_path: Path) -> None:
    files = dict(read_bundle_file(build(POLICIES, tmp_path)).files)
    files["files.yaml"] = files["files.yaml"].replace(b"tool.name ==", b"tool.nmae ==")
    from decider.bundle.archive import build_manifest
    from decider.bundle.compile import revision_of

    path = tmp_path / "broken.bundle"
    path.write_bytes(build_archive(build_manifest("acme-agents", "1.0.0", revision_of(files), files, None), files))
    with pytest.raises(PolicyLoadError) as e:
        load_bundle(path)
    assert str(e.value.errors[0]).startswith(f"{path}!/files.yaml:12:")


@pytest.mark.parametrize(("change", "message"), [
    ({"src/files.yaml": b"apiVersion: decider/v1\n"}, "files.yaml: sha256 does not match the manifest (changed)"),
    ({"src/evil.yaml": b"apiVersion: decider/v1\n"}, "evil.yaml: not listed in the manifest (added)"),
    ({"src/shell.yaml": None}, "shell.yaml: listed in the manifest but missing from the bundle (removed)"),
    ({"payload.sh": b"#!/bin/sh\n"}, "payload.sh: unexpected entry in a bundle file (added)"),
])
def test_an_added_removed_or_changed_file_fails_verification_naming_it(
        built: Path, change: dict[str, bytes | None], message: str) -> None:
    with pytest.raises(BundleVerifyError) as e:
        read_bundle_bytes(repack(built.read_bytes(), change), "t.bundle")
    assert message in e.value.problems


def test_cli_verify_fails_naming_the_changed_file(tmp_path: Path, built: Path) -> None:
    bad = tmp_path / "tampered.bundle"
    bad.write_bytes(repack(built.read_bytes(), {"src/payments.yaml": b"kind: Policy\n"}))
    run = cli("bundle", "verify", str(bad))
    assert run.returncode == 1
    assert "payments.yaml: sha256 does not match the manifest (changed)" in run.stderr


def test_sign_then_verify_with_the_public_key(tmp_path: Path, built: Path, keys: dict[str, Path]) -> None:
    f = tmp_path / built.name
    shutil.copy(built, f)
    assert cli("bundle", "sign", str(f), "--key", str(keys["good"])).returncode == 0
    ok = cli("bundle", "verify", str(f), "--pubkey", str(keys["good.pub"]))
    assert ok.returncode == 0 and "signature verified" in ok.stdout
    wrong = cli("bundle", "verify", str(f), "--pubkey", str(keys["other.pub"]))
    assert wrong.returncode == 1 and "signature does not verify" in wrong.stderr
    unsigned = cli("bundle", "verify", str(built), "--pubkey", str(keys["good.pub"]))
    assert unsigned.returncode == 1 and "not signed" in unsigned.stderr


def test_signing_is_deterministic_and_build_can_sign(tmp_path: Path, built: Path, keys: dict[str, Path]) -> None:
    f = tmp_path / "a.bundle"
    shutil.copy(built, f)
    cli("bundle", "sign", str(f), "--key", str(keys["good"]))
    signed_at_build = build(POLICIES, tmp_path / "b", "--sign", str(keys["good"]))
    assert signed_at_build.read_bytes() == f.read_bytes()


def test_a_signed_bundle_with_a_rewritten_manifest_fails(tmp_path: Path, built: Path, keys: dict[str, Path]) -> None:
    from decider.bundle.archive import build_manifest, load_private_key, load_public_key
    from decider.bundle.compile import revision_of

    signed = sign_archive(built.read_bytes(), load_private_key(keys["good"]))
    # An attacker changes a file AND rewrites the manifest to match: only the signature catches it.
    files = dict(members(signed))
    sources = {k[4:]: v for k, v in files.items() if k.startswith("src/")}
    sources["files.yaml"] = sources["files.yaml"].replace(b"effect: deny", b"effect: allow")
    manifest = build_manifest("acme-agents", "1.0.0", revision_of(sources), sources, None)
    forged = build_archive(manifest, sources, files["manifest.sig"])
    read_bundle_bytes(forged, "forged")  # hashes are consistent…
    with pytest.raises(BundleVerifyError, match="signature does not verify"):
        read_bundle_bytes(forged, "forged", load_public_key(keys["good.pub"]), require_signature=True)


def test_keygen_writes_a_private_key_only_its_owner_can_read(tmp_path: Path) -> None:
    run = cli("bundle", "keygen", "-o", str(tmp_path / "k"))
    assert run.returncode == 0, run.stderr
    assert (tmp_path / "k.pem").stat().st_mode & 0o077 == 0
    assert b"PUBLIC KEY" in (tmp_path / "k.pub.pem").read_bytes()
    assert cli("bundle", "keygen", "-o", str(tmp_path / "k")).returncode == 2  # never overwrites silently


def test_example_bundle_in_bundles_is_up_to_date_and_verifies() -> None:
    found = sorted(EXAMPLE_BUNDLES.glob("*.bundle"))
    assert len(found) == 1, f"bundles/ should hold exactly the example bundle, found {found}"
    committed = found[0]
    bf = read_bundle_file(committed)
    bundle = load_bundle(POLICIES)
    assert committed.name == f"{bundle.name}-{bundle.version}-{bundle.revision[:12]}.bundle", \
        "policies/ changed: rebuild with `decider bundle build policies -o bundles` (and delete the old file)"
    assert bf.revision == bundle.revision and load_bundle(committed).revision == bundle.revision
    from decider.bundle.archive import build_manifest
    from decider.policy.loader import load_source

    src = load_source(POLICIES)
    fresh = build_archive(build_manifest(bundle.name, bundle.version, bundle.revision, src.files,
                                         bf.manifest.get("build_time")), src.files)
    # Compare the tar, not the gzip stream: another zlib may compress the same bytes differently.
    assert gzip.decompress(fresh) == gzip.decompress(committed.read_bytes())
