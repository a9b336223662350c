"""Prometheus metrics (`decider serve --metrics-listen ADDR`): every series decider exports.

Hot path: one call per decision (`Metrics.decided`), on pre-bound label children — a counter
increment and three histogram observations, a few µs against the hundreds a decision costs.
Everything that is a level rather than an event (pending approvals, budget usage, kill switches,
writer queue) is sampled once a second by `Metrics.sample`, off the decision path.

With `serve --workers N` every worker writes its values to files in PROMETHEUS_MULTIPROC_DIR
(prometheus-client's multiprocess mode, chosen by that variable when the library is first
imported) and the supervising process serves /metrics, summing counters and histograms over the
workers; a level read from the shared database is the same in every worker, so its gauge keeps the
maximum over the live workers (`livemax`), while the writer queue, one per worker, is summed.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Awaitable, Callable, Sequence
from datetime import datetime, timezone
from typing import Any

from prometheus_client import (
    REGISTRY,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    disable_created_metrics,
    start_http_server,
)
from prometheus_client.multiprocess import MultiProcessCollector
from sqlalchemy import Engine, func, select

__all__ = ["Metrics", "serve_metrics", "serve_multiprocess_metrics", "parse_listen", "MULTIPROC_ENV",
           "TOP_BUDGET_KEYS"]

log = logging.getLogger("decider.server")

MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"
# Latency buckets (seconds): a decision takes ~0.3 ms alone, tens of ms under load or on PostgreSQL.
DURATION_BUCKETS = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)
# Time from a REQUIRE_APPROVAL decision to its resolution: seconds to a day.
RESOLVE_BUCKETS = (1, 5, 15, 30, 60, 300, 900, 1800, 3600, 4 * 3600, 12 * 3600, 86400)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024)
# Budget usage is labelled by the budget's scope key (a team, an agent …) only for the fullest few
# keys of each configured budget, plus a `key="*"` series holding the maximum over all keys: the
# number of series stays bounded however many agents or sessions spend.
TOP_BUDGET_KEYS = 10
OUTCOMES = ("ALLOW", "DENY", "REQUIRE_APPROVAL")


def _multiprocess() -> bool:
    return bool(os.environ.get(MULTIPROC_ENV))


class Metrics:
    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        disable_created_metrics()   # no `_created` series: dashboards never use them
        r = registry if registry is not None else REGISTRY
        mp = _multiprocess()
        self.decisions = Counter("decider_decisions", "Decisions recorded, by outcome.", ["outcome"], registry=r)
        self.duration = Histogram(
            "decider_decision_duration_seconds",
            "Time to decide: stage=total (receipt to answer), evaluation (policy), commit (durable record).",
            ["stage"], buckets=DURATION_BUCKETS, registry=r)
        self.approvals_resolved = Counter(
            "decider_approvals_resolved", "Approvals that left the pending state, by result "
            "(approved, rejected, expired, cancelled by a kill switch).", ["result"], registry=r)
        self.approval_wait = Histogram(
            "decider_approval_resolve_seconds", "Time from a REQUIRE_APPROVAL decision to its resolution.",
            ["result"], buckets=RESOLVE_BUCKETS, registry=r)
        self.approvals_pending = Gauge("decider_approvals_pending", "Approvals waiting for a person.",
                                       registry=r, multiprocess_mode="livemax" if mp else "all")
        self.kill_switches = Gauge("decider_kill_switches_active", "Kill switches engaged.",
                                   registry=r, multiprocess_mode="livemax" if mp else "all")
        self.budget_ratio = Gauge(
            "decider_budget_usage_ratio", "(spent + reserved) / limit of each configured budget in its current "
            f"window; key='*' is the maximum over all keys, other keys are the {TOP_BUDGET_KEYS} fullest.",
            ["scope", "window", "key"], registry=r, multiprocess_mode="livemax" if mp else "all")
        self.queue = Gauge("decider_writer_queue_depth", "Decision records waiting for the writer.",
                           registry=r, multiprocess_mode="livesum" if mp else "all")
        self.batch = Histogram("decider_writer_batch_size", "Records per commit of the decision writer.",
                               buckets=BATCH_BUCKETS, registry=r)
        self.auth_failures = Counter("decider_auth_failures", "Calls refused by authentication or role checks.",
                                     ["code"], registry=r)
        self.reloads = Counter("decider_bundle_reloads", "Bundle activations (result=ok) and refused bundles "
                               "(result=failed, the last good one keeps serving).", ["result"], registry=r)
        # Pre-bound children: the per-decision path does no label look-up.
        self._by_outcome = {o: self.decisions.labels(o) for o in OUTCOMES}
        self._total = self.duration.labels("total")
        self._eval = self.duration.labels("evaluation")
        self._commit = self.duration.labels("commit")
        for o in OUTCOMES:  # every outcome shows from the start, at 0
            self._by_outcome[o]
        for res in ("ok", "failed"):
            self.reloads.labels(res)

    # ---- events ----------------------------------------------------------------------------------
    def decided(self, outcome: str, total_s: float, eval_us: int, commit_s: float) -> None:
        """The one call per recorded decision."""
        child = self._by_outcome.get(outcome)
        if child is None:
            child = self._by_outcome[outcome] = self.decisions.labels(outcome)
        child.inc()
        self._total.observe(total_s)
        self._eval.observe(eval_us * 1e-6)
        self._commit.observe(commit_s)

    def approval_transition(self, decision_id: str, from_state: str, to_state: str, by: str = "") -> None:
        """An approval left `from_state` (store/approvals.py calls this on every transition)."""
        if from_state != "pending":
            return   # approved → consumed is a use, not a resolution
        from decider.record.ids import id_time_ms

        result = "cancelled" if to_state == "rejected" and by.startswith("kill-switch:") else to_state
        self.approvals_resolved.labels(result).inc()
        waited = datetime.now(timezone.utc).timestamp() - id_time_ms(decision_id) / 1000
        self.approval_wait.labels(result).observe(max(0.0, waited))

    def auth_failure(self, code: str) -> None:
        self.auth_failures.labels(code).inc()

    def bundle_reload(self, ok: bool) -> None:
        self.reloads.labels("ok" if ok else "failed").inc()

    def writer_commit(self, batch_size: int, queued: int) -> None:
        self.batch.observe(batch_size)
        self.queue.set(queued)

    def counting_auth(self, record: Callable[[dict[str, Any]], Awaitable[None]]
                      ) -> Callable[[dict[str, Any]], Awaitable[None]]:
        """Wrap the auth-event recorder so every refusal is also counted."""
        async def rec(row: dict[str, Any]) -> None:
            self.auth_failure(str(row.get("code", "")))
            await record(row)
        return rec

    # ---- levels, sampled off the decision path -------------------------------------------------------
    def sample(self, engine: Engine, budgets: Sequence[Any], kill_switches: int, queued: int,
               now: datetime | None = None) -> None:
        """Read the levels (a thread: it queries the database)."""
        from decider.server.budgets import window_start
        from decider.store.budgets import budget_usage
        from decider.store.decisions import decisions

        now = now or datetime.now(timezone.utc)
        self.kill_switches.set(kill_switches)
        self.queue.set(queued)
        with engine.connect() as conn:
            pending = conn.execute(select(func.count()).select_from(decisions)
                                   .where(decisions.c.approval_state == "pending")).scalar()
            self.approvals_pending.set(pending or 0)
            u = budget_usage.c
            for b in budgets:
                limit = float(b.limit)
                rows = conn.execute(select(u.scope_key, u.spent + u.reserved)
                                    .where(u.scope == b.scope, u.window == b.window,
                                           u.window_start == window_start(b.window, now))).all()
                ratios = sorted(((used / limit if limit > 0 else (1.0 if used > 0 else 0.0)), key)
                                for key, used in rows)
                self.budget_ratio.labels(b.scope, b.window, "*").set(ratios[-1][0] if ratios else 0.0)
                for ratio, key in ratios[-TOP_BUDGET_KEYS:]:
                    self.budget_ratio.labels(b.scope, b.window, key).set(ratio)


def parse_listen(listen: str) -> tuple[str, int]:
    host, sep, port = listen.rpartition(":")
    if not sep or not port.isdigit():
        raise ValueError(f"--metrics-listen: not host:port: {listen!r}")
    return host.strip("[]") or "127.0.0.1", int(port)


def serve_metrics(listen: str, registry: CollectorRegistry | None = None) -> int:
    """Serve /metrics from a daemon thread; returns the bound port (0 in `listen` picks one)."""
    host, port = parse_listen(listen)
    server, _thread = start_http_server(port, addr=host, registry=registry or REGISTRY)
    return int(server.server_address[1])


def serve_multiprocess_metrics(listen: str) -> int:
    """For the supervisor of `--workers`: /metrics over every worker's files."""
    registry = CollectorRegistry()
    MultiProcessCollector(registry)
    return serve_metrics(listen, registry)
