"""Bundle files: build, sign, verify and read `<name>-<version>-<revision12>.bundle` archives.

A bundle file is a gzip-compressed tar holding, in this order:

- `manifest.json` — name, version, revision, every source file with its sha256 and size, build
  time and builder (canonical JSON: sorted keys, no spaces, UTF-8);
- `manifest.sig` — optional: an Ed25519 signature over the exact bytes of `manifest.json`;
- `src/<path>` — the sources, exactly as in the folder.

The signature covers the manifest and the manifest covers every file, so a file added, removed
or changed after signing fails verification, and the message names the file.

The archive is deterministic (same sources, same builder → byte-identical file): entries sorted,
mtime 0, uid/gid 0, no user names, mode 0644, gzip header without name or time. The manifest's
`build_time` would break that if it were the wall clock, so it is taken from `--build-time`, else
from `SOURCE_DATE_EPOCH` (the reproducible-builds convention), else left null ("not stamped").
Ed25519 signatures are deterministic too, so a signed bundle is reproducible as well.
"""

from __future__ import annotations

import base64
import gzip
import hashlib
import io
import json
import os
import tarfile
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from decider.bundle.revision import revision_of
from decider.errors import DeciderError

__all__ = [
    "BundleFile",
    "BundleVerifyError",
    "FORMAT",
    "MANIFEST",
    "SIGNATURE",
    "build_archive",
    "build_manifest",
    "bundle_file_name",
    "generate_keypair",
    "key_id",
    "load_private_key",
    "load_public_key",
    "read_archive_bytes",
    "read_bundle_bytes",
    "read_bundle_file",
    "sign_archive",
]

FORMAT = "decider-bundle/1"
MANIFEST = "manifest.json"
SIGNATURE = "manifest.sig"
SRC = "src/"
# A bundle is policy text: kilobytes. Refuse archives that would expand to something absurd. Every
# size is checked before anything of that size is read (see `_scan`), so a hostile archive costs at
# most about MAX_TOTAL_BYTES of memory whatever its headers claim.
MAX_MEMBER_BYTES = 8 << 20
MAX_TOTAL_BYTES = 32 << 20        # all members together
MAX_MEMBERS = 10_000
MAX_HEADER_BYTES = 64 << 10       # a PAX or GNU long-name header: a path and a few keys
MAX_TAR_BYTES = MAX_TOTAL_BYTES + (16 << 20)   # the whole uncompressed tar: members, headers, padding
MAX_ARCHIVE_BYTES = MAX_TOTAL_BYTES           # the .bundle file itself (compressed)
_EXTENDED_HEADERS = {b"x": "PAX header", b"g": "PAX global header", b"L": "GNU long name", b"K": "GNU long link"}


class BundleVerifyError(DeciderError):
    """A bundle file failed verification; `problems` lists every reason, each naming its file."""

    def __init__(self, source: str, problems: list[str]) -> None:
        self.source = source
        self.problems = problems
        super().__init__(f"{source}: bundle verification failed: " + "; ".join(problems))


@dataclass(frozen=True, slots=True)
class BundleFile:
    """A verified bundle file, in memory."""

    manifest: dict[str, Any]
    manifest_bytes: bytes
    files: dict[str, bytes]            # relative path → content, as in the source folder
    signature: dict[str, Any] | None   # the parsed manifest.sig, if any
    signature_verified: bool           # True only when checked against a public key

    @property
    def name(self) -> str:
        return str(self.manifest["name"])

    @property
    def version(self) -> str:
        return str(self.manifest["version"])

    @property
    def revision(self) -> str:
        return str(self.manifest["revision"])

    @property
    def signed(self) -> bool:
        return self.signature is not None


def bundle_file_name(name: str, version: str, revision: str) -> str:
    return f"{name}-{version}-{revision[:12]}.bundle"


def _canonical(value: Any) -> bytes:
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode("utf-8")


def build_time_default() -> str | None:
    """`SOURCE_DATE_EPOCH` as ISO-8601 UTC, or None: never the wall clock (see module doc)."""
    epoch = os.environ.get("SOURCE_DATE_EPOCH", "").strip()
    if not epoch:
        return None
    try:
        return datetime.fromtimestamp(int(epoch), tz=timezone.utc).isoformat()
    except ValueError:
        raise DeciderError(f"SOURCE_DATE_EPOCH: not an integer: {epoch!r}") from None


def _builder() -> str:
    try:
        from importlib.metadata import version

        return f"decider {version('decider')}"
    except Exception:  # noqa: BLE001 - running from a source tree without metadata
        return "decider"


def build_manifest(name: str, version: str, revision: str, files: dict[str, bytes],
                   build_time: str | None) -> bytes:
    manifest = {
        "format": FORMAT,
        "name": name,
        "version": version,
        "revision": revision,
        "files": [{"path": rel, "sha256": hashlib.sha256(files[rel]).hexdigest(), "size": len(files[rel])}
                  for rel in sorted(files)],
        "build_time": build_time,
        "builder": _builder(),
    }
    return _canonical(manifest) + b"\n"


def _tar_member(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    info.mtime = 0
    info.mode = 0o644
    info.uid = info.gid = 0
    info.uname = info.gname = ""
    info.type = tarfile.REGTYPE
    tar.addfile(info, io.BytesIO(data))


def build_archive(manifest_bytes: bytes, files: dict[str, bytes], signature: bytes | None = None) -> bytes:
    """The deterministic tar.gz bytes for a manifest, its sources and an optional signature."""
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w", format=tarfile.PAX_FORMAT) as tar:
        _tar_member(tar, MANIFEST, manifest_bytes)
        if signature is not None:
            _tar_member(tar, SIGNATURE, signature)
        for rel in sorted(files):
            _tar_member(tar, SRC + rel, files[rel])
    out = io.BytesIO()
    # filename="" and mtime=0: the gzip header holds neither the output name nor the time.
    with gzip.GzipFile(filename="", mode="wb", fileobj=out, compresslevel=9, mtime=0) as gz:
        gz.write(raw.getvalue())
    return out.getvalue()


# ---- keys and signatures ----

def generate_keypair() -> tuple[bytes, bytes]:
    """A new Ed25519 key pair as (private PKCS#8 PEM, public SubjectPublicKeyInfo PEM)."""
    key = Ed25519PrivateKey.generate()
    private = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                serialization.NoEncryption())
    public = key.public_key().public_bytes(serialization.Encoding.PEM,
                                           serialization.PublicFormat.SubjectPublicKeyInfo)
    return private, public


def load_private_key(path: str | Path) -> Ed25519PrivateKey:
    try:
        key = serialization.load_pem_private_key(Path(path).read_bytes(), password=None)
    except (OSError, ValueError, TypeError) as e:
        raise DeciderError(f"{path}: cannot read an Ed25519 private key: {e}") from None
    if not isinstance(key, Ed25519PrivateKey):
        raise DeciderError(f"{path}: not an Ed25519 private key")
    return key


def load_public_key(path: str | Path) -> Ed25519PublicKey:
    try:
        data = Path(path).read_bytes()
        key = serialization.load_pem_public_key(data)
    except (OSError, ValueError, TypeError) as e:
        raise DeciderError(f"{path}: cannot read an Ed25519 public key: {e}") from None
    if not isinstance(key, Ed25519PublicKey):
        raise DeciderError(f"{path}: not an Ed25519 public key")
    return key


def key_id(public: Ed25519PublicKey) -> str:
    """A short fingerprint of a public key, to tell which key signed a bundle."""
    raw = public.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return hashlib.sha256(raw).hexdigest()[:16]


def sign_archive(data: bytes, key: Ed25519PrivateKey, source: str = "bundle") -> bytes:
    """The same bundle with a (new) signature over its manifest. The bundle is verified first:
    signing a tampered bundle would vouch for it."""
    bf = read_bundle_bytes(data, source)
    sig = key.sign(bf.manifest_bytes)
    signature = _canonical({"algorithm": "ed25519", "key_id": key_id(key.public_key()),
                            "signature": base64.b64encode(sig).decode("ascii")}) + b"\n"
    return build_archive(bf.manifest_bytes, bf.files, signature)


# ---- reading and verifying ----

def read_archive_bytes(path: str | Path) -> bytes:
    """A .bundle file's bytes; refused before reading when it is larger than any bundle can be."""
    try:
        with open(path, "rb") as f:
            size = os.fstat(f.fileno()).st_size
            if size > MAX_ARCHIVE_BYTES:
                raise BundleVerifyError(str(path), [f"file is {size} bytes; the limit is {MAX_ARCHIVE_BYTES}"])
            return f.read(MAX_ARCHIVE_BYTES + 1)
    except OSError as e:
        raise BundleVerifyError(str(path), [f"cannot read: {e.strerror or e}"]) from None


def read_bundle_file(path: str | Path, pubkey: Ed25519PublicKey | None = None,
                     require_signature: bool = False) -> BundleFile:
    return read_bundle_bytes(read_archive_bytes(path), str(path), pubkey, require_signature)


def read_bundle_bytes(data: bytes, source: str, pubkey: Ed25519PublicKey | None = None,
                      require_signature: bool = False) -> BundleFile:
    """Unpack and verify a bundle in memory: manifest well-formed, every listed file present with
    its hash, no unlisted file, revision = hash of the sources. A signature present is checked
    against `pubkey` when one is given; `require_signature` makes an unsigned (or unverifiable)
    bundle an error. Raises BundleVerifyError listing every problem."""
    members = _unpack(data, source)
    problems: list[str] = []
    manifest_bytes = members.pop(MANIFEST, None)
    sig_bytes = members.pop(SIGNATURE, None)
    if manifest_bytes is None:
        raise BundleVerifyError(source, [f"{MANIFEST}: missing"])
    try:
        manifest = json.loads(manifest_bytes)
        if not isinstance(manifest, dict):
            raise ValueError("not a JSON object")
    except ValueError as e:
        raise BundleVerifyError(source, [f"{MANIFEST}: not valid JSON: {e}"]) from None
    if manifest.get("format") != FORMAT:
        raise BundleVerifyError(source, [f"{MANIFEST}: format must be {FORMAT!r}, got {manifest.get('format')!r}"])
    for key in ("name", "version", "revision"):
        if not isinstance(manifest.get(key), str) or not manifest[key]:
            problems.append(f"{MANIFEST}: {key} is missing")
    listed = manifest.get("files")
    if not isinstance(listed, list):
        raise BundleVerifyError(source, [*problems, f"{MANIFEST}: files is missing"])

    files: dict[str, bytes] = {}
    unknown: list[str] = []
    for name, content in members.items():
        if name.startswith(SRC):
            files[name[len(SRC):]] = content
        else:
            unknown.append(name)
    problems += [f"{name}: unexpected entry in a bundle file (added)" for name in sorted(unknown)]

    expected: dict[str, str] = {}
    for entry in listed:
        if not isinstance(entry, dict) or not isinstance(entry.get("path"), str) \
                or not isinstance(entry.get("sha256"), str):
            problems.append(f"{MANIFEST}: malformed file entry {entry!r}")
            continue
        expected[entry["path"]] = entry["sha256"]
    for rel in sorted(set(expected) | set(files)):
        if rel not in files:
            problems.append(f"{rel}: listed in the manifest but missing from the bundle (removed)")
        elif rel not in expected:
            problems.append(f"{rel}: not listed in the manifest (added)")
        elif hashlib.sha256(files[rel]).hexdigest() != expected[rel]:
            problems.append(f"{rel}: sha256 does not match the manifest (changed)")
    if not problems:

        actual = revision_of(files)
        if actual != manifest["revision"]:
            problems.append(f"{MANIFEST}: revision {manifest['revision'][:12]} is not the sources' {actual[:12]}")

    signature: dict[str, Any] | None = None
    if sig_bytes is not None:
        try:
            signature = json.loads(sig_bytes)
            if not isinstance(signature, dict) or signature.get("algorithm") != "ed25519":
                raise ValueError("algorithm must be ed25519")
            raw_sig = base64.b64decode(signature["signature"], validate=True)
        except (ValueError, KeyError, TypeError) as e:
            problems.append(f"{SIGNATURE}: malformed: {e}")
            signature, raw_sig = None, b""
    verified = False
    if signature is None and sig_bytes is None and require_signature:
        problems.append(f"{SIGNATURE}: the bundle is not signed")
    elif signature is not None and pubkey is None and require_signature:
        problems.append(f"{SIGNATURE}: a signature is required but no public key was given")
    elif signature is not None and pubkey is not None:
        try:
            pubkey.verify(raw_sig, manifest_bytes)
            verified = True
        except InvalidSignature:
            problems.append(f"{SIGNATURE}: signature does not verify with key {key_id(pubkey)} "
                            f"(signed by {signature.get('key_id', '?')}): {MANIFEST} was altered or "
                            f"signed with another key")
    if problems:
        raise BundleVerifyError(source, problems)
    return BundleFile(manifest, manifest_bytes, files, signature, verified)


def _unpack(data: bytes, source: str) -> dict[str, bytes]:
    """Every regular file in the archive, by name. Anything else (links, devices, absolute or
    `..` paths, duplicates, oversized members) is refused: a bundle is only text files."""
    _scan(data, source)   # every header and member size bounded before tarfile reads anything
    out: dict[str, bytes] = {}
    total = 0
    try:
        with tarfile.open(fileobj=io.BytesIO(data), mode="r:gz") as tar:
            for n, info in enumerate(tar):
                if n >= MAX_MEMBERS:
                    raise BundleVerifyError(source, [f"more than {MAX_MEMBERS} entries"])
                name = info.name
                if info.isdir():
                    continue
                parts = name.split("/")
                if not info.isreg() or info.issparse() or name.startswith("/") or ".." in parts or "" in parts:
                    raise BundleVerifyError(source, [f"{name}: not a plain relative file (refused)"])
                if info.size > MAX_MEMBER_BYTES or total + info.size > MAX_TOTAL_BYTES:
                    raise BundleVerifyError(source, [f"{name}: too large ({info.size} bytes)"])
                if name in out:
                    raise BundleVerifyError(source, [f"{name}: appears twice (added)"])
                f = tar.extractfile(info)
                out[name] = f.read() if f is not None else b""
                total += info.size
    except (tarfile.TarError, OSError, EOFError, gzip.BadGzipFile) as e:
        raise BundleVerifyError(source, [f"not a bundle file (tar.gz): {e}"]) from None
    return out


def _gunzip(data: bytes, source: str) -> Iterator[bytes]:
    """The decompressed stream in chunks of at most 1 MiB, never more than MAX_TAR_BYTES in all
    (a gzip bomb stops here). Concatenated gzip members are followed, as gzip itself does."""
    total = 0
    rest = data
    try:
        while rest[:2] == b"\x1f\x8b":
            d = zlib.decompressobj(wbits=31)
            buf = rest
            while not d.eof:
                chunk = d.decompress(buf, 1 << 20)
                buf = d.unconsumed_tail
                total += len(chunk)
                if total > MAX_TAR_BYTES:
                    raise BundleVerifyError(source, [f"expands to more than {MAX_TAR_BYTES} bytes (refused)"])
                if chunk:
                    yield chunk
                elif not buf:
                    return   # truncated: tarfile reports it below
            rest = d.unused_data
    except zlib.error as e:
        raise BundleVerifyError(source, [f"not a bundle file (tar.gz): {e}"]) from None


def _scan(data: bytes, source: str) -> None:
    """Walk the tar headers of the decompressed stream, keeping none of it, and refuse the archive
    as soon as a header claims a size above its limit: tarfile would otherwise read a PAX header
    of any claimed size into memory before we could look at it (1.5 GB from a 1.5 MB file)."""
    pending = b""
    skip = 0
    members = 0
    total = 0
    for chunk in _gunzip(data, source):
        i, n = 0, len(chunk)
        while i < n:
            if skip:
                step = min(skip, n - i)
                skip -= step
                i += step
                continue
            take = 512 - len(pending)
            pending += chunk[i:i + take]
            i += take
            if len(pending) < 512:
                break
            header, pending = pending, b""
            if header.count(0) == 512:
                continue   # end-of-archive blocks
            name = header[:100].split(b"\0", 1)[0].decode("latin-1")
            try:
                size = tarfile.nti(header[124:136])
            except tarfile.TarError:
                raise BundleVerifyError(source, [f"{name}: not a bundle file (bad tar header)"]) from None
            kind = _EXTENDED_HEADERS.get(header[156:157])
            if kind is not None and size > MAX_HEADER_BYTES:
                raise BundleVerifyError(source, [f"{name}: {kind} of {size} bytes; the limit is {MAX_HEADER_BYTES}"])
            if kind is None:
                members += 1
                total += max(size, 0)
                if members > MAX_MEMBERS:
                    raise BundleVerifyError(source, [f"more than {MAX_MEMBERS} entries"])
                if size > MAX_MEMBER_BYTES or total > MAX_TOTAL_BYTES:
                    raise BundleVerifyError(source, [f"{name}: too large ({size} bytes)"])
            if size < 0:
                raise BundleVerifyError(source, [f"{name}: negative size"])
            skip = (size + 511) // 512 * 512
