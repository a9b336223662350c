"""`replay(..., workers=N)`: forked workers must give exactly the serial replay, in order."""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from decider.bundle.compile import load_bundle
from decider.replay import parallel as replay_parallel
from decider.replay.parallel import map_forked
from decider.replay.replay import IdentityMapping, replay
from decider.replay.traces import read_traces

from .helpers import POLICIES, ROOT
from .test_replay import TRACES, needs_traces

pytestmark = pytest.mark.skipif(not replay_parallel.can_fork(), reason="replay workers need fork (Linux)")


@pytest.fixture
def small_windows(monkeypatch: pytest.MonkeyPatch) -> None:
    """Fork even for the ~1,300 real calls, in many chunks and several windows."""
    monkeypatch.setattr(replay_parallel, "MIN_FORKED", 1)
    monkeypatch.setattr(replay_parallel, "CHUNK", 37)
    monkeypatch.setattr(replay_parallel, "WINDOW", 500)


def _children() -> set[int]:
    """This process's live or unreaped (zombie) children, from /proc."""
    me, found = os.getpid(), set()
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue  # exited meanwhile
        if int(fields[1]) == me:
            found.add(int(stat.parent.name))
    return found


@needs_traces
@pytest.mark.parametrize("workers", [2, 3])
def test_workers_give_exactly_the_serial_replay_of_the_real_traces(small_windows: None, workers: int) -> None:
    bundle = load_bundle(POLICIES)
    mapping = IdentityMapping(agent={"team": "platform"}, environment="production")
    calls = list(read_traces([str(TRACES)]))
    assert len(calls) > 1000
    serial = list(replay(bundle, calls, mapping))
    forked = list(replay(bundle, iter(calls), mapping, workers=workers))  # any iterable, not only lists
    assert forked == serial  # same calls, outcomes, rules, reasons and matched rules, in the same order
    assert {r.outcome for r in forked} >= {"ALLOW", "DENY", "REQUIRE_APPROVAL"}


def test_a_failing_worker_raises_its_error_in_the_caller(small_windows: None) -> None:
    def fn(x: int) -> int:
        if x == 123:
            raise ValueError(f"bad item {x}")
        return x * 2

    got: list[int] = []
    with pytest.raises(ValueError, match="bad item 123"):
        for _, y in map_forked(fn, range(1000), 2):
            got.append(y)
    assert got == [x * 2 for x in range(111)]  # every result before the failing chunk, in order


def test_stopping_early_reaps_every_worker(small_windows: None) -> None:
    before = _children()
    it: Iterator[tuple[int, int]] = map_forked(lambda x: x + 1, range(10_000), 2)
    assert [next(it)[1] for _ in range(5)] == [1, 2, 3, 4, 5]
    assert len(_children() - before) == 2  # the workers exist while results are pending
    it.close()
    assert _children() <= before


def test_cli_workers_report_matches_one_process(tmp_path: Path) -> None:
    """End to end through `decider replay`, on enough calls (above MIN_FORKED) to really fork."""
    rnd = random.Random(3)
    messages = []
    for i in range(3000):
        tool, args = rnd.choice([("fs.read", {"path": rnd.choice(["/workspace/a.py", "/etc/passwd"])}),
                                 ("db.query", {"sql": rnd.choice(["select 1", "drop table t"])}),
                                 ("http.fetch", {"url": "https://example.com"}), ("broken", None)])
        raw = json.dumps(args) if args is not None else "{not json"
        messages.append({"role": "assistant", "tool_calls": [
            {"id": f"c{i}", "type": "function", "function": {"name": tool, "arguments": raw}}]})
    trace = tmp_path / "t.json"
    trace.write_text(json.dumps({"messages": messages}))

    def run(workers: str) -> str:
        out = subprocess.run([sys.executable, "-m", "decider", "replay", str(POLICIES), str(trace), "--format",
                              "jsonl", "--workers", workers], capture_output=True, text=True, cwd=ROOT, timeout=120)
        assert out.returncode == 0, out.stderr
        return out.stdout

    one, two = run("1"), run("2")
    assert one == two
    assert len(one.splitlines()) == 3000


@pytest.mark.parametrize(("cpus", "expected"), [(1, 1), (2, 1), (3, 2), (8, 7)])
def test_default_workers_leave_a_cpu_to_the_reader_and_never_fork_on_two(
        monkeypatch: pytest.MonkeyPatch, cpus: int, expected: int) -> None:
    monkeypatch.setattr(replay_parallel, "available_cpus", lambda: cpus)
    assert replay_parallel.default_workers() == expected


def test_a_failing_input_still_yields_every_item_read_before_it(small_windows: None) -> None:
    """Like a serial replay over a folder whose third file is malformed: the calls of the files
    before it are reported, then the error."""
    def items() -> Iterator[int]:
        yield from range(700)  # more than one window (500) and, in the second, a partial one
        raise ValueError("malformed trace")

    got: list[int] = []
    with pytest.raises(ValueError, match="malformed trace"):
        for _, y in map_forked(lambda x: -x, items(), 2):
            got.append(y)
    assert got == [-x for x in range(700)]
