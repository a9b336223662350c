"""How a console process is set up (the `decider console` flags)."""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["ConsoleConfig"]


@dataclass(frozen=True, slots=True)
class ConsoleConfig:
    decider: str = "127.0.0.1:50051"      # decider's gRPC address
    listen: str = "127.0.0.1:8080"
    tokens: str | None = None             # the server's token file: log-in required, tokens checked against it
    # HTTPS for the console itself (the session cookie is then `Secure`).
    tls_cert: str | None = None
    tls_key: str | None = None
    # TLS to decider: the CA that signed decider's certificate, and a client certificate for mTLS.
    decider_ca: str | None = None
    decider_cert: str | None = None
    decider_key: str | None = None
    # 32 random bytes (hex or raw file) that encrypt the session cookies; random per process when
    # absent (a restart then logs everyone out). Give one to run several console replicas.
    secret_file: str | None = None
    session_hours: float = 12.0
    # Log-in tries per client address (IPv6: per /64), regained evenly over the window.
    login_attempts: int = 10
    login_window_s: float = 60.0
    approvals_poll_s: float = 1.0         # how often the queue is re-read (once per token, for all its pages)
    max_streams: int = 8                  # open event streams (/events/...) per session
    port_file: str | None = None          # write the bound port here once serving (tests, scripts)
