"""`decider console` (the web UI over the API) and the `serve` options for approval notifications."""

from __future__ import annotations

import argparse
from typing import Any

__all__ = ["register", "serve_options"]


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = sub.add_parser("console", help="the operations console: a web UI over a decider server's API")
    p.add_argument("--decider", default="127.0.0.1:50051", help="decider's gRPC address, host:port")
    p.add_argument("--listen", default="127.0.0.1:8080", help="host:port for the web UI (port 0 = ephemeral)")
    p.add_argument("--tokens", help="decider's token file: log-in with a bearer token from it is required and "
                   "unknown tokens are refused before they reach decider; needed to listen beyond loopback. "
                   "Without it the console asks for a token only when decider requires one, and decider checks it")
    p.add_argument("--tls-cert", help="certificate (PEM) to serve the console over HTTPS (cookies become Secure)")
    p.add_argument("--tls-key", help="its private key (PEM)")
    p.add_argument("--decider-ca", help="CA (PEM) that signed decider's certificate: talk to decider over TLS")
    p.add_argument("--decider-cert", help="client certificate (PEM) for decider's mTLS")
    p.add_argument("--decider-key", help="its private key (PEM)")
    p.add_argument("--secret-file", help="32 bytes (64 hex characters) that encrypt session cookies; default: "
                   "random per process (a restart logs everyone out)")
    p.add_argument("--port-file", help="write the bound port to this file once serving")
    p.add_argument("--login-attempts", type=_positive_int, default=10, metavar="N",
                   help="log-in tries per client address (IPv6: per /64) per --login-window; more answer 429")
    p.add_argument("--max-streams", type=_positive_int, default=8, metavar="N",
                   help="open live event streams (console tabs) per session; more answer 429")
    p.add_argument("--login-window", type=_positive, default=60.0, metavar="SECONDS",
                   help="the window --login-attempts are regained over")
    p.add_argument("--log-level", default="info")
    p.set_defaults(func=_console)

    serve = sub.choices["serve"]
    serve.add_argument("--approval-webhook", metavar="URL",
                       help="POST a Slack-compatible message for every new pending approval (retried, at least "
                            "once, from a cursor kept in the database)")
    serve.add_argument("--console-url", metavar="URL", default="",
                       help="the console's address, for the link in approval notifications")
    serve.add_argument("--approval-webhook-max-backoff", type=float, default=60.0, metavar="SECONDS",
                       help="longest wait between two delivery attempts of one notification")
    serve.add_argument("--approval-webhook-timeout", type=_positive, default=10.0, metavar="SECONDS",
                       help="one delivery attempt, connect to answer; past it the attempt fails and is retried")
    serve.add_argument("--approval-webhook-concurrency", type=_positive_int, default=4, metavar="N",
                       help="delivery attempts in flight at once (a slow receiver holds one slot, not the queue)")


def serve_options(args: argparse.Namespace) -> dict[str, Any]:
    """The ServerConfig fields for the serve options above."""
    return {"approval_webhook": args.approval_webhook, "console_url": args.console_url,
            "webhook_max_backoff_s": args.approval_webhook_max_backoff,
            "webhook_timeout_s": args.approval_webhook_timeout,
            "webhook_concurrency": args.approval_webhook_concurrency}


def _positive(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if not 0 < value <= 3600:  # also refuses nan and inf
        raise argparse.ArgumentTypeError(f"must be more than 0 and at most 3600, not {text!r}")
    return value


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a whole number: {text!r}") from None
    if not 1 <= value <= 100_000:
        raise argparse.ArgumentTypeError(f"must be 1 to 100000, not {text!r}")
    return value


def _console(args: argparse.Namespace) -> int:
    from decider.console.config import ConsoleConfig
    from decider.console.run import run
    from decider.logs import setup_logging

    setup_logging(args.log_level)
    run(ConsoleConfig(decider=args.decider, listen=args.listen, tokens=args.tokens, tls_cert=args.tls_cert,
                      tls_key=args.tls_key, decider_ca=args.decider_ca, decider_cert=args.decider_cert,
                      decider_key=args.decider_key, secret_file=args.secret_file, port_file=args.port_file,
                      login_attempts=args.login_attempts, login_window_s=args.login_window,
                      max_streams=args.max_streams))
    return 0
