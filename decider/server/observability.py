"""Wires metrics (server/metrics.py) and traces (server/telemetry.py) into a running server: one
observer per recorded decision, the event hooks of the writer, approvals, auth and bundles, and
the once-a-second sampler of levels. Nothing here runs unless `--metrics-listen` or an OTLP
endpoint is given."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from sqlalchemy import Engine

if TYPE_CHECKING:
    from decider.server.bundles import LiveBundles
    from decider.server.controls import Controls
    from decider.server.metrics import Metrics
    from decider.server.service import DeciderService
    from decider.server.telemetry import DecisionTracer
    from decider.store import GroupCommitWriter

__all__ = ["Observability", "SAMPLE_INTERVAL_S"]

log = logging.getLogger("decider.server")
SAMPLE_INTERVAL_S = 1.0


@dataclass
class Observability:
    metrics: Metrics | None = None
    tracer: DecisionTracer | None = None
    metrics_port: int | None = None
    _task: asyncio.Task[None] | None = field(default=None, repr=False)

    @classmethod
    def start(cls, *, metrics: bool, metrics_listen: str | None, otlp_endpoint: str | None, engine: Engine,
              svc: DeciderService, writer: GroupCommitWriter, controls: Controls, live: LiveBundles,
              wrap_auth: Callable[[Any], Any] | None = None) -> Observability:
        obs = cls()
        if metrics or metrics_listen:
            from decider.server.metrics import MULTIPROC_ENV, Metrics, serve_metrics, serve_multiprocess_metrics

            m = obs.metrics = Metrics()
            writer.on_commit = m.writer_commit
            controls.approvals.on_transition = m.approval_transition
            live.on_reload = m.bundle_reload
            m.bundle_reload(True)   # the bundle this server started on
            if metrics_listen:
                obs.metrics_port = (serve_multiprocess_metrics(metrics_listen) if os.environ.get(MULTIPROC_ENV)
                                    else serve_metrics(metrics_listen))
            obs._task = asyncio.get_running_loop().create_task(obs._sample(engine, writer, controls, live),
                                                                name="decider-metrics-sampler")
        if otlp_endpoint:
            from decider.server.telemetry import DecisionTracer

            obs.tracer = DecisionTracer(otlp_endpoint, instance=live.instance)
            svc.wants_trace = True
        svc.observe = obs._observer()
        return obs

    def _observer(self) -> Callable[..., None] | None:
        m, t = self.metrics, self.tracer
        if m is None and t is None:
            return None
        if t is None:
            assert m is not None
            decided = m.decided
            perf = time.perf_counter

            def metrics_only(req: Any, resp: Any, outcome: str, started: float, c0: float, c1: float,
                             carrier: Any) -> None:
                decided(outcome, perf() - started, resp.eval_us, c1 - c0)
            return metrics_only
        if m is None:
            return t.observe
        tracer_observe = t.observe

        def both(req: Any, resp: Any, outcome: str, started: float, c0: float, c1: float, carrier: Any) -> None:
            m.decided(outcome, time.perf_counter() - started, resp.eval_us, c1 - c0)
            tracer_observe(req, resp, outcome, started, c0, c1, carrier)
        return both

    def count_auth(self, record: Any) -> Any:
        return self.metrics.counting_auth(record) if self.metrics is not None else record

    async def _sample(self, engine: Engine, writer: GroupCommitWriter, controls: Controls,
                      live: LiveBundles) -> None:
        assert self.metrics is not None
        while True:
            try:
                await asyncio.to_thread(self.metrics.sample, engine, live.active.budgets,
                                        len(controls.kill_switches), writer.queued())
            except Exception as exc:  # noqa: BLE001 - a failed sample leaves the last values; try again
                log.warning("metrics sample failed", extra={"error": str(exc)})
            await asyncio.sleep(SAMPLE_INTERVAL_S)

    async def close_listeners(self) -> None:
        """Release the /metrics port before the drain (the rest of observability stops after it)."""
        if self.metrics_port is not None:
            from decider.server.metrics import close_metrics_listeners

            await asyncio.to_thread(close_metrics_listeners)

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        if self.metrics is not None:
            self.metrics.per_decision.flush()   # a worker's last decisions reach the supervisor's sums
        if self.tracer is not None:
            await asyncio.to_thread(self.tracer.shutdown)
