"""What shadow evaluation costs on the response path: two decider servers on the bench bundle, one
with `--shadow-bundle` (a copy of the same bundle, so the shadow does a full second evaluation),
driven alternately by the same client code as the Cerbos comparison (load.py), plus the pure
in-process cost of one `engine.decide` over the same workload (what the shadow adds per call).

    .venv/bin/python tools/bench/shadow_overhead.py --seconds 4 --rounds 2
"""

from __future__ import annotations

import argparse
import asyncio
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parents[1]))

import load  # noqa: E402
from workload import build_workload  # noqa: E402

BUNDLE = HERE / "policies" / "decider"


def start(tmp: Path, name: str, *extra: str) -> tuple[subprocess.Popen[bytes], str]:
    port_file = tmp / f"{name}.port"
    proc = subprocess.Popen(
        [sys.executable, "-m", "decider", "serve", "--dev", "--bundle", str(BUNDLE), "--db", f"sqlite:///{tmp / name}.db",
         "--listen", "127.0.0.1:0", "--port-file", str(port_file), "--log-level", "warning", *extra],
        stdout=(tmp / f"{name}.log").open("wb"), stderr=subprocess.STDOUT, cwd=HERE.parents[1])
    deadline = time.monotonic() + 60
    while not (port_file.exists() and port_file.read_text().strip()):
        if proc.poll() is not None or time.monotonic() > deadline:
            raise RuntimeError((tmp / f"{name}.log").read_text())
        time.sleep(0.05)
    return proc, f"127.0.0.1:{port_file.read_text().strip()}"


def in_process_us(items: list[load.Item]) -> float:
    from decider.bundle.compile import load_bundle
    from decider.engine.decide import decide

    bundle = load_bundle(BUNDLE)
    target = load.DeciderTarget("unused")
    reqs = [target.build(i) for i in items]
    for r in reqs:
        decide(bundle, r)
    started = time.perf_counter()
    for _ in range(3):
        for r in reqs:
            r.tool.ClearField("risk_tier")
            decide(bundle, r)
    return (time.perf_counter() - started) / (3 * len(reqs)) * 1e6


async def measure(args: argparse.Namespace, plain: str, shadow: str, pids: dict[str, int]) -> list[load.Summary]:
    items = build_workload(args.size)
    targets = {"no-shadow": load.DeciderTarget(plain, "no-shadow"), "shadow": load.DeciderTarget(shadow, "shadow")}
    for t in targets.values():
        await t.open()
        t.prepare(items)
    cells = []
    for c in args.concurrency:
        for r in range(args.rounds):
            order = ["no-shadow", "shadow"] if r % 2 == 0 else ["shadow", "no-shadow"]
            for name in order:
                cells.append(await load.run_cell(targets[name], pids[name], items, c, args.max_requests,
                                                 args.seconds, r))
    return load.summarize(cells)


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--seconds", type=float, default=4.0)
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--size", type=int, default=2000)
    p.add_argument("--max-requests", type=int, default=100_000)
    p.add_argument("--concurrency", type=int, nargs="+", default=[1, 16])
    args = p.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="decider-shadow-"))
    shadow_copy = tmp / "shadow-bundle"
    shutil.copytree(BUNDLE, shadow_copy)
    (shadow_copy / "bundle.yaml").write_text((shadow_copy / "bundle.yaml").read_text() + "\n# shadow copy\n")
    procs = {}
    try:
        procs["no-shadow"], plain = start(tmp, "plain")
        procs["shadow"], shadow = start(tmp, "shadow", "--shadow-bundle", str(shadow_copy))
        summaries = asyncio.run(measure(args, plain, shadow, {k: v.pid for k, v in procs.items()}))
    finally:
        for proc in procs.values():
            proc.terminate()
            proc.wait(30)
        shutil.rmtree(tmp, ignore_errors=True)
    print(f"in-process engine.decide on the bench workload: {in_process_us(build_workload(args.size)):.1f} µs/decision"
          " (what the shadow adds per call)")
    print(f"{'target':10} {'C':>3} {'decisions/s':>12} {'p50 ms':>7} {'p99 ms':>7} {'server CPU µs/decision':>23}")
    by = {(s.target, s.concurrency): s for s in summaries}
    for s in summaries:
        print(f"{s.target:10} {s.concurrency:>3} {s.decisions_per_s:>12.0f} {s.p50_ms:>7.3f} {s.p99_ms:>7.3f} "
              f"{1e6 / s.decisions_per_server_cpu_s:>23.1f}")
    for c in args.concurrency:
        a, b = by[("no-shadow", c)], by[("shadow", c)]
        print(f"C={c}: shadow adds {100 * (b.p50_ms / a.p50_ms - 1):+.1f}% p50 latency, "
              f"{100 * (a.decisions_per_server_cpu_s / b.decisions_per_server_cpu_s - 1):+.1f}% server CPU per "
              f"decision, {100 * (b.decisions_per_s / a.decisions_per_s - 1):+.1f}% throughput")
    return 0


if __name__ == "__main__":
    sys.exit(main())
