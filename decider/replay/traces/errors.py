"""Errors of the trace readers."""

from __future__ import annotations

from decider.errors import DeciderError

__all__ = ["TraceError", "TraceFormatError"]


class TraceError(DeciderError):
    """Base class of the errors raised while reading traces."""


class TraceFormatError(TraceError):
    """A trace file (or one record in it) is not in a format decider can read.

    `path` names the file, with the position when one is known (`run.jsonl:17`), so the message
    reads `run.jsonl:17: invalid JSON: Expecting ',' delimiter`.
    """

    def __init__(self, path: str, message: str) -> None:
        self.path = path
        self.message = message
        super().__init__(f"{path}: {message}")
