"""Prometheus metrics: a real Prometheus scrapes a running decider and PromQL returns the decision
counts; the approval, auth, writer, budget and kill-switch series move; with `--workers` the
numbers are the whole server's."""

from __future__ import annotations

import json
import sys
import threading
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path

import grpc
import pytest
from prometheus_client.parser import text_string_to_metric_families

from decider.client import DeciderClient
from decider.v1 import decider_pb2 as pb

from .helpers import POLICIES, ROOT, ServerProcess, start_server
from .prometheus import PrometheusUnavailable, free_port, start_prometheus
from .stateful import REFUND_BOT, client, write_bundle, write_tokens

CODER = {"id": "coder-7", "capabilities": ["shell"]}


def scrape(port: int) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as resp:
        text = resp.read().decode()
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for fam in text_string_to_metric_families(text) for s in fam.samples}


def value(samples: dict, name: str, **labels: str) -> float | None:
    return samples.get((name, tuple(sorted(labels.items()))))


def eventually(fn: Callable[[], bool], timeout: float = 30) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if fn():
            return True
        time.sleep(0.2)
    return fn()


def decide_mix(target: str) -> None:
    """5 ALLOW, 3 DENY, 2 REQUIRE_APPROVAL on the example bundle."""
    with DeciderClient(target) as c:
        for i in range(5):
            assert c.decide(agent=CODER, tool="shell.exec", args={"command": f"echo {i}"}).outcome == pb.ALLOW
        for i in range(3):
            assert c.decide(agent=CODER, tool="shell.exec", args={"command": f"sudo rm -rf /{i}"}).outcome == pb.DENY
        for i in range(2):
            d = c.decide(agent={"id": "refund-bot", "team": "finance", "model": "gpt-5"}, tool="payments.refund",
                         args={"amount": 2500 + i, "order": "o"})
            assert d.outcome == pb.REQUIRE_APPROVAL


def test_a_real_prometheus_scrapes_the_decision_counts(tmp_path: Path) -> None:
    metrics_port = free_port()
    srv = start_server(tmp_path, POLICIES, None, "--metrics-listen", f"127.0.0.1:{metrics_port}")
    try:
        try:
            prom = start_prometheus([f"127.0.0.1:{metrics_port}"])
        except PrometheusUnavailable as e:
            msg = f"\n{'!' * 78}\n!!! Prometheus UNAVAILABLE — test SKIPPED: {e}\n{'!' * 78}"
            print(msg, file=sys.stderr)
            pytest.skip(msg)
        try:
            decide_mix(srv.target)
            want = {"ALLOW": 5.0, "DENY": 3.0, "REQUIRE_APPROVAL": 2.0}

            def counts() -> dict[str, float]:
                return {r["metric"]["outcome"]: float(r["value"][1])
                        for r in prom.query('sum by (outcome) (decider_decisions_total{job="decider"})')}
            assert eventually(lambda: counts() == want, 60), counts()
            pending = prom.query("decider_approvals_pending")
            assert eventually(lambda: [float(r["value"][1]) for r in prom.query("decider_approvals_pending")] == [2.0])
            assert pending
            n = prom.query('sum(decider_decision_duration_seconds_count{stage="total"})')
            assert float(n[0]["value"][1]) == 10.0
            commits = prom.query("sum(decider_writer_batch_size_sum)")
            assert float(commits[0]["value"][1]) == 10.0   # every record went through a commit
            # Every query of the shipped Grafana dashboard is valid PromQL over these series.
            dashboard = json.loads((ROOT / "docs" / "grafana-dashboard.json").read_text())
            exprs = [t["expr"] for p in dashboard["panels"] for t in p["targets"]]
            assert len(exprs) >= 12
            for expr in exprs:
                prom.query(expr.replace("$__rate_interval", "1m"))   # raises unless status=success
            assert prom.query('sum(decider_decisions_total{outcome="DENY"}) / sum(decider_decisions_total)')
        finally:
            prom.stop()
    finally:
        srv.stop()


def test_approval_auth_budget_kill_switch_and_reload_series(tmp_path: Path) -> None:
    port = free_port()
    srv = start_server(tmp_path, write_bundle(tmp_path), None, "--tokens", str(write_tokens(tmp_path)),
                       "--poll-interval", "0.2", "--metrics-listen", f"127.0.0.1:{port}")
    try:
        with client(srv, "gw-token") as c:
            asked = [c.decide(agent=REFUND_BOT, tool="payments.refund", args={"amount": i, "order": "m"})
                     for i in range(3)]
            spent = c.decide(agent={"id": "m-agent", "team": "m-team"}, tool="work.x", estimated_cost=25.0)
            assert spent.outcome == pb.ALLOW
            # Pending until the kill switch below cancels it; and one that expires after 1 s.
            c.decide(agent={"id": "m-agent", "team": "m-team"}, tool="payments.refund", args={"amount": 1})
            c.decide(agent=REFUND_BOT, tool="payments.quick", args={"q": 1})
        with client(srv, "ana-token") as c:
            c.resolve_approval(asked[0].decision_id, True)
            c.resolve_approval(asked[1].decision_id, False)
        with client(srv, "nobody-token") as c, pytest.raises(grpc.RpcError):
            c.decide(agent=REFUND_BOT, tool="work.x")
        with client(srv, "admin-token") as c:
            c.set_kill_switch("team", "m-team")

        def ready() -> bool:
            s = scrape(port)
            return (value(s, "decider_approvals_pending") == 1.0
                    and value(s, "decider_kill_switches_active") == 1.0
                    and value(s, "decider_approvals_resolved_total", result="expired") == 1.0)
        assert eventually(ready)
        s = scrape(port)
        assert value(s, "decider_approvals_resolved_total", result="approved") == 1.0
        assert value(s, "decider_approvals_resolved_total", result="rejected") == 1.0
        assert value(s, "decider_approvals_resolved_total", result="cancelled") == 1.0
        assert value(s, "decider_approval_resolve_seconds_count", result="approved") == 1.0
        assert value(s, "decider_auth_failures_total", code="UNAUTHENTICATED") == 1.0
        # agent budget: limit 100, 25 reserved → 0.25; the per-key series exists for the fullest keys.
        assert value(s, "decider_budget_usage_ratio", scope="agent", window="total", key="*") == 0.25
        assert value(s, "decider_budget_usage_ratio", scope="agent", window="total", key="m-agent") == 0.25
        assert value(s, "decider_budget_usage_ratio", scope="team", window="1d", key="m-team") == 0.025
        assert value(s, "decider_bundle_reloads_total", result="ok") == 1.0
        assert value(s, "decider_writer_queue_depth") == 0.0
    finally:
        srv.stop()


def test_with_workers_the_numbers_are_the_whole_servers(tmp_path: Path) -> None:
    port = free_port()
    srv: ServerProcess = start_server(tmp_path, POLICIES, None, "--workers", "2", "--metrics-listen",
                                      f"127.0.0.1:{port}")
    try:
        instances: set[str] = set()
        lock = threading.Lock()

        def one_connection_each(i: int) -> None:
            # A fresh connection per call: the kernel spreads them over both workers.
            for n in range(10):
                with grpc.insecure_channel(srv.target, options=[("grpc.use_local_subchannel_pool", 1)]) as ch:
                    from decider.v1 import decider_pb2_grpc as pb_grpc

                    req = pb.DecideRequest(agent=pb.Agent(**CODER), tool=pb.ToolCall(name="shell.exec"))
                    req.tool.args.update({"command": f"echo {i}-{n}"})
                    assert pb_grpc.DeciderStub(ch).Decide(req, timeout=10).outcome == pb.ALLOW
                    with lock:
                        instances.add(pb_grpc.ControlStub(ch).Status(pb.StatusRequest(), timeout=10).instance)

        threads = [threading.Thread(target=one_connection_each, args=(i,)) for i in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
        assert len(instances) == 2, "both workers should have decided"
        # Each worker hands its counts to the shared files once a second.
        assert eventually(lambda: value(scrape(port), "decider_decisions_total", outcome="ALLOW") == 40.0)
        s = scrape(port)
        assert value(s, "decider_decision_duration_seconds_count", stage="commit") == 40.0
        assert value(s, "decider_decision_duration_seconds_bucket", stage="total", le="+Inf") == 40.0
        assert 0 < value(s, "decider_decision_duration_seconds_sum", stage="total") < 40 * 2.5
        assert value(s, "decider_bundle_reloads_total", result="ok") == 2.0   # one activation per worker
    finally:
        srv.stop()


def test_duration_buckets_count_a_value_on_a_bound_as_at_most_that_bound() -> None:
    from prometheus_client import CollectorRegistry

    from decider.server.metrics import DecisionSeries

    registry = CollectorRegistry()
    series = DecisionSeries(registry)
    series.decided("ALLOW", 0.001, 1000, 5.0)   # total on the 1 ms bound; commit beyond every bound
    get = registry.get_sample_value
    assert get("decider_decision_duration_seconds_bucket", {"stage": "total", "le": "0.0005"}) == 0
    assert get("decider_decision_duration_seconds_bucket", {"stage": "total", "le": "0.001"}) == 1
    assert get("decider_decision_duration_seconds_bucket", {"stage": "evaluation", "le": "0.001"}) == 1
    assert get("decider_decision_duration_seconds_bucket", {"stage": "commit", "le": "2.5"}) == 0
    assert get("decider_decision_duration_seconds_bucket", {"stage": "commit", "le": "+Inf"}) == 1
    assert get("decider_decision_duration_seconds_count", {"stage": "commit"}) == 1
    assert get("decider_decisions_total", {"outcome": "ALLOW"}) == 1


def test_bad_metrics_and_otlp_options_are_clear_errors(tmp_path: Path) -> None:
    import socket
    import subprocess

    def serve(*extra: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "decider", "serve", "--bundle", str(POLICIES), "--db",
                               str(tmp_path / "x.db"), "--listen", "127.0.0.1:0", *extra],
                              capture_output=True, text=True, cwd=ROOT, timeout=60)

    run = serve("--metrics-listen", "nowhere")
    assert run.returncode == 2 and "decider: --metrics-listen: not host:port: 'nowhere'" in run.stderr
    run = serve("--otlp-endpoint", "collector:4318")
    assert run.returncode == 2 and "decider: --otlp-endpoint: not an http(s) URL" in run.stderr
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        run = serve("--metrics-listen", f"127.0.0.1:{taken.getsockname()[1]}")
    assert run.returncode == 2, run.stderr
    assert "decider: --metrics-listen: cannot serve metrics on 127.0.0.1:" in run.stderr
    assert "Traceback" not in run.stderr
