"""What an enforcement point pays per allowed tool call: a plain unary Decide, the runtime guard
(`@guard`: a decision and its outcome around a no-op function, over the unary RPCs and over the
guard's DecideBatchStream) and agentgateway's ExtMcp hook (CheckRequest + CheckResponse), against one
`decider serve --ext-mcp` on 127.0.0.1.

    .venv/bin/python tools/bench/guard_bench.py [--calls 1500] [--concurrency 1 16]

Latency is per tool call as the caller sees it; server CPU is the server process's user+system
time over the run, per call. Prints a table and writes tools/bench/results/guard.json. Bounded by
--calls per row (a few seconds each).
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import grpc

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from decider.agentgateway import ext_mcp_pb2 as xpb  # noqa: E402
from decider.agentgateway import ext_mcp_pb2_grpc as xpb_grpc  # noqa: E402
from decider.client import DeciderClient  # noqa: E402
from decider.guard import Guard, guard  # noqa: E402

BUNDLE = """\
apiVersion: decider/v1
kind: Bundle
metadata: {name: guard-bench, version: 1.0.0}
spec:
  default: deny
  tools: {"*": {risk_tier: 1}}
"""
POLICY = """\
apiVersion: decider/v1
kind: Policy
metadata: {name: bench}
spec:
  rules:
    - {id: weather, effect: allow, when: 'tool.name == "get_weather" && tool.args.city != ""'}
"""
AGENT = {"id": "bench-bot", "team": "bench", "model": "gpt-5"}


def start(tmp: Path) -> tuple[subprocess.Popen[bytes], str]:
    (tmp / "bundle").mkdir()
    (tmp / "bundle" / "bundle.yaml").write_text(BUNDLE)
    (tmp / "bundle" / "bench.yaml").write_text(POLICY)
    port_file = tmp / "port"
    proc = subprocess.Popen([sys.executable, "-m", "decider", "serve", "--dev", "--bundle", str(tmp / "bundle"),
                             "--db", f"sqlite:///{tmp / 'bench.db'}", "--listen", "127.0.0.1:0",
                             "--port-file", str(port_file), "--ext-mcp", "--log-level", "warning"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, cwd=ROOT)
    for _ in range(600):
        if port_file.exists() and port_file.read_text().strip():
            return proc, f"127.0.0.1:{port_file.read_text().strip()}"
        time.sleep(0.05)
    proc.kill()
    raise RuntimeError("server did not start")


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


BASE = "Decide (unary)"


def callers(target: str) -> dict[str, Callable[[], Callable[[int], None]]]:
    """Per mode, a factory of one thread's call function (each thread has its own channel)."""
    def decide() -> Callable[[int], None]:
        client = DeciderClient(target)
        return lambda i: client.decide(agent=AGENT, tool="get_weather", args={"city": f"c{i}"})

    def decorated(transport: str) -> Callable[[int], None]:
        @guard(tool="get_weather", client=Guard(target, agent=AGENT, transport=transport))
        def get_weather(city: str) -> str:
            return city
        return lambda i: get_weather(f"c{i}")

    def ext_mcp(respond: bool = True) -> Callable[[int], None]:
        stub = xpb_grpc.ExtMcpStub(grpc.insecure_channel(target))
        meta = xpb.McpRequest().metadata_context
        meta.update({"agent": AGENT})
        result = xpb.McpResponse(service_name="weather", method="tools/call")
        result.metadata_context.CopyFrom(meta)
        result.mcp_response.update({"content": [{"type": "text", "text": "sunny"}]})

        def call(i: int) -> None:
            req = xpb.McpRequest(service_name="weather", method="tools/call")
            req.metadata_context.CopyFrom(meta)
            req.mcp_request.update({"name": "get_weather", "arguments": {"city": f"c{i}"}})
            res = stub.CheckRequest(req, timeout=10)
            assert res.WhichOneof("result") == "pass", res
            if respond:
                stub.CheckResponse(result, timeout=10)
        return call

    # CheckRequest alone is the ExtMcp counterpart of one unary Decide (issue 27: within 10 %); its
    # allowed calls wait for a CheckResponse that never comes, in a map bounded by MAX_OUTSTANDING.
    return {BASE: decide, "ExtMcp CheckRequest": lambda: ext_mcp(respond=False),
            "@guard, unary (Decide + ReportOutcome)": lambda: decorated("unary"),
            "@guard, stream (the default)": lambda: decorated("stream"),
            "ExtMcp (CheckRequest + CheckResponse)": ext_mcp}


def measure(pid: int, make: Callable[[], Callable[[int], None]], calls: int, concurrency: int) -> dict[str, Any]:
    fns = [make() for _ in range(concurrency)]
    for fn in fns:              # warm-up: connections open, server paths hot
        for i in range(20):
            fn(i)
    latencies: list[float] = []
    lock = threading.Lock()
    per_thread = calls // concurrency

    def work(fn: Callable[[int], None], offset: int) -> None:
        mine = []
        for i in range(per_thread):
            t0 = time.perf_counter()
            fn(offset + i)
            mine.append(time.perf_counter() - t0)
        with lock:
            latencies.extend(mine)

    cpu0, t0 = cpu_seconds(pid), time.perf_counter()
    threads = [threading.Thread(target=work, args=(fn, n * per_thread)) for n, fn in enumerate(fns)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    wall, cpu = time.perf_counter() - t0, cpu_seconds(pid) - cpu0
    latencies.sort()
    n = len(latencies)
    return {"calls": n, "concurrency": concurrency, "calls_per_s": round(n / wall, 1),
            "p50_ms": round(statistics.median(latencies) * 1000, 3),
            "p99_ms": round(latencies[min(n - 1, int(n * 0.99))] * 1000, 3),
            "server_cpu_ms_per_call": round(cpu / n * 1000, 3)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--calls", type=int, default=1500)
    ap.add_argument("--concurrency", type=int, nargs="+", default=[1, 16])
    ap.add_argument("--rounds", type=int, default=1,
                    help="repeat every mode this many times (alternating order); the table shows each round's row")
    ap.add_argument("--modes", nargs="+", metavar="PREFIX",
                    help="only the modes whose name starts with one of these (the unary Decide is always kept: "
                    "the ratios are to it)")
    args = ap.parse_args()
    wanted = [m for m in callers("") if m == BASE or not args.modes or m.startswith(tuple(args.modes))]
    rows: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory() as tmp:
        proc, target = start(Path(tmp))
        try:
            for c in args.concurrency:
                for n in range(args.rounds):
                    modes = [(m, make) for m, make in callers(target).items() if m in wanted]
                    for mode, make in modes if n % 2 == 0 else reversed(modes):
                        rows.append({"mode": mode, "round": n, **measure(proc.pid, make, args.calls, c)})
        finally:
            proc.send_signal(signal.SIGTERM)
            proc.wait(30)
    print(f"{'mode':40} {'C':>3} {'calls/s':>8} {'p50 ms':>8} {'p99 ms':>8} {'server CPU ms/call':>19}")
    for r in rows:
        print(f"{r['mode']:40} {r['concurrency']:>3} {r['calls_per_s']:>8} {r['p50_ms']:>8} {r['p99_ms']:>8} "
              f"{r['server_cpu_ms_per_call']:>19}")
    pooled: dict[tuple[str, int], list[float]] = {}
    for r in rows:
        pooled.setdefault((r["mode"], r["concurrency"]), []).append(r["server_cpu_ms_per_call"])
    by = {k: statistics.median(v) for k, v in pooled.items()}
    print("\nserver CPU per call / a unary Decide's (same run, median over rounds):")
    for c in args.concurrency:
        base = by[(BASE, c)]
        print(f"  C={c:<3} " + "   ".join(f"{mode}: {by[(mode, c)] / base:.2f}x" for mode in wanted if mode != BASE))
    out = ROOT / "tools" / "bench" / "results" / "guard.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "rows": rows}, indent=2))
    print(f"wrote {out.relative_to(ROOT)}")


if __name__ == "__main__":
    main()
