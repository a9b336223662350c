"""tools/call through `decider gateway mcp` vs directly to the same upstream (mcp-server-time, stdio).

    .venv/bin/python tools/bench/gateway_bench.py                 # C = 1 and 16, ~1 minute
    .venv/bin/python tools/bench/gateway_bench.py --calls 200 --concurrency 1 16

direct:  client ⇄ stdio ⇄ mcp-server-time
gateway: client ⇄ stdio ⇄ decider gateway mcp ⇄ stdio ⇄ mcp-server-time, with one Decide per call
         (over the gateway's DecideBatchStream to a local `decider serve`, SQLite, a one-rule allow bundle)
         and one ReportOutcome per call.
C concurrent calls are C callers sharing one client session (stdio carries one session per process).
Latency is client side per call. Server CPU-ms per call = utime+stime of the gateway process and of
the decider server process (from /proc/<pid>/stat, 10 ms ticks) over the measured calls / calls;
the upstream's CPU is shown apart (it is the same work in both modes), and so is the client's (this
process: the mcp SDK's client side of a call). Together, upstream + client CPU in the direct mode is
what the mcp SDK costs for one tools/call exchange at both ends — the gateway is both ends, so that
sum (plus gRPC to decider) is its floor.
Then decider's server CPU per Decide (on the stream) and per ReportOutcome, measured apart, and the
CPU the gateway's own gRPC client (DeciderLink, in this process) spends on each.
Prints a table; writes tools/bench/results/gateway.json.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import anyio
import yaml
from mcp import ClientSession, StdioServerParameters, stdio_client

ROOT = Path(__file__).resolve().parents[2]
RESULTS = ROOT / "tools" / "bench" / "results"
TICK = os.sysconf("SC_CLK_TCK")

BUNDLE = """\
apiVersion: decider/v1
kind: Bundle
metadata: {name: gateway-bench, version: 1.0.0}
spec:
  default: deny
  tools: {"get_current_time": {risk_tier: 0}}
"""
POLICY = """\
apiVersion: decider/v1
kind: Policy
metadata: {name: bench}
spec:
  match: {servers: ["mcp://time"]}
  rules:
    - {id: time-reads, effect: allow, when: 'tool.name == "get_current_time"'}
"""


def cpu_s(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICK   # utime + stime of the process (all threads)


def children(pid: int) -> list[int]:
    out = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            if int(stat.read_text().rsplit(")", 1)[1].split()[1]) == pid:
                out.append(int(stat.parent.name))
        except (OSError, ValueError, IndexError):
            continue
    return out


def write_gateway_config(tmp: Path, target: str) -> Path:
    """The bench gateway: stdio, one upstream (mcp-server-time), decider at `target`."""
    cfg = tmp / "gateway.yaml"
    cfg.write_text(yaml.safe_dump({
        "decider": {"target": target, "deadline": "5s"}, "agent": {"id": "bench-agent", "team": "bench"},
        "listen": "stdio", "upstreams": [{"name": "time", "command": [sys.executable, "-m", "mcp_server_time"]}]}))
    return cfg


def start_decider(tmp: Path) -> tuple[subprocess.Popen[bytes], str]:
    bundle = tmp / "bundle"
    bundle.mkdir()
    (bundle / "bundle.yaml").write_text(BUNDLE)
    (bundle / "bench.yaml").write_text(POLICY)
    port_file = tmp / "decider.port"
    proc = subprocess.Popen([sys.executable, "-m", "decider", "serve", "--dev", "--bundle", str(bundle), "--db",
                             f"sqlite:///{tmp / 'bench.db'}", "--listen", "127.0.0.1:0", "--port-file", str(port_file),
                             "--log-level", "warning"], stdout=subprocess.DEVNULL, stderr=(tmp / "decider.log").open("wb"))
    for _ in range(600):
        if port_file.exists() and port_file.read_text().strip():
            return proc, f"127.0.0.1:{port_file.read_text().strip()}"
        if proc.poll() is not None:
            raise SystemExit(f"decider serve exited: {(tmp / 'decider.log').read_text()}")
        time.sleep(0.05)
    proc.kill()
    raise SystemExit("decider serve did not start")


@asynccontextmanager
async def session_for(mode: str, cfg: Path) -> Any:
    if mode == "direct":
        params = StdioServerParameters(command=sys.executable, args=["-m", "mcp_server_time"])
        tool = "get_current_time"
    else:
        params = StdioServerParameters(command=sys.executable, args=["-m", "decider", "gateway", "mcp", "--config",
                                                                     str(cfg), "--log-level", "warning"])
        tool = "time__get_current_time"
    async with stdio_client(params, errlog=open(os.devnull, "w")) as (r, w), ClientSession(r, w) as s:  # noqa: SIM115
        await s.initialize()
        yield s, tool


def client_child(mode: str) -> tuple[int, int | None]:
    """(pid of the process our client talks to, pid of the upstream) among this process's children."""
    def cmd(pid: int) -> bytes:
        return Path(f"/proc/{pid}/cmdline").read_bytes()

    want = b"decider\0gateway\0mcp\0" if mode == "gateway" else b"mcp_server_time"
    top = next(k for k in children(os.getpid()) if want in cmd(k))
    up = top if mode == "direct" else next(k for k in children(top) if b"mcp_server_time" in cmd(k))
    return top, up


async def measure(mode: str, cfg: Path, conc: int, calls: int, decider_pid: int) -> dict[str, Any]:
    async with session_for(mode, cfg) as (s, tool):
        for _ in range(20):   # warm-up: imports, first decisions, SQLite pages
            r = await s.call_tool(tool, {"timezone": "UTC"})
            assert not r.is_error, r
        top, up = client_child(mode)
        lat: list[float] = []
        per = calls // conc

        async def caller() -> None:
            for _ in range(per):
                t0 = time.perf_counter()
                r = await s.call_tool(tool, {"timezone": "UTC"})
                lat.append(time.perf_counter() - t0)
                if r.is_error:
                    raise SystemExit(f"{mode}: call failed: {r}")

        cpu0 = {"gw": cpu_s(top), "decider": cpu_s(decider_pid), "up": cpu_s(up) if up else 0.0,
                "client": time.process_time()}
        t0 = time.perf_counter()
        async with anyio.create_task_group() as tg:
            for _ in range(conc):
                tg.start_soon(caller)
        wall = time.perf_counter() - t0
        cpu1 = {"gw": cpu_s(top), "decider": cpu_s(decider_pid), "up": cpu_s(up) if up else 0.0,
                "client": time.process_time()}
    n = len(lat)
    lat.sort()
    gw_cpu = (cpu1["gw"] - cpu0["gw"]) if mode == "gateway" else 0.0
    dec_cpu = (cpu1["decider"] - cpu0["decider"]) if mode == "gateway" else 0.0
    return {"mode": mode, "concurrency": conc, "calls": n, "calls_per_s": n / wall,
            "p50_ms": statistics.median(lat) * 1000, "p99_ms": lat[min(n - 1, int(n * 0.99))] * 1000,
            "gateway_cpu_ms_per_call": gw_cpu * 1000 / n, "decider_cpu_ms_per_call": dec_cpu * 1000 / n,
            "upstream_cpu_ms_per_call": (cpu1["up"] - cpu0["up"]) * 1000 / n,
            "client_cpu_ms_per_call": (cpu1["client"] - cpu0["client"]) * 1000 / n}


async def breakdown(target: str, decider_pid: int, n: int) -> dict[str, float]:
    """decider's server CPU per Decide on the gateway's decision stream and per ReportOutcome (the two
    RPCs a forwarded call costs), measured apart with the gateway's own DeciderLink."""
    from decider.client import build_request
    from decider.gateway.config import DeciderTarget
    from decider.gateway.decisions import DeciderLink

    link = DeciderLink(DeciderTarget(target=target, deadline_s=10))

    def req(i: int) -> Any:
        return build_request(agent={"id": "bench-agent"}, tool="get_current_time", tool_server="mcp://time",
                             args={"timezone": "UTC"}, call_id=f"b{i}")

    for i in range(20):
        await link.report((await link.decide(req(i))).decision_id, "ok")
    c0, p0, t0 = cpu_s(decider_pid), time.process_time(), time.perf_counter()
    ids = [(await link.decide(req(i))).decision_id for i in range(n)]
    c1, p1, t1 = cpu_s(decider_pid), time.process_time(), time.perf_counter()
    for d in ids:
        await link.report(d, "ok")
    c2, p2, t2 = cpu_s(decider_pid), time.process_time(), time.perf_counter()
    await link.close()
    return {"decide_stream_cpu_ms": (c1 - c0) * 1000 / n, "decide_stream_latency_ms": (t1 - t0) * 1000 / n,
            "decide_stream_link_cpu_ms": (p1 - p0) * 1000 / n,
            "report_outcome_cpu_ms": (c2 - c1) * 1000 / n, "report_outcome_latency_ms": (t2 - t1) * 1000 / n,
            "report_outcome_link_cpu_ms": (p2 - p1) * 1000 / n}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--calls", type=int, default=400, help="measured calls per cell")
    ap.add_argument("--concurrency", type=int, nargs="+", default=[1, 16])
    args = ap.parse_args()
    load = os.getloadavg()
    with tempfile.TemporaryDirectory(prefix="gateway-bench-") as t:
        tmp = Path(t)
        decider, target = start_decider(tmp)
        cfg = write_gateway_config(tmp, target)
        rows: list[dict[str, Any]] = []
        try:
            for conc in args.concurrency:
                for mode in ("direct", "gateway"):
                    rows.append(anyio.run(measure, mode, cfg, conc, args.calls, decider.pid))
            parts = anyio.run(breakdown, target, decider.pid, args.calls)
        finally:
            decider.terminate()
            decider.wait(20)
    print(f"{'mode':8} {'C':>3} {'calls':>6} {'calls/s':>8} {'p50 ms':>7} {'p99 ms':>7} "
          f"{'gw CPU-ms':>9} {'decider CPU-ms':>14} {'upstream CPU-ms':>15} {'client CPU-ms':>13}")
    for r in rows:
        print(f"{r['mode']:8} {r['concurrency']:>3} {r['calls']:>6} {r['calls_per_s']:>8.0f} {r['p50_ms']:>7.2f} "
              f"{r['p99_ms']:>7.2f} {r['gateway_cpu_ms_per_call']:>9.2f} {r['decider_cpu_ms_per_call']:>14.2f} "
              f"{r['upstream_cpu_ms_per_call']:>15.2f} {r['client_cpu_ms_per_call']:>13.2f}")
    summary = []
    for conc in args.concurrency:
        d = next(r for r in rows if r["mode"] == "direct" and r["concurrency"] == conc)
        g = next(r for r in rows if r["mode"] == "gateway" and r["concurrency"] == conc)
        added = g["p50_ms"] - d["p50_ms"]
        cpu = g["gateway_cpu_ms_per_call"] + g["decider_cpu_ms_per_call"]
        summary.append({"concurrency": conc, "added_p50_ms": added, "server_cpu_ms_per_call": cpu})
        print(f"C={conc}: gateway adds {added:.2f} ms at p50 (target ≤ 2); gateway + decider CPU "
              f"{cpu:.2f} ms per call (target ≤ 1)")
    print(f"decider server CPU per RPC (one at a time): Decide on the stream {parts['decide_stream_cpu_ms']:.2f} ms "
          f"({parts['decide_stream_latency_ms']:.2f} ms round trip), ReportOutcome {parts['report_outcome_cpu_ms']:.2f} ms "
          f"({parts['report_outcome_latency_ms']:.2f} ms round trip)")
    print(f"the gateway's gRPC client (DeciderLink) CPU per RPC: Decide {parts['decide_stream_link_cpu_ms']:.2f} ms, "
          f"ReportOutcome {parts['report_outcome_link_cpu_ms']:.2f} ms")
    print(f"load average {load[0]:.2f} before, {os.getloadavg()[0]:.2f} after (other jobs on this machine)")
    RESULTS.mkdir(parents=True, exist_ok=True)
    out = RESULTS / "gateway.json"
    out.write_text(json.dumps({"machine": {"python": platform.python_version(), "cpus": os.cpu_count(),
                                           "platform": platform.platform()},
                               "load_average": [load[0], os.getloadavg()[0]], "args": vars(args), "rows": rows, "summary": summary,
                               "decider_rpc_breakdown": parts}, indent=2))
    print(f"wrote {out.relative_to(ROOT)}")


if __name__ == "__main__":
    main()
