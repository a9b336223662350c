"""Shell command lines as policies see them: ``shell.argv`` (POSIX word splitting) and
``shell.commands`` (every program a line would run, through pipes, substitutions and nested shells).

Pure and cached like every CEL function (see ``decider.cel.functions``); odd input gives words, never
an exception.
"""

from __future__ import annotations

import functools
import re
import shlex

from decider.cel.cache import CACHEABLE as _CACHEABLE

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
