"""`decider bundle build | verify | sign | keygen | list | activate | rollback | shadow`, `decider status`,
`decider log --shadow-diff`, and the bundle options of `decider serve`.

Commands that talk to a server take `--decider host:port` (default `$DECIDER_ADDR`, else
127.0.0.1:50051) and send `authorization: Bearer <token>` from `--token` or `$DECIDER_TOKEN`
(the Control RPCs are for the admin role).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections import Counter
from datetime import datetime
from pathlib import Path
from typing import Any

from google.protobuf import json_format

from decider.errors import DeciderError

__all__ = ["register", "serve_options", "shadow_diff"]

EXIT_OK, EXIT_FAIL, EXIT_USAGE = 0, 1, 2


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    _extend_serve_and_log(sub)
    b = sub.add_parser("bundle", help="build, sign, verify and switch bundles")
    bs = b.add_subparsers(dest="bundle_command", required=True, metavar="ACTION")

    p = bs.add_parser("build", help="check a policy folder and build <name>-<version>-<revision12>.bundle")
    p.add_argument("folder")
    p.add_argument("-o", "--output", default=".", help="output folder (default: current folder)")
    p.add_argument("--sign", metavar="KEY", help="sign with this Ed25519 private key (PEM)")
    p.add_argument("--build-time", help="ISO time, or 'now', stamped into the manifest (default: "
                                        "$SOURCE_DATE_EPOCH, else none, so the file is reproducible)")
    p.set_defaults(func=cmd_build)

    p = bs.add_parser("verify", help="verify a bundle file (hashes, signature with --pubkey) and compile it")
    p.add_argument("file")
    p.add_argument("--pubkey", help="Ed25519 public key (PEM): the bundle must be signed by it")
    p.add_argument("--format", choices=["text", "json"], default="text")
    p.set_defaults(func=cmd_verify)

    p = bs.add_parser("sign", help="sign a bundle file (in place, or to -o)")
    p.add_argument("file")
    p.add_argument("--key", required=True, help="Ed25519 private key (PEM)")
    p.add_argument("-o", "--output", help="write the signed bundle here instead of in place")
    p.set_defaults(func=cmd_sign)

    p = bs.add_parser("keygen", help="create an Ed25519 key pair: NAME.pem (private) and NAME.pub.pem")
    p.add_argument("-o", "--output", default="ed25519", help="file name prefix (default: ed25519)")
    p.add_argument("--force", action="store_true", help="overwrite existing key files")
    p.set_defaults(func=cmd_keygen)

    p = bs.add_parser("list", help="bundles the servers have stored, newest last")
    _server_args(p)
    p.add_argument("--format", choices=["table", "json"], default="table")
    p.set_defaults(func=cmd_list)

    p = bs.add_parser("activate", help="make a stored revision active on every replica")
    p.add_argument("revision", help="full revision or a unique prefix")
    _server_args(p)
    p.set_defaults(func=cmd_activate)

    p = bs.add_parser("rollback", help="go back to the previously active revision")
    _server_args(p)
    p.set_defaults(func=cmd_rollback)

    p = bs.add_parser("shadow", help="evaluate every decision also against this revision (recorded only)")
    p.add_argument("revision", nargs="?", default="", help="revision or prefix; omit with --clear")
    p.add_argument("--clear", action="store_true", help="stop shadow evaluation")
    _server_args(p)
    p.set_defaults(func=cmd_shadow)

    st = sub.add_parser("status", help="a server's active and shadow bundles, reload errors, decision counts")
    _server_args(st)
    st.add_argument("--format", choices=["text", "json"], default="text")
    st.set_defaults(func=cmd_status)


def _extend_serve_and_log(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    # The serve and log parsers live in main.py; their bundle options are declared here so the
    # lifecycle stays in one module.
    serve = sub.choices.get("serve")
    if serve is not None:
        serve.add_argument("--require-signature", action="store_true",
                           help="refuse bundles not signed by --pubkey (at start and at every reload)")
        serve.add_argument("--pubkey", help="Ed25519 public key (PEM) that signs bundles")
        serve.add_argument("--shadow-bundle", help="bundle file/folder or stored revision to evaluate in shadow")
        serve.add_argument("--poll-interval", type=float, default=1.0,
                           help="seconds between reads of changes made elsewhere: the bundle source, the "
                                "store's active revision, other replicas' kill switches and approvals")
    log = sub.choices.get("log")
    if log is not None:
        log.add_argument("--shadow-diff", action="store_true",
                         help="summarise where the shadow bundle and the active one disagree")
        log.add_argument("--examples", type=int, default=3, help="with --shadow-diff: examples per outcome pair")


def serve_options(args: argparse.Namespace) -> dict[str, Any]:
    """The ServerConfig fields for the options above."""
    return {"require_signature": args.require_signature, "pubkey": args.pubkey,
            "shadow_bundle": args.shadow_bundle, "poll_interval_s": args.poll_interval}


def _server_args(p: argparse.ArgumentParser) -> None:
    from decider.cli.remote import add_decider_arg

    add_decider_arg(p)
    p.add_argument("--token", default=None, help="bearer token (default: $DECIDER_TOKEN)")
    p.add_argument("--timeout", type=float, default=10.0)


# ---- offline: build, verify, sign, keygen ----

def _build_time(text: str | None) -> str | None:
    from decider.bundle.archive import build_time_default

    if not text:
        return build_time_default()
    if text == "now":
        return datetime.now().astimezone().isoformat()
    try:
        return datetime.fromisoformat(text).isoformat()
    except ValueError:
        raise DeciderError(f"--build-time: not an ISO time: {text!r}") from None


def cmd_build(args: argparse.Namespace) -> int:
    from decider.bundle.archive import build_archive, build_manifest, bundle_file_name, load_private_key, sign_archive
    from decider.bundle.compile import compile_bundle
    from decider.policy.loader import load_source

    src = load_source(args.folder)
    bundle = compile_bundle(src)              # the same check as `decider check`: raises with every error
    key = load_private_key(args.sign) if args.sign else None
    manifest = build_manifest(bundle.name, bundle.version, bundle.revision, src.files, _build_time(args.build_time))
    data = build_archive(manifest, src.files)
    if key is not None:
        data = sign_archive(data, key)
    out_dir = Path(args.output)
    out_dir.mkdir(parents=True, exist_ok=True)
    out = out_dir / bundle_file_name(bundle.name, bundle.version, bundle.revision)
    _write_atomically(out, data)
    print(f"{out}  {bundle.name} {bundle.version} revision {bundle.revision[:12]} "
          f"({len(src.files)} files{', signed' if key else ''})")
    return EXIT_OK


def _write_atomically(path: Path, data: bytes) -> None:
    # A server watching this file must never see half of it: write aside, then rename over.
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    tmp.write_bytes(data)
    os.replace(tmp, path)


def cmd_verify(args: argparse.Namespace) -> int:
    from decider.bundle.archive import BundleVerifyError, load_public_key, read_bundle_file
    from decider.bundle.compile import compile_bundle, load_bundle_files

    pub = load_public_key(args.pubkey) if args.pubkey else None
    try:
        bf = read_bundle_file(args.file, pub, require_signature=pub is not None)
        bundle = compile_bundle(load_bundle_files(bf.files, args.file))
    except BundleVerifyError as e:
        if args.format == "json":
            print(json.dumps({"ok": False, "file": args.file, "problems": e.problems}))
        else:
            for p in e.problems:
                print(f"{args.file}: {p}", file=sys.stderr)
            print(f"verification failed: {len(e.problems)} problem(s)", file=sys.stderr)
        return EXIT_FAIL
    sig = bf.signature or {}
    if args.format == "json":
        print(json.dumps({"ok": True, "file": args.file, "name": bundle.name, "version": bundle.version,
                          "revision": bundle.revision, "files": len(bf.files), "signed": bf.signed,
                          "signature_verified": bf.signature_verified, "key_id": sig.get("key_id"),
                          "build_time": bf.manifest.get("build_time"), "builder": bf.manifest.get("builder")}))
    else:
        signed = (f"signature verified (key {sig.get('key_id')})" if bf.signature_verified
                  else f"signed by key {sig.get('key_id')}, not checked (no --pubkey)" if bf.signed else "unsigned")
        print(f"ok: {bundle.name} {bundle.version} revision {bundle.revision[:12]} ({len(bf.files)} files, {signed})")
    return EXIT_OK


def cmd_sign(args: argparse.Namespace) -> int:
    from decider.bundle.archive import key_id, load_private_key, read_bundle_bytes, sign_archive

    key = load_private_key(args.key)
    data = Path(args.file).read_bytes()
    signed = sign_archive(data, key, args.file)
    out = Path(args.output or args.file)
    _write_atomically(out, signed)
    bf = read_bundle_bytes(signed, str(out), key.public_key(), require_signature=True)
    print(f"signed {out}: revision {bf.revision[:12]} with key {key_id(key.public_key())}")
    return EXIT_OK


def cmd_keygen(args: argparse.Namespace) -> int:
    from decider.bundle.archive import generate_keypair, key_id, load_public_key

    priv_path, pub_path = Path(f"{args.output}.pem"), Path(f"{args.output}.pub.pem")
    for p in (priv_path, pub_path):
        if p.exists() and not args.force:
            raise DeciderError(f"{p}: exists (use --force to overwrite)")
    private, public = generate_keypair()
    fd = os.open(priv_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)  # the private key is not world-readable
    with os.fdopen(fd, "wb") as f:
        f.write(private)
    pub_path.write_bytes(public)
    print(f"private key: {priv_path} (keep secret)\npublic key:  {pub_path} (key id "
          f"{key_id(load_public_key(pub_path))})")
    return EXIT_OK


# ---- against a server: list, activate, rollback, shadow, status ----

class _Control:
    def __init__(self, args: argparse.Namespace) -> None:
        import grpc

        from decider.v1 import decider_pb2_grpc as pb_grpc

        token = args.token or os.environ.get("DECIDER_TOKEN")
        self.metadata = (("authorization", f"Bearer {token}"),) if token else None
        self.timeout = args.timeout
        from decider.cli.remote import decider_address

        args.server = decider_address(args)
        self.channel = grpc.insecure_channel(args.server)
        self.stub = pb_grpc.ControlStub(self.channel)

    def call(self, method: str, req: Any) -> Any:
        return getattr(self.stub, method)(req, timeout=self.timeout, metadata=self.metadata)

    def __enter__(self) -> _Control:
        return self

    def __exit__(self, *exc: object) -> None:
        self.channel.close()


def _rpc(args: argparse.Namespace, method: str, req: Any) -> Any:
    import grpc

    with _Control(args) as c:
        try:
            return c.call(method, req)
        except grpc.RpcError as e:
            raise _RpcFailed(f"{args.server}: {e.code().name}: {e.details()}") from None


class _RpcFailed(DeciderError):
    pass


def _ts(t: Any) -> str:
    return t.ToDatetime().strftime("%Y-%m-%d %H:%M:%S") if t.seconds else "-"


def _info_line(i: Any) -> str:
    return (f"{i.revision[:12]}  {i.name} {i.version}  {'signed' if i.signed else 'unsigned'}  "
            f"activated {_ts(i.activated_at)}  from {i.source}")


def _run_remote(fn: Any) -> Any:
    def wrapped(args: argparse.Namespace) -> int:
        try:
            return fn(args)
        except _RpcFailed as e:
            print(f"decider: {e}", file=sys.stderr)
            return EXIT_FAIL
    return wrapped


@_run_remote
def cmd_list(args: argparse.Namespace) -> int:
    from decider.v1 import decider_pb2 as pb

    resp = _rpc(args, "ListBundles", pb.ListBundlesRequest())
    if args.format == "json":
        for i in resp.bundles:
            print(json.dumps(json_format.MessageToDict(i, preserving_proto_field_name=True)))
        return EXIT_OK
    print(f"{'':2} {'revision':12}  {'name':20}  {'version':10}  {'signed':6}  {'stored (UTC)':19}  "
          f"{'last activated':19}  source")
    for i in resp.bundles:
        mark = "*" if i.active else ("s" if i.shadow else " ")
        print(f"{mark:2} {i.revision[:12]:12}  {i.name[:20]:20}  {i.version[:10]:10}  {'yes' if i.signed else 'no':6}  "
              f"{_ts(i.loaded_at):19}  {_ts(i.activated_at):19}  {i.source}")
    return EXIT_OK


@_run_remote
def cmd_activate(args: argparse.Namespace) -> int:
    from decider.v1 import decider_pb2 as pb

    i = _rpc(args, "ActivateBundle", pb.ActivateBundleRequest(revision=args.revision))
    print(f"active: {_info_line(i)}")
    return EXIT_OK


@_run_remote
def cmd_rollback(args: argparse.Namespace) -> int:
    from decider.v1 import decider_pb2 as pb

    i = _rpc(args, "RollbackBundle", pb.RollbackBundleRequest())
    print(f"rolled back; active: {_info_line(i)}")
    return EXIT_OK


@_run_remote
def cmd_shadow(args: argparse.Namespace) -> int:
    from decider.v1 import decider_pb2 as pb

    if bool(args.revision) == bool(args.clear):
        raise DeciderError("bundle shadow: give a REVISION or --clear")
    s = _rpc(args, "SetShadowBundle", pb.SetShadowBundleRequest(revision="" if args.clear else args.revision))
    print(f"shadow: {_info_line(s.shadow)}" if s.shadow.revision else "shadow: none")
    return EXIT_OK


@_run_remote
def cmd_status(args: argparse.Namespace) -> int:
    from decider.v1 import decider_pb2 as pb

    s = _rpc(args, "Status", pb.StatusRequest())
    if args.format == "json":
        print(json.dumps(json_format.MessageToDict(s, preserving_proto_field_name=True), indent=2))
        return EXIT_OK
    print(f"instance:  {s.instance} (started {_ts(s.started_at)} UTC)")
    print(f"active:    {_info_line(s.active)}")
    print(f"shadow:    {_info_line(s.shadow) if s.shadow.revision else 'none'}")
    print(f"reload:    last at {_ts(s.last_reload_at)}; error: {s.last_reload_error or 'none'}")
    counts = ", ".join(f"{k} {v}" for k, v in sorted(s.decisions_by_outcome.items())) or "none"
    print(f"decisions: {counts} (since start)")
    if s.active_kill_switches:
        print(f"kill switches active: {s.active_kill_switches}")
    over = [b for b in s.budgets if b.remaining < 0]
    if s.budgets:
        print(f"budgets:   {len(s.budgets)} counter(s) in their current window, {len(over)} over the limit")
    for b in over:
        window = "total" if b.window == "total" else f"{b.window} window"
        print(f"  over:    {b.scope} {b.scope_key!r} ({window}) spent {b.spent:g} + reserved {b.reserved:g} "
              f"of {b.limit:g}")
    return EXIT_OK


# ---- decider log --shadow-diff ----

def shadow_diff(rows: Any, examples: int = 3) -> dict[str, Any]:
    """Where shadow and active disagree: counts by outcome pair, by rule, and examples per pair."""
    total = agree = 0
    pairs: Counter[tuple[str, str]] = Counter()
    by_rule: Counter[tuple[str, str]] = Counter()
    shadow_revisions: Counter[str] = Counter()
    samples: dict[str, list[dict[str, Any]]] = {}
    for row in rows:
        if not row.get("shadow_outcome"):
            continue
        total += 1
        shadow_revisions[row.get("shadow_bundle_revision") or ""] += 1
        active, shadow = row["outcome"], row["shadow_outcome"]
        if active == shadow:
            agree += 1
            continue
        pairs[(active, shadow)] += 1
        shadow_rules = json.loads(row.get("shadow_rules") or "[]")
        by_rule[(row["deciding_rule"], ",".join(shadow_rules) or "(none: default)")] += 1
        key = f"{active} -> {shadow}"
        if len(samples.setdefault(key, [])) < examples:
            samples[key].append({
                "decision_id": row["decision_id"], "agent_id": row["agent_id"], "tool_name": row["tool_name"],
                "args": json.loads(row["args"]), "active_rule": row["deciding_rule"],
                "shadow_rules": shadow_rules, "active_revision": row["bundle_revision"],
                "shadow_revision": row.get("shadow_bundle_revision"),
            })
    return {
        "decisions_with_shadow": total,
        "agree": agree,
        "disagree": total - agree,
        "shadow_revisions": dict(shadow_revisions),
        "by_outcome_pair": [{"active": a, "shadow": s, "count": n} for (a, s), n in pairs.most_common()],
        "by_rule": [{"active_rule": a, "shadow_rules": s, "count": n} for (a, s), n in by_rule.most_common()],
        "examples": samples,
    }


def print_shadow_diff(report: dict[str, Any], fmt: str) -> int:
    if fmt == "jsonl":
        print(json.dumps(report))
        return EXIT_OK
    total, dis = report["decisions_with_shadow"], report["disagree"]
    revs = ", ".join(r[:12] for r in report["shadow_revisions"]) or "none"
    print(f"{total} decisions evaluated in shadow (shadow revision {revs}): "
          f"{report['agree']} agree, {dis} disagree")
    if not dis:
        return EXIT_OK
    print("\nby outcome pair (active -> shadow):")
    for p in report["by_outcome_pair"]:
        print(f"  {p['count']:6}  {p['active']} -> {p['shadow']}")
    print("\nby rule (active deciding rule -> shadow matched rules):")
    for r in report["by_rule"]:
        print(f"  {r['count']:6}  {r['active_rule']} -> {r['shadow_rules']}")
    print("\nexamples:")
    for pair, items in report["examples"].items():
        for e in items:
            print(f"  {pair:28}  {e['decision_id']}  {e['agent_id']}  {e['tool_name']}  "
                  f"{json.dumps(e['args'], separators=(',', ':'))[:60]}")
    return EXIT_OK
