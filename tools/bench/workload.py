"""The bench's request mix: a seeded, deterministic list of tool calls with their expected outcomes.

Every item carries the fields of a decider ``DecideRequest`` (agent, tool, request) and the outcome that
the bench policies (``tools/bench/policies/``) must produce for it. Each target maps an item onto its own
wire format; the load driver fails the run on the first reply that disagrees with ``expected``.

The expected outcome comes from :func:`expected_outcome`, a plain-Python transcription of the bench
policies, so a policy edit that is not mirrored here (and in the other engine) shows up as a mismatch.

    python tools/bench/workload.py --size 2000 --seed 7     # prints the mix per tool and outcome
"""

from __future__ import annotations

import argparse
import collections
import random
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

__all__ = [
    "ALLOW",
    "DENY",
    "OUTCOMES",
    "REQUIRE_APPROVAL",
    "Item",
    "POSSIBLE_OUTCOMES",
    "build_workload",
    "coverage_gaps",
    "expected_outcome",
    "summarize",
]

ALLOW = "ALLOW"
DENY = "DENY"
REQUIRE_APPROVAL = "REQUIRE_APPROVAL"
OUTCOMES = (ALLOW, DENY, REQUIRE_APPROVAL)

# The exact regexes of the policies. Python's `re` and RE2 (used by both CEL engines) agree on these.
DESTRUCTIVE_SHELL = re.compile(r"rm\s+-rf|mkfs|dd\s+if=|shutdown|reboot")
DDL = re.compile(r"(?i)^\s*(drop|alter|create|truncate)\b")
REVIEWED_MODELS = ("gpt-5", "claude-opus-4")


@dataclass(frozen=True, slots=True)
class Item:
    """One tool call of the workload, in decider's vocabulary (SPEC §3), plus the expected outcome."""

    index: int
    agent_id: str
    agent_team: str
    agent_model: str
    tool_name: str
    tool_server: str
    args: dict[str, Any] = field(hash=False)
    environment: str
    estimated_cost: float
    expected: str

    @property
    def call_id(self) -> str:
        return f"call-{self.index:06d}"


def expected_outcome(tool_name: str, args: dict[str, Any], agent_model: str, environment: str) -> str:
    """The bench policies in Python: deny > require_approval > allow, default deny."""
    if tool_name == "shell.exec":
        if DESTRUCTIVE_SHELL.search(args["command"]):
            return DENY
        return REQUIRE_APPROVAL if environment == "production" else ALLOW
    if tool_name == "fs.read":
        return ALLOW
    if tool_name == "fs.write":
        path = args["path"]
        return ALLOW if path.startswith("/workspace/") and ".." not in path else DENY
    if tool_name == "payments.refund":
        if agent_model not in REVIEWED_MODELS:
            return DENY
        return REQUIRE_APPROVAL if float(args["amount"]) > 1000.0 else ALLOW
    if tool_name == "email.send":
        return ALLOW if args["to"].endswith("@acme.example") else REQUIRE_APPROVAL
    if tool_name == "db.query":
        return DENY if DDL.search(args["sql"]) else ALLOW
    return DENY  # bundle default: no policy matches an unknown tool


# --- the raw material the generator draws from -------------------------------------------------------

# (agent id, team, model): two reviewed models and two that may not move money.
AGENTS: tuple[tuple[str, str, str], ...] = (
    ("agent-support-1", "support", "gpt-5"),
    ("agent-support-2", "support", "gpt-4o-mini"),
    ("agent-finance-1", "finance", "claude-opus-4"),
    ("agent-finance-2", "finance", "llama-3.1-8b"),
    ("agent-devops-1", "platform", "claude-opus-4"),
    ("agent-devops-2", "platform", "gpt-5"),
    ("agent-data-1", "data", "gpt-4o-mini"),
)
ENVIRONMENTS = ("production", "staging", "development")

SHELL_BENIGN = (
    "ls -la /workspace",
    "git status --short",
    "pytest -q tests/test_api.py",
    "grep -rn TODO src/",
    "docker ps --format '{{.Names}}'",
    "rm build/old.log",  # `rm` without -rf is fine
    "echo 'shutting the door'",  # not `shutdown`
)
SHELL_DESTRUCTIVE = (
    "rm -rf /",
    "sudo rm  -rf /var/lib/postgresql",
    "mkfs.ext4 /dev/sdb1",
    "dd if=/dev/zero of=/dev/sda bs=1M",
    "sudo shutdown -h now",
    "reboot",
)
FS_PATHS_OK = (
    "/workspace/src/app.py",
    "/workspace/README.md",
    "/workspace/data/out/report.csv",
)
FS_PATHS_BAD = (
    "/etc/passwd",
    "/workspace/../etc/shadow",
    "/workspace/src/../../root/.ssh/authorized_keys",
    "/tmp/scratch.txt",
    "workspace/relative.txt",
    "/workspaces/other-tenant/file",
)
FS_READ_PATHS = ("/workspace/src/app.py", "/etc/hosts", "/workspace/../etc/passwd")
# Boundary values on purpose: 1000.0 is allowed, 1000.01 needs approval; ints arrive as JSON numbers.
REFUND_AMOUNTS: tuple[float | int, ...] = (12.5, 250, 999.99, 1000.0, 1000.01, 2500, 48000.0)
EMAIL_TO = (
    "bob@acme.example",
    "ops-oncall@acme.example",
    "alice@gmail.com",
    "cfo@acme.example.attacker.net",  # suffix trick: must need approval
    "acme.example@evil.test",
)
SQL_OK = (
    "SELECT id, total FROM orders WHERE customer_id = 42",
    "select count(*) from created_items",  # `create` inside a word, not DDL
    "INSERT INTO audit_notes(note) VALUES ('drop by later')",
    "UPDATE tickets SET state = 'closed' WHERE id = 7",
)
SQL_DDL = (
    "DROP TABLE users",
    "  drop table sessions",
    "ALTER TABLE orders ADD COLUMN x int",
    "create index idx_a on t(a)",
    "\tTRUNCATE logs",
)
UNKNOWN_TOOLS = (("http.get", "mcp://web"), ("k8s.delete_namespace", "mcp://k8s"))

ArgsMaker = Callable[[random.Random], dict[str, Any]]


def _shell(rng: random.Random) -> dict[str, Any]:
    pool = SHELL_DESTRUCTIVE if rng.random() < 0.25 else SHELL_BENIGN
    return {"command": rng.choice(pool), "cwd": "/workspace"}


def _fs_write(rng: random.Random) -> dict[str, Any]:
    pool = FS_PATHS_BAD if rng.random() < 0.4 else FS_PATHS_OK
    return {"path": rng.choice(pool), "content": "x" * rng.randint(10, 200)}


def _fs_read(rng: random.Random) -> dict[str, Any]:
    return {"path": rng.choice(FS_READ_PATHS)}


def _refund(rng: random.Random) -> dict[str, Any]:
    return {
        "amount": rng.choice(REFUND_AMOUNTS),
        "currency": "EUR",
        "order_id": f"ord-{rng.randint(1, 99999)}",
    }


def _email(rng: random.Random) -> dict[str, Any]:
    return {"to": rng.choice(EMAIL_TO), "subject": "Status update", "body": "See attached."}


def _db(rng: random.Random) -> dict[str, Any]:
    pool = SQL_DDL if rng.random() < 0.3 else SQL_OK
    return {"sql": rng.choice(pool), "database": "app"}


# (tool name, server, weight, args maker). Weights: a gateway sees mostly reads, shell and queries.
TOOLS: tuple[tuple[str, str, int, ArgsMaker], ...] = (
    ("shell.exec", "mcp://shell", 25, _shell),
    ("fs.read", "mcp://fs", 8, _fs_read),
    ("fs.write", "mcp://fs", 12, _fs_write),
    ("payments.refund", "mcp://billing", 15, _refund),
    ("email.send", "mcp://mail", 15, _email),
    ("db.query", "mcp://db", 20, _db),
)
UNKNOWN_WEIGHT = 5


def build_workload(size: int = 2000, seed: int = 7) -> list[Item]:
    """A deterministic mix of ``size`` calls: same seed, same list, on any machine and Python 3.11+."""
    if size < 1:
        raise ValueError("size must be >= 1")
    rng = random.Random(seed)
    weights = [w for _, _, w, _ in TOOLS] + [UNKNOWN_WEIGHT]
    choices = list(range(len(TOOLS) + 1))
    items: list[Item] = []
    for index in range(size):
        agent_id, team, model = rng.choice(AGENTS)
        environment = rng.choice(ENVIRONMENTS)
        pick = rng.choices(choices, weights)[0]
        if pick == len(TOOLS):
            tool_name, server = rng.choice(UNKNOWN_TOOLS)
            args: dict[str, Any] = {"target": "anything"}
        else:
            tool_name, server, _, make_args = TOOLS[pick]
            args = make_args(rng)
        items.append(
            Item(
                index=index,
                agent_id=agent_id,
                agent_team=team,
                agent_model=model,
                tool_name=tool_name,
                tool_server=server,
                args=args,
                environment=environment,
                estimated_cost=round(rng.uniform(0.0, 0.05), 4),
                expected=expected_outcome(tool_name, args, model, environment),
            )
        )
    return items


# What each tool group can produce under the bench policies; the workload must show all of it.
POSSIBLE_OUTCOMES: dict[str, frozenset[str]] = {
    "shell.exec": frozenset(OUTCOMES),
    "fs.read": frozenset({ALLOW}),
    "fs.write": frozenset({ALLOW, DENY}),
    "payments.refund": frozenset(OUTCOMES),
    "email.send": frozenset({ALLOW, REQUIRE_APPROVAL}),
    "db.query": frozenset({ALLOW, DENY}),
    "<unknown>": frozenset({DENY}),
}


def coverage_gaps(items: Sequence[Item]) -> list[str]:
    """Tool groups missing an outcome their rules can produce, e.g. ``["email.send: REQUIRE_APPROVAL"]``.

    A mix that never hits a branch would not make both engines evaluate it, so the bench refuses it.
    """
    known = {name for name, _, _, _ in TOOLS}
    seen: dict[str, set[str]] = collections.defaultdict(set)
    for item in items:
        seen[item.tool_name if item.tool_name in known else "<unknown>"].add(item.expected)
    return [
        f"{group}: {outcome}"
        for group, possible in POSSIBLE_OUTCOMES.items()
        for outcome in sorted(possible - seen[group])
    ]


def summarize(items: Sequence[Item]) -> dict[str, dict[str, int]]:
    """Counts per tool and outcome, e.g. ``{"shell.exec": {"ALLOW": 120, "DENY": 40, ...}}``."""
    counts: dict[str, collections.Counter[str]] = collections.defaultdict(collections.Counter)
    for item in items:
        counts[item.tool_name][item.expected] += 1
    return {tool: {o: c[o] for o in OUTCOMES} for tool, c in sorted(counts.items())}


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--size", type=int, default=2000)
    parser.add_argument("--seed", type=int, default=7)
    args = parser.parse_args(argv)
    items = build_workload(args.size, args.seed)
    print(f"{'tool':<22}" + "".join(f"{o:>18}" for o in OUTCOMES))
    for tool, row in summarize(items).items():
        print(f"{tool:<22}" + "".join(f"{row[o]:>18}" for o in OUTCOMES))
    gaps = coverage_gaps(items)
    if gaps:
        print("missing outcomes: " + ", ".join(gaps))
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
