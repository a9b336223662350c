"""`decider serve | check | decide | log` — exit codes are CI-friendly (0 ok, 1 failed, 2 bad input)."""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Sequence
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import grpc
from google.protobuf import json_format

from decider.cli import bundles
from decider.cli.remote import add_decider_arg, decider_address
from decider.errors import DeciderError, InvalidRequest, PolicyLoadError

__all__ = ["main", "build_parser"]

EXIT_OK, EXIT_FAIL, EXIT_USAGE = 0, 1, 2


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="decider", description="Policy decision point for AI agents.")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    s = sub.add_parser("serve", help="serve the gRPC API on a bundle")
    s.add_argument("--bundle", required=True, help="bundle source folder or .bundle file")
    s.add_argument("--db", default="sqlite:///decider.db", help="database URL or SQLite file path")
    s.add_argument("--listen", default="127.0.0.1:50051", help="host:port (port 0 = ephemeral)")
    s.add_argument("--port-file", help="write the bound port to this file once serving")
    s.add_argument("--grace", type=float, default=10.0, help="seconds to drain in-flight calls on shutdown")
    s.add_argument("--log-level", default="info")
    s.add_argument("--workers", type=int, default=1,
                   help="server processes sharing the port (one per core uses every core; they behave as "
                        "replicas of one database, so changes reach each other within --poll-interval)")
    s.add_argument("--tokens", help="token file (YAML: token → principal, roles, groups); without it the "
                   "server has no authentication and listens on loopback only")
    s.add_argument("--binding-key-file", metavar="FILE",
                   help="the args_hash key, hex, 32+ bytes (default: $DECIDER_BINDING_KEY); kept out of the "
                        "database so a copy of it does not reveal masked arguments")
    s.add_argument("--dev", action="store_true",
                   help="development: start without a binding key (the database keeps one, as before)")
    s.add_argument("--reservation-ttl", type=float, default=3600.0,
                   help="seconds before an unsettled budget reservation is released")
    s.add_argument("--tls-cert", help="server certificate (PEM); enables TLS")
    s.add_argument("--tls-key", help="server private key (PEM)")
    s.add_argument("--tls-client-ca", help="CA (PEM) that client certificates must chain to (mTLS)")
    s.add_argument("--ext-mcp", action="store_true",
                   help="also serve agentgateway's ExtMcp policy service (agentgateway.dev.ext_mcp.ExtMcp)")
    s.add_argument("--ext-mcp-approval-wait", type=float, default=0.0, metavar="SECONDS",
                   help="how long an ExtMcp tools/call that needs approval waits for an approver")
    s.add_argument("--metrics-listen", help="serve Prometheus metrics at http://ADDR/metrics (e.g. 127.0.0.1:9464)")
    s.add_argument("--retain", metavar="AGE",
                   help="keep decisions this long (90d, 12h, 2w, 7y): older ones are archived to --archive-dir, "
                        "then deleted, every --prune-interval")
    s.add_argument("--archive-dir", help="with --retain: the folder archives and manifests go to")
    s.add_argument("--archive-format", choices=["parquet", "jsonl"], default="parquet")
    s.add_argument("--prune-interval", type=float, default=3600.0, metavar="SECONDS",
                   help="with --retain: seconds between prunes (the first runs at start)")
    s.add_argument("--partitions-ahead", type=int, default=3, metavar="MONTHS",
                   help="PostgreSQL: make the monthly partitions of the decisions and the journal this many "
                        "months ahead (at start and hourly)")
    s.add_argument("--otlp-endpoint", default=None,
                   help="send one OpenTelemetry span per decision over OTLP/HTTP to this URL "
                        "(default: $OTEL_EXPORTER_OTLP_ENDPOINT; off when neither is set)")

    c = sub.add_parser("check", help="lint and type-check a policy folder")
    c.add_argument("folder")
    c.add_argument("--format", choices=["text", "json"], default="text")

    d = sub.add_parser("decide", help="decide one request (locally on a bundle, or by asking a server)")
    where = d.add_mutually_exclusive_group()
    where.add_argument("--bundle", help="evaluate locally on this bundle folder (nothing is recorded)")
    add_decider_arg(where, "ask decider at this address (the decision is recorded); the default when --bundle "
                           "is not given: $DECIDER_ADDR, else 127.0.0.1:50051")
    d.add_argument("--fail-on", default="", metavar="OUTCOMES",
                   help="exit 1 when the outcome is one of these (comma-separated: deny,require_approval,allow)")
    d.add_argument("--request", help="a DecideRequest as JSON (file path, or - for stdin)")
    d.add_argument("--agent", dest="agent_id", help="agent.id")
    d.add_argument("--team", default="")
    d.add_argument("--owner", default="")
    d.add_argument("--model", default="")
    d.add_argument("--capability", action="append", default=[], help="agent capability (repeatable)")
    d.add_argument("--session", default="", help="agent.session_id (session policies see its earlier calls)")
    d.add_argument("--tool", help="tool.name")
    d.add_argument("--tool-server", default="", help="tool.server: the tool's own server, e.g. mcp://billing")
    d.add_argument("--args", default="{}", help="tool arguments as a JSON object")
    d.add_argument("--env", default="", help="request.environment")
    d.add_argument("--cost", type=float, default=0.0, help="request.estimated_cost")
    d.add_argument("--dry-run", action="store_true")
    d.add_argument("--format", choices=["json", "text"], default="json",
                   help="text: one line, OUTCOME rule | reason (decision ID; approvers)")
    d.add_argument("--token", default=os.environ.get("DECIDER_TOKEN"), help="bearer token for --decider")

    lg = sub.add_parser("log", help="list or export decision records")
    lg.add_argument("--db", default="sqlite:///decider.db")
    lg.add_argument("--agent", dest="agent_id")
    lg.add_argument("--team")
    lg.add_argument("--tool")
    lg.add_argument("--outcome", choices=["allow", "deny", "require_approval", "ALLOW", "DENY", "REQUIRE_APPROVAL"])
    lg.add_argument("--revision", help="bundle revision (prefix)")
    lg.add_argument("--since", help="ISO time, inclusive")
    lg.add_argument("--until", help="ISO time, exclusive")
    lg.add_argument("--limit", type=int)
    lg.add_argument("--format", choices=["table", "jsonl"], default="table")
    lg.add_argument("--archive", action="append", metavar="PATH",
                    help="read archives (a folder or a file; repeatable) instead of the database")

    # Command groups that live in their own modules register themselves (set_defaults(func=...)).
    from decider.cli import approvals, console, db, evaluate, gateway, kill, policytest, replay, report, stream

    policytest.register(sub)
    evaluate.register(sub)
    replay.register(sub)
    bundles.register(sub)  # bundle lifecycle, status, serve/log bundle options
    approvals.register(sub)
    kill.register(sub)
    console.register(sub)  # `console`, and `serve --approval-webhook/--console-url`
    stream.register(sub)  # log --follow/--after/--reverse/--create, export
    report.register(sub)
    db.register(sub)
    gateway.register(sub)  # gateway mcp, tools import
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        func = getattr(args, "func", None) or _COMMANDS[args.command]  # module commands set `func`
        return func(args)
    except PolicyLoadError as e:
        for err in e.errors:
            print(err, file=sys.stderr)
        print(f"{len(e.errors)} error(s)", file=sys.stderr)
        return EXIT_FAIL
    except DeciderError as e:
        print(f"decider: {e}", file=sys.stderr)
        return EXIT_USAGE
    except grpc.RpcError as e:   # a server refused or failed: one line, not a traceback
        print(f"decider: {e.code().name}: {e.details()}", file=sys.stderr)  # type: ignore[attr-defined]
        return EXIT_USAGE if e.code() == grpc.StatusCode.INVALID_ARGUMENT else EXIT_FAIL  # type: ignore[attr-defined]
    except BrokenPipeError:
        # `decider replay … | head`: the reader left; that is not an error.
        sys.stderr.close()
        return EXIT_OK


def _serve(args: argparse.Namespace) -> int:
    from decider.cli import console
    from decider.logs import setup_logging
    from decider.server import ServerConfig, run
    from decider.server.binding_key import resolve_binding_key

    setup_logging(args.log_level)
    key = resolve_binding_key(args.binding_key_file, args.dev)   # before anything starts: refused early
    cfg = ServerConfig(bundle=args.bundle, db=args.db, listen=args.listen, grace_s=args.grace, binding_key=key,
                       port_file=args.port_file, tokens=args.tokens, reservation_ttl_s=args.reservation_ttl,
                       tls_cert=args.tls_cert, tls_key=args.tls_key, tls_client_ca=args.tls_client_ca,
                       ext_mcp=args.ext_mcp, ext_mcp_approval_wait_s=args.ext_mcp_approval_wait,
                       metrics_listen=args.metrics_listen, otlp_endpoint=_otlp_endpoint(args),
                       **_retention(args), partitions_ahead=_partitions_ahead(args),
                       **bundles.serve_options(args), **console.serve_options(args))
    if args.workers < 1:
        raise InvalidRequest("--workers", "must be at least 1")
    # Before any worker starts: create a new database at the newest schema, or refuse an older one
    # (SchemaOutdated names `decider db upgrade`), once rather than in every worker.
    from decider.store import connect

    connect(args.db).dispose()
    if args.workers > 1:
        from decider.server.workers import run_workers

        return run_workers(cfg, args.workers, args.log_level)
    run(cfg)
    return EXIT_OK


def _retention(args: argparse.Namespace) -> dict[str, Any]:
    from decider.archives.prune import parse_retention

    if not args.retain:
        if args.archive_dir:
            raise InvalidRequest("--archive-dir", "goes with --retain")
        return {}
    if not args.archive_dir:
        raise InvalidRequest("--archive-dir", "is required with --retain: records are archived before they are deleted")
    if args.prune_interval <= 0:
        raise InvalidRequest("--prune-interval", "must be positive")
    return {"retain_s": parse_retention(args.retain, "--retain").total_seconds(), "archive_dir": args.archive_dir,
            "archive_format": args.archive_format, "prune_interval_s": args.prune_interval}


def _partitions_ahead(args: argparse.Namespace) -> int:
    if not 1 <= args.partitions_ahead <= 120:
        raise InvalidRequest("--partitions-ahead", "must be between 1 and 120 (months)")
    return int(args.partitions_ahead)


def _otlp_endpoint(args: argparse.Namespace) -> str | None:
    from decider.server.metrics import parse_listen

    if args.metrics_listen:
        try:
            parse_listen(args.metrics_listen)
        except ValueError as e:
            raise InvalidRequest("--metrics-listen", f"not host:port: {args.metrics_listen!r}") from e
    url = args.otlp_endpoint or os.environ.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT") or \
        os.environ.get("OTEL_EXPORTER_OTLP_ENDPOINT")
    if url and not url.startswith(("http://", "https://")):
        raise InvalidRequest("--otlp-endpoint", f"not an http(s) URL: {url!r}")
    return url or None


def _check(args: argparse.Namespace) -> int:
    from decider.bundle.compile import load_bundle

    try:
        b = load_bundle(args.folder)
    except PolicyLoadError as e:
        if args.format == "json":
            print(json.dumps({"ok": False, "errors": [
                {"file": x.file, "line": x.line, "column": x.column, "message": x.message} for x in e.errors]}))
        else:
            for err in e.errors:
                print(err)
            print(f"{len(e.errors)} error(s) in {args.folder}")
        return EXIT_FAIL
    n_rules = sum(len(p.rules) for p in b.policies)
    n_agents = len(b.agents.manifests)
    if args.format == "json":
        print(json.dumps({"ok": True, "name": b.name, "version": b.version, "revision": b.revision,
                          "policies": len(b.policies), "rules": n_rules, "agents": n_agents,
                          "warnings": [{"file": w.file, "line": w.line, "column": w.column,
                                        "message": w.message} for w in b.warnings]}))
    else:
        for w in b.warnings:
            print(w)
        print(f"ok: {b.name} {b.version} revision {b.revision[:12]} "
              f"({len(b.policies)} policies, {n_rules} rules, {n_agents} agent manifests"
              f"{f', {len(b.warnings)} warning(s)' if b.warnings else ''})")
    return EXIT_OK


def _request_from_args(args: argparse.Namespace) -> Any:
    from decider.client import build_request
    from decider.v1 import decider_pb2 as pb

    if args.request:
        text = sys.stdin.read() if args.request == "-" else Path(args.request).read_text()
        try:
            return json_format.Parse(text, pb.DecideRequest())
        except json_format.ParseError as e:
            raise InvalidRequest("request", str(e)) from None
    if not args.tool or not args.agent_id:
        raise InvalidRequest("tool.name" if not args.tool else "agent.id", "is required (or pass --request FILE)")
    try:
        tool_args = json.loads(args.args)
    except json.JSONDecodeError as e:
        raise InvalidRequest("tool.args", f"not JSON: {e}") from None
    if not isinstance(tool_args, dict):
        raise InvalidRequest("tool.args", "must be a JSON object")
    return build_request(
        agent={"id": args.agent_id, "team": args.team, "owner": args.owner, "model": args.model,
               "capabilities": args.capability, "session_id": args.session},
        tool=args.tool, server=args.tool_server, args=tool_args, environment=args.env,
        estimated_cost=args.cost, dry_run=args.dry_run,
    )


_OUTCOMES = ("allow", "deny", "require_approval")


def _fail_on(text: str) -> set[str]:
    wanted = {w.strip().lower() for w in text.split(",") if w.strip()}
    if bad := sorted(wanted - set(_OUTCOMES)):
        raise InvalidRequest("--fail-on", f"unknown outcome(s) {', '.join(bad)}; use {', '.join(_OUTCOMES)}")
    return wanted


def _decide(args: argparse.Namespace) -> int:
    from decider.api.validate import validate_request

    fail_on = _fail_on(args.fail_on)
    if not args.bundle:
        # Like every other command that talks to a server (cli/remote.py).
        args.server = decider_address(args)
    req = _request_from_args(args)
    validate_request(req)
    if args.server:
        from decider.client import DeciderClient

        with DeciderClient(args.server, token=args.token) as client:
            resp = client.decide(req)
        out = json_format.MessageToDict(resp)
    else:
        from decider.bundle.compile import load_bundle
        from decider.engine.decide import decide

        bundle = load_bundle(args.bundle)
        if not req.request.HasField("time"):
            req.request.time.FromDatetime(datetime.now(timezone.utc))
        d = decide(bundle, req)
        out = {
            "outcome": d.outcome_name,
            "decidingRule": d.deciding_rule,
            "reasons": [{"ruleId": r.rule_id, "text": r.text, "policy": r.policy} for r in d.reasons],
            "matchedRules": list(d.matched_rules),
            "riskTier": d.risk_tier,
            "bundle": {"name": bundle.name, "version": bundle.version, "revision": bundle.revision},
        }
        if d.errors:
            out["errors"] = list(d.errors)
        if d.approvers:
            out["approvers"] = list(d.approvers)
    print(json.dumps(out, indent=2) if args.format == "json" else _decision_line(out))
    return EXIT_FAIL if str(out.get("outcome", "")).lower() in fail_on else EXIT_OK


def _decision_line(out: dict[str, Any]) -> str:
    """`--format text`: what a person reads first — the outcome, the rule, why, and what to do next."""
    reasons = out.get("reasons") or []
    line = f"{out.get('outcome', '')} {out.get('decidingRule', '')}"
    if reasons and reasons[0].get("text"):
        line += f" | {reasons[0]['text']}"
    extra = []
    if out.get("decisionId"):
        extra.append(f"decision {out['decisionId']}")
    approvers = out.get("approval", {}).get("approvers") or out.get("approvers")
    if approvers and out.get("outcome") == "REQUIRE_APPROVAL":
        extra.append(f"approvers: {', '.join(approvers)}")
    return line + (f"  ({'; '.join(extra)})" if extra else "")


def _log(args: argparse.Namespace) -> int:
    from decider.cli import stream
    from decider.store import DecisionStore
    from decider.store.decisions import LogFilter

    f = LogFilter(
        agent_id=args.agent_id, team=args.team, tool_name=args.tool, outcome=args.outcome,
        bundle_revision=args.revision, since=_parse_time(args.since), until=_parse_time(args.until),
        limit=args.limit, newest_first=not args.reverse,
    )
    if args.archive:
        if args.follow:
            raise InvalidRequest("--archive", "archives do not change: --follow reads the database")
        from decider.archives.query import query_archives

        # Every file is checked against its manifest before a line is printed.
        rows: Any = list(query_archives(args.archive, f))
    else:
        engine = stream.open_db(args.db, create=args.create)
        if args.follow:
            return stream.follow(args, engine)
        rows = DecisionStore(engine).query(f)
    if args.shadow_diff:  # issue 4
        return bundles.print_shadow_diff(bundles.shadow_diff(rows, args.examples), args.format)
    if args.format == "jsonl":
        from decider.record.record import DecisionRecord

        # The typed record's own export form: the API's field names, no args_hash.
        for row in rows:
            print(json.dumps(DecisionRecord.from_row(row).to_json(), separators=(",", ":"), ensure_ascii=False))
        return EXIT_OK
    print(f"{'decision_id':26}  {'time (UTC)':19}  {'agent':14}  {'tool':18}  {'outcome':16}  {'rule':32}  caller")
    for row in rows:
        t = row["time"].strftime("%Y-%m-%d %H:%M:%S")
        print(f"{row['decision_id']:26}  {t:19}  {row['agent_id'][:14]:14}  {row['tool_name'][:18]:18}  "
              f"{row['outcome']:16}  {_rule_column(row):32}  {row.get('caller') or '-'}")
    return EXIT_OK


def _rule_column(row: dict[str, Any]) -> str:
    # An ALLOW that used up an approval was decided by a person, not by the rule that asked for one.
    if row["outcome"] == "ALLOW" and row.get("approval_state") == "consumed":
        rule = f"approved by {row.get('resolved_by') or '?'} (decision {row.get('approval_id')})"
    else:
        rule = str(row["deciding_rule"])
    labels = json.loads(row.get("labels") or "[]")
    return f"{rule}  labels: {', '.join(labels)}" if labels else rule


def _parse_time(text: str | None) -> datetime | None:
    if not text:
        return None
    try:
        t = datetime.fromisoformat(text)
    except ValueError:
        raise InvalidRequest("--since/--until", f"not an ISO time: {text!r}") from None
    return t if t.tzinfo else t.replace(tzinfo=timezone.utc)


_COMMANDS = {"serve": _serve, "check": _check, "decide": _decide, "log": _log}

if __name__ == "__main__":
    sys.exit(main())
