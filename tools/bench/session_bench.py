"""Session history cost (issue 14): does a decision in a session with 10,000 earlier calls cost the
same as one in a session with 10?

A real `decider serve` on an ephemeral loopback port, SQLite ledger seeded with 10,000 calls of
session `long` and 10 of session `short` (plus 20,000 of other sessions), a policy that reads
`session`. Rounds alternate short/long (each round: the same number of decisions per session, one
client, sequential), so machine noise hits both alike. Each decision appends to its session,
so `long` keeps growing. Run for `--max-calls` (how much history conditions see; the default 200
and 10, which shows the ledger size alone).

    .venv/bin/python tools/bench/session_bench.py [--rounds 6] [--per-round 150]

Prints a table and writes tools/bench/results/session_bench.json. Bounded: rounds × per-round
decisions per configuration, and a 100 s deadline per configuration.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from decider.client import build_request  # noqa: E402
from decider.record.record import Agent, BundleRef, DecisionRecord  # noqa: E402
from decider.store import connect  # noqa: E402
from decider.store.decisions import DecisionStore  # noqa: E402
from tests.helpers import start_server  # noqa: E402

POLICY = """\
apiVersion: decider/v1
kind: Policy
metadata: {name: exfiltration}
spec:
  rules:
    - id: label-secret-read
      effect: label
      labels: [secret-read]
      when: tool.name == "fs.read" && tool.args.path.endsWith(".env")
    - id: post-after-secret-read
      effect: deny
      when: tool.name == "http.post" && "secret-read" in session.labels
    - id: posts-allowed
      effect: allow
      when: tool.name == "http.post"
"""


def _seed(url: str, sessions: dict[str, int]) -> None:
    store = DecisionStore(connect(url))
    start = datetime.now(timezone.utc) - timedelta(minutes=30)
    n = 0
    for sid, count in sessions.items():
        rows = []
        for i in range(count):
            n += 1
            rec = DecisionRecord(decision_id=f"00000000{n:018d}", time=start + timedelta(milliseconds=i),
                                 agent=Agent(id="bot", session_id=sid), tool_name="http.fetch", outcome="ALLOW",
                                 deciding_rule="posts-allowed", bundle=BundleRef("b", "1", "x"),
                                 args={"url": f"https://example.com/{i}"}, args_hash="h")
            rows.append(rec.to_row())
            if len(rows) == 2000:
                store.insert_many(rows)
                rows = []
        if rows:
            store.insert_many(rows)


def run(max_calls: int, rounds: int, per_round: int) -> dict[str, object]:
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / "bundle"
        folder.mkdir()
        (folder / "bundle.yaml").write_text(
            "apiVersion: decider/v1\nkind: Bundle\nmetadata: {name: sessions-bench}\n"
            f"spec: {{default: deny, session: {{max_calls: {max_calls}, window: 24h}}}}\n")
        (folder / "exfiltration.yaml").write_text(POLICY)
        url = f"sqlite:///{tmp}/bench.db"
        _seed(url, {"long": 10_000, "short": 10, **{f"other-{k}": 1000 for k in range(20)}})
        srv = start_server(Path(tmp), folder, url)
        lat: dict[str, list[float]] = {"short": [], "long": []}
        deadline = time.monotonic() + 100
        try:
            c = srv.client()
            for sid in lat:   # warm-up: first use loads the session (one indexed query)
                c.decide(build_request(agent={"id": "bot", "session_id": sid}, tool="http.post", args={"url": "x"}))
            for r in range(rounds):
                order = ("short", "long") if r % 2 == 0 else ("long", "short")
                for sid in order:
                    req = build_request(agent={"id": "bot", "session_id": sid}, tool="http.post",
                                        args={"url": "https://example.com/"})
                    for _ in range(per_round):
                        t = time.perf_counter()
                        c.decide(req)
                        lat[sid].append((time.perf_counter() - t) * 1e6)
                if time.monotonic() > deadline:
                    break
        finally:
            srv.stop()
    out: dict[str, object] = {"max_calls": max_calls}
    for sid, xs in lat.items():
        out[sid] = {"n": len(xs), "p50_us": statistics.median(xs), "mean_us": statistics.fmean(xs)}
    out["long_over_short_p50"] = out["long"]["p50_us"] / out["short"]["p50_us"]  # type: ignore[index]
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=6)
    ap.add_argument("--per-round", type=int, default=150)
    ap.add_argument("--max-calls", default="200,10")
    args = ap.parse_args()
    results = [run(int(m), args.rounds, args.per_round) for m in args.max_calls.split(",")]
    print(f"{'max_calls':>9} {'session':>8} {'earlier calls':>13} {'n':>5} {'p50 µs':>8} {'mean µs':>8}")
    for res in results:
        for sid, earlier in (("short", 10), ("long", 10_000)):
            s = res[sid]
            print(f"{res['max_calls']:>9} {sid:>8} {earlier:>13} {s['n']:>5} {s['p50_us']:>8.0f} {s['mean_us']:>8.0f}")
        print(f"{'':>9} long/short p50 = {res['long_over_short_p50']:.3f}")
    out = ROOT / "tools" / "bench" / "results" / "session_bench.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
