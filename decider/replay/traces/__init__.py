"""Trace readers for `decider replay` and `decider diff`.

`read_traces(paths)` turns recorded agent sessions into `TraceCall`s, whatever recorded them:

>>> from decider.replay.traces import read_traces
>>> for call in read_traces(["traces/"]):                      # doctest: +SKIP
...     print(call.tool_name, call.arguments, call.source)

Files, folders (recursive, sorted), `-` for stdin and gzip are accepted; the format is detected
from the content, or forced with `format=` (one of `FORMATS`). A file no reader recognises raises
`TraceFormatError` naming it. A call whose arguments cannot be read is yielded with
`indeterminate` set, never dropped.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

from decider.archives.files import is_archive, log_lines
from decider.replay.traces._files import STDIN, iter_trace_files, open_text, sniff
from decider.replay.traces._gc import unfreezing
from decider.replay.traces._parse import model_from_filename
from decider.replay.traces.claude_code import looks_like_claude_code, read_claude_code
from decider.replay.traces.decider_log import looks_like_decider_log, read_decider_log
from decider.replay.traces.errors import TraceError, TraceFormatError
from decider.replay.traces.langchain import looks_like_langchain, read_langchain
from decider.replay.traces.mcp import looks_like_mcp, read_mcp
from decider.replay.traces.model import TraceCall
from decider.replay.traces.openai import looks_like_openai, read_openai
from decider.replay.traces.openhands import looks_like_openhands, read_openhands
from decider.replay.traces.otel import looks_like_otel, read_otel

__all__ = [
    "FORMATS",
    "TraceCall",
    "TraceError",
    "TraceFormatError",
    "detect_format",
    "read_traces",
    "read_openai",
    "read_otel",
    "read_openhands",
    "read_mcp",
    "read_decider_log",
    "read_langchain",
    "read_claude_code",
]

FORMATS: tuple[str, ...] = ("openai", "otel", "openhands", "mcp", "decider", "langchain", "claude-code")

_READERS: dict[str, Callable[..., Iterator[TraceCall]]] = {
    "openai": read_openai,
    "otel": read_otel,
    "openhands": read_openhands,
    "mcp": read_mcp,
    "decider": read_decider_log,
    "langchain": read_langchain,
    "claude-code": read_claude_code,
}

# Most specific first: a decision record or an OTel document is unmistakable, while the OpenAI
# reader accepts anything message-shaped, so it is tried last.
_DETECTORS: tuple[tuple[str, Callable[[Any], bool]], ...] = (
    ("decider", looks_like_decider_log),
    ("claude-code", looks_like_claude_code),
    ("otel", looks_like_otel),
    ("openhands", looks_like_openhands),
    ("mcp", looks_like_mcp),
    ("langchain", looks_like_langchain),
    ("openai", looks_like_openai),
)


def detect_format(sample: Any) -> str | None:
    """The format of a parsed JSON document or of a JSONL file's first record, or None."""
    if isinstance(sample, list):  # an array of runs, messages, events or JSON-RPC messages
        if not sample:
            return None
        sample = sample[0]
    for name, test in _DETECTORS:
        if test(sample):
            return name
    return None


def _describe(sample: Any) -> str:
    if isinstance(sample, list):
        return f"a JSON array of {type(sample[0]).__name__ if sample else 'nothing'}"
    if isinstance(sample, dict):
        keys = ", ".join(sorted(sample)[:8])
        return f"an object with keys {keys}" if keys else "an empty object"
    return f"a JSON {type(sample).__name__}"


def _read_file(path: str, format: str | None) -> Iterator[TraceCall]:
    source = "<stdin>" if path == STDIN else path
    if path != STDIN and is_archive(path):
        # A decision archive (decider db prune): its records as `decider log --format jsonl` printed them.
        yield from read_decider_log(log_lines(Path(path)), source)
        return
    with open_text(path) as stream:
        try:
            payload, sample, lineno = sniff(stream, source)
        except (UnicodeDecodeError, OSError, EOFError) as err:
            raise TraceFormatError(source, f"cannot read: {err}") from err
        fmt = format or detect_format(sample)
        if fmt is None:
            raise TraceFormatError(source, f"not a trace format decider reads ({', '.join(FORMATS)}): "
                                           f"found {_describe(sample)}")
        kwargs: dict[str, Any] = {}
        if fmt in ("openai", "langchain") and path != STDIN:
            kwargs["model"] = model_from_filename(path)
        # A one-line file's record is where a JSONL line's would be: `file.jsonl:1` (an array's items
        # are located by index already).
        where = f"{source}:{lineno}" if lineno is not None and isinstance(payload, dict) else source
        try:
            yield from _READERS[fmt](payload, where, **kwargs)
        except (UnicodeDecodeError, OSError, EOFError) as err:
            raise TraceFormatError(source, f"cannot read: {err}") from err
        except (AttributeError, TypeError, KeyError, IndexError) as err:
            # A value of the wrong JSON type where the format has a fixed shape.
            raise TraceFormatError(source, f"malformed {fmt} trace: {type(err).__name__}: {err}") from err


def read_traces(paths: Sequence[str | os.PathLike[str]], format: str | None = None) -> Iterator[TraceCall]:
    """Every tool call in the given files and folders, in file order then call order.

    `format` forces a reader (one of `FORMATS`); without it each file's content decides.
    Raises `TraceFormatError` (naming the file and, when known, the line) for a file that is not
    a trace, and `FileNotFoundError` for a path that does not exist.
    """
    if format is not None and format not in FORMATS:
        raise ValueError(f"unknown trace format {format!r}; expected one of {', '.join(FORMATS)}")
    if isinstance(paths, str):
        raise TypeError("read_traces takes a sequence of paths, not one path string")

    files = list(iter_trace_files(paths))  # a missing path fails now, not at the first call

    def generate() -> Iterator[TraceCall]:
        with unfreezing():
            for path in files:
                yield from _read_file(path, format)

    return generate()
