"""Turn a reader's input into (record, position) pairs.

Every reader takes either an already parsed JSON value (one document: a dict, or an array whose
items are records) or an iterable of JSONL lines. Lines are parsed one at a time so a large log
streams; the position (`file.jsonl:17`, `file.json[3]`) is what error messages and
`TraceCall.source` show.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import Any

from decider.replay.traces._parse import json_loads
from decider.replay.traces.errors import TraceFormatError

__all__ = ["iter_records", "ObjOrLines"]

ObjOrLines = dict[str, Any] | list[Any] | Iterable[str]


def iter_records(obj_or_lines: ObjOrLines, source: str) -> Iterator[tuple[Any, str]]:
    if isinstance(obj_or_lines, dict):
        yield obj_or_lines, source
        return
    if isinstance(obj_or_lines, list) and not (obj_or_lines and isinstance(obj_or_lines[0], str)):
        for i, item in enumerate(obj_or_lines):
            yield item, f"{source}[{i}]"
        return
    for lineno, line in enumerate(obj_or_lines, 1):
        if not line or line.isspace():
            continue
        try:
            record = json_loads(line if line[0] not in " \t\ufeff" else line.lstrip(" \t\ufeff"))
        except ValueError as err:
            raise TraceFormatError(f"{source}:{lineno}", f"invalid JSON: {err}") from None
        yield record, f"{source}:{lineno}"
