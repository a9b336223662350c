"""decider vs Cerbos, side by side: same request mix, same grpc.aio client code, same machine conditions.

    python tools/bench/compare.py                          # both, C = 1, 8, 32, 2 rounds of 5 s per cell
    python tools/bench/compare.py --only cerbos --seconds 3 --rounds 1
    python tools/bench/compare.py --decider-cmd '{python} -m decider.cli.main serve --bundle {bundle} ...'

What it does, and undoes on every exit path (error, Ctrl-C, SIGTERM):
1. installs the real Cerbos PDP from npm (tools/bench/cerbos_install.sh) unless --cerbos-bin is given;
2. starts Cerbos on ephemeral 127.0.0.1 ports with policies/cerbos/ and its decision audit log on;
3. starts ``decider serve`` on an ephemeral 127.0.0.1 port with policies/decider/ and a fresh SQLite db;
4. waits for both gRPC health checks (grpc.health.v1.Health/Check = SERVING);
5. runs load.run_matrix (targets alternate within each concurrency level) and prints the table;
6. stops both servers (SIGTERM to the process group it created, SIGKILL after a timeout);
7. prints decider/Cerbos ratios and writes tools/bench/results/<name>.json.

The issue's claims are read off the ratios: decisions per server CPU-second at C=32 (higher is better)
and p50 latency at C=1 (lower is better).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import importlib
import os
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent))

import grpc  # noqa: E402
import load  # noqa: E402
from procs import stop_group  # noqa: E402
from workload import build_workload, coverage_gaps, summarize  # noqa: E402

HERE = Path(__file__).resolve().parent
REPO_ROOT = HERE.parents[1]
CERBOS_POLICIES = HERE / "policies" / "cerbos"
DECIDER_BUNDLE = HERE / "policies" / "decider"
DEFAULT_CERBOS_VERSION = "0.55.0"
DEFAULT_DECIDER_CMD = (
    f"{REPO_ROOT / '.venv' / 'bin' / 'decider'} serve --bundle {{bundle}} --db sqlite:///{{tmp}}/bench.db "
    "--listen {listen}"
)
READY_TIMEOUT_S = 60.0
STOP_TIMEOUT_S = 10.0


class BenchError(RuntimeError):
    """The bench could not run (a server failed to start, an install failed, ...)."""


# --- servers ------------------------------------------------------------------------------------------


def free_port() -> int:
    """An ephemeral loopback port. The OS could hand it out again before the server binds it; the
    health check then fails loudly rather than measuring the wrong process."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def install_cerbos(version: str) -> Path:
    out = subprocess.run(
        [str(HERE / "cerbos_install.sh"), version], check=False, capture_output=True, text=True, timeout=600
    )
    if out.returncode != 0:
        raise BenchError(f"cerbos_install.sh failed ({out.returncode}):\n{out.stderr}")
    return Path(out.stdout.strip().splitlines()[-1])


def cerbos_version(binary: Path) -> str:
    out = subprocess.run([str(binary), "--version"], check=True, capture_output=True, text=True, timeout=30)
    return out.stdout.splitlines()[0].strip()


def cerbos_argv(binary: Path, grpc_addr: str, http_addr: str, tmp: Path, audit: str) -> list[str]:
    """The committed .cerbos.yaml plus per-run overrides: ports, absolute paths, audit backend."""
    sets = [
        f"server.grpcListenAddr={grpc_addr}",
        f"server.httpListenAddr={http_addr}",
        f"storage.disk.directory={CERBOS_POLICIES}",
        f"audit.local.storagePath={tmp / 'cerbos-audit'}",
        f"audit.file.path={tmp / 'cerbos-audit.jsonl'}",
    ]
    if audit == "off":
        sets.append("audit.enabled=false")
    else:
        sets.append(f"audit.backend={audit}")
    return [
        str(binary),
        "server",
        f"--config={CERBOS_POLICIES / '.cerbos.yaml'}",
        "--log-level=warn",
        *(f"--set={s}" for s in sets),
    ]


def decider_argv(template: str, listen: str, tmp: Path) -> list[str]:
    fields = {
        "bundle": str(DECIDER_BUNDLE),
        "listen": listen,
        "tmp": str(tmp),
        "python": sys.executable,
        "repo": str(REPO_ROOT),
    }
    return [part.format(**fields) for part in shlex.split(template)]


@dataclass
class Server:
    name: str
    argv: list[str]
    address: str
    log_path: Path
    env: dict[str, str]
    process: subprocess.Popen[bytes] | None = None

    @property
    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid

    def log_tail(self, lines: int = 30) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except FileNotFoundError:
            return "(no log)"


@contextlib.contextmanager
def running(server: Server) -> Iterator[Server]:
    """Start ``server`` in its own session; on exit stop that session: SIGTERM, then SIGKILL."""
    with open(server.log_path, "wb") as log:
        # A new session makes the server a process-group leader, so stopping the group reaches any worker
        # processes it forks — and nothing that this script did not start.
        server.process = subprocess.Popen(
            server.argv,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            cwd=REPO_ROOT,
            env=server.env,
            start_new_session=True,
        )
    try:
        yield server
    finally:
        stop(server.process)


def stop(process: subprocess.Popen[bytes]) -> None:
    stop_group(process, timeout_s=STOP_TIMEOUT_S)


async def wait_healthy(server: Server, timeout_s: float = READY_TIMEOUT_S) -> None:
    """Poll grpc.health.v1.Health/Check (overall server, service "") until SERVING."""
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    deadline = time.monotonic() + timeout_s
    last_error = "no answer"
    async with grpc.aio.insecure_channel(server.address) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        while time.monotonic() < deadline:
            assert server.process is not None
            if server.process.poll() is not None:
                raise BenchError(
                    f"{server.name} exited with {server.process.returncode} before it was "
                    f"ready; log tail:\n{server.log_tail()}"
                )
            try:
                reply = await stub.Check(health_pb2.HealthCheckRequest(service=""), timeout=1.0)
                if reply.status == health_pb2.HealthCheckResponse.SERVING:
                    return
                last_error = health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status)
            except grpc.aio.AioRpcError as err:
                last_error = f"{err.code().name}: {err.details()}"
            await asyncio.sleep(0.1)
    raise BenchError(
        f"{server.name} not SERVING after {timeout_s:.0f} s ({last_error}); log tail:\n{server.log_tail()}"
    )


# --- reporting ----------------------------------------------------------------------------------------


def ratios(summaries: Sequence[load.Summary], mine_name: str = "decider") -> list[dict[str, Any]]:
    by_key = {(s.target, s.concurrency): s for s in summaries}
    rows = []
    for concurrency in sorted({s.concurrency for s in summaries}):
        mine, theirs = by_key.get((mine_name, concurrency)), by_key.get(("cerbos", concurrency))
        if mine is None or theirs is None:
            continue
        rows.append(
            {
                "target": mine_name,
                "concurrency": concurrency,
                # > 1 means decider is better on every one of these.
                "decisions_per_s": mine.decisions_per_s / theirs.decisions_per_s,
                "decisions_per_server_cpu_s": mine.decisions_per_server_cpu_s
                / theirs.decisions_per_server_cpu_s,
                "p50_speedup": theirs.p50_ms / mine.p50_ms,
                "p99_speedup": theirs.p99_ms / mine.p99_ms,
            }
        )
    return rows


def format_ratios(rows: Sequence[dict[str, Any]], title: str = "decider (unary Decide) / Cerbos") -> str:
    header = f"{'C':>3} {'dec/s':>8} {'dec/srv-CPU-s':>14} {'p50 speedup':>12} {'p99 speedup':>12}"
    lines = [f"{title} (> 1.00 = decider better)", header, "-" * len(header)]
    for r in rows:
        lines.append(
            f"{r['concurrency']:>3} {r['decisions_per_s']:>8.2f} {r['decisions_per_server_cpu_s']:>14.2f} "
            f"{r['p50_speedup']:>12.2f} {r['p99_speedup']:>12.2f}"
        )
    return "\n".join(lines)


# --- main ---------------------------------------------------------------------------------------------


def _raise_on_sigterm(signum: int, _frame: object) -> None:
    # Turn `kill <pid>` into an exception so the `finally` blocks stop the servers.
    raise KeyboardInterrupt(f"signal {signum}")


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--only", choices=["cerbos", "decider"], help="run one system alone")
    parser.add_argument("--cerbos-version", default=DEFAULT_CERBOS_VERSION)
    parser.add_argument("--cerbos-bin", type=Path, help="use this Cerbos binary instead of installing one")
    parser.add_argument(
        "--cerbos-audit",
        choices=["local", "file", "off"],
        default="local",
        help="Cerbos decision audit backend (default local = BadgerDB; 'off' is for reference "
        "only, the issue's comparison is with the audit log on)",
    )
    parser.add_argument(
        "--decider-cmd",
        default=os.environ.get("DECIDER_BENCH_CMD", DEFAULT_DECIDER_CMD),
        help="command template; {bundle} {listen} {tmp} {python} {repo} are filled in "
        "(default: %(default)s; env DECIDER_BENCH_CMD)",
    )
    parser.add_argument(
        "--stream",
        action="store_true",
        help="also drive decider over DecideStream (reported as its own row, 'decider-stream'; the "
        "headline comparison stays unary Decide vs Cerbos CheckResources)",
    )
    parser.add_argument(
        "--batch",
        action="store_true",
        help="also drive decider over DecideBatchStream through decider.batching.BatchingDecider, one "
        "coalescing client shared by every caller ('decider-batch' row)",
    )
    parser.add_argument(
        "--floor",
        action="store_true",
        help="also run tools/bench/floor_server.py (grpc.aio answering with the bench rules in plain Python: "
        "no CEL, no record) on the same paths ('floor' rows): what any Python grpc.aio server pays per call",
    )
    parser.add_argument("--keep-logs", action="store_true", help="keep the temp dir with server logs")
    load.add_load_arguments(parser)
    args = parser.parse_args(argv)
    if args.rounds < 1 or args.seconds <= 0 or args.max_requests < 1:
        parser.error("--rounds, --seconds and --max-requests must be positive")
    return args


def check_imports(systems: Sequence[str]) -> None:
    """Fail with the fix, not a traceback, when the bench's client packages are missing."""
    needed = {"grpc_health.v1.health_pb2": "grpcio-health-checking"}
    if "cerbos" in systems:
        needed["cerbos.svc.v1.svc_pb2_grpc"] = "cerbos"
    missing = []
    for module, package in needed.items():
        try:
            importlib.import_module(module)
        except ImportError:
            missing.append(package)
    if missing:
        raise BenchError(
            f"missing Python packages {missing}: "
            f"{sys.executable} -m pip install -r {HERE / 'requirements.txt'}"
        )


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    signal.signal(signal.SIGTERM, _raise_on_sigterm)
    items = build_workload(args.size, args.seed)
    gaps = coverage_gaps(items)
    if gaps:
        raise BenchError(f"workload of size {args.size} misses outcomes: {', '.join(gaps)}; raise --size")
    systems = ["decider", "cerbos"] if args.only is None else [args.only]
    check_imports(systems)

    meta: dict[str, Any] = {
        "machine": load.machine_info(),
        "args": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
        "workload": {"size": args.size, "seed": args.seed, "mix": summarize(items)},
        "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
    # rev-parse only reads; describe --dirty and status may rewrite the index, which is not ours to touch.
    with contextlib.suppress(OSError, subprocess.SubprocessError):
        meta["git"] = subprocess.run(
            ["git", "-C", str(REPO_ROOT), "rev-parse", "--short", "HEAD"],
            capture_output=True,
            text=True,
            timeout=10,
        ).stdout.strip()

    tmp = Path(tempfile.mkdtemp(prefix="decider-bench-"))
    servers: list[Server] = []
    # decider's args_hash key from outside the database, as a production server runs (`--dev` would
    # keep it in the database); one random key per run.
    env = {**os.environ, "CERBOS_NO_TELEMETRY": "1", "DECIDER_BINDING_KEY": os.urandom(32).hex()}
    if "cerbos" in systems:
        binary = args.cerbos_bin or install_cerbos(args.cerbos_version)
        meta["cerbos"] = {
            "version": cerbos_version(binary),
            "audit": args.cerbos_audit,
            "binary": str(binary),
        }
        grpc_addr = f"127.0.0.1:{free_port()}"
        http_addr = f"127.0.0.1:{free_port()}"
        servers.append(
            Server(
                "cerbos",
                cerbos_argv(binary, grpc_addr, http_addr, tmp, args.cerbos_audit),
                grpc_addr,
                tmp / "cerbos.log",
                env,
            )
        )
    if "decider" in systems:
        listen = f"127.0.0.1:{free_port()}"
        argv_ = decider_argv(args.decider_cmd, listen, tmp)
        if not Path(argv_[0]).exists() and "/" in argv_[0]:
            raise BenchError(f"decider command not found: {argv_[0]} (make venv, or pass --decider-cmd)")
        meta["decider"] = {"argv": argv_}
        servers.insert(0, Server("decider", argv_, listen, tmp / "decider.log", env))
    if args.floor:
        listen = f"127.0.0.1:{free_port()}"
        servers.append(Server("floor", [sys.executable, str(HERE / "floor_server.py"), "--listen", listen], listen,
                              tmp / "floor.log", env))

    name = args.name or time.strftime("compare-%Y%m%d-%H%M%S")
    try:
        with contextlib.ExitStack() as stack:
            for server in servers:
                stack.enter_context(running(server))
                print(f"started {server.name} pid {server.pid} on {server.address}", file=sys.stderr)
            for server in servers:
                asyncio.run(wait_healthy(server))
            targets: list[tuple[load.Target, int]] = []
            for server in servers:
                if server.name == "cerbos":
                    targets.append((load.CerbosTarget(server.address), server.pid))
                    continue
                # decider, or the grpc.aio floor on the same paths
                targets.append((load.DeciderTarget(server.address, name=server.name), server.pid))
                if args.stream:
                    targets.append((load.DeciderStreamTarget(server.address, name=f"{server.name}-stream"),
                                    server.pid))
                if args.batch:
                    targets.append((load.DeciderBatchTarget(server.address, name=f"{server.name}-batch"),
                                    server.pid))
            results = asyncio.run(
                load.run_matrix(
                    targets,
                    items,
                    args.concurrency,
                    args.rounds,
                    args.max_requests,
                    args.seconds,
                    args.warmup,
                )
            )
        # Servers are stopped here; everything below is reporting.
        summaries = load.summarize(results)
        print()
        print(load.format_table(summaries))
        rows = ratios(summaries)
        if rows:
            print()
            print(format_ratios(rows))
        batch_rows = ratios(summaries, "decider-batch")
        if batch_rows:
            print()
            print(format_ratios(batch_rows, "decider-batch (DecideBatchStream, one coalescing client) / Cerbos (unary)"))
        meta["ratios_decider_batch_over_cerbos"] = batch_rows
        stream_rows = ratios(summaries, "decider-stream")
        if stream_rows:
            print()
            print(format_ratios(stream_rows, "decider-stream (DecideStream, one stream per caller) / Cerbos (unary)"))
        meta["ratios_decider_over_cerbos"] = rows
        meta["ratios_decider_stream_over_cerbos"] = stream_rows
        for floor in ("floor", "floor-stream", "floor-batch"):
            floor_rows = ratios(summaries, floor)
            if floor_rows:
                print()
                print(format_ratios(floor_rows, f"{floor} (grpc.aio, rules in plain Python, no record) / Cerbos (unary)"))
                meta[f"ratios_{floor.replace('-', '_')}_over_cerbos"] = floor_rows
        print(f"\nwrote {load.write_results(name, meta, results)}")
        return 0
    except load.OutcomeMismatchError as err:
        print(f"FAIL: wrong outcome, the policy sets disagree with the workload:\n  {err}", file=sys.stderr)
        return 1
    finally:
        if args.keep_logs:
            print(f"server logs kept in {tmp}", file=sys.stderr)
        else:
            shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    try:
        raise SystemExit(main())
    except BenchError as error:
        print(f"bench: {error}", file=sys.stderr)
        raise SystemExit(2) from None
