"""The errors decider raises, as a small hierarchy.

Every error that comes from a policy source carries where it came from, so a user sees
`payments.yaml:14:11: undefined field 'teem'` rather than a stack trace.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["DeciderError", "SourceError", "PolicyLoadError", "InvalidRequest"]


class DeciderError(Exception):
    """Base class of every error decider raises on purpose."""


@dataclass(frozen=True, slots=True, order=True)
class SourceError:
    """One problem in a policy file, at a 1-based line and column."""

    file: str
    line: int
    column: int
    message: str

    def __str__(self) -> str:
        return f"{self.file}:{self.line}:{self.column}: {self.message}"


class PolicyLoadError(DeciderError):
    """A bundle source could not be loaded; `errors` lists every problem found, in file order."""

    def __init__(self, errors: list[SourceError]) -> None:
        self.errors = sorted(errors)
        super().__init__("\n".join(str(e) for e in self.errors))


class InvalidRequest(DeciderError):
    """A request is malformed; `field` names the offending field (e.g. `tool.args.blob`)."""

    def __init__(self, field: str, message: str) -> None:
        self.field = field
        self.message = message
        super().__init__(f"{field}: {message}")
