"""Where one tools/call's time goes through `decider gateway mcp`, hop by hop (C = 1).

    .venv/bin/python tools/bench/gateway_hops.py                # 10 s of back-to-back calls
    .venv/bin/python tools/bench/gateway_hops.py --seconds 5

The setup of gateway_bench.py (a local `decider serve`, the gateway over stdio, mcp-server-time
behind it), but the gateway process is this file run as `--as-gateway …`: it patches timestamps into
the gateway's hops, then runs the real `decider gateway mcp`. Timestamps are time.perf_counter()
(CLOCK_MONOTONIC, one clock for every process), so the client's and the gateway's line up.

Per call, in order: client sent → gateway read the line → handler entered → Decide sent → Decide
answered → upstream request sent → upstream answered → reply written → client has the result.
Prints p50 / mean / p90 of each hop over the calls, the gateway's CPU per call, and in how many calls
the gateway started the call's ReportOutcome before it had written the reply.
"""

from __future__ import annotations

import argparse
import atexit
import bisect
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

HOPS = ["in", "handler", "decide>", "decide<", "upstream>", "upstream<", "out"]
LABELS = {
    ("client>", "in"): "client → gateway read the request",
    ("in", "handler"): "gateway: parse, dispatch (mcp SDK)",
    ("handler", "decide>"): "gateway: route, build the DecideRequest",
    ("decide>", "decide<"): "Decide round trip (the decision stream)",
    ("decide<", "upstream>"): "gateway: after the decision",
    ("upstream>", "upstream<"): "upstream round trip (stdio, mcp SDK client)",
    ("upstream<", "out"): "gateway: result → reply written (mcp SDK)",
    ("out", "client<"): "gateway → client has the result",
}


def as_gateway(argv: list[str]) -> int:
    """Run `decider gateway mcp` with timestamps at its hops, written to $GATEWAY_HOPS_OUT at exit."""
    from decider.cli.main import main
    from decider.gateway import decisions, proxy, stdio, upstreams

    marks: list[tuple[str, float]] = []
    clock = time.perf_counter

    def wrap(cls: Any, name: str, before: str | None, after: str | None) -> None:
        orig = getattr(cls, name)

        async def patched(*a: Any, **kw: Any) -> Any:
            if before:
                marks.append((before, clock()))
            out = await orig(*a, **kw)
            if after:
                marks.append((after, clock()))
            return out

        setattr(cls, name, patched)

    wrap(stdio._Lines, "__anext__", None, "in")
    wrap(stdio._Writer, "write", "out", None)
    wrap(proxy.Gateway, "call_tool", "handler", None)
    wrap(decisions.DeciderLink, "decide", "decide>", "decide<")
    wrap(upstreams.UpstreamConnection, "call", "upstream>", "upstream<")
    wrap(decisions.DeciderLink, "report", "report>", None)

    def dump() -> None:
        Path(os.environ["GATEWAY_HOPS_OUT"]).write_text("".join(f"{k} {t:.7f}\n" for k, t in marks))

    atexit.register(dump)
    return main(argv)


async def drive(cfg: Path, out: Path, seconds: float) -> tuple[list[tuple[float, float]], float]:
    from gateway_bench import children, cpu_s
    from mcp import ClientSession, StdioServerParameters, stdio_client

    params = StdioServerParameters(command=sys.executable, args=[__file__, "--as-gateway", "gateway", "mcp",
                                                                 "--config", str(cfg), "--log-level", "warning"],
                                   env={**os.environ, "GATEWAY_HOPS_OUT": str(out)})
    calls: list[tuple[float, float]] = []
    async with stdio_client(params, errlog=open(os.devnull, "w")) as (r, w), ClientSession(r, w) as s:  # noqa: SIM115
        await s.initialize()
        for _ in range(50):   # warm-up
            await s.call_tool("time__get_current_time", {"timezone": "UTC"})
        gw = next(k for k in children(os.getpid()) if b"--as-gateway" in Path(f"/proc/{k}/cmdline").read_bytes())
        c0 = cpu_s(gw)
        end = time.perf_counter() + seconds
        while time.perf_counter() < end:
            t0 = time.perf_counter()
            res = await s.call_tool("time__get_current_time", {"timezone": "UTC"})
            calls.append((t0, time.perf_counter()))
            if res.is_error:
                raise SystemExit(f"call failed: {res}")
        gw_cpu_ms = (cpu_s(gw) - c0) * 1000 / len(calls)
    return calls, gw_cpu_ms


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "--as-gateway":
        sys.exit(as_gateway(sys.argv[2:]))
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seconds", type=float, default=10.0, help="measured seconds of back-to-back calls")
    args = ap.parse_args()

    import anyio

    sys.path.insert(0, str(Path(__file__).parent))
    from gateway_bench import start_decider, write_gateway_config

    with tempfile.TemporaryDirectory(prefix="gateway-hops-") as t:
        tmp = Path(t)
        decider, target = start_decider(tmp)
        cfg = write_gateway_config(tmp, target)
        out = tmp / "marks.txt"
        try:
            calls, gw_cpu_ms = anyio.run(drive, cfg, out, args.seconds)
        finally:
            decider.terminate()
            decider.wait(20)
        marks = sorted((float(t), k) for k, t in (line.split() for line in out.read_text().splitlines()))
    times = [m[0] for m in marks]
    hops: dict[tuple[str, str], list[float]] = {}
    totals: list[float] = []
    report_first = 0
    for t0, t1 in calls:
        seen: dict[str, float] = {}
        for t, k in marks[bisect.bisect_left(times, t0):bisect.bisect_right(times, t1)]:
            seen.setdefault(k, t)
        if not all(k in seen for k in HOPS):
            continue
        # this call's ReportOutcome (queued once the upstream answered) started before the reply went out?
        lo, hi = bisect.bisect_left(times, seen["upstream<"]), bisect.bisect_right(times, seen["out"])
        report_first += any(k == "report>" for _, k in marks[lo:hi])
        pts = [("client>", t0)] + [(k, seen[k]) for k in HOPS] + [("client<", t1)]
        for (a, ta), (b, tb) in zip(pts, pts[1:], strict=False):
            hops.setdefault((a, b), []).append((tb - ta) * 1000)
        totals.append((t1 - t0) * 1000)
    print(f"{len(totals)} calls at C=1 through the gateway, load average {os.getloadavg()[0]:.2f}; "
          f"gateway CPU {gw_cpu_ms:.2f} ms per call")
    print(f"{'hop':48} {'p50 ms':>7} {'mean ms':>7} {'p90 ms':>7}")
    for key, v in [*hops.items(), (("total", ""), totals)]:
        v.sort()
        label = LABELS.get(key, "total (client side)")
        print(f"{label:48} {statistics.median(v):>7.3f} {statistics.mean(v):>7.3f} {v[int(len(v) * 0.9)]:>7.3f}")
    print(f"ReportOutcome sent before the reply was written: {report_first} of {len(totals)} calls")


if __name__ == "__main__":
    main()
