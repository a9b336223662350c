"""One line of the decision stream (`decider stream`, exporters): the exported record plus its
journal position. Here, below the CLI and the exporters that both write it."""

from __future__ import annotations

from typing import Any

from decider.record.record import DecisionRecord

__all__ = ["line_of"]


def line_of(row: dict[str, Any]) -> dict[str, Any]:
    """One stream line: the exported record plus its journal position."""
    seq, change = row.pop("seq"), row.pop("change")
    return {"seq": seq, "change": change, **DecisionRecord.from_row(row).to_json()}
