"""tools/call through `decider gateway mcp` and through a bare pass-through proxy (fastmcp
`create_proxy`, tools/bench/bare_proxy.py), over stdio and streamable HTTP, against the same upstream
(mcp-server-time) called directly — all in one run, so the ratio is a same-run ratio (issue 27).

    .venv/bin/pip install -r tools/bench/requirements.txt                  # fastmcp for the bare proxy
    .venv/bin/python tools/bench/gateway_bench.py                          # C = 1 and 16, 2 rounds, ~1 minute
    .venv/bin/python tools/bench/gateway_bench.py --calls 200 --rounds 1 --targets gw-stdio bare-stdio
    .venv/bin/python tools/bench/gateway_bench.py --gateway-a /tmp/gw-a    # A/B: another tree's gateway too

direct:     client ⇄ stdio ⇄ mcp-server-time
gw-stdio:   client ⇄ stdio ⇄ decider gateway mcp ⇄ stdio ⇄ mcp-server-time, with one Decide per call
            (over the gateway's DecideBatchStream to a local `decider serve`, SQLite, a one-rule allow
            bundle) and the outcome reported on that stream
gw-http:    the same, the gateway listening on streamable HTTP (one bearer token)
bare-stdio: client ⇄ stdio ⇄ fastmcp proxy ⇄ stdio ⇄ mcp-server-time; bare-http over streamable HTTP
Targets are measured in turn within a round (each in a fresh process, warmed up with 20 calls).
C concurrent calls are C callers sharing one client session. Latency is client side per call; "added
p50" is a target's p50 minus direct's in the same round. CPU-ms per call = utime+stime from
/proc/<pid>/stat (10 ms ticks) over the measured calls / calls: the proxy process (our gateway or the
bare proxy) and, for ours, the decider server; the upstream's and the client's (this process) CPU are
shown apart (the same work for every target).
With --breakdown, decider's server CPU per Decide (on the stream) and per ReportOutcome, measured
apart, and the CPU the gateway's own gRPC client (DeciderLink, in this process) spends on each.
Prints a table; writes tools/bench/results/gateway.json.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import anyio
import httpx2
import yaml
from mcp import ClientSession, StdioServerParameters, stdio_client
from mcp.client.streamable_http import streamable_http_client

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


def write_gateway_config(tmp: Path, target: str, listen: str) -> Path:
    """The bench gateway: one upstream (mcp-server-time), decider at `target`, listening on `listen`."""
    cfg = tmp / f"gateway-{'stdio' if listen == 'stdio' else 'http'}.yaml"
    doc: dict[str, Any] = {
        "decider": {"target": target, "deadline": "5s"}, "agent": {"id": "bench-agent", "team": "bench"},
        "listen": listen, "upstreams": [{"name": "time", "command": [sys.executable, "-m", "mcp_server_time"]}]}
    if listen != "stdio":
        doc["clients"] = [{"token": HTTP_TOKEN, "agent": {"id": "bench-agent", "team": "bench"}}]
    cfg.write_text(yaml.safe_dump(doc))
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


# Targets, measured in turn within each round (so a noisy neighbour hits all of them alike):
#   direct        client ⇄ stdio ⇄ mcp-server-time
#   gw-stdio      client ⇄ stdio ⇄ decider gateway mcp ⇄ stdio ⇄ mcp-server-time (+ decider serve)
#   gw-http       the same with the gateway listening on streamable HTTP (bearer token)
#   bare-stdio    client ⇄ stdio ⇄ fastmcp create_proxy ⇄ stdio ⇄ mcp-server-time (bare_proxy.py)
#   bare-http     the same over streamable HTTP
# With --gateway-a DIR, gwA-stdio / gwA-http run the gateway from DIR's `decider` package (the A of an
# A/B: e.g. `git archive <commit> decider | tar -x -C DIR`); decider serve stays this tree's.
TARGETS = ("direct", "gw-stdio", "gw-http", "bare-stdio", "bare-http")
BARE = ROOT / "tools" / "bench" / "bare_proxy.py"
HTTP_TOKEN = "bench-client-token"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def gateway_env(target: str, gateway_a: Path | None) -> dict[str, str]:
    env = dict(os.environ)
    if target.startswith("gwA-"):
        assert gateway_a is not None
        env["PYTHONPATH"] = os.pathsep.join([str(gateway_a), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    return env


def gateway_cwd(target: str, gateway_a: Path | None) -> Path:
    """`python -m decider` puts its working directory first on sys.path (before PYTHONPATH): the A
    tree's gateway must start in that tree, or it would run this one."""
    return gateway_a if target.startswith("gwA-") and gateway_a is not None else ROOT


def gateway_command(cfg: Path) -> list[str]:
    return [sys.executable, "-m", "decider", "gateway", "mcp", "--config", str(cfg), "--log-level", "warning"]


@asynccontextmanager
async def http_server(cmd: list[str], env: dict[str, str], port: int, tmp: Path, cwd: Path) -> Any:
    """An HTTP target as a subprocess of this bench; yields its pid once its port accepts."""
    log = (tmp / f"http-{port}.log").open("wb")
    proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env, cwd=cwd)
    try:
        for _ in range(600):
            if proc.poll() is not None:
                raise SystemExit(f"{cmd} exited: {(tmp / f'http-{port}.log').read_text()}")
            try:
                with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                    break
            except OSError:
                await anyio.sleep(0.05)
        yield proc.pid
    finally:
        proc.terminate()
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)
        log.close()


@asynccontextmanager
async def session_for(target: str, tmp: Path, target_addr: str, gateway_a: Path | None) -> Any:
    """(session, tool name, pid of the process the client talks to) for one target."""
    tool = "time__get_current_time" if target.startswith("gw") else "get_current_time"
    if target.endswith("-http"):
        port = free_port()
        if target.startswith("bare"):
            cmd, headers = [sys.executable, str(BARE), "http", "--port", str(port)], None
        else:
            cmd = gateway_command(write_gateway_config(tmp, target_addr, f"http://127.0.0.1:{port}/mcp"))
            headers = {"Authorization": f"Bearer {HTTP_TOKEN}"}
        async with http_server(cmd, gateway_env(target, gateway_a), port, tmp, gateway_cwd(target, gateway_a)) as pid, \
                httpx2.AsyncClient(headers=headers, timeout=httpx2.Timeout(30.0, read=None)) as http, \
                streamable_http_client(f"http://127.0.0.1:{port}/mcp", http_client=http) as (r, w), \
                ClientSession(r, w) as s:
            await s.initialize()
            yield s, tool, pid
        return
    if target == "direct":
        params = StdioServerParameters(command=sys.executable, args=["-m", "mcp_server_time"])
        want = b"mcp_server_time"
    elif target.startswith("bare"):
        params = StdioServerParameters(command=sys.executable, args=[str(BARE), "stdio"])
        want = b"bare_proxy.py"
    else:
        cmd = gateway_command(write_gateway_config(tmp, target_addr, "stdio"))
        params = StdioServerParameters(command=cmd[0], args=cmd[1:], env=gateway_env(target, gateway_a),
                                       cwd=gateway_cwd(target, gateway_a))
        want = b"decider\0gateway\0mcp\0"
    async with stdio_client(params, errlog=open(os.devnull, "w")) as (r, w), ClientSession(r, w) as s:  # noqa: SIM115
        await s.initialize()
        pid = next(k for k in children(os.getpid()) if want in Path(f"/proc/{k}/cmdline").read_bytes())
        yield s, tool, pid


def upstream_of(pid: int, target: str) -> int:
    if target == "direct":
        return pid
    return next(k for k in children(pid) if b"mcp_server_time" in Path(f"/proc/{k}/cmdline").read_bytes())


async def measure(target: str, tmp: Path, target_addr: str, conc: int, calls: int, decider_pid: int,
                  gateway_a: Path | None) -> dict[str, Any]:
    ours = target.startswith("gw")
    async with session_for(target, tmp, target_addr, gateway_a) as (s, tool, top):
        for _ in range(20):   # warm-up: imports, first decisions, SQLite pages
            r = await s.call_tool(tool, {"timezone": "UTC"})
            assert not r.is_error, r
        up = upstream_of(top, target)
        lat: list[float] = []
        per = calls // conc

        async def caller() -> None:
            for _ in range(per):
                t0 = time.perf_counter()
                r = await s.call_tool(tool, {"timezone": "UTC"})
                lat.append(time.perf_counter() - t0)
                if r.is_error:
                    raise SystemExit(f"{target}: call failed: {r}")

        cpu0 = {"gw": cpu_s(top), "decider": cpu_s(decider_pid), "up": cpu_s(up), "client": time.process_time()}
        t0 = time.perf_counter()
        async with anyio.create_task_group() as tg:
            for _ in range(conc):
                tg.start_soon(caller)
        wall = time.perf_counter() - t0
        cpu1 = {"gw": cpu_s(top), "decider": cpu_s(decider_pid), "up": cpu_s(up), "client": time.process_time()}
    n = len(lat)
    lat.sort()
    proxy_cpu = (cpu1["gw"] - cpu0["gw"]) if target != "direct" else 0.0
    dec_cpu = (cpu1["decider"] - cpu0["decider"]) if ours else 0.0
    return {"target": target, "concurrency": conc, "calls": n, "calls_per_s": n / wall,
            "p50_ms": statistics.median(lat) * 1000, "p99_ms": lat[min(n - 1, int(n * 0.99))] * 1000,
            "proxy_cpu_ms_per_call": proxy_cpu * 1000 / n, "decider_cpu_ms_per_call": dec_cpu * 1000 / n,
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
    ap.add_argument("--calls", type=int, default=300, help="measured calls per cell")
    ap.add_argument("--concurrency", type=int, nargs="+", default=[1, 16])
    ap.add_argument("--rounds", type=int, default=2, help="rounds; each measures every target in turn")
    ap.add_argument("--targets", nargs="+", default=list(TARGETS),
                    choices=[*TARGETS, "gwA-stdio", "gwA-http"])
    ap.add_argument("--gateway-a", type=Path, help="a directory holding another `decider` package: its gateway "
                    "runs as gwA-stdio / gwA-http (added to --targets when given)")
    ap.add_argument("--breakdown", action="store_true", help="also decider's server CPU per Decide / ReportOutcome")
    args = ap.parse_args()
    targets = list(args.targets)
    if args.gateway_a is not None:
        targets += [t for t in ("gwA-stdio", "gwA-http") if t not in targets]
    if "direct" not in targets:
        targets.insert(0, "direct")
    load = os.getloadavg()
    with tempfile.TemporaryDirectory(prefix="gateway-bench-") as t:
        tmp = Path(t)
        decider, addr = start_decider(tmp)
        rows: list[dict[str, Any]] = []
        parts: dict[str, float] = {}
        try:
            for rnd in range(1, args.rounds + 1):
                for conc in args.concurrency:
                    for target in targets:
                        row = anyio.run(measure, target, tmp, addr, conc, args.calls, decider.pid, args.gateway_a)
                        rows.append({"round": rnd, **row})
            if args.breakdown:
                parts = anyio.run(breakdown, addr, decider.pid, args.calls)
        finally:
            decider.terminate()
            decider.wait(20)
    print(f"{'rnd':>3} {'target':10} {'C':>3} {'calls/s':>8} {'p50 ms':>7} {'p99 ms':>7} {'added p50':>9} "
          f"{'proxy CPU-ms':>12} {'decider CPU-ms':>14} {'sum CPU-ms':>10} {'upstream':>8} {'client':>7}")
    summary = []
    for r in rows:
        d = next(x for x in rows if x["target"] == "direct" and x["concurrency"] == r["concurrency"]
                 and x["round"] == r["round"])
        r["added_p50_ms"] = r["p50_ms"] - d["p50_ms"]
        r["cpu_ms_per_call"] = r["proxy_cpu_ms_per_call"] + r["decider_cpu_ms_per_call"]
        print(f"{r['round']:>3} {r['target']:10} {r['concurrency']:>3} {r['calls_per_s']:>8.0f} {r['p50_ms']:>7.2f} "
              f"{r['p99_ms']:>7.2f} {r['added_p50_ms']:>9.2f} {r['proxy_cpu_ms_per_call']:>12.2f} "
              f"{r['decider_cpu_ms_per_call']:>14.2f} {r['cpu_ms_per_call']:>10.2f} "
              f"{r['upstream_cpu_ms_per_call']:>8.2f} {r['client_cpu_ms_per_call']:>7.2f}")
    # Same-round ratios, ours over the bare proxy (issue 27's targets: added p50 within 0.5 ms of the
    # bare proxy's at C=1; gateway + decider CPU per call <= 1.25x the bare proxy's; more calls/s at C=16).
    for r in rows:
        if not r["target"].startswith("gw"):
            continue
        bare = next((x for x in rows if x["target"] == "bare-" + r["target"].split("-", 1)[1]
                     and x["concurrency"] == r["concurrency"] and x["round"] == r["round"]), None)
        if bare is None:
            continue
        item = {"round": r["round"], "target": r["target"], "concurrency": r["concurrency"],
                "added_p50_minus_bare_ms": r["added_p50_ms"] - bare["added_p50_ms"],
                "cpu_ratio_to_bare": r["cpu_ms_per_call"] / bare["cpu_ms_per_call"] if bare["cpu_ms_per_call"] else None,
                "calls_per_s_ratio_to_bare": r["calls_per_s"] / bare["calls_per_s"]}
        summary.append(item)
        ratio = f"{item['cpu_ratio_to_bare']:.2f}x" if item["cpu_ratio_to_bare"] is not None else "n/a"
        goal = ("targets: within +0.5 ms, <= 1.25x" if r["concurrency"] == 1 else "target: keep the lead, > 1x calls/s")
        print(f"round {r['round']} {r['target']:8} C={r['concurrency']:<3} added p50 minus the bare proxy's "
              f"{item['added_p50_minus_bare_ms']:+.2f} ms; CPU per call {ratio} the bare proxy's; calls/s "
              f"{item['calls_per_s_ratio_to_bare']:.2f}x ({goal})")
    for target in targets:   # medians over the rounds: one noisy round moves them less
        for conc in args.concurrency:
            cell = [r for r in rows if r["target"] == target and r["concurrency"] == conc]
            if len(cell) > 1:
                print(f"median of {len(cell)} rounds: {target:10} C={conc:<3} added p50 "
                      f"{statistics.median(r['added_p50_ms'] for r in cell):6.2f} ms, CPU per call "
                      f"{statistics.median(r['cpu_ms_per_call'] for r in cell):5.2f} ms, calls/s "
                      f"{statistics.median(r['calls_per_s'] for r in cell):5.0f}")
    if parts:
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
                               "load_average": [load[0], os.getloadavg()[0]],
                               "args": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
                               "rows": rows, "summary": summary, "decider_rpc_breakdown": parts}, indent=2))
    print(f"wrote {out.relative_to(ROOT)}")


if __name__ == "__main__":
    main()
