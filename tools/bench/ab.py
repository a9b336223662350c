"""Two decider builds side by side: same mix, same client, cells alternating A B / B A.

For judging one change on a noisy machine: both servers run at once from two checkouts (e.g. a
`git worktree` of the base commit and the working tree), each on an ephemeral loopback port with
its own fresh SQLite file, and load.run_matrix alternates them within each concurrency level.

    git worktree add /tmp/base HEAD~1
    .venv/bin/python tools/bench/ab.py --a /tmp/base --b . [--stream] [--concurrency 1,32]

Prints the load table and the ratio B/A of decisions per server CPU-second and of p50.
Bounded like compare.py (count and time per cell); both servers are stopped on every exit path.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shlex
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from load import (  # noqa: E402
    DeciderBatchTarget,
    DeciderStreamTarget,
    DeciderTarget,
    add_load_arguments,
    format_table,
    run_matrix,
    summarize,
    write_results,
)
from procs import stop_group  # noqa: E402
from workload import build_workload  # noqa: E402

BUNDLE = HERE / "policies" / "decider"


def start(repo: Path, tmp: Path, name: str, extra_env: dict[str, str],
          extra_args: list[str] | None = None) -> tuple[subprocess.Popen[bytes], int]:
    port_file = tmp / f"{name}.port"
    # The binding key from the environment rather than `--dev`: a build from before the key existed
    # ignores the variable, so either side of an A/B may be one.
    env = dict(os.environ, PYTHONPATH=str(repo), DECIDER_BINDING_KEY=os.urandom(32).hex(), **extra_env)
    proc = subprocess.Popen(
        [sys.executable, "-m", "decider.cli.main", "serve", "--bundle", str(BUNDLE), "--db",
         f"sqlite:///{tmp / name}.db", "--listen", "127.0.0.1:0", "--port-file", str(port_file),
         *(extra_args or [])],
        cwd=repo, env=env, stdout=subprocess.DEVNULL, stderr=open(tmp / f"{name}.log", "wb"),
        start_new_session=True)
    deadline = time.monotonic() + 30
    while not (port_file.exists() and port_file.read_text()):
        if proc.poll() is not None or time.monotonic() > deadline:
            raise RuntimeError(f"{name} did not start: {(tmp / f'{name}.log').read_text()[-2000:]}")
        time.sleep(0.1)
    return proc, int(port_file.read_text())


def stop(proc: subprocess.Popen[bytes]) -> None:
    stop_group(proc, timeout_s=15)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--a", required=True, type=Path, help="checkout of build A (the base)")
    ap.add_argument("--b", required=True, type=Path, help="checkout of build B (the change)")
    ap.add_argument("--stream", action="store_true", help="drive DecideStream instead of unary Decide")
    ap.add_argument("--batch", action="store_true",
                    help="drive DecideBatchStream through one coalescing client (both builds must have it)")
    ap.add_argument("--b-env", action="append", default=[], metavar="NAME=VALUE",
                    help="environment for build B only (A/B of a setting on one checkout)")
    ap.add_argument("--b-args", default="", metavar="ARGS",
                    help="extra `decider serve` arguments for build B only, e.g. '--metrics-listen 127.0.0.1:0'")
    add_load_arguments(ap)
    args = ap.parse_args()
    kind = DeciderBatchTarget if args.batch else DeciderStreamTarget if args.stream else DeciderTarget
    procs: list[subprocess.Popen[bytes]] = []
    with tempfile.TemporaryDirectory() as tmp:
        try:
            targets = []
            b_env = dict(kv.split("=", 1) for kv in args.b_env)
            b_args = shlex.split(args.b_args)
            for name, repo, env, extra in (("A", args.a.resolve(), {}, []), ("B", args.b.resolve(), b_env, b_args)):
                proc, port = start(repo, Path(tmp), name, env, extra)
                procs.append(proc)
                targets.append((kind(f"127.0.0.1:{port}", name=name), proc.pid))
            items = build_workload(args.size, args.seed)
            results = asyncio.run(run_matrix(targets, items, args.concurrency, args.rounds, args.max_requests,
                                             args.seconds, args.warmup))
        finally:
            for proc in procs:
                stop(proc)
    summaries = summarize(results)
    print(format_table(summaries))
    name = args.name or time.strftime("ab-%Y%m%dT%H%M%S")
    meta = {"a": str(args.a), "b": str(args.b), "b_env": args.b_env, "b_args": args.b_args, "stream": args.stream,
            "batch": args.batch}
    print(f"results: {write_results(name, meta, results)}")
    by = {(s.target, s.concurrency): s for s in summaries}
    print(f"\nB/A ({'DecideBatchStream' if args.batch else 'DecideStream' if args.stream else 'Decide'}):  C   dec/srv-CPU-s   p50 (A/B, >1 = B faster)")
    for c in args.concurrency:
        a, b = by[("A", c)], by[("B", c)]
        print(f"{'':18}{c:3} {b.decisions_per_server_cpu_s / a.decisions_per_server_cpu_s:12.2f} "
              f"{a.p50_ms / b.p50_ms:12.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
