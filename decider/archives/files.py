"""Archive files: one file of decision records per UTC day (Parquet, zstd; or gzip JSON lines), each
with a manifest beside it (`<file>.manifest.json`: rows, first/last decision id, sha256 of the file).

A manifest is written only after its file was read back and found complete, and the file takes
its name only after that: a file under an archive's name always has its manifest. An interrupted
write leaves a hidden temporary file (or a manifest without its file), which readers ignore; its
records are still in the database, and the next prune writes them again. A file whose sha256 no longer matches its manifest is an error
(`ArchiveError`), never read silently.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import os
from collections.abc import Iterable, Iterator
from dataclasses import asdict, dataclass
from datetime import date, datetime, timezone
from pathlib import Path
from typing import Any

from decider.archives.schema import (
    DECISION_COLUMNS,
    SCHEMA_VERSION,
    arrow_schema,
    from_json_line,
    to_archive,
    to_json_line,
)
from decider.errors import DeciderError

__all__ = ["FORMATS", "Manifest", "ArchiveError", "write_day", "read_file", "archive_files", "read_manifest",
           "sha256_of", "is_archive", "is_manifest", "log_lines"]

FORMATS = ("parquet", "jsonl")
_SUFFIX = {"parquet": ".parquet", "jsonl": ".jsonl.gz"}
MANIFEST_SUFFIX = ".manifest.json"
ROW_GROUP = 10_000


class ArchiveError(DeciderError):
    """An archive that is not what its manifest says (or has none where one is required)."""


@dataclass(frozen=True, slots=True)
class Manifest:
    file: str                  # the archive's name, in the same folder
    table: str
    format: str
    schema_version: int
    day: str                   # the UTC day of its records (YYYY-MM-DD)
    rows: int
    first_decision_id: str
    last_decision_id: str
    sha256: str
    bytes: int
    created_at: str


def sha256_of(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _fsync_dir(folder: Path) -> None:
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _free_name(folder: Path, day: date, fmt: str) -> Path:
    """`decisions-DAY.parquet`, or `decisions-DAY.N.parquet` when a day is archived again (records
    held back earlier, a pending approval since resolved, or a prune interrupted before its delete)."""
    base, n = f"decisions-{day.isoformat()}", 1
    while True:
        name = f"{base}{_SUFFIX[fmt]}" if n == 1 else f"{base}.{n}{_SUFFIX[fmt]}"
        if not (folder / name).exists():
            return folder / name
        n += 1


def write_day(folder: Path, day: date, batches: Iterable[list[dict[str, Any]]], fmt: str = "parquet"
              ) -> tuple[Manifest, list[str]] | None:
    """Write one day's records (database rows, oldest first, in batches) to a new archive in
    `folder`, read it back, and only when it holds exactly what was written, write its manifest.

    Returns the manifest and the decision ids the archive was *read back* to hold (what a prune may
    delete), or None when there were no rows. Raises ArchiveError / OSError on any failure: then
    nothing may be deleted.
    """
    if fmt not in FORMATS:
        raise ValueError(f"unknown archive format {fmt!r}")
    try:
        return _write_day(folder, day, batches, fmt)
    except OSError as e:
        raise ArchiveError(f"{folder}: cannot write the archive of {day}: {e}; nothing was deleted") from e


def _write_day(folder: Path, day: date, batches: Iterable[list[dict[str, Any]]], fmt: str
               ) -> tuple[Manifest, list[str]] | None:
    # Order: the data under a hidden name, checked, then its manifest, then the data renamed into
    # place. So a file under an archive's name always has its manifest; a crash leaves at most a
    # hidden temporary file or a manifest without a file, which readers ignore.
    folder.mkdir(parents=True, exist_ok=True)
    final = _free_name(folder, day, fmt)
    tmp = folder / f".{final.name}.tmp"   # hidden: never read as an archive
    written: list[str] = []
    try:
        if fmt == "parquet":
            _write_parquet(tmp, batches, written)
        else:
            _write_jsonl(tmp, batches, written)
        if not written:
            return None
        digest = sha256_of(tmp)
        back = [r["decision_id"] for r in _read_rows(tmp, fmt)]
        if back != written:
            raise ArchiveError(f"{final}: read back {len(back)} records, wrote {len(written)}; nothing was deleted")
        manifest = Manifest(file=final.name, table="decisions", format=fmt, schema_version=SCHEMA_VERSION,
                            day=day.isoformat(), rows=len(back), first_decision_id=back[0],
                            last_decision_id=back[-1], sha256=digest, bytes=tmp.stat().st_size,
                            created_at=datetime.now(timezone.utc).isoformat(timespec="seconds"))
        mpath = folder / (final.name + MANIFEST_SUFFIX)
        mtmp = folder / f".{mpath.name}.tmp"
        with mtmp.open("w") as f:
            json.dump(asdict(manifest), f, indent=2)
            f.write("\n")
            f.flush()
            os.fsync(f.fileno())
        os.replace(mtmp, mpath)
        os.replace(tmp, final)
        _fsync_dir(folder)
    finally:
        tmp.unlink(missing_ok=True)
    return manifest, back


def _write_parquet(path: Path, batches: Iterable[list[dict[str, Any]]], written: list[str]) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    schema = arrow_schema(DECISION_COLUMNS, "decisions")
    pending: list[dict[str, Any]] = []
    with pq.ParquetWriter(path, schema, compression="zstd") as w:
        for rows in batches:
            pending.extend(to_archive(r) for r in rows)
            # Row groups of ROW_GROUP records, whatever the read batch: small groups compress badly.
            if len(pending) >= ROW_GROUP:
                w.write_table(pa.Table.from_pylist(pending, schema=schema))
                written.extend(r["decision_id"] for r in pending)
                pending = []
        if pending:
            w.write_table(pa.Table.from_pylist(pending, schema=schema))
            written.extend(r["decision_id"] for r in pending)
    with path.open("rb+") as f:
        os.fsync(f.fileno())


def _write_jsonl(path: Path, batches: Iterable[list[dict[str, Any]]], written: list[str]) -> None:
    with path.open("wb") as raw:
        with gzip.GzipFile(fileobj=raw, mode="wb", mtime=0) as gz:
            # First line: the schema, so the file says what it holds without its manifest.
            gz.write((json.dumps({"decider.table": "decisions", "decider.schema_version": SCHEMA_VERSION})
                      + "\n").encode())
            for rows in batches:
                for r in rows:
                    rec = to_json_line(to_archive(r))
                    gz.write((json.dumps(rec, separators=(",", ":"), ensure_ascii=False) + "\n").encode())
                    written.append(rec["decision_id"])
        raw.flush()
        os.fsync(raw.fileno())


def _format_of(path: Path) -> str:
    name = path.name
    if name.endswith(".parquet"):
        return "parquet"
    if name.endswith(".jsonl.gz"):
        return "jsonl"
    raise ArchiveError(f"{path}: not a decider archive (.parquet or .jsonl.gz)")


def _read_rows(path: Path, fmt: str) -> Iterator[dict[str, Any]]:
    if fmt == "parquet":
        import pyarrow.parquet as pq

        pf = pq.ParquetFile(path)
        version = int((pf.schema_arrow.metadata or {}).get(b"decider.schema_version", b"0"))
        if pf.schema_arrow.metadata is None or version > SCHEMA_VERSION or version < 1:
            raise ArchiveError(f"{path}: not a decider decisions archive of schema version ≤ {SCHEMA_VERSION}")
        for batch in pf.iter_batches(batch_size=2048):
            yield from batch.to_pylist()
        return
    with gzip.open(path, "rt", encoding="utf-8") as f:
        head = json.loads(f.readline() or "{}")
        if head.get("decider.table") != "decisions" or not 1 <= int(head.get("decider.schema_version", 0)) \
                <= SCHEMA_VERSION:
            raise ArchiveError(f"{path}: not a decider decisions archive of schema version ≤ {SCHEMA_VERSION}")
        for line in f:
            if line.strip():
                yield from_json_line(json.loads(line))


def read_manifest(path: Path) -> Manifest | None:
    mpath = path.with_name(path.name + MANIFEST_SUFFIX)
    if not mpath.exists():
        return None
    return Manifest(**json.loads(mpath.read_text()))


def read_file(path: Path, verify: bool = True) -> Iterator[dict[str, Any]]:
    """The records of one archive, oldest first, as database rows (without `args_hash`). With
    `verify`, the file must have its manifest and match it (sha256 before reading, row count and
    first/last id after)."""
    fmt = _format_of(path)
    manifest = read_manifest(path)
    if verify:
        if manifest is None:
            raise ArchiveError(f"{path}: no manifest ({path.name}{MANIFEST_SUFFIX}): an interrupted archive, "
                               "whose records are still in the database")
        if sha256_of(path) != manifest.sha256:
            raise ArchiveError(f"{path}: sha256 does not match its manifest: the file changed after it was written")
    n, first, last = 0, None, None
    for row in _read_rows(path, fmt):
        n += 1
        first = first or row["decision_id"]
        last = row["decision_id"]
        yield row
    if verify and manifest is not None and (n, first, last) != (
            manifest.rows, manifest.first_decision_id, manifest.last_decision_id):
        raise ArchiveError(f"{path}: holds {n} records ({first}…{last}), its manifest says {manifest.rows} "
                           f"({manifest.first_decision_id}…{manifest.last_decision_id})")


def _order(path: Path) -> tuple[str, int]:
    # decisions-DAY.parquet, then decisions-DAY.2.parquet …: a record archived twice is read last
    # in its newest state.
    parts = path.name.split(".")
    return parts[0], int(parts[1]) if parts[1].isdigit() else 1


def archive_files(paths: Iterable[str | os.PathLike[str]]) -> list[Path]:
    """The archives named by `paths`: a file as given (it must have a manifest), a folder's
    archives that have one (recursively, by name: oldest day first). A missing path is an error."""
    out: list[Path] = []
    for p in map(Path, paths):
        if p.is_dir():
            found = [f for f in p.rglob("decisions-*") if f.is_file() and not f.name.startswith(".")
                     and f.name.endswith(tuple(_SUFFIX.values())) and read_manifest(f) is not None]
            out.extend(sorted(found, key=_order))
        elif p.is_file():
            _format_of(p)
            out.append(p)
        else:
            raise ArchiveError(f"{p}: no such archive file or folder")
    return out


def is_manifest(path: str | os.PathLike[str]) -> bool:
    return os.fspath(path).endswith(MANIFEST_SUFFIX)


def is_archive(path: str | os.PathLike[str]) -> bool:
    """A Parquet file, or a `.jsonl.gz` with an archive manifest beside it (a gzip JSONL file that
    `decider log --format jsonl` wrote is read as the trace it is)."""
    p = Path(path)
    return p.name.endswith(".parquet") or (p.name.endswith(".jsonl.gz") and read_manifest(p) is not None)


def log_lines(path: Path) -> Iterator[str]:
    """An archive as the JSON lines `decider log --format jsonl` printed for its records while they
    were in the database (what `decider replay` reads)."""
    from decider.record.record import DecisionRecord

    for row in read_file(path):
        yield json.dumps(DecisionRecord.from_row(row).to_json(), separators=(",", ":"), ensure_ascii=False)
