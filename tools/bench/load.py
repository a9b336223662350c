"""Load driver for the decider-vs-Cerbos bench: the same request mix through the same grpc.aio client code.

A *target* is one PDP behind one interface, ``async def decide(item) -> str``, which answers "ALLOW",
"DENY" or "REQUIRE_APPROVAL". The driver runs C concurrent workers per cell, stops a cell at a request
count OR a deadline (whichever comes first), fails the run on the first reply that differs from the
workload's expected outcome, and measures per cell:

- decisions/s and p50/p99 latency (client side, per call, wall clock),
- server CPU-seconds: utime+stime of the server process and all its descendants from /proc, sampled
  right before and right after the cell (children that exit in between are in the parent's cutime),
- decisions per server CPU-second, the efficiency number the issue compares.

Targets run alternately within each concurrency level (A B, then B A on the next round) so both see the
same machine conditions on this shared 2-core box. ``compare.py`` starts the servers and calls
:func:`run_matrix`; this module can also drive servers that are already running:

    python tools/bench/load.py --cerbos 127.0.0.1:3593 --cerbos-pid 1234 --seconds 3 --name dev
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import itertools
import json
import os
import platform
import sys
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Protocol

import grpc
from google.protobuf import struct_pb2

if __package__ in (None, ""):
    # Run as a script (python tools/bench/load.py): make the sibling modules importable.
    sys.path.insert(0, str(Path(__file__).resolve().parent))

from workload import ALLOW, DENY, REQUIRE_APPROVAL, Item, build_workload  # noqa: E402

__all__ = [
    "CellResult",
    "CerbosTarget",
    "DeciderStreamTarget",
    "DeciderBatchTarget",
    "DeciderTarget",
    "OutcomeMismatchError",
    "Summary",
    "Target",
    "proc_tree_cpu_seconds",
    "run_cell",
    "run_matrix",
    "summarize",
    "write_results",
]

REPO_ROOT = Path(__file__).resolve().parents[2]
RESULTS_DIR = Path(__file__).resolve().parent / "results"
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
# A hung server must fail the run, not hang it: every RPC carries this deadline.
RPC_TIMEOUT_S = 10.0
# Cerbos actions that encode decider's three outcomes (see policies/cerbos/*.yaml).
CERBOS_ACTIONS = ("call", "call_without_approval")


class OutcomeMismatchError(AssertionError):
    """A target answered something other than the workload's expected outcome."""

    def __init__(self, target: str, item: Item, got: str) -> None:
        super().__init__(f"{target}: expected {item.expected}, got {got} for {item!r}")
        self.target, self.item, self.got = target, item, got


class Target(Protocol):
    """One PDP under test. ``prepare`` builds wire messages up front so the timed loop only sends."""

    name: str

    async def open(self) -> None: ...

    def prepare(self, items: Sequence[Item]) -> None: ...

    async def decide(self, item: Item) -> str: ...

    async def close(self) -> None: ...


def _to_value(value: Any) -> struct_pb2.Value:
    holder = struct_pb2.Struct()
    holder.update({"v": value})
    return holder.fields["v"]


def _to_struct(values: dict[str, Any]) -> struct_pb2.Struct:
    out = struct_pb2.Struct()
    out.update(values)
    return out


class CerbosTarget:
    """Cerbos PDP over ``cerbos.svc.v1.CerbosService/CheckResources`` (stubs from PyPI ``cerbos``).

    Mapping (the same for every tool): the agent is the principal (role ``agent``; attributes model,
    team, environment), the tool call is a resource whose kind is the tool name and whose attributes
    are the call's arguments. Each request asks for two actions at once:
    ``call`` denied -> DENY; ``call`` allowed but ``call_without_approval`` denied -> REQUIRE_APPROVAL;
    both allowed -> ALLOW. A kind with no policy is denied by Cerbos, which is decider's ``default: deny``.
    """

    def __init__(self, address: str, name: str = "cerbos") -> None:
        from cerbos.effect.v1 import effect_pb2
        from cerbos.svc.v1 import svc_pb2_grpc

        self.name = name
        self.address = address
        self._allow = effect_pb2.EFFECT_ALLOW
        self._stub_cls = svc_pb2_grpc.CerbosServiceStub
        self._channel: grpc.aio.Channel | None = None
        self._stub: Any = None
        self._requests: dict[int, Any] = {}

    async def open(self) -> None:
        self._channel = grpc.aio.insecure_channel(self.address)
        self._stub = self._stub_cls(self._channel)

    def build(self, item: Item) -> Any:
        from cerbos.engine.v1 import engine_pb2
        from cerbos.request.v1 import request_pb2

        principal = engine_pb2.Principal(id=item.agent_id, roles=["agent"], policy_version="default")
        for key, value in (
            ("model", item.agent_model),
            ("team", item.agent_team),
            ("environment", item.environment),
        ):
            principal.attr[key].CopyFrom(_to_value(value))
        resource = engine_pb2.Resource(kind=item.tool_name, id=item.call_id, policy_version="default")
        # The same facts decider receives: arguments plus server and estimated cost.
        for key, value in {
            **item.args,
            "server": item.tool_server,
            "estimated_cost": item.estimated_cost,
        }.items():
            resource.attr[key].CopyFrom(_to_value(value))
        return request_pb2.CheckResourcesRequest(
            request_id=item.call_id,
            principal=principal,
            resources=[
                request_pb2.CheckResourcesRequest.ResourceEntry(actions=CERBOS_ACTIONS, resource=resource)
            ],
        )

    def prepare(self, items: Sequence[Item]) -> None:
        self._requests = {item.index: self.build(item) for item in items}

    async def decide(self, item: Item) -> str:
        request = self._requests.get(item.index)
        if request is None:
            request = self.build(item)
        response = await self._stub.CheckResources(request, timeout=RPC_TIMEOUT_S)
        actions = response.results[0].actions
        if actions["call"] != self._allow:
            return DENY
        if actions["call_without_approval"] != self._allow:
            return REQUIRE_APPROVAL
        return ALLOW

    async def close(self) -> None:
        if self._channel is not None:
            await self._channel.close()


class DeciderTarget:
    """decider over ``decider.v1.Decider/Decide``, with the stubs generated into the repo (decider/v1/)."""

    def __init__(self, address: str, name: str = "decider", repo_root: Path = REPO_ROOT) -> None:
        # Imported lazily so `--only cerbos` works while decider's package is mid-change.
        if str(repo_root) not in sys.path:
            sys.path.insert(0, str(repo_root))
        from decider.v1 import decider_pb2, decider_pb2_grpc

        self.name = name
        self.address = address
        self._pb = decider_pb2
        self._stub_cls = decider_pb2_grpc.DeciderStub
        self._channel: grpc.aio.Channel | None = None
        self._stub: Any = None
        self._requests: dict[int, Any] = {}

    async def open(self) -> None:
        self._channel = grpc.aio.insecure_channel(self.address)
        self._stub = self._stub_cls(self._channel)

    def build(self, item: Item) -> Any:
        pb = self._pb
        return pb.DecideRequest(
            agent=pb.Agent(id=item.agent_id, team=item.agent_team, model=item.agent_model),
            tool=pb.ToolCall(
                name=item.tool_name, server=item.tool_server, args=_to_struct(item.args), call_id=item.call_id
            ),
            request=pb.Request(
                id=item.call_id, estimated_cost=item.estimated_cost, environment=item.environment
            ),
        )

    def prepare(self, items: Sequence[Item]) -> None:
        self._requests = {item.index: self.build(item) for item in items}

    async def decide(self, item: Item) -> str:
        request = self._requests.get(item.index)
        if request is None:
            request = self.build(item)
        response = await self._stub.Decide(request, timeout=RPC_TIMEOUT_S)
        return self._pb.Outcome.Name(response.outcome)

    async def close(self) -> None:
        if self._channel is not None:
            await self._channel.close()


class DeciderStreamTarget(DeciderTarget):
    """decider over ``decider.v1.Decider/DecideStream``: the same requests on long-lived bidi streams.

    One stream per concurrent caller (a pool: a worker takes an idle stream, sends one request, reads
    its reply, puts the stream back), so C in flight means C streams with one message each in flight,
    as a gateway multiplexing its agents' calls would hold them. Replies are checked against the
    request's ``request.id`` echo.
    """

    def __init__(self, address: str, name: str = "decider-stream", repo_root: Path = REPO_ROOT) -> None:
        super().__init__(address, name, repo_root)
        self._idle: list[Any] = []
        self._all: list[Any] = []

    async def decide(self, item: Item) -> str:
        request = self._requests.get(item.index)
        if request is None:
            request = self.build(item)
        call = self._idle.pop() if self._idle else self._new_stream()
        await call.write(request)
        response = await asyncio.wait_for(call.read(), RPC_TIMEOUT_S)
        self._idle.append(call)
        if response is grpc.aio.EOF:
            raise RuntimeError(f"{self.name}: stream ended before the reply to {item.call_id}")
        if response.HasField("error"):
            raise RuntimeError(f"{self.name}: error reply {response.error.code}: {response.error.message}")
        if response.request_id != request.request.id:
            raise RuntimeError(f"{self.name}: reply for {response.request_id!r}, expected {request.request.id!r}")
        return self._pb.Outcome.Name(response.outcome)

    def _new_stream(self) -> Any:
        call = self._stub.DecideStream()
        self._all.append(call)
        return call

    async def close(self) -> None:
        for call in self._all:
            with contextlib.suppress(grpc.aio.AioRpcError, asyncio.CancelledError):
                await call.done_writing()
                await asyncio.wait_for(call.wait_for_connection(), RPC_TIMEOUT_S)
        self._all.clear()
        self._idle.clear()
        await super().close()


class DeciderBatchTarget(DeciderTarget):
    """decider over ``DecideBatchStream`` through ``decider.batching.BatchingDecider``: every concurrent
    caller shares one client, which sends a call at once when the stream is idle and otherwise
    coalesces the calls that arrive meanwhile into one message (issue 17, lever 1). This is how a
    gateway multiplexing its agents' calls would use it; the batches form from the load alone (no
    timer), so C=1 sends one call per message."""

    def __init__(self, address: str, name: str = "decider-batch", repo_root: Path = REPO_ROOT) -> None:
        super().__init__(address, name, repo_root)
        from decider.batching import BatchingDecider

        self._cls = BatchingDecider
        self._client: Any = None

    async def open(self) -> None:
        await super().open()
        # The batches on the wire at once: a knob for measuring (default: the client's own).
        in_flight = int(os.environ.get("DECIDER_BENCH_BATCHES_IN_FLIGHT", "0"))
        extra = {"max_in_flight": in_flight} if in_flight else {}
        self._client = self._cls(self._channel, timeout=RPC_TIMEOUT_S, **extra)

    async def decide(self, item: Item) -> str:
        request = self._requests.get(item.index)
        if request is None:
            request = self.build(item)
        response = await self._client.decide(request)
        if response.request_id != request.request.id:
            raise RuntimeError(f"{self.name}: reply for {response.request_id!r}, expected {request.request.id!r}")
        return self._pb.Outcome.Name(response.outcome)

    async def close(self) -> None:
        if self._client is not None:
            await self._client.close()
        await super().close()


# --- server CPU from /proc ------------------------------------------------------------------------------


def _stat_fields(pid: int) -> list[str] | None:
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return None
    # Field 2 (comm) may contain spaces and parentheses: split after the last ')'.
    return raw[raw.rindex(")") + 2 :].split()


def proc_tree_cpu_seconds(pid: int) -> float:
    """utime+stime+cutime+cstime of ``pid`` and every live descendant, in seconds.

    Live children are read directly; children that already exited and were reaped are in their
    parent's cutime/cstime, so a child ending between two samples is neither lost nor counted twice.
    """
    children: dict[int, list[int]] = {}
    ticks: dict[int, int] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        fields = _stat_fields(int(entry))
        if fields is None:
            continue
        # After comm: [0]=state [1]=ppid ... [11]=utime [12]=stime [13]=cutime [14]=cstime
        children.setdefault(int(fields[1]), []).append(int(entry))
        ticks[int(entry)] = sum(int(f) for f in fields[11:15])
    if pid not in ticks:
        raise ProcessLookupError(f"server process {pid} is gone")
    total, stack = 0, [pid]
    while stack:
        current = stack.pop()
        total += ticks.get(current, 0)
        stack.extend(children.get(current, ()))
    return total / CLOCK_TICKS


# --- running cells ------------------------------------------------------------------------------------


@dataclass
class CellResult:
    """One target at one concurrency for one round."""

    target: str
    concurrency: int
    round: int
    decisions: int
    wall_s: float
    server_cpu_s: float
    client_cpu_s: float
    latencies_us: list[float] = field(repr=False)

    @property
    def decisions_per_s(self) -> float:
        return self.decisions / self.wall_s if self.wall_s else 0.0


async def _drive(
    target: Target,
    items: Sequence[Item],
    concurrency: int,
    max_requests: int,
    max_seconds: float,
    latencies_us: list[float] | None,
) -> int:
    """C workers pull the next item until the count or the deadline runs out; returns calls made."""
    counter = itertools.count()
    deadline = time.perf_counter() + max_seconds
    done = 0

    async def worker() -> None:
        nonlocal done
        while True:
            n = next(counter)
            if n >= max_requests or time.perf_counter() >= deadline:
                return
            item = items[n % len(items)]
            start = time.perf_counter_ns()
            got = await target.decide(item)
            elapsed = time.perf_counter_ns() - start
            if got != item.expected:
                raise OutcomeMismatchError(target.name, item, got)
            if latencies_us is not None:
                latencies_us.append(elapsed / 1000.0)
            done += 1

    # TaskGroup cancels the other workers as soon as one raises (a mismatch or an RPC error); callers get
    # that error itself, a mismatch first, rather than an ExceptionGroup.
    try:
        async with asyncio.TaskGroup() as group:
            for _ in range(concurrency):
                group.create_task(worker())
    except ExceptionGroup as errors:
        mismatches, others = errors.split(OutcomeMismatchError)
        raise _first_leaf(mismatches or others or errors) from None
    return done


def _first_leaf(group: BaseExceptionGroup[Any]) -> BaseException:
    first = group.exceptions[0]
    return _first_leaf(first) if isinstance(first, BaseExceptionGroup) else first


async def run_cell(
    target: Target,
    server_pid: int,
    items: Sequence[Item],
    concurrency: int,
    max_requests: int,
    max_seconds: float,
    round_no: int = 0,
    warmup_seconds: float = 0.5,
) -> CellResult:
    """Warm up briefly (not measured), then one measured cell bounded by count and time."""
    if warmup_seconds > 0:
        await _drive(target, items, concurrency, max_requests, warmup_seconds, None)
    latencies: list[float] = []
    cpu_before = proc_tree_cpu_seconds(server_pid)
    client_before = time.process_time()
    wall_start = time.perf_counter()
    decisions = await _drive(target, items, concurrency, max_requests, max_seconds, latencies)
    wall = time.perf_counter() - wall_start
    client_cpu = time.process_time() - client_before
    server_cpu = proc_tree_cpu_seconds(server_pid) - cpu_before
    return CellResult(target.name, concurrency, round_no, decisions, wall, server_cpu, client_cpu, latencies)


async def run_matrix(
    targets: Sequence[tuple[Target, int]],
    items: Sequence[Item],
    concurrencies: Sequence[int],
    rounds: int,
    max_requests: int,
    max_seconds: float,
    warmup_seconds: float = 0.5,
    verbose: bool = True,
) -> list[CellResult]:
    """Every (target, concurrency) ``rounds`` times, targets alternating A B / B A within each level."""
    for target, _ in targets:
        await target.open()
        target.prepare(items)
    results: list[CellResult] = []
    try:
        # One pass over the whole mix first: a wrong policy fails fast, before any timing.
        for target, _ in targets:
            await _drive(target, items, 1, len(items), 120.0, None)
        for concurrency in concurrencies:
            for round_no in range(rounds):
                order = list(targets) if round_no % 2 == 0 else list(reversed(targets))
                for target, pid in order:
                    cell = await run_cell(
                        target, pid, items, concurrency, max_requests, max_seconds, round_no, warmup_seconds
                    )
                    results.append(cell)
                    if verbose:
                        print(
                            f"  {cell.target:<14} C={concurrency:<3} round {round_no}: "
                            f"{cell.decisions_per_s:9.0f} decisions/s, server CPU {cell.server_cpu_s:6.2f} s",
                            file=sys.stderr,
                            flush=True,
                        )
    finally:
        for target, _ in targets:
            await target.close()
    return results


# --- reporting ----------------------------------------------------------------------------------------


@dataclass
class Summary:
    """All rounds of one (target, concurrency), pooled: totals over totals, percentiles over all calls."""

    target: str
    concurrency: int
    rounds: int
    decisions: int
    wall_s: float
    decisions_per_s: float
    p50_ms: float
    p99_ms: float
    server_cpu_s: float
    decisions_per_server_cpu_s: float
    client_cpu_s: float


def _percentile(sorted_values: Sequence[float], q: float) -> float:
    if not sorted_values:
        return float("nan")
    # Nearest rank: an actual observed latency, no interpolation.
    rank = max(0, min(len(sorted_values) - 1, round(q * len(sorted_values) + 0.5) - 1))
    return sorted_values[rank]


def summarize(results: Sequence[CellResult]) -> list[Summary]:
    groups: dict[tuple[str, int], list[CellResult]] = {}
    for cell in results:
        groups.setdefault((cell.target, cell.concurrency), []).append(cell)
    out = []
    for (name, concurrency), cells in groups.items():
        latencies = sorted(lat for cell in cells for lat in cell.latencies_us)
        decisions = sum(c.decisions for c in cells)
        wall = sum(c.wall_s for c in cells)
        cpu = sum(c.server_cpu_s for c in cells)
        out.append(
            Summary(
                target=name,
                concurrency=concurrency,
                rounds=len(cells),
                decisions=decisions,
                wall_s=wall,
                decisions_per_s=decisions / wall if wall else 0.0,
                p50_ms=_percentile(latencies, 0.50) / 1000.0,
                p99_ms=_percentile(latencies, 0.99) / 1000.0,
                server_cpu_s=cpu,
                decisions_per_server_cpu_s=decisions / cpu if cpu else float("inf"),
                client_cpu_s=sum(c.client_cpu_s for c in cells),
            )
        )
    return sorted(out, key=lambda s: (s.concurrency, s.target))


def format_table(summaries: Sequence[Summary]) -> str:
    header = (
        f"{'target':<14} {'C':>3} {'decisions':>10} {'dec/s':>8} {'p50 ms':>8} {'p99 ms':>8} "
        f"{'srv CPU-s':>10} {'dec/srv-CPU-s':>14} {'cli CPU-s':>10}"
    )
    lines = [header, "-" * len(header)]
    for s in summaries:
        lines.append(
            f"{s.target:<14} {s.concurrency:>3} {s.decisions:>10} {s.decisions_per_s:>8.0f} "
            f"{s.p50_ms:>8.3f} {s.p99_ms:>8.3f} {s.server_cpu_s:>10.2f} "
            f"{s.decisions_per_server_cpu_s:>14.0f} {s.client_cpu_s:>10.2f}"
        )
    return "\n".join(lines)


def machine_info() -> dict[str, Any]:
    return {
        "python": platform.python_version(),
        "grpcio": grpc.__version__,
        "platform": platform.platform(),
        "cpus": os.cpu_count(),
        # The box is shared with other test runs: the load at start says how quiet it was.
        "loadavg_at_start": os.getloadavg(),
    }


def write_results(
    name: str, meta: dict[str, Any], results: Sequence[CellResult], directory: Path = RESULTS_DIR
) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / f"{name}.json"
    cells = []
    for cell in results:
        lat = sorted(cell.latencies_us)
        row = {k: v for k, v in asdict(cell).items() if k != "latencies_us"}
        row.update(
            decisions_per_s=cell.decisions_per_s,
            p50_ms=_percentile(lat, 0.5) / 1000.0,
            p99_ms=_percentile(lat, 0.99) / 1000.0,
        )
        cells.append(row)
    payload = {"meta": meta, "summary": [asdict(s) for s in summarize(results)], "cells": cells}
    path.write_text(json.dumps(payload, indent=2, sort_keys=True) + "\n")
    return path


# --- CLI against servers that are already running -----------------------------------------------------


def _parse_concurrency(text: str) -> list[int]:
    values = [int(part) for part in text.split(",") if part.strip()]
    if not values or min(values) < 1:
        raise argparse.ArgumentTypeError("concurrency list like 1,8,32")
    return values


def add_load_arguments(parser: argparse.ArgumentParser) -> None:
    """Options shared with compare.py."""
    parser.add_argument(
        "--concurrency",
        type=_parse_concurrency,
        default=[1, 8, 32],
        help="comma-separated concurrency levels (default 1,8,32)",
    )
    parser.add_argument("--seconds", type=float, default=5.0, help="max seconds per measured cell")
    parser.add_argument("--max-requests", type=int, default=200_000, help="max calls per measured cell")
    parser.add_argument("--rounds", type=int, default=2, help="measured cells per target and level")
    parser.add_argument("--warmup", type=float, default=0.5, help="unmeasured seconds before each cell")
    parser.add_argument("--size", type=int, default=2000, help="distinct calls in the workload")
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--name", default=None, help="results/<name>.json (default: a timestamp)")


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--cerbos", metavar="HOST:PORT")
    parser.add_argument("--cerbos-pid", type=int)
    parser.add_argument("--decider", metavar="HOST:PORT")
    parser.add_argument("--decider-pid", type=int)
    parser.add_argument("--stream", action="store_true", help="also drive decider over DecideStream")
    parser.add_argument("--stream-only", action="store_true", help="drive decider over DecideStream only")
    parser.add_argument("--batch-only", action="store_true",
                        help="drive decider over DecideBatchStream (one coalescing client) only")
    add_load_arguments(parser)
    args = parser.parse_args(argv)
    targets: list[tuple[Target, int]] = []
    if args.decider:
        if args.batch_only:
            targets.append((DeciderBatchTarget(args.decider), args.decider_pid))
        else:
            if not args.stream_only:
                targets.append((DeciderTarget(args.decider), args.decider_pid))
            if args.stream or args.stream_only:
                targets.append((DeciderStreamTarget(args.decider), args.decider_pid))
    if args.cerbos:
        targets.append((CerbosTarget(args.cerbos), args.cerbos_pid))
    if not targets or any(pid is None for _, pid in targets):
        parser.error("give --cerbos/--cerbos-pid and/or --decider/--decider-pid")
    items = build_workload(args.size, args.seed)
    meta = {"machine": machine_info(), "args": vars(args)}
    results = asyncio.run(
        run_matrix(
            targets, items, args.concurrency, args.rounds, args.max_requests, args.seconds, args.warmup
        )
    )
    print(format_table(summarize(results)))
    name = args.name or time.strftime("load-%Y%m%d-%H%M%S")
    print(f"wrote {write_results(name, meta, results)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
