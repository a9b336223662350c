"""Where a unary decision's server CPU goes, thread by thread: one `decider serve` (or the grpc.aio
floor) on 127.0.0.1, unary `Decide` at C callers for a few seconds, each server thread's user and
system CPU per decision from /proc/<pid>/task (named by `py-spy dump` when py-spy is installed),
and the group-commit writer's records per commit from the server's "stopped" log line.

    .venv/bin/python tools/bench/thread_cpu.py --concurrency 1 32 [--seconds 6] [--floor] [--batch] [--spy F [--spy-gil]]

`--batch` drives DecideBatchStream through `BatchingDecider` (as `ab.py --batch`) instead of unary `Decide`.

Same workload, client and server settings as ab.py (a fresh SQLite file, binding key from the
environment). Bounded by --seconds per level; the server is stopped on every exit path.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO_ROOT = HERE.parents[1]
sys.path.insert(0, str(HERE))

from ab import start, stop  # noqa: E402
from load import DeciderBatchTarget, DeciderTarget, _drive, proc_tree_cpu_seconds  # noqa: E402
from workload import build_workload  # noqa: E402

Ticks = dict[str, tuple[str, int, int]]   # thread id -> (comm, user ticks, system ticks)


def threads(pid: int) -> Ticks:
    out: Ticks = {}
    for tid in os.listdir(f"/proc/{pid}/task"):
        try:
            stat = Path(f"/proc/{pid}/task/{tid}/stat").read_text()
        except OSError:   # the thread ended meanwhile
            continue
        fields = stat[stat.rindex(")") + 2:].split()
        out[tid] = (stat[stat.index("(") + 1:stat.rindex(")")], int(fields[11]), int(fields[12]))
    return out


def thread_names(pid: int) -> dict[str, str]:
    """Python thread names (MainThread, decider-writer, ...) by OS thread id, from py-spy if present."""
    spy = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
    if not Path(spy).exists():
        return {}
    dump = subprocess.run([spy, "dump", "--pid", str(pid)], capture_output=True, text=True, timeout=30).stdout
    return {m.group(1): m.group(2) for m in re.finditer(r'Thread (\d+) \([^)]*\): "([^"]*)"', dump)}


def start_floor(tmp: Path) -> tuple[subprocess.Popen[bytes], int]:
    port_file = tmp / "floor.port"
    proc = subprocess.Popen([sys.executable, str(HERE / "floor_server.py"), "--listen", "127.0.0.1:0",
                             "--port-file", str(port_file)], stdout=subprocess.DEVNULL,
                            stderr=open(tmp / "P.log", "wb"), start_new_session=True)
    deadline = time.monotonic() + 30
    while not (port_file.exists() and port_file.read_text()):
        if proc.poll() is not None or time.monotonic() > deadline:
            raise RuntimeError("the floor server did not start")
        time.sleep(0.1)
    return proc, int(port_file.read_text())


def start_spy(pid: int, out: Path | None, seconds: float, gil: bool = False) -> subprocess.Popen[bytes] | None:
    """`py-spy record` of the server for the measured window (collapsed stacks, native frames off),
    when --spy asks for it and py-spy is installed. `gil`: only the samples of the thread holding
    the GIL (work, not waiting)."""
    spy = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
    if out is None or not Path(spy).exists():
        return None
    return subprocess.Popen([spy, "record", "--pid", str(pid), "--format", "raw", "--rate", "500", "--threads",
                             "--duration", str(int(seconds)), "--output", str(out), "--nonblocking", *(["--gil"] if gil else [])],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


async def measure(pid: int, port: int, concurrency: int, seconds: float, batch: bool = False,
                  spy_out: Path | None = None, spy_gil: bool = False) -> None:
    target = (DeciderBatchTarget if batch else DeciderTarget)(f"127.0.0.1:{port}", name="P")
    await target.open()
    items = build_workload()
    target.prepare(items)
    try:
        await _drive(target, items, concurrency, 10**9, 1.5, None)   # warm-up
        spy = start_spy(pid, spy_out, seconds, spy_gil)
        before, cpu0, t0 = threads(pid), proc_tree_cpu_seconds(pid), time.perf_counter()
        n = await _drive(target, items, concurrency, 10**9, seconds, None)
        if spy is not None:
            spy.wait(timeout=seconds + 30)
        after, cpu, wall = threads(pid), proc_tree_cpu_seconds(pid) - cpu0, time.perf_counter() - t0
        names = thread_names(pid)
    finally:
        await target.close()
    hz = os.sysconf("SC_CLK_TCK")
    print(f"C={concurrency}: {n} decisions, {n / wall:.0f}/s, server CPU {cpu:.2f} s = {cpu / n * 1e6:.0f} µs per decision")
    rows = []
    for tid, (comm, user, system) in after.items():
        _, user0, system0 = before.get(tid, (comm, 0, 0))
        rows.append((tid, names.get(tid, comm), (user - user0) / hz, (system - system0) / hz))
    for tid, name, user, system in sorted(rows, key=lambda r: -(r[2] + r[3])):
        if user + system >= 0.01:
            print(f"  {name:28} {tid:>8}  {(user + system) / n * 1e6:5.0f} µs/decision "
                  f"(user {user / n * 1e6:4.0f}, system {system / n * 1e6:4.0f})")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--concurrency", type=int, nargs="+", default=[1, 32])
    ap.add_argument("--seconds", type=float, default=6.0)
    ap.add_argument("--floor", action="store_true", help="measure tools/bench/floor_server.py instead")
    ap.add_argument("--batch", action="store_true", help="drive DecideBatchStream instead of unary Decide")
    ap.add_argument("--spy", type=Path, help="also write py-spy's collapsed stacks of the measured window to "
                    "SPY-C<concurrency>.txt (py-spy's own sampling adds to the server's CPU)")
    ap.add_argument("--spy-gil", action="store_true", help="with --spy: only samples holding the GIL")
    args = ap.parse_args()
    for c in args.concurrency:
        with tempfile.TemporaryDirectory() as tmp_dir:
            tmp = Path(tmp_dir)
            proc, port = start_floor(tmp) if args.floor else start(REPO_ROOT, tmp, "P", {}, [])
            try:
                spy_out = args.spy.with_name(f"{args.spy.stem}-C{c}.txt") if args.spy else None
                asyncio.run(measure(proc.pid, port, c, args.seconds, args.batch, spy_out, args.spy_gil))
            finally:
                stop(proc)
            for line in (tmp / "P.log").read_text().splitlines():
                if '"stopped"' in line:
                    rec = json.loads(line)
                    if rec.get("batches"):
                        print(f"  writer: {rec['records_written']} records in {rec['batches']} commits "
                              f"({rec['records_written'] / rec['batches']:.1f} per commit, "
                              f"{rec.get('inline_commits', 0)} on the loop), warm-up included")
    return 0


if __name__ == "__main__":
    sys.exit(main())
