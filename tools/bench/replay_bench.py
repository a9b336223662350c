"""Replay throughput: recorded tool calls per second through a 20-rule bundle, end to end.

Generates a deterministic trace (OpenAI chat messages, one JSON file) and a 20-rule bundle in a
temporary folder, then times `read_traces` + `replay` exactly as `decider replay` runs them, with
its default worker count (in-process on fewer than 3 CPUs); `--workers N` forces N evaluating
workers. Reading is always one process. Prints a table and writes JSON to
tools/bench/results/replay.json. Bounded: N calls, R rounds.

    .venv/bin/python tools/bench/replay_bench.py [--calls 50000] [--rounds 3] [--workers N]
"""

from __future__ import annotations

import argparse
import json
import os
import random
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from decider.bundle.compile import load_bundle  # noqa: E402
from decider.replay.parallel import default_workers  # noqa: E402
from decider.replay.replay import ReplayReport, replay  # noqa: E402
from decider.replay.traces import read_traces  # noqa: E402

TOOLS = ["fs.read", "fs.write", "db.query", "http.fetch", "payments.refund"]


def write_bundle(folder: Path) -> None:
    """20 rules: 4 per tool, standard CEL plus the path/url functions policies really use."""
    (folder / "bundle.yaml").write_text(
        "apiVersion: decider/v1\nkind: Bundle\nmetadata: {name: bench20, version: '1'}\nspec: {default: deny}\n")
    rules = {
        "fs.read": ['path.within(tool.args.path, "/workspace")', 'tool.args.path.endsWith(".env")',
                    'tool.args.path.startsWith("/etc")', '"fs" in agent.capabilities'],
        "fs.write": ['path.within(tool.args.path, "/workspace")', 'tool.args.path.contains("..")',
                     'size(tool.args.content) > 100000', 'agent.team == "platform"'],
        "db.query": ['tool.args.sql.matches("(?i)^\\\\s*(drop|alter|truncate)")', 'tool.args.sql.size() > 5000',
                     'agent.team in ["data", "platform"]', 'tool.args.sql.startsWith("select")'],
        "http.fetch": ['url.host(tool.args.url) in ["api.github.com", "pypi.org"]', 'tool.args.url.startsWith("http:")',
                       'url.host(tool.args.url).endsWith(".internal")', 'request.environment == "production"'],
        "payments.refund": ["tool.args.amount > 1000.0", "tool.args.amount < 0.0", "tool.args.amount <= 1000.0",
                            '!(agent.model in ["gpt-5", "claude-opus-4"])'],
    }
    effects = ["allow", "deny", "deny", "require_approval"]
    for tool, conds in rules.items():
        lines = [f"apiVersion: decider/v1\nkind: Policy\nmetadata: {{name: {tool.replace('.', '-')}}}\nspec:\n"
                 f"  match: {{tools: [\"{tool}\"]}}\n  rules:"]
        for i, c in enumerate(conds):
            lines.append(f"    - id: {tool.replace('.', '-')}-{i}\n      effect: {effects[i]}\n      when: '{c}'")
        (folder / f"{tool}.yaml").write_text("\n".join(lines) + "\n")


def write_trace(path: Path, n: int, seed: int = 7) -> None:
    rnd = random.Random(seed)
    messages = []
    for i in range(n):
        tool = TOOLS[i % len(TOOLS)]
        args = {
            "fs.read": lambda: {"path": rnd.choice(["/workspace/a.py", "/etc/passwd", "/workspace/../x", "/workspace/.env"])},
            "fs.write": lambda: {"path": rnd.choice(["/workspace/b.py", "/tmp/x"]), "content": "x" * rnd.randint(1, 200)},
            "db.query": lambda: {"sql": rnd.choice(["select * from t", "DROP TABLE t", "update t set a=1"])},
            "http.fetch": lambda: {"url": rnd.choice(["https://api.github.com/x", "http://evil.test", "https://a.internal/"])},
            "payments.refund": lambda: {"amount": rnd.choice([5, 250, 2500, -1])},
        }[tool]()
        messages.append({"role": "assistant", "tool_calls": [
            {"id": f"call_{i}", "type": "function", "function": {"name": tool, "arguments": json.dumps(args)}}]})
        messages.append({"role": "tool", "tool_call_id": f"call_{i}", "content": "ok"})
    path.write_text(json.dumps({"messages": messages}))


def _cpu() -> float:
    """CPU seconds of this process and of its reaped children (the replay workers)."""
    t = os.times()
    return t.user + t.system + t.children_user + t.children_system


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--calls", type=int, default=50_000)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--workers", type=int, default=0, help="as decider replay --workers (0: its default)")
    ap.add_argument("--out", default=str(ROOT / "tools" / "bench" / "results" / "replay.json"))
    args = ap.parse_args()
    workers = args.workers if args.workers > 0 else default_workers()
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / "bundle"
        folder.mkdir()
        write_bundle(folder)
        bundle = load_bundle(folder)
        trace = Path(tmp) / "trace.json"
        write_trace(trace, args.calls)
        rows = []
        for r in range(args.rounds):
            t0, c0 = time.perf_counter(), _cpu()
            calls = list(read_traces([str(trace)]))
            t1 = time.perf_counter()
            rep = ReplayReport()
            for x in replay(bundle, calls, workers=workers):
                rep.add(x)
            t2, c2 = time.perf_counter(), _cpu()
            assert rep.total == args.calls, rep.total
            rows.append({"round": r + 1, "calls": rep.total, "read_s": t1 - t0, "eval_s": t2 - t1,
                         "calls_per_s": rep.total / (t2 - t0), "calls_per_cpu_s": rep.total / (c2 - c0), "by_outcome": dict(Counter(rep.by_outcome))})
    where = "one process" if workers == 1 else f"reading in one process, evaluating in {workers} workers"
    print(f"replay of {args.calls:,} calls through a {len(bundle.rules)}-rule bundle ({where})")
    # Wall-clock calls/s suffers when other work shares the cores; calls per CPU-second (this
    # process and its workers) is the figure to compare across runs on a busy machine.
    print(f"{'round':>5} {'read s':>8} {'eval s':>8} {'calls/s':>10} {'calls/CPU-s':>12}")
    for row in rows:
        print(f"{row['round']:5} {row['read_s']:8.2f} {row['eval_s']:8.2f} {row['calls_per_s']:10,.0f} "
              f"{row['calls_per_cpu_s']:12,.0f}")
    best = max(r["calls_per_s"] for r in rows)
    print(f"best: {best:,.0f} calls/s wall, {max(r['calls_per_cpu_s'] for r in rows):,.0f} per CPU-second "
          "(target >= 20,000/s)")
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps({"rules": len(bundle.rules), "workers": workers, "rounds": rows,
                                          "best_calls_per_s": best}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
