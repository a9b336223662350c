"""CEL extension functions for policy conditions.

Policies check the same handful of things over and over: does a tool name match a glob, is a path
inside the sandbox, which host does a URL point at, which programs does a shell line run, does an
argument carry a credential. Standard CEL has none of these, so decider adds them here.

``declarations()`` returns the ``cel.FunctionDecl`` list that the compiler passes as ``functions=`` to
``cel.NewEnv``. The implementations are plain module functions so that they can be tested (and
reused) without CEL.

Rules every function here follows, because it runs from C++ on the request path of every decision:

- Pure and deterministic: no I/O, no clock, no environment.
- Cheap: patterns, networks and shell parses are cached; regexes are compiled once at import.
- Total: odd input gives a "no" answer (``False``, ``""``, ``[]``), never an exception. The only
  exceptions are deliberate: an invalid CIDR in ``net.in_cidr`` raises ``ValueError``, which
  cel-expr-python turns into a CEL *error value* (``OUT_OF_RANGE: ...``), so the rule errors and the
  bundle's ``on_error`` applies.
- Lists are returned as ``list``: cel-expr-python rejects a ``tuple`` return value with a
  ``RuntimeError`` out of ``eval`` instead of a CEL error.
"""

from __future__ import annotations

import fnmatch
import functools
import ipaddress
import posixpath
import re
from collections.abc import Callable
from email.utils import getaddresses
from typing import Any
from urllib.parse import SplitResult, urlsplit

from cel_expr_python import cel

from decider.cel.cache import CACHEABLE as _CACHEABLE
from decider.cel.secrets import SECRET_KINDS, SECRETS_SCAN_LIMIT, secrets_found, secrets_kinds
from decider.cel.shell import SHELL_PARSE_LIMIT, shell_argv, shell_commands

__all__ = [
    "SECRETS_SCAN_LIMIT",
    "SECRET_KINDS",
    "SHELL_PARSE_LIMIT",
    "declarations",
    "email_domain",
    "glob",
    "net_in_cidr",
    "path_within",
    "secrets_found",
    "secrets_kinds",
    "shell_argv",
    "shell_commands",
    "url_host",
    "url_scheme",
]




# --------------------------------------------------------------------------------------------------
# glob(name, pattern)
# --------------------------------------------------------------------------------------------------


@functools.lru_cache(maxsize=4096)
def _glob_matcher(pattern: str) -> Callable[[str], re.Match[str] | None]:
    # fnmatch.translate gives shell semantics where `*` and `?` match any character, dots and
    # slashes included (what tool names like `payments.refund` need), and `[!x]` negates. The
    # regex is anchored at the end with \Z, and `.match` anchors the start. No IGNORECASE: names
    # are case-sensitive. Bundles use a bounded set of patterns, so the cache holds all of them.
    return re.compile(fnmatch.translate(pattern)).match


def glob(name: str, pattern: str) -> bool:
    """Shell-style, case-sensitive match of the whole ``name`` (``*``, ``?``, ``[abc]``, ``[!abc]``).

    ``*`` matches dots and slashes too: ``glob("payments.refund", "payments.*")`` is true.
    """
    matcher = _glob_matcher(pattern) if len(pattern) <= _CACHEABLE else _glob_matcher.__wrapped__(pattern)
    return matcher(name) is not None


# --------------------------------------------------------------------------------------------------
# path.within(path, root)
# --------------------------------------------------------------------------------------------------


def _normalize_path(path: str) -> str:
    normalized = posixpath.normpath(path)
    # POSIX lets normpath keep exactly two leading slashes ("//etc"); Linux treats them as one,
    # so fold them, or "//workspace/x" would not be within "/workspace".
    if normalized.startswith("//"):
        normalized = "/" + normalized.lstrip("/")
    return normalized


def path_within(path: str, root: str) -> bool:
    """Whether ``path`` is ``root`` or lies below it, compared lexically after normalisation.

    ``..``, ``.`` and repeated slashes are resolved with ``posixpath.normpath`` (so
    ``/workspace/../etc/passwd`` is not within ``/workspace``); a relative ``path`` is taken
    relative to ``root``. Symlinks are not (cannot be) resolved: this is a policy check on the
    string an agent sent, not a sandbox. Empty ``path`` or ``root`` gives false, and so does a
    relative ``root`` that starts with ``..`` (there is nothing to anchor it to).
    """
    # Pure, and the same paths and roots recur across rules and requests (~8 µs uncached).
    if len(path) + len(root) <= _CACHEABLE:
        return _path_within(path, root)
    return _path_within.__wrapped__(path, root)


@functools.lru_cache(maxsize=4096)
def _path_within(path: str, root: str) -> bool:
    if not path or not root:
        return False
    base = _normalize_path(root)
    if base == ".." or base.startswith("../"):
        return False
    # join() keeps an absolute `path` as is and anchors a relative one at the root.
    target = _normalize_path(posixpath.join(base, path))
    if target == ".." or target.startswith("../"):
        # Only possible for a relative root: the path climbed out of it.
        return False
    if base == "/":
        return target.startswith("/")
    if base == ".":
        return not target.startswith("/")
    return target == base or target.startswith(base + "/")


# --------------------------------------------------------------------------------------------------
# url.host(url), url.scheme(url)
# --------------------------------------------------------------------------------------------------

# Characters that never appear in a host a client would connect to. A backslash in particular is a
# classic parser-confusion trick: urlsplit reads "https://evil.com\@good.com" as host good.com while
# browsers read evil.com, so such URLs get "" (fail closed for allow-lists) instead of a guess.
_BAD_NETLOC = re.compile(r"[\x00-\x20\x7f\\<>\"'`{}|^]")
_BAD_HOST = re.compile(r"[%/?#@\[\]]")


def _split_url(url: str) -> SplitResult | None:
    try:
        return urlsplit(url.strip())
    except ValueError:  # e.g. "http://[::1" (unbalanced IPv6 bracket)
        return None


def url_host(url: str) -> str:
    """Lower-cased host of ``url`` without userinfo, port or IPv6 brackets; ``""`` when there is none.

    Only URLs with an authority (``scheme://host…`` or ``//host…``) have a host: ``example.com/x``
    and ``mailto:a@b.com`` give ``""``, as do URLs a client could read differently (backslashes,
    spaces, percent-encoded hosts, a non-numeric or out-of-range port). One trailing dot is
    dropped (``a.com.`` is the same DNS name as ``a.com``). IDN hosts are left as given.
    """
    # Pure, and the same URLs recur across rules and requests (~8 µs uncached).
    return _url_host(url) if len(url) <= _CACHEABLE else _url_host.__wrapped__(url)


@functools.lru_cache(maxsize=4096)
def _url_host(url: str) -> str:
    parts = _split_url(url)
    if parts is None or not parts.netloc or _BAD_NETLOC.search(parts.netloc):
        return ""
    try:
        parts.port  # noqa: B018 - evaluated only to reject "host:abc" and "host:99999"
    except ValueError:
        return ""
    host = parts.hostname or ""  # already lower-cased, userinfo and brackets stripped
    if "[" in parts.netloc:
        # IPv6 literal: urlsplit validated the brackets; keep the zone id ("fe80::1%25eth0").
        return host
    if host.endswith("."):
        host = host[:-1]
    if not host or _BAD_HOST.search(host):
        return ""
    return host


def url_scheme(url: str) -> str:
    """Lower-cased scheme of ``url`` (``https``, ``mailto``, …); ``""`` when there is none."""
    return _url_scheme(url) if len(url) <= _CACHEABLE else _url_scheme.__wrapped__(url)


@functools.lru_cache(maxsize=4096)
def _url_scheme(url: str) -> str:
    parts = _split_url(url)
    return "" if parts is None else parts.scheme


# --------------------------------------------------------------------------------------------------
# email.domain(address)
# --------------------------------------------------------------------------------------------------

_DOMAIN = re.compile(r"[^\s@<>()\[\],;:\\\"]+|\[[0-9A-Fa-f:.]+\]")


def email_domain(address: str) -> str:
    """Lower-cased domain of one e-mail address (``a@b.com`` or ``Name <a@b.com>``); ``""`` if none.

    Anything that holds more than one address (``a@x.com, b@y.com``, ``a@evil.com <b@acme.com>``)
    gives ``""``: picking one of them would let ``email.domain(to) == 'acme.com'`` be fooled.
    """
    return _email_domain(address) if len(address) <= _CACHEABLE else _email_domain.__wrapped__(address)


@functools.lru_cache(maxsize=1024)
def _email_domain(address: str) -> str:
    # The email header parser costs ~10 µs a call; recipients repeat across rules and requests.
    if "@" not in address:
        return ""
    try:
        pairs = getaddresses([address])
    except Exception:  # noqa: BLE001 - the email parser is not documented as total: fail to ""
        return ""
    if len(pairs) != 1:
        return ""
    local, at, domain = pairs[0][1].rpartition("@")
    if not at or not local:
        return ""
    if domain.endswith("."):
        domain = domain[:-1]
    if not _DOMAIN.fullmatch(domain):
        return ""
    return domain.lower()


# --------------------------------------------------------------------------------------------------
# net.in_cidr(ip, cidr)
# --------------------------------------------------------------------------------------------------

_Network = ipaddress.IPv4Network | ipaddress.IPv6Network


@functools.lru_cache(maxsize=1024)
def _network(cidr: str) -> _Network:
    # strict=False: "10.1.2.3/8" means 10.0.0.0/8, as in OPA's net.cidr_contains. Raises
    # ValueError for an invalid CIDR; lru_cache does not cache exceptions, so it re-raises each time.
    return ipaddress.ip_network(cidr.strip(), strict=False)


def net_in_cidr(ip: str, cidr: str) -> bool:
    """Whether the IPv4/IPv6 address ``ip`` is inside ``cidr``.

    An unparseable ``ip`` gives false; an invalid ``cidr`` raises ``ValueError`` (a policy bug,
    surfaced as a CEL evaluation error). An IPv4-mapped IPv6 address (``::ffff:10.0.0.1``) is
    also tested as its IPv4 address, because that is where a dual-stack client connects.
    """
    network = _network(cidr) if len(cidr) <= _CACHEABLE else _network.__wrapped__(cidr)
    try:
        address = ipaddress.ip_address(ip.strip())
    except ValueError:
        return False
    if address.version != network.version:
        mapped = getattr(address, "ipv4_mapped", None)
        return mapped is not None and mapped in network
    return address in network


# --------------------------------------------------------------------------------------------------
# CEL declarations
# --------------------------------------------------------------------------------------------------


def declarations() -> list[cel.FunctionDecl]:
    """The function declarations (with implementations) to pass as ``functions=`` to ``cel.NewEnv``.

    All functions are global (called as ``path.within(p, root)``, not ``p.within(root)``); the
    dotted names are plain function names, not fields. Parameters are typed ``string`` so that a
    literal of another type is a type-check error, while a ``dyn`` JSON value (``tool.args.path``)
    type-checks and is dispatched at run time: a non-string there is a "no matching overload"
    evaluation error.
    """
    string, boolean = cel.Type.STRING, cel.Type.BOOL
    strings = cel.Type.List(cel.Type.STRING)
    json_map = cel.Type.Map(cel.Type.STRING, cel.Type.DYN)
    json_list = cel.Type.List(cel.Type.DYN)

    def decl(
        name: str, result: cel.Type, params: list[cel.Type], impl: Callable[..., Any]
    ) -> cel.FunctionDecl:
        # Overload ids must be unique in an environment: name plus parameter types, CEL style.
        overload_id = name.replace(".", "_") + "_string" * len(params)
        return cel.FunctionDecl(name, [cel.Overload(overload_id, result, params, impl=impl)])

    def scan_decl(name: str, result: cel.Type, impl: Callable[..., Any]) -> cel.FunctionDecl:
        # Secrets also scan a whole JSON value (`secrets.found(tool.args)`).
        prefix = name.replace(".", "_")
        return cel.FunctionDecl(
            name,
            [
                cel.Overload(f"{prefix}_string", result, [string], impl=impl),
                cel.Overload(f"{prefix}_map", result, [json_map], impl=impl),
                cel.Overload(f"{prefix}_list", result, [json_list], impl=impl),
            ],
        )

    return [
        decl("glob", boolean, [string, string], glob),
        decl("path.within", boolean, [string, string], path_within),
        decl("url.host", string, [string], url_host),
        decl("url.scheme", string, [string], url_scheme),
        decl("email.domain", string, [string], email_domain),
        decl("net.in_cidr", boolean, [string, string], net_in_cidr),
        decl("shell.argv", strings, [string], shell_argv),
        decl("shell.commands", strings, [string], shell_commands),
        scan_decl("secrets.found", boolean, secrets_found),
        scan_decl("secrets.kinds", strings, secrets_kinds),
    ]
