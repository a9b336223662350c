"""µs per `validate_request` (decider/api/validate.py, on the Decide hot path), by request shape.

    python tools/bench/validate_bench.py                    # 5 rounds x 50,000 calls per shape
    python tools/bench/validate_bench.py --baseline OLD.py  # also time another validate.py, interleaved

`--baseline` loads a validate.py from a file (e.g. `git show main:decider/api/validate.py > /tmp/v.py`)
and alternates it with the current one round by round, so both see the same machine load; the best
round of each (process CPU time per call) is reported. Bounded by count (rounds x calls). Table on stdout, JSON to
tools/bench/results/validate-<time>.json.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import sys
import time
import timeit
from collections.abc import Callable
from datetime import datetime, timezone
from pathlib import Path
from types import ModuleType
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parents[1]))

from decider.api import validate as current  # noqa: E402
from decider.client import build_request  # noqa: E402

RESULTS_DIR = HERE / "results"


def shapes() -> dict[str, Any]:
    full_agent = {"id": "refund-bot", "instance_id": "i-1", "team": "finance", "owner": "user:olga",
                  "workflow": "refunds", "model": "gpt-5", "session_id": "s-1",
                  "labels": {"tier": "prod", "region": "eu"}, "capabilities": ["refunds", "read"]}
    return {
        "minimal": build_request(agent={"id": "a"}, tool="work.do"),
        "typical": build_request(agent={"id": "coder-7", "team": "platform", "model": "claude-opus-4"},
                                 tool="fs.read", args={"path": "/workspace/a.txt"}),
        "full identity": build_request(agent=full_agent, tool="payments.refund", tool_server="mcp://billing",
                                       args={"amount": 2500, "order": "o-1"}, environment="production",
                                       estimated_cost=5.0, labels={"ticket": "T-1"}),
    }


def load(path: str) -> ModuleType:
    spec = importlib.util.spec_from_file_location("validate_baseline", path)
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def time_us(fn: Callable[[], None], number: int) -> float:
    # CPU time of this process, not wall time: on a shared machine the wall clock also counts the
    # time other processes held the core.
    return timeit.Timer(fn, timer=time.process_time).timeit(number=number) / number * 1e6


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--number", type=int, default=50_000)
    p.add_argument("--baseline", help="another validate.py to compare with")
    args = p.parse_args()
    modules: dict[str, ModuleType] = {"current": current}
    if args.baseline:
        modules = {"baseline": load(args.baseline), "current": current}
    best: dict[tuple[str, str], float] = {}
    for _ in range(args.rounds):
        for shape, req in shapes().items():
            for label, mod in modules.items():
                t = time_us(lambda mod=mod, req=req: mod.validate_request(req), args.number)
                best[(shape, label)] = min(best.get((shape, label), t), t)
    head = f"{'request':14}" + "".join(f"{label + ' µs':>14}" for label in modules)
    print(head + (f"{'delta µs':>10}" if args.baseline else ""))
    for shape in shapes():
        row = f"{shape:14}" + "".join(f"{best[(shape, label)]:14.2f}" for label in modules)
        if args.baseline:
            row += f"{best[(shape, 'current')] - best[(shape, 'baseline')]:+10.2f}"
        print(row)
    RESULTS_DIR.mkdir(exist_ok=True)
    out = RESULTS_DIR / f"validate-{datetime.now(timezone.utc).strftime('%Y%m%dT%H%M%S')}.json"
    out.write_text(json.dumps({"rounds": args.rounds, "number": args.number,
                               "best_us": {f"{s}/{m}": v for (s, m), v in best.items()}}, indent=2))
    print(f"\nwrote {out.relative_to(HERE.parents[1])}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
