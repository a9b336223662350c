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
from bisect import bisect_left
from collections.abc import Awaitable, Callable, Iterator, Sequence
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
from prometheus_client.core import CounterMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.multiprocess import MultiProcessCollector
from prometheus_client.registry import Collector
from prometheus_client.utils import floatToGoString
from sqlalchemy import Engine, func, select

__all__ = ["Metrics", "serve_metrics", "close_metrics_listeners", "serve_multiprocess_metrics", "parse_listen", "MULTIPROC_ENV",
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
        # The per-decision series: prometheus-client objects where values must go to the worker
        # files; in one process, plain counters read at scrape time (a fifth of the cost).
        self.per_decision: MultiprocessDecisionSeries | DecisionSeries = (
            MultiprocessDecisionSeries(r) if mp else DecisionSeries(r))
        self.decided = self.per_decision.decided   # the one call per recorded decision
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
        for res in ("ok", "failed"):
            self.reloads.labels(res)

    # ---- events ----------------------------------------------------------------------------------

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
        from decider.engine.budgets import window_start
        from decider.store.budgets import budget_usage
        from decider.store.decisions import decisions

        now = now or datetime.now(timezone.utc)
        self.per_decision.flush()
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


DECISIONS_HELP = "Decisions recorded, by outcome."
DURATION_HELP = ("Time to decide: stage=total (receipt to answer), evaluation (policy), "
                 "commit (durable record).")
STAGES = ("total", "evaluation", "commit")


class DecisionSeries(Collector):
    """decisions_total and decision_duration_seconds: plain ints bumped on the event loop (~1 µs a
    decision, against ~6 µs through prometheus-client's locked values and ~20 µs through its
    multiprocess files) and turned into metric families only when scraped. A scrape racing a
    decision may see its count before its bucket; the next one is exact."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.by_outcome: dict[str, int] = dict.fromkeys(OUTCOMES, 0)
        # Per stage: one count per bucket (the last one is +Inf) and the sum.
        self.buckets = [[0] * (len(DURATION_BUCKETS) + 1) for _ in STAGES]
        self.sums = [0.0] * len(STAGES)
        registry.register(self)

    def flush(self) -> None:
        """Nothing to do: scrapes read the counts directly."""

    def decided(self, outcome: str, total_s: float, eval_us: int, commit_s: float) -> None:
        by = self.by_outcome
        by[outcome] = by.get(outcome, 0) + 1
        eval_s = eval_us * 1e-6
        b, sums = self.buckets, self.sums
        b[0][bisect_left(DURATION_BUCKETS, total_s)] += 1
        b[1][bisect_left(DURATION_BUCKETS, eval_s)] += 1
        b[2][bisect_left(DURATION_BUCKETS, commit_s)] += 1
        sums[0] += total_s
        sums[1] += eval_s
        sums[2] += commit_s

    def collect(self) -> Iterator[Metric]:
        c = CounterMetricFamily("decider_decisions", DECISIONS_HELP, labels=["outcome"])
        for outcome, n in list(self.by_outcome.items()):
            c.add_metric([outcome], n)
        yield c
        h = HistogramMetricFamily("decider_decision_duration_seconds", DURATION_HELP, labels=["stage"])
        for i, stage in enumerate(STAGES):
            counts, acc = list(self.buckets[i]), 0
            cumulative = []
            for bound, n in zip((*DURATION_BUCKETS, float("inf")), counts, strict=True):
                acc += n
                cumulative.append((floatToGoString(bound), acc))
            h.add_metric([stage], cumulative, self.sums[i])
        yield h


class MultiprocessDecisionSeries(DecisionSeries):
    """Under `--workers`: the same cheap counting, and once a second (`flush`, from the sampler
    thread, and at shutdown) the increments since the last flush go into prometheus-client's
    multiprocess values, which the supervisor sums over the workers. A scrape lags by ≤ 1 s."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.by_outcome = dict.fromkeys(OUTCOMES, 0)
        self.buckets = [[0] * (len(DURATION_BUCKETS) + 1) for _ in STAGES]
        self.sums = [0.0] * len(STAGES)
        self._flushed_outcomes: dict[str, int] = dict.fromkeys(OUTCOMES, 0)
        self._flushed_buckets = [[0] * (len(DURATION_BUCKETS) + 1) for _ in STAGES]
        self._flushed_sums = [0.0] * len(STAGES)
        self.decisions = Counter("decider_decisions", DECISIONS_HELP, ["outcome"], registry=registry)
        self.duration = Histogram("decider_decision_duration_seconds", DURATION_HELP, ["stage"],
                                  buckets=DURATION_BUCKETS, registry=registry)
        for o in OUTCOMES:
            self.decisions.labels(o)
        self._stages = [self.duration.labels(s) for s in STAGES]

    def flush(self) -> None:
        # Bulk increments through the histogram child's values (`_buckets`, `_sum`: per-bucket
        # counts and the sum, what `observe` increments one at a time); tests/test_metrics.py
        # checks the totals a worker's decisions add up to.
        for outcome, n in list(self.by_outcome.items()):
            delta = n - self._flushed_outcomes.get(outcome, 0)
            if delta:
                self.decisions.labels(outcome).inc(delta)
                self._flushed_outcomes[outcome] = n
        for i, child in enumerate(self._stages):
            now, before = list(self.buckets[i]), self._flushed_buckets[i]
            for j, n in enumerate(now):
                if n != before[j]:
                    child._buckets[j].inc(n - before[j])
            self._flushed_buckets[i] = now
            total = self.sums[i]
            if total != self._flushed_sums[i]:
                child._sum.inc(total - self._flushed_sums[i])
                self._flushed_sums[i] = total

    def collect(self) -> Iterator[Metric]:
        return iter(())   # exported through the multiprocess files


def parse_listen(listen: str) -> tuple[str, int]:
    host, sep, port = listen.rpartition(":")
    if not sep or not port.isdigit():
        raise ValueError(f"--metrics-listen: not host:port: {listen!r}")
    return host.strip("[]") or "127.0.0.1", int(port)


_LISTENERS: list[Any] = []   # the /metrics HTTP servers of this process, closed on shutdown


def serve_metrics(listen: str, registry: CollectorRegistry | None = None) -> int:
    """Serve /metrics from a daemon thread; returns the bound port (0 in `listen` picks one)."""
    from decider.errors import InvalidRequest

    try:
        host, port = parse_listen(listen)
        server, _thread = start_http_server(port, addr=host, registry=registry or REGISTRY)
    except (ValueError, OSError) as e:   # e.g. the port is taken: one clear line, no traceback
        raise InvalidRequest("--metrics-listen", f"cannot serve metrics on {listen}: {e}") from None
    _LISTENERS.append(server)
    return int(server.server_address[1])


def close_metrics_listeners() -> None:
    """Release the /metrics ports now: shutdown closes them before draining, so a server restarted at
    once can bind them (it used to fail `Address already in use` until the drain ended)."""
    while _LISTENERS:
        server = _LISTENERS.pop()
        server.shutdown()
        server.server_close()


def serve_multiprocess_metrics(listen: str) -> int:
    """For the supervisor of `--workers`: /metrics over every worker's files."""
    registry = CollectorRegistry()
    MultiProcessCollector(registry)
    return serve_metrics(listen, registry)
