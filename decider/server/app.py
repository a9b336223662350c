"""Start, serve and stop: the process around the service."""

from __future__ import annotations

import asyncio
import gc
import logging
import signal
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from decider.errors import DeciderError
from decider.server.auth import AuthInterceptor, is_loopback, load_token_file, record_to_thread
from decider.server.bundles import CONTROL_SERVICE_NAME, BundleSettings, LiveBundles
from decider.server.bundles import control_handlers as bundle_control_handlers
from decider.server.controls import DEFAULT_POLL_INTERVAL_S, DEFAULT_RESERVATION_TTL_S, Controls
from decider.server.decoding import strict_decoding
from decider.server.handlers import control_rpc_handlers, decision_handler, kill_switch_handlers
from decider.server.notify import ApprovalNotifier, WebhookSettings
from decider.server.observability import Observability
from decider.server.partition_upkeep import PartitionUpkeep
from decider.server.queries import QUERIES_SERVICE_NAME, DecisionFeed
from decider.server.queries import handlers as query_handlers
from decider.server.retention import Retention
from decider.server.service import SERVICE_NAME, DeciderService
from decider.store import DecisionStore, GroupCommitWriter, connect
from decider.store.bundles import BundleStore
from decider.store.decisions import decisions
from decider.store.partitions import DEFAULT_MONTHS_AHEAD
from decider.store.queries import QueryStore
from decider.v1 import decider_pb2 as pb

__all__ = ["ServerConfig", "RunningServer", "InsecureListen", "start_server", "run"]

log = logging.getLogger("decider.server")

MAX_MESSAGE_BYTES = 16 << 20   # large enough that an oversized argument reaches validation


@dataclass(frozen=True, slots=True)
class ServerConfig:
    bundle: str
    db: str = "sqlite:///decider.db"
    listen: str = "127.0.0.1:50051"
    grace_s: float = 10.0
    port_file: str | None = None
    # Bundle lifecycle (server/bundles.py).
    require_signature: bool = False
    pubkey: str | None = None
    shadow_bundle: str | None = None
    # How often a replica looks for changes made elsewhere: bundle source and pointers, kill switches.
    poll_interval_s: float = DEFAULT_POLL_INTERVAL_S
    # Stateful controls and access (approvals, budgets, kill switches, roles).
    tokens: str | None = None            # token file; None = no auth, loopback only
    # The args_hash HMAC key (server/binding_key.py); None only under `serve --dev`: the database's.
    binding_key: bytes | None = None
    reservation_ttl_s: float = DEFAULT_RESERVATION_TTL_S
    tls_cert: str | None = None
    tls_key: str | None = None
    tls_client_ca: str | None = None     # set: clients must present a certificate it signed (mTLS)
    # Share the port with sibling worker processes (`--workers`); otherwise a taken port fails.
    reuse_port: bool = False
    # Approval notifications (server/notify.py): webhook URL, the console link, retry back-off cap.
    approval_webhook: str | None = None
    console_url: str = ""
    webhook_max_backoff_s: float = 60.0
    webhook_timeout_s: float = 10.0
    webhook_concurrency: int = 4
    # agentgateway's ExtMcp policy hook (server/ext_mcp.py): off unless asked for.
    ext_mcp: bool = False
    ext_mcp_approval_wait_s: float = 0.0
    # Observability (server/observability.py): serve Prometheus /metrics here; collect metrics
    # without serving them (a `--workers` child: the supervisor serves); OTLP/HTTP traces.
    metrics_listen: str | None = None
    metrics: bool = False
    otlp_endpoint: str | None = None
    # Retention (archives/prune.py): keep decisions retain_s seconds; None = forever.
    retain_s: float | None = None
    archive_dir: str | None = None
    archive_format: str = "parquet"
    prune_interval_s: float = 3600.0
    # PostgreSQL (store/partitions.py): monthly partitions made this many months ahead.
    partitions_ahead: int = DEFAULT_MONTHS_AHEAD


class InsecureListen(DeciderError):
    pass


@dataclass(slots=True)
class RunningServer:
    server: grpc.aio.Server
    port: int
    service: DeciderService
    writer: GroupCommitWriter
    health: health.aio.HealthServicer
    bundles: LiveBundles
    controls: Controls
    feed: DecisionFeed
    observability: Observability
    notifier: ApprovalNotifier | None = None
    retention: Retention | None = None
    partitions: PartitionUpkeep | None = None

    async def stop(self, grace_s: float) -> None:
        """Release every listener, stop taking calls, let in-flight ones finish, then flush the writer."""
        if self.retention is not None:
            await self.retention.stop()
        if self.partitions is not None:
            await self.partitions.stop()
        # The ports first (grpc's own listener closes in server.stop, before its grace): a server
        # restarted at once binds them while this one drains.
        await self.observability.close_listeners()
        await self.bundles.stop()
        await self.controls.stop()
        await self.feed.stop()
        if self.notifier is not None:
            await self.notifier.stop()
        await self.health.enter_graceful_shutdown()
        await self.server.stop(grace_s)
        await asyncio.to_thread(self.writer.close)
        await self.observability.stop()   # after the last decision: its span is flushed too


async def start_server(cfg: ServerConfig) -> RunningServer:
    tokens = load_token_file(cfg.tokens) if cfg.tokens else None
    if tokens is None and not is_loopback(cfg.listen):
        raise InsecureListen(f"refusing to listen on {cfg.listen} without --tokens: every caller would be admin; "
                             "give a token file, or listen on 127.0.0.1")
    if cfg.approval_webhook and not cfg.approval_webhook.startswith(("http://", "https://")):
        raise DeciderError("--approval-webhook: must be an http:// or https:// URL")
    engine = connect(cfg.db)
    partitions = None
    if engine.dialect.name == "postgresql":   # this month's partition and the next ones, before any insert
        partitions = PartitionUpkeep(engine, cfg.partitions_ahead)
        await partitions.first_round()
    live = LiveBundles(BundleSettings(cfg.bundle, cfg.require_signature, cfg.pubkey, cfg.shadow_bundle,
                                      cfg.poll_interval_s), BundleStore(engine))
    await asyncio.to_thread(live.open)  # a bundle that fails to load or verify never starts a server
    bundle = live.active
    store = DecisionStore(engine)
    writer = GroupCommitWriter(engine, decisions)
    controls = Controls(engine, tokens=tokens, poll_interval_s=cfg.poll_interval_s,
                        reservation_ttl_s=cfg.reservation_ttl_s, binding_key=cfg.binding_key)
    live.active_kill_switches = lambda: len(controls.kill_switches)
    controls.active_bundle = lambda: live.active
    live.budget_status = lambda: controls.budget_status(live.active)
    svc = DeciderService(live, store, writer, controls)
    controls.writer = writer
    controls.alone = svc.alone_outside_decisions
    obs = Observability.start(metrics=cfg.metrics, metrics_listen=cfg.metrics_listen, otlp_endpoint=cfg.otlp_endpoint,
                              engine=engine, svc=svc, writer=writer, controls=controls, live=live)
    interceptors = ([AuthInterceptor(tokens, obs.count_auth(record_to_thread(controls.auth_events.record)))]
                    if tokens else [])
    server = grpc.aio.server(
        interceptors=interceptors,
        options=[
            ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
            # grpc enables SO_REUSEPORT by default, which would let two servers silently share a
            # port; a second `serve` on a taken port must fail instead.
            ("grpc.so_reuseport", 1 if cfg.reuse_port else 0),
        ]
    )
    # Every module's Control RPCs, merged into the one decider.v1.Control service.
    control: dict[str, grpc.RpcMethodHandler] = {**kill_switch_handlers(controls), **bundle_control_handlers(live)}
    queries = QueryStore(engine)
    feed = DecisionFeed(queries)
    # strict_decoding: a request that does not parse gets INVALID_ARGUMENT naming the field, for
    # every method listed here (add new services to this tuple to get it too).
    handlers: list[grpc.GenericRpcHandler] = [
        decision_handler(svc),
        grpc.method_handlers_generic_handler(SERVICE_NAME, control_rpc_handlers(controls)),
        grpc.method_handlers_generic_handler(CONTROL_SERVICE_NAME, control),
        grpc.method_handlers_generic_handler(
            QUERIES_SERVICE_NAME, query_handlers(queries, feed, lambda: live.active, lambda: live.shadow, controls.groups_of)),
    ]
    if cfg.ext_mcp:
        from decider.server.ext_mcp import SERVICE_NAME as EXT_MCP
        from decider.server.ext_mcp import ext_mcp_handler
        handlers.append(ext_mcp_handler(svc, controls, cfg.ext_mcp_approval_wait_s))
    server.add_generic_rpc_handlers((strict_decoding(handlers),))
    health_svc = health.aio.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_svc, server)
    names = (SERVICE_NAME, CONTROL_SERVICE_NAME, QUERIES_SERVICE_NAME, health_pb2.DESCRIPTOR.services_by_name["Health"].full_name,
             reflection.SERVICE_NAME) + ((EXT_MCP,) if cfg.ext_mcp else ())
    reflection.enable_server_reflection(names, server, pool=pb.DESCRIPTOR.pool)
    port = _add_port(server, cfg)
    await controls.start()
    await server.start()
    live.start()
    for name in ("", SERVICE_NAME):
        await health_svc.set(name, health_pb2.HealthCheckResponse.SERVING)
    host = cfg.listen.rsplit(":", 1)[0]
    if cfg.port_file:
        Path(cfg.port_file).write_text(str(port))
    log.info(
        "serving",
        extra={"address": f"{host}:{port}", "bundle": bundle.name, "version": bundle.version,
               "revision": bundle.revision, "shadow_revision": live.shadow.revision if live.shadow else None,
               "db": _redact(cfg.db),
               **({"metrics": f"{host}:{obs.metrics_port}"} if obs.metrics_port else {}),
               **({"otlp_endpoint": cfg.otlp_endpoint} if cfg.otlp_endpoint else {})},
    )
    if tokens is None:
        log.warning("NO AUTHENTICATION: started without --tokens, so every caller is admin, approver and "
                    "enforcer. Listening on loopback only; give --tokens FILE before exposing this server.",
                    extra={"address": f"{host}:{port}"})
    notifier = None
    if cfg.approval_webhook:
        notifier = ApprovalNotifier(engine, WebhookSettings(cfg.approval_webhook, cfg.console_url,
                                                            backoff_max_s=cfg.webhook_max_backoff_s,
                                                            timeout_s=cfg.webhook_timeout_s,
                                                            concurrency=cfg.webhook_concurrency))
        await notifier.start()
    retention = None
    if cfg.retain_s is not None and cfg.archive_dir:
        retention = Retention(engine, cfg.retain_s, cfg.archive_dir, cfg.archive_format, cfg.prune_interval_s)
        await retention.start()
    if partitions is not None:
        await partitions.start()
    return RunningServer(server, port, svc, writer, health_svc, live, controls, feed, obs, notifier, retention,
                         partitions)


def _add_port(server: grpc.aio.Server, cfg: ServerConfig) -> int:
    if cfg.tls_cert or cfg.tls_key:
        if not (cfg.tls_cert and cfg.tls_key):
            raise ValueError("--tls-cert and --tls-key go together")
        ca = Path(cfg.tls_client_ca).read_bytes() if cfg.tls_client_ca else None
        creds = grpc.ssl_server_credentials(
            [(Path(cfg.tls_key).read_bytes(), Path(cfg.tls_cert).read_bytes())],
            root_certificates=ca, require_client_auth=ca is not None)
        port = server.add_secure_port(cfg.listen, creds)
    else:
        port = server.add_insecure_port(cfg.listen)
    if port == 0:
        raise OSError(f"cannot listen on {cfg.listen}")
    return port


def _redact(url: str) -> str:
    # Never log a database password.
    if "@" in url and "://" in url:
        scheme, rest = url.split("://", 1)
        return f"{scheme}://***@{rest.split('@', 1)[1]}"
    return url


async def _serve(cfg: ServerConfig, on_ready: Callable[[], None] | None = None) -> None:
    running = await start_server(cfg)
    # What start-up loaded (grpc, SQLAlchemy, protobuf's descriptors, the bundle's CEL programs:
    # ~100k objects) lives as long as the server: kept out of the collector's full passes, each of
    # which walked all of it while every call in flight waited (docs/performance.md, round four).
    gc.collect()
    gc.freeze()
    if on_ready is not None:
        on_ready()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    log.info("shutting down", extra={"grace_s": cfg.grace_s})
    await running.stop(cfg.grace_s)
    log.info("stopped", extra={"records_written": running.writer.rows, "batches": running.writer.batches,
                              "inline_commits": running.writer.inline_commits})


def run(cfg: ServerConfig, on_ready: Callable[[], None] | None = None) -> None:
    asyncio.run(_serve(cfg, on_ready))
