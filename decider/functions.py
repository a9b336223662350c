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
import shlex
from collections.abc import Callable
from email.utils import getaddresses
from typing import Any
from urllib.parse import SplitResult, urlsplit

from cel_expr_python import cel

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


# Caches are keyed by the argument string. Longer arguments (a 1 MiB command line, say) are computed
# without caching, so that 1024 cache entries cannot pin gigabytes of agent-supplied text.
_CACHEABLE = 4096


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
# shell.argv(command)
# --------------------------------------------------------------------------------------------------

SHELL_PARSE_LIMIT = 64 * 1024
"""Command lines longer than this (characters) are not parsed; see shell_argv and shell_commands."""


@functools.lru_cache(maxsize=1024)
def _argv(command: str) -> tuple[str, ...]:
    # shlex is pure Python (~50 µs for a 60-character line) and several rules often split the same
    # command in one request, so parses are cached; callers get a fresh list.
    try:
        return tuple(shlex.split(command))
    except ValueError:
        # Unbalanced quotes ("No closing quotation") or a trailing backslash: the shell would refuse
        # the line too, but a policy still needs words to look at.
        return tuple(command.split())


def shell_argv(command: str) -> list[str]:
    """POSIX shell word splitting (``shlex.split``): quotes and backslashes removed, no expansion.

    If the quotes do not balance, or the line is longer than 64 KiB (shlex costs ~1 µs a
    character), falls back to splitting on whitespace (quotes kept).
    """
    if len(command) > SHELL_PARSE_LIMIT:
        return command.split()
    return list(_argv(command) if len(command) <= _CACHEABLE else _argv.__wrapped__(command))


# --------------------------------------------------------------------------------------------------
# shell.commands(command)
# --------------------------------------------------------------------------------------------------

# One token per match. Order matters: process substitution before plain redirections, longer
# operators before their prefixes.
_SHELL_TOKEN = re.compile(
    r"""
    (?P<blank>[ \t\r\f\v]+)
  | (?P<newline>\n)
  | (?P<procsub>[<>]\()
  | (?P<op>&&|\|\||;;&?|;&|\|&|&>>?|<<<|<<-?|>>|>&|<&|>\||<>|[;&|()<>])
  | (?P<plain>[^\s'"\\$`;&|()<>]+)
  | (?P<squote>'[^']*'?)
  | (?P<escape>\\(?:.|\n)?)
  | (?P<dquote>")
  | (?P<dollar>\$)
  | (?P<backtick>`)
    """,
    re.VERBOSE,
)
_DQUOTE_CHUNK = re.compile(r'[^"\\$`]+|\\(?:.|\n)?|[$`]')
_SEPARATORS = frozenset({";", "&", "&&", "||", "|", "|&", ";;", ";;&", ";&", "\n", "(", ")"})
_REDIRECTS = frozenset({"<", ">", ">>", "<<", "<<-", "<<<", ">&", "<&", ">|", "<>", "&>", "&>>"})
# Reserved words after which the next word is again a command (`if rm x; then …`).
_RESERVED = frozenset(
    {"!", "{", "}", "if", "then", "else", "elif", "fi", "do", "done", "while", "until", "esac"}
)
# Compound commands whose words up to the next separator are not a command (`for f in a b; do`).
_SKIP_SEGMENT = frozenset({"for", "select", "case", "in"})
_ASSIGNMENT = re.compile(r"[A-Za-z_][A-Za-z0-9_]*(?:\[[^\]]*\])?\+?=")
_BRACE_ALTERNATIVES = re.compile(r"\{([^{},]*),[^{}]*\}")
_ANSI_C_ESCAPE = re.compile(r"\\(x[0-9A-Fa-f]{1,2}|u[0-9A-Fa-f]{1,4}|U[0-9A-Fa-f]{1,8}|[0-7]{1,3}|.)", re.S)
_ANSI_C_SIMPLE = {
    "n": "\n",
    "t": "\t",
    "r": "\r",
    "a": "\a",
    "b": "\b",
    "e": "\x1b",
    "E": "\x1b",
    "f": "\f",
    "v": "\v",
    "\\": "\\",
    "'": "'",
    '"': '"',
    "?": "?",
}
# Programs that run the rest of their arguments as a command. Value: (short options that take an
# argument, long options that take an argument, number of positional words before the command).
_WRAPPERS: dict[str, tuple[str, frozenset[str], int]] = {
    "sudo": (
        "CDgpRrTtUu",
        frozenset(
            {
                "--chdir",
                "--close-from",
                "--chroot",
                "--command-timeout",
                "--group",
                "--host",
                "--other-user",
                "--prompt",
                "--role",
                "--type",
                "--user",
            }
        ),
        0,
    ),
    "doas": ("Cu", frozenset(), 0),
    "env": ("CSu", frozenset({"--chdir", "--split-string", "--unset"}), 0),
    "command": ("", frozenset(), 0),
    "builtin": ("", frozenset(), 0),
    "exec": ("a", frozenset(), 0),
    "nohup": ("", frozenset(), 0),
    "busybox": ("", frozenset(), 0),
    "nice": ("n", frozenset({"--adjustment"}), 0),
    "time": ("fo", frozenset({"--format", "--output"}), 0),
    "timeout": ("ks", frozenset({"--kill-after", "--signal"}), 1),
    "stdbuf": ("eio", frozenset({"--error", "--input", "--output"}), 0),
    "xargs": (
        "adEILnPs",
        frozenset(
            {
                "--arg-file",
                "--delimiter",
                "--max-args",
                "--max-chars",
                "--max-lines",
                "--max-procs",
                "--process-slot-var",
            }
        ),
        0,
    ),
}
_SHELLS = frozenset({"sh", "bash", "dash", "zsh", "ksh", "mksh", "ash"})
_MAX_NESTING = 16  # $( $( … ) ) levels parsed; deeper text is over-reported word by word


class _Word:
    """One shell word: its text after quote removal, and the command texts it substitutes."""

    __slots__ = ("parts", "quoted", "subs")

    def __init__(self) -> None:
        self.parts: list[str] = []  # joined on demand: `str +=` on an attribute is quadratic
        self.subs: list[str] = []
        self.quoted = False

    @property
    def text(self) -> str:
        return "".join(self.parts)


def _balanced(text: str, start: int, open_: str, close: str) -> int:
    """Index just past the `close` that matches an `open_` already consumed before `start`.

    Skips quoted text so that `$(echo ")")` finds the right parenthesis; runs to the end of the
    text when unbalanced (the shell would reject the line; the policy still sees the inside).
    """
    depth, i, n = 1, start, len(text)
    while i < n:
        ch = text[i]
        if ch == "\\":
            i += 2
            continue
        if ch == "'":
            end = text.find("'", i + 1)
            i = n if end < 0 else end + 1
            continue
        if ch == '"':
            i += 1
            while i < n and text[i] != '"':
                i += 2 if text[i] == "\\" else 1
            i += 1
            continue
        if ch == open_:
            depth += 1
        elif ch == close:
            depth -= 1
            if depth == 0:
                return i + 1
        i += 1
    return n


def _ansi_c(body: str) -> str:
    # $'\x72\x6d' is "rm": decode it, or a policy would see a harmless-looking name.
    def replace(match: re.Match[str]) -> str:
        esc = match.group(1)
        if esc[0] in "xuU":
            return chr(min(int(esc[1:], 16), 0x10FFFF))
        if esc[0] in "01234567":
            return chr(int(esc, 8) & 0xFF)
        return _ANSI_C_SIMPLE.get(esc, "\\" + esc)

    return _ANSI_C_ESCAPE.sub(replace, body)


def _read_dollar(text: str, i: int, word: _Word) -> int:
    """Consume what follows a `$` at `i` (just past it); return the new position."""
    if text.startswith("((", i):  # $(( arithmetic )): no commands inside
        end = _balanced(text, i + 1, "(", ")")
        word.parts.append(text[i - 1 : end])
        return end
    if text.startswith("(", i):  # $( command substitution )
        end = _balanced(text, i + 1, "(", ")")
        word.subs.append(text[i + 1 : end - 1] if text[end - 1 : end] == ")" else text[i + 1 : end])
        word.parts.append(text[i - 1 : end])
        return end
    if text.startswith("{", i):  # ${parameter}
        end = _balanced(text, i + 1, "{", "}")
        word.parts.append(text[i - 1 : end])
        return end
    if text.startswith("'", i):  # $'ANSI-C quoted'
        end = text.find("'", i + 1)
        end = len(text) if end < 0 else end
        word.parts.append(_ansi_c(text[i + 1 : end]))
        word.quoted = True
        return end + 1
    word.parts.append("$")
    return i


def _read_backtick(text: str, i: int, word: _Word) -> int:
    end = i
    while end < len(text) and text[end] != "`":
        end += 2 if text[end] == "\\" else 1
    word.subs.append(text[i:end])
    word.parts.append(text[i - 1 : end + 1])
    return end + 1


def _read_dquote(text: str, i: int, word: _Word, heredoc: bool = False) -> int:
    """Read a double-quoted string (or, with `heredoc`, an unquoted here-document body to the end)."""
    word.quoted = True
    n = len(text)
    while i < n:
        if text[i] == '"' and not heredoc:
            return i + 1
        chunk = _DQUOTE_CHUNK.match(text, i)
        assert chunk is not None  # the pattern matches any character
        piece = chunk.group()
        i = chunk.end()
        if piece == "$":
            i = _read_dollar(text, i, word)
        elif piece == "`":
            i = _read_backtick(text, i, word)
        elif piece[0] == "\\":
            # Inside double quotes a backslash only escapes $ ` " \ and newline.
            nxt = piece[1:]
            word.parts.append(nxt if nxt in ("$", "`", '"', "\\") else ("" if nxt == "\n" else piece))
        else:
            word.parts.append(piece)
    return n


def _skip_heredocs(text: str, i: int, pending: list[tuple[_Word, bool]]) -> int:
    """Skip the here-document bodies that start at `i` (just past a newline); return the new position.

    Body lines are data, not commands; but an unquoted delimiter (`<<EOF`, not `<<'EOF'`) lets
    `$(…)` and backticks in the body run, so those are attached to the delimiter word.
    """
    for delimiter, strip_tabs in pending:
        start = i
        while i < len(text):
            end = text.find("\n", i)
            end = len(text) if end < 0 else end
            line = text[i:end]
            i = end + 1
            if (line.lstrip("\t") if strip_tabs else line) == delimiter.text:
                break
        if not delimiter.quoted:
            body = _Word()
            _read_dquote(text[start:i], 0, body, heredoc=True)
            delimiter.subs.extend(body.subs)
    pending.clear()
    return min(i, len(text))


def _tokens(text: str) -> list[_Word | str]:
    """Split a command line into words (``_Word``) and operators (``str``)."""
    out: list[_Word | str] = []
    word: _Word | None = None
    heredocs: list[tuple[_Word, bool]] = []  # delimiter words whose bodies start at the next newline
    heredoc_op = ""  # "<<" or "<<-" just seen: the next word is its delimiter
    i, n = 0, len(text)
    while i < n:
        match = _SHELL_TOKEN.match(text, i)
        assert match is not None  # every character starts one of the alternatives
        kind, value, i = match.lastgroup, match.group(), match.end()
        if heredoc_op and word is not None and kind in ("blank", "newline", "op", "procsub"):
            heredocs.append((word, heredoc_op == "<<-"))
            heredoc_op = ""
        if kind == "escape" and value == "\\\n":
            continue  # a line continuation is removed: it neither ends nor starts a word
        if kind == "blank":
            word = None
        elif kind == "newline" and heredocs:
            out.append(value)
            word = None
            i = _skip_heredocs(text, i, heredocs)
        elif kind in ("newline", "op", "procsub"):
            if kind == "procsub":  # <(cmd) / >(cmd): a word whose inside runs
                end = _balanced(text, i, "(", ")")
                if word is None:
                    word = _Word()
                    out.append(word)
                word.subs.append(text[i : end - 1] if text[end - 1 : end] == ")" else text[i:end])
                word.parts.append(text[i - 2 : end])
                i = end
                continue
            if (
                value in _REDIRECTS
                and word is not None
                and not word.quoted
                and word.text.isdigit()
                and not word.subs
            ):
                out.pop()  # "2>": the digits are the redirected descriptor, not a word
            word = None
            out.append(value)
            if value in ("<<", "<<-"):
                heredoc_op = value
        else:
            if word is None:
                if kind == "plain" and value.startswith("#"):  # a comment runs to the newline
                    end = text.find("\n", i)
                    i = n if end < 0 else end
                    continue
                word = _Word()
                out.append(word)
            if kind == "plain":
                word.parts.append(value)
            elif kind == "squote":
                word.parts.append(value[1:-1] if len(value) > 1 and value.endswith("'") else value[1:])
                word.quoted = True
            elif kind == "escape":
                word.parts.append(value[1:])
                word.quoted = True
            elif kind == "dquote":
                i = _read_dquote(text, i, word)
            elif kind == "dollar":
                i = _read_dollar(text, i, word)
            else:  # backtick
                i = _read_backtick(text, i, word)
    return out


def _skip_options(words: list[str], i: int, short_args: str, long_args: frozenset[str]) -> int:
    """Index of the first word after the options (and their arguments) that start at `i`."""
    while i < len(words):
        word = words[i]
        if word == "--":
            return i + 1
        if not word.startswith("-") or word == "-":
            return i
        if word.startswith("--"):
            i += 2 if word in long_args else 1
            continue
        # A short cluster like "-Eu": if an option taking an argument ends it, the next word is
        # that argument; if it is followed by more letters ("-uroot"), they are the argument.
        i += 1
        for pos, letter in enumerate(word[1:], start=1):
            if letter in short_args:
                if pos == len(word) - 1:
                    i += 1
                break
    return i


def _program(name: str) -> str:
    # `{rm,-rf,/}` brace-expands to `rm -rf /`; `/bin/rm` and `./rm` run rm.
    if "{" in name:
        name = _BRACE_ALTERNATIVES.sub(lambda m: m.group(1), name, count=1)
    base = name.rsplit("/", 1)[-1]
    return base or name


def _is_plain(word: _Word, text: str) -> bool:
    return not word.quoted and word.text == text


def _substitutions(words: list[_Word], depth: int, out: list[str]) -> None:
    for word in words:
        for sub in word.subs:
            _commands_into(sub, depth + 1, out)


def _simple_command(words: list[_Word], depth: int, out: list[str]) -> None:
    """Append the program(s) that one simple command runs, then those of its substitutions."""
    texts = [w.text for w in words]
    i = 0
    while i < len(texts):
        # Leading reserved words, assignments and the function keyword do not run anything.
        text = texts[i]
        if not words[i].quoted and (text in _RESERVED or _ASSIGNMENT.match(text)):
            i += 1
        elif not words[i].quoted and text == "function":
            i += 2
        else:
            break
    if i < len(texts) and not words[i].quoted and texts[i] in _SKIP_SEGMENT:
        i = len(texts)
    wrapper = ""
    while i < len(texts):
        name = _program(texts[i])
        spec = _WRAPPERS.get(name)
        if spec is None:
            break
        wrapper = name
        i = _skip_options(texts, i + 1, spec[0], spec[1]) + spec[2]
        while i < len(texts) and _ASSIGNMENT.match(texts[i]):  # `env A=1 cmd`, `sudo A=1 cmd`
            i += 1
    if i < len(texts):
        name = _program(texts[i])
        out.append(name)
        if name in _SHELLS or name == "eval":
            _nested_script(name, texts[i + 1 :], depth, out)
    elif wrapper:
        out.append(wrapper)  # `sudo -i`, `env`: the wrapper itself is the program
    _substitutions(words, depth, out)


_SHELL_OPTIONS_WITH_ARGUMENT = frozenset({"-o", "+o", "-O", "+O", "--rcfile", "--init-file"})


def _nested_script(name: str, args: list[str], depth: int, out: list[str]) -> None:
    # `bash -c "rm -rf /"` and `eval "rm -rf /"` run their argument as a script: parse it too.
    if name == "eval":
        _commands_into(" ".join(args), depth + 1, out)
        return
    run_string = skip = False
    for pos, arg in enumerate(args):
        if skip:
            skip = False
        elif arg in _SHELL_OPTIONS_WITH_ARGUMENT:
            skip = True  # `bash -o pipefail -c …`
        elif arg == "--":
            if run_string and pos + 1 < len(args):
                _commands_into(args[pos + 1], depth + 1, out)
            return
        elif arg.startswith(("-", "+")) and arg not in ("-", "+"):
            # `-c`, `-ec`, `-lc`: the first operand is the script; `--login` and `+e` are not -c.
            run_string = run_string or (arg[0] == "-" and not arg.startswith("--") and "c" in arg)
        else:
            if run_string:
                _commands_into(arg, depth + 1, out)
            return


def _commands_into(text: str, depth: int, out: list[str]) -> None:
    if depth > _MAX_NESTING:
        out.extend(_every_word(text))
        return
    words: list[_Word] = []
    redirect_target = False
    # "test": inside `[[ … ]]`, where && || < > are operators of the test, not separators.
    # "pattern": a `case` pattern up to its `)`, which is not a command (`a|b) rm;;`).
    mode = ""
    for token in _tokens(text):
        if isinstance(token, str):
            if mode == "test":
                continue
            if token in _REDIRECTS:
                redirect_target = True
                continue
            redirect_target = False
            if mode == "pattern":
                if token == ")":
                    _substitutions(words, depth, out)
                    words, mode = [], ""
                continue
            if words:
                case = _is_plain(words[0], "case")
                _simple_command(words, depth, out)
                if case and token != ")":
                    mode = "pattern"  # `case x in` + newline: the first pattern follows
            words = []
            if token in (";;", ";&", ";;&"):
                mode = "pattern"
            continue
        if redirect_target:
            # `> file`, `2>&1`: the target is not a command word, but may substitute one.
            redirect_target = False
            _substitutions([token], depth, out)
            continue
        if mode == "test":
            if _is_plain(token, "]]"):
                mode = ""
            _substitutions([token], depth, out)
            continue
        if mode == "pattern" and not words and _is_plain(token, "esac"):
            mode = ""
        if (
            _is_plain(token, "[[")
            and mode != "pattern"
            and all(not w.quoted and w.text in _RESERVED for w in words)
        ):
            mode, words = "test", []
            continue
        words.append(token)
    if words and mode != "pattern":
        _simple_command(words, depth, out)
    else:
        _substitutions(words, depth, out)


@functools.lru_cache(maxsize=1024)
def _commands(command: str) -> tuple[str, ...]:
    out: list[str] = []
    _commands_into(command, 0, out)
    return tuple(out)


_FALLBACK_WORDS = re.compile(r"[^\s;&|()<>`$'\"{},]+")


def _every_word(text: str) -> list[str]:
    # For text too long or too nested to parse: every distinct word, as a program name. An
    # allow-list then rejects the line and a deny-list still finds the names in it.
    distinct = dict.fromkeys(_FALLBACK_WORDS.findall(text))
    return list(dict.fromkeys(_program(word) for word in distinct))


def shell_commands(command: str) -> list[str]:
    """Program names (basename of the first word) of every simple command in a shell line, in order.

    Splits on ``;``, ``&``, ``&&``, ``||``, ``|``, ``|&``, newlines and parentheses; skips leading
    ``VAR=x`` assignments, redirections, comments, here-document bodies, reserved words (``if``,
    ``then``, ``do``, ``!``, ``{`` …), ``case`` patterns and ``[[ … ]]`` tests, and wrappers that run
    their arguments (``sudo``, ``doas``, ``env``, ``command``, ``builtin``, ``exec``, ``nohup``,
    ``nice``, ``time``, ``timeout``, ``stdbuf``, ``xargs``, ``busybox``, with their options);
    descends into ``$(…)``, backticks, ``<(…)``/``>(…)``, ``sh|bash|zsh … -c SCRIPT`` and ``eval``.
    Quotes are removed (``\\rm`` and ``'r'm`` are ``rm``), ``$'\\x72m'`` is decoded and
    ``{rm,x}`` gives ``rm``. Names hidden in variables or globs (``$X``, ``/bin/r?``) are reported
    as written, so an allow-list (``shell.commands(c).all(p, p in [...])``) rejects them.

    A line longer than ``SHELL_PARSE_LIMIT`` is not parsed: every distinct word in it is reported,
    which an allow-list rejects and a deny-list still searches.
    """
    if len(command) > SHELL_PARSE_LIMIT:
        return _every_word(command)
    return list(_commands(command) if len(command) <= _CACHEABLE else _commands.__wrapped__(command))


# --------------------------------------------------------------------------------------------------
# secrets.found(text), secrets.kinds(text)
# --------------------------------------------------------------------------------------------------

SECRETS_SCAN_LIMIT = 1 << 20
"""Only the first 1 MiB (characters) of a text, or of all strings in a map/list, is scanned."""

# Longer keywords first: the keyword search below takes the first alternative that matches.
_SECRET_KEYWORDS = (
    r"password|passwd|passphrase|client[_-]?secret|secret[_-]?key|secret|api[_-]?key|access[_-]?key"
    r"|access[_-]?token|auth[_-]?token|refresh[_-]?token|token"
)
_WORD = "A-Za-z0-9_-"
_ALNUM = "A-Za-z0-9"
# One combined regex for the credential formats. Its shape is chosen for speed on large strings:
# every alternative starts with a literal character, so Python's regex engine jumps straight to
# candidate characters instead of trying each alternative at every position, and the "not glued
# to a longer word" look-behind sits right after that character, so a candidate in the middle of
# a word is dropped in O(1). Measured on 1 MiB: ordinary text and JSON 35–60 ms, adversarial
# input ("sk-sk-sk-…", "token: token: …") at most ~0.25 s; a naive alternation with leading
# look-behinds took 0.4 s on ordinary text and ~2 s on "sk-sk-sk-…". Short strings: a few µs.
# Groups are named k0, k1, … after their index in this table, which gives the kind.
_CREDENTIAL_ALTERNATIVES: tuple[tuple[str, str, str, str], ...] = (
    # (kind, first character, characters that must not precede it, rest of the pattern)
    ("private_key", "-", "", r"----BEGIN[ A-Z0-9]{0,40}PRIVATE KEY(?: BLOCK)?-----"),
    ("aws_access_key_id", "A", "A-Z0-9", r"(?:KIA|SIA)[A-Z0-9]{16}(?![A-Z0-9])"),
    ("google_api_key", "A", _WORD, rf"Iza[{_WORD}]{{35}}(?![{_WORD}])"),
    ("github_token", "g", _ALNUM + "_", r"h[pousr]_[A-Za-z0-9]{36,255}(?![A-Za-z0-9_])"),
    ("github_token", "g", _ALNUM + "_", r"ithub_pat_[A-Za-z0-9_]{22,255}(?![A-Za-z0-9_])"),
    ("slack_token", "x", _ALNUM, r"ox[abprs]-[A-Za-z0-9-]{10,250}"),
    ("stripe_key", "s", _ALNUM, r"k_live_[A-Za-z0-9]{16,247}"),
    ("stripe_key", "r", _ALNUM, r"k_live_[A-Za-z0-9]{16,247}"),
    ("anthropic_api_key", "s", _WORD, rf"k-ant-[{_WORD}]{{20,300}}"),
    # OpenAI keys (sk-…, sk-proj-…) need a digit, so that a kebab-case slug is not a key.
    ("openai_api_key", "s", _WORD, rf"k-(?!ant-)(?=[A-Za-z_-]{{0,300}}[0-9])[{_WORD}]{{20,300}}"),
    ("jwt", "e", _WORD, rf"yJ[{_WORD}]{{8,4096}}\.eyJ[{_WORD}]{{8,8192}}\.[{_WORD}]{{0,4096}}"),
    # user:password@ in a URL (`postgres://app:pw@db/x`); anchored on "://", the scheme is irrelevant.
    ("url_credentials", ":", "", r"//[^\s/:@]{1,256}:(?P<url_password>[^\s/@]{3,256})@"),
)
_CREDENTIALS = re.compile(
    "|".join(
        re.escape(first)
        + (f"(?<![{not_after}]{re.escape(first)})" if not_after else "")
        + f"(?P<k{index}>{rest})"
        for index, (_, first, not_after, rest) in enumerate(_CREDENTIAL_ALTERNATIVES)
    )
)
_KIND_OF_GROUP: dict[str, str] = {f"k{i}": kind for i, (kind, *_) in enumerate(_CREDENTIAL_ALTERNATIVES)}
# `password=…`-style assignments, found in two steps on the lower-cased text (case-insensitive
# without IGNORECASE, which would disable the jump to candidate characters): the keyword, which
# must not be the tail of a longer word ("mypassword") but may follow "_" or "-" ("db_password",
# "x-api-key"), then the assignment right after it.
_SECRET_KEYWORD = re.compile(_SECRET_KEYWORDS)
_ASSIGNED_VALUE = re.compile(r"[\"']?[ \t]*(?:=>|=|:)[ \t]*[\"']?([^\s\"'`,;&]{8,256})")
_SECRET_KEY = re.compile(rf"(?i:(?:.*[^a-z0-9])?(?:{_SECRET_KEYWORDS}))")
SECRET_KINDS: tuple[str, ...] = (
    "anthropic_api_key",
    "aws_access_key_id",
    "generic_secret",
    "github_token",
    "google_api_key",
    "jwt",
    "openai_api_key",
    "private_key",
    "slack_token",
    "stripe_key",
    "url_credentials",
)
"""Every kind ``secrets.kinds`` can report."""

# Values that are obviously not a real secret: templating, redaction, documentation.
_PLACEHOLDER_START = tuple("$%{<*[(")
_PLACEHOLDERS = frozenset(
    {
        "null",
        "none",
        "undefined",
        "redacted",
        "placeholder",
        "example",
        "password",
        "secret",
        "changeit",
        "notasecret",
    }
)
_LOWER_ALNUM = frozenset("abcdefghijklmnopqrstuvwxyz0123456789")


def _is_placeholder(value: str) -> bool:
    return (
        value.startswith(_PLACEHOLDER_START)
        or len(set(value)) == 1
        or value.strip("<>[](){}").lower() in _PLACEHOLDERS
    )


def _scan(text: str, first_only: bool) -> set[str]:
    if len(text) > SECRETS_SCAN_LIMIT:
        text = text[:SECRETS_SCAN_LIMIT]
    found: set[str] = set()
    pos = 0
    while match := _CREDENTIALS.search(text, pos):
        password = match.group("url_password")
        if password is not None and _is_placeholder(password):
            pos = match.start() + 1
            continue
        found.add(_KIND_OF_GROUP[match.lastgroup or ""])
        if first_only:
            return found
        pos = match.end()
    lowered = text.lower()
    pos = 0
    while keyword := _SECRET_KEYWORD.search(lowered, pos):
        start, pos = keyword.start(), keyword.start() + 1
        if start and lowered[start - 1] in _LOWER_ALNUM:
            continue
        assigned = _ASSIGNED_VALUE.match(lowered, keyword.end())
        if assigned is None:
            continue
        if not _is_placeholder(assigned.group(1)):
            found.add("generic_secret")
            break
        pos = assigned.end()  # the rest of a `${…}`/`****` value is not a fresh assignment
    return found


def _strings(value: Any) -> str:
    """All strings in a CEL map/list (a JSON value), ``key=value`` for map entries, up to the limit.

    Rendering ``{"password": "hunter2hunter"}`` as ``password=hunter2hunter`` lets the generic
    assignment pattern see key/value pairs that are never written out as text.
    """
    parts: list[str] = []
    budget = SECRETS_SCAN_LIMIT
    stack: list[Any] = [value]
    while stack and budget > 0:
        item = stack.pop()
        if isinstance(item, str):
            parts.append(item)
            budget -= len(item) + 1
        elif isinstance(item, dict):
            for key, child in item.items():
                if isinstance(child, str) and isinstance(key, str):
                    entry = f"{key}={child}" if _SECRET_KEY.fullmatch(key) else child
                    parts.append(entry)
                    budget -= len(entry) + 1
                else:
                    stack.append(child)
        elif isinstance(item, list):
            stack.extend(reversed(item))
    return "\n".join(parts)  # no pattern spans a newline, so strings never run together


def _text_of(value: str | dict[Any, Any] | list[Any]) -> str:
    return value if isinstance(value, str) else _strings(value)


def secrets_found(value: str | dict[Any, Any] | list[Any]) -> bool:
    """Whether the text (or any string inside a map/list) looks like it holds a credential."""
    return bool(_scan(_text_of(value), first_only=True))


def secrets_kinds(value: str | dict[Any, Any] | list[Any]) -> list[str]:
    """The kinds of credential found (sorted, each once); see ``SECRET_KINDS``."""
    return sorted(_scan(_text_of(value), first_only=False))


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
