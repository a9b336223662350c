"""Finding trace files, opening them (gzip by content, stdin) and telling JSON from JSONL.

A JSONL file is handed to the readers as lines, so it streams; a JSON document (pretty-printed or
on one line) is parsed whole.
"""

from __future__ import annotations

import errno
import gzip
import io
import itertools
import json
import os
import sys
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any

from decider.replay.traces._gc import gc_paused
from decider.replay.traces.errors import TraceFormatError

__all__ = ["iter_trace_files", "open_text", "sniff", "STDIN"]

STDIN = "-"
# In a folder only these are read (so a README next to the traces is not an error); a file named
# explicitly is read whatever its name. `.gz` after any of them is fine.
_TRACE_SUFFIXES = (".json", ".jsonl", ".ndjson", ".log", ".traj", ".parquet")  # .parquet: decision archives
_GZIP_MAGIC = b"\x1f\x8b"


def _is_trace_name(path: Path) -> bool:
    name = path.name.lower()
    if name.endswith(".manifest.json"):   # beside each decision archive (decider/archives): not a trace
        return False
    if name.endswith(".gz"):
        name = name[:-3]
    return name.endswith(_TRACE_SUFFIXES)


def iter_trace_files(paths: Iterable[str | os.PathLike[str]]) -> Iterator[str]:
    """Each path as given; folders expanded recursively in sorted order, skipping hidden entries."""
    for p in map(os.fspath, paths):
        if p == STDIN:
            yield p
            continue
        path = Path(p)
        if path.is_dir():
            found = [f for f in path.rglob("*")
                     if f.is_file() and _is_trace_name(f)
                     and not any(part.startswith(".") for part in f.relative_to(path).parts)]
            yield from (str(f) for f in sorted(found))
        elif path.exists():
            yield p
        else:
            raise FileNotFoundError(errno.ENOENT, "no such trace file or folder", p)


def _peekable(stream: IO[bytes]) -> io.BufferedReader:
    return stream if isinstance(stream, io.BufferedReader) else io.BufferedReader(stream)  # type: ignore[arg-type]


@contextmanager
def open_text(path: str) -> Iterator[IO[str]]:
    """The file (or stdin for `-`) as UTF-8 text, gunzipped when its first bytes say gzip."""
    raw: IO[bytes] = sys.stdin.buffer if path == STDIN else open(path, "rb")
    text: io.TextIOWrapper | None = None
    try:
        buffered = _peekable(raw)
        binary: IO[bytes] = buffered
        if buffered.peek(2)[:2] == _GZIP_MAGIC:
            binary = gzip.GzipFile(fileobj=buffered, mode="rb")
        text = io.TextIOWrapper(binary, encoding="utf-8-sig")
        yield text
    finally:
        if path != STDIN:
            raw.close()
        elif text is not None:
            text.detach()  # closing the wrapper would close the process's stdin


def sniff(stream: IO[str], source: str) -> tuple[Any, Any, int | None]:
    """(what to hand a reader, a sample record to detect the format from, the line of a one-line file).

    The first non-blank line decides: if it is a complete JSON value, the file is JSONL (or a
    one-line JSON document) and is handed over as lines; otherwise it is one (pretty-printed) JSON
    document, parsed whole. A file whose only record is that line is handed over parsed, with its
    line number, so that its calls still say where they are (`file.jsonl:1`, as in a longer file).
    """
    head: list[str] = []
    for line in stream:
        head.append(line)
        if not line.isspace():
            break
    if not head or head[-1].isspace():
        raise TraceFormatError(source, "the file is empty")
    try:
        # A one-line JSON document (the usual export) is parsed here whole: no collection
        # passes over its many containers while they are built (see _gc.py).
        with gc_paused():
            first = json.loads(head[-1])
    except ValueError:
        text = "".join(head) + stream.read()
        try:
            with gc_paused():
                doc = json.loads(text)
        except ValueError as err:
            raise TraceFormatError(source, f"neither JSON nor JSONL: {err}") from None
        return doc, doc, None
    lineno = len(head)
    for line in stream:
        head.append(line)
        if not line.isspace():
            return itertools.chain(head, stream), first, None
    return first, first, lineno
