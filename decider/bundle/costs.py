"""A tool's default estimated cost (`spec.tools.<name>.cost`, SPEC §11): a number, or a CEL
expression over the call (`tool.args.pages * 0.01`), used when a request carries no estimate.

Compiled once with the bundle, in its CEL environment (a typo is a `file:line:col` build error);
evaluated per call only for a tool that declares one and a request that gave none.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

from cel_expr_python import cel

from decider.cel.env import CelError, compile_errors

__all__ = ["ToolCost", "compile_cost", "NUMERIC"]

NUMERIC = (cel.Type.INT, cel.Type.UINT, cel.Type.DOUBLE, cel.Type.DYN)


@dataclass(frozen=True, slots=True)
class ToolCost:
    constant: float | None                 # a number in the catalogue
    program: cel.Expression | None = None  # else a CEL expression over the call
    text: str = ""

    def of(self, activation: Callable[[], object]) -> float:
        """The estimate for one call; ValueError naming why when the expression gives no cost."""
        if self.constant is not None:
            return self.constant
        assert self.program is not None
        try:
            value = self.program.eval(activation())
        except RuntimeError as e:   # cost or iteration limits
            raise ValueError(str(e)) from None
        if str(value.type()) == "ERROR":
            raise ValueError(str(value.value()))
        v = value.plain_value()
        if isinstance(v, bool) or not isinstance(v, (int, float)):
            raise ValueError(f"`{self.text}` gave {v!r}, not a number")
        if not math.isfinite(v) or v < 0:
            raise ValueError(f"`{self.text}` gave {v}; a cost is a finite number >= 0")
        return float(v)


def compile_cost(value: float | str, env: cel.Env) -> ToolCost | list[CelError]:
    if not isinstance(value, str):
        return ToolCost(float(value))
    try:
        program = env.compile(value)
    except RuntimeError as e:
        return compile_errors(value, e)
    rtype = program.return_type()
    if rtype not in NUMERIC:
        return [CelError(1, 1, f"a cost must be a number, this expression is {rtype.name()}")]
    return ToolCost(None, program, value)
