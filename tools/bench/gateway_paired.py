"""Paired A/B of two gateway builds on a loaded machine: both gateways open at once over stdio (each with
its own mcp-server-time, one `decider serve`), calls alternating A, B, A, B… at C=1, so whatever else runs
on the machine hits both alike; CPU per call of each gateway process from /proc, and p50. Odd rounds start
with B. A build is a directory holding a `decider` package (e.g. `git archive <commit> decider | tar -x -C
DIR`), or `.` for this tree.

    .venv/bin/python tools/bench/gateway_paired.py /tmp/gw-a . --calls 600 --rounds 4
    .venv/bin/python tools/bench/gateway_paired.py /tmp/gw-a /tmp/gw-a        # A against A: the noise
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from contextlib import AsyncExitStack
from pathlib import Path
from typing import Any

import anyio
from mcp import ClientSession, StdioServerParameters, stdio_client

sys.path.insert(0, str(Path(__file__).resolve().parent))
import gateway_bench as gb  # noqa: E402

TOOL = "time__get_current_time"


async def open_gateway(tree: Path, cfg: Path, stack: AsyncExitStack) -> tuple[ClientSession, int]:
    """The gateway of `tree` (started in it: `python -m` puts the working directory first on sys.path)."""
    before = set(gb.children(os.getpid()))
    cmd = gb.gateway_command(cfg)
    params = StdioServerParameters(command=cmd[0], args=cmd[1:], cwd=str(tree),
                                   env=dict(os.environ, PYTHONPATH=str(tree)))
    r, w = await stack.enter_async_context(stdio_client(params, errlog=open(os.devnull, "w")))  # noqa: SIM115
    s = await stack.enter_async_context(ClientSession(r, w))
    await s.initialize()
    [pid] = set(gb.children(os.getpid())) - before
    return s, pid


async def run(a: Path, b: Path, calls: int, rounds: int, tmp: Path, addr: str) -> None:
    cfg = gb.write_gateway_config(tmp, addr, "stdio")
    cpu: dict[str, list[float]] = {"A": [], "B": []}
    for rnd in range(rounds):
        async with AsyncExitStack() as stack:
            sa, pa = await open_gateway(a, cfg, stack)
            sb, pb = await open_gateway(b, cfg, stack)
            order: list[tuple[str, Any, int]] = [("A", sa, pa), ("B", sb, pb)]
            if rnd % 2:
                order.reverse()
            for _ in range(30):   # warm-up
                for _, s, _ in order:
                    await s.call_tool(TOOL, {"timezone": "UTC"})
            c0 = {k: gb.cpu_s(p) for k, _, p in order}
            lat: dict[str, list[float]] = {"A": [], "B": []}
            for _ in range(calls):
                for k, s, _ in order:
                    t0 = time.perf_counter()
                    r = await s.call_tool(TOOL, {"timezone": "UTC"})
                    lat[k].append(time.perf_counter() - t0)
                    if r.is_error:
                        raise SystemExit(f"{k}: call failed: {r}")
            c1 = {k: gb.cpu_s(p) for k, _, p in order}
        for k in ("A", "B"):
            cpu[k].append((c1[k] - c0[k]) * 1000 / calls)
        print(f"round {rnd + 1}: " + "  ".join(f"{k}: gateway CPU {cpu[k][-1]:.3f} ms/call, p50 "
                                              f"{statistics.median(lat[k]) * 1000:.2f} ms" for k in ("A", "B")), flush=True)
    ratios = [y / x for x, y in zip(cpu["A"], cpu["B"], strict=True)]
    print(f"gateway CPU per call, B/A per round: {', '.join(f'{r:.3f}' for r in ratios)}; "
          f"median {statistics.median(ratios):.3f} (load average now {os.getloadavg()[0]:.2f})")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("a", type=Path)
    ap.add_argument("b", type=Path)
    ap.add_argument("--calls", type=int, default=600, help="calls per gateway per round")
    ap.add_argument("--rounds", type=int, default=4)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="gateway-paired-") as t:
        tmp = Path(t)
        decider, addr = gb.start_decider(tmp)
        try:
            anyio.run(run, args.a.resolve(), args.b.resolve(), args.calls, args.rounds, tmp, addr)
        finally:
            decider.terminate()
            decider.wait(20)


if __name__ == "__main__":
    main()
