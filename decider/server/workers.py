"""`decider serve --workers N`: N server processes sharing one port, so decisions use every core.

One Python process decides on one core (one event loop, one GIL). Here the parent reserves the port
with SO_REUSEPORT, starts N ordinary servers that bind it too (the kernel spreads connections
over them), and supervises them: SIGTERM/SIGINT drains every worker, and a worker that dies stops
all of them with an error rather than leaving a server that silently has less capacity.

The workers are replicas sharing one database, with what that means: a kill switch, bundle
activation or approval made through one worker reaches the others within `--poll-interval`.
"""

from __future__ import annotations

import dataclasses
import logging
import multiprocessing
import os
import shutil
import signal
import socket
import tempfile
import time
from multiprocessing.synchronize import Event
from pathlib import Path

from decider.server.app import ServerConfig, run

__all__ = ["run_workers"]

log = logging.getLogger("decider.server")


def _reserve(listen: str) -> tuple[socket.socket, str, int]:
    """Bind (without listening) a SO_REUSEPORT socket: it fixes the port for the workers, and no
    other program can take it meanwhile; a bound socket that does not listen receives nothing."""
    host, port = listen.rsplit(":", 1)
    host = host.strip("[]")
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    sock.bind((host, int(port)))
    return sock, host, sock.getsockname()[1]


def _worker(cfg: ServerConfig, ready: Event, log_level: str) -> None:
    from decider.logs import setup_logging

    setup_logging(log_level)
    run(cfg, on_ready=ready.set)


def run_workers(cfg: ServerConfig, workers: int, log_level: str = "info") -> int:
    sock, host, port = _reserve(cfg.listen)
    shown = f"[{host}]" if ":" in host else host
    child_cfg = dataclasses.replace(cfg, listen=f"{shown}:{port}", port_file=None, reuse_port=True)
    metrics_dir = None
    if cfg.metrics_listen:
        # Multiprocess metrics: every worker writes its series to files here (the variable must be
        # set before a worker imports prometheus_client; spawned workers inherit it); this process
        # serves /metrics over all of them.
        from decider.server.metrics import MULTIPROC_ENV, serve_multiprocess_metrics

        metrics_dir = tempfile.mkdtemp(prefix="decider-metrics-")
        os.environ[MULTIPROC_ENV] = metrics_dir
        child_cfg = dataclasses.replace(child_cfg, metrics_listen=None, metrics=True)
        try:
            metrics_port = serve_multiprocess_metrics(cfg.metrics_listen)
        except BaseException:
            shutil.rmtree(metrics_dir, ignore_errors=True)
            sock.close()
            raise
        log.info("metrics", extra={"address": f"{cfg.metrics_listen.rsplit(':', 1)[0]}:{metrics_port}"})
    ctx = multiprocessing.get_context("spawn")  # a clean interpreter each: no inherited grpc state
    procs: list[multiprocessing.process.BaseProcess] = []
    stopping = False

    def stop(_sig: int, _frame: object) -> None:
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    code = 0
    try:
        # One at a time: the first worker creates the tables and records the bundle activation.
        for i in range(workers):
            ready = ctx.Event()
            p = ctx.Process(target=_worker, args=(child_cfg, ready, log_level), name=f"decider-worker-{i}")
            p.start()
            procs.append(p)
            while not ready.wait(0.1):
                if not p.is_alive() or stopping:
                    raise RuntimeError(f"worker {i} exited before serving (exit code {p.exitcode})")
        if cfg.port_file:
            Path(cfg.port_file).write_text(str(port))
        log.info("serving", extra={"address": f"{shown}:{port}", "workers": workers,
                                   "pids": [p.pid for p in procs]})
        while not stopping:
            dead = [p for p in procs if not p.is_alive()]
            if dead and metrics_dir:
                from prometheus_client import multiprocess

                for p in dead:
                    multiprocess.mark_process_dead(p.pid)
            if dead:
                log.error("a worker exited; stopping the others",
                          extra={"pid": dead[0].pid, "exit_code": dead[0].exitcode})
                code = 1
                break
            time.sleep(0.2)
    except RuntimeError as e:
        log.error(str(e))
        code = 1
    finally:
        if metrics_dir:
            from decider.server.metrics import close_metrics_listeners

            close_metrics_listeners()   # the port is free for a restart while the workers drain
        for p in procs:
            if p.is_alive():
                p.terminate()  # SIGTERM: each worker drains its calls and flushes its writer
        deadline = time.monotonic() + cfg.grace_s + 10
        for p in procs:
            p.join(max(0.1, deadline - time.monotonic()))
            if p.is_alive():
                p.kill()
                p.join(5)
                code = 1
        sock.close()
        if metrics_dir:
            shutil.rmtree(metrics_dir, ignore_errors=True)
    log.info("stopped", extra={"workers": workers, "exit_codes": [p.exitcode for p in procs]})
    return code
