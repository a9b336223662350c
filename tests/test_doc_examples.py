"""Every README / docs command block *marked* as an example runs, and prints what the page shows
(issue 12, item 12).

A marked block is a ```console block whose previous line is an HTML comment:

    <!-- example -->                 offline: runs in a scratch folder holding copies of policies/ and examples/
    <!-- example: server -->         also a `decider serve` on that folder's policies/ (no tokens), its
                                     database the folder's decider.db (as `make run` writes it)
    <!-- example: server tokens -->  the same server with --tokens examples/tokens.yaml

Lines starting with `$ ` are commands (a trailing `\\` continues one), run one by one with bash,
from the scratch folder, with the virtualenv's `decider` on PATH — as a user who ran
`. .venv/bin/activate`. The other lines are the expected output (stdout and stderr together).
`127.0.0.1:50051` in a command is the test's server. Before comparing, both sides have decision
ids, times, hex revisions/key ids and `evalUs` replaced by placeholders; a decision id that the
page shows in one output and uses in a later command is mapped to the real one. Blocks of one page
share the scratch folder and the server, in page order. Unmarked blocks are not touched.
`tools/scripts/update_doc_examples.py PAGE [--write]` shows (or stores) what the examples print now.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

from .helpers import ROOT, start_server

PAGES = ["README.md", *sorted(p.relative_to(ROOT).as_posix() for p in (ROOT / "docs").glob("*.md"))]
MARKER = re.compile(r"^<!--\s*example(?::\s*([\w ]+?))?\s*-->\s*$")
ULID = re.compile(r"\b[0-9A-HJKMNP-TV-Z]{26}\b")
_NORMALISE = [
    (re.compile(r"\d{4}-\d{2}-\d{2}[T ]\d{2}:\d{2}:\d{2}(?:\.\d+)?(?:Z|[+-]\d{2}:\d{2})?"), "<TIME>"),
    (re.compile(r'"evalUs": "\d+"'), '"evalUs": "<N>"'),
    (re.compile(r"\b[0-9a-f]{12,64}\b"), "<HEX>"),
]
SERVER = "127.0.0.1:50051"


@dataclass
class Block:
    page: str
    line: int
    options: set[str]
    steps: list[tuple[str, list[str]]]    # (command, expected output lines)


def blocks(page: str) -> list[Block]:
    lines = (ROOT / page).read_text(encoding="utf-8").splitlines()
    found: list[Block] = []
    for i, line in enumerate(lines):
        m = MARKER.match(line)
        if not m or i + 1 >= len(lines) or lines[i + 1].strip() != "```console":
            continue
        body: list[str] = []
        for raw in lines[i + 2:]:
            if raw.startswith("```"):
                break
            body.append(raw)
        steps: list[tuple[str, list[str]]] = []
        cont = False
        for raw in body:
            if cont:
                steps[-1] = (steps[-1][0] + "\n" + raw, [])
                cont = raw.endswith("\\")
            elif raw.startswith("$ "):
                steps.append((raw[2:], []))
                cont = raw.endswith("\\")
            elif steps:
                steps[-1][1].append(raw)
        found.append(Block(page, i + 3, set((m.group(1) or "").split()), steps))
    return found


def normalise(text: str, tmp: Path, target: str) -> str:
    text = text.replace(str(tmp) + "/", "").replace(target, SERVER)
    text = ULID.sub("<ID>", text)
    for pattern, repl in _NORMALISE:
        text = pattern.sub(repl, text)
    return "\n".join(line.rstrip() for line in text.strip("\n").splitlines())


def scratch(tmp: Path) -> Path:
    work = tmp / "work"
    work.mkdir()
    for folder in ("policies", "examples"):
        shutil.copytree(ROOT / folder, work / folder)
    return work


EXAMPLE_PAGES = [p for p in PAGES if blocks(p)]


def test_the_pages_have_marked_examples() -> None:
    assert {"README.md", "docs/controls.md", "docs/bundles.md", "docs/functions.md"} <= set(EXAMPLE_PAGES)


@pytest.mark.parametrize("page", EXAMPLE_PAGES)
def test_marked_examples_print_what_the_page_shows(page: str, tmp_path: Path) -> None:
    work = scratch(tmp_path)
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",
           "COLUMNS": "200"}
    env.pop("DECIDER_SERVER", None)
    env.pop("DECIDER_ADDR", None)
    env.pop("DECIDER_TOKEN", None)
    env.pop("DECIDER_BINDING_KEY", None)   # as a user has it: a page's `decider serve` must say how it keys
    page_blocks = blocks(page)
    srv = None
    if any("server" in b.options for b in page_blocks):
        extra = ["--tokens", str(work / "examples" / "tokens.yaml")] \
            if any("tokens" in b.options for b in page_blocks) else []
        # the database is the scratch folder's decider.db, as `make run` writes it: `decider log --db decider.db`
        srv = start_server(tmp_path, work / "policies", f"sqlite:///{work / 'decider.db'}", *extra)
    target = srv.target if srv else SERVER
    ids: dict[str, str] = {}
    last_rc = 0
    try:
        for block in page_blocks:
            for command, expected in block.steps:
                cmd = command.replace(SERVER, target)
                for shown, real in ids.items():
                    cmd = cmd.replace(shown, real)
                if cmd.strip() == "echo $?":
                    out = f"{last_rc}\n"
                else:
                    done = subprocess.run(["bash", "-c", cmd], cwd=work, env=env, stdout=subprocess.PIPE,
                                          stderr=subprocess.STDOUT, text=True, timeout=120)
                    out, last_rc = done.stdout, done.returncode
                want = "\n".join(expected)
                where = f"{page}:{block.line}: $ {command}"
                assert normalise(out, work, target) == normalise(want, work, target), where
                shown_ids, real_ids = ULID.findall(want), ULID.findall(out)
                if len(shown_ids) == len(real_ids):
                    ids.update(zip(shown_ids, real_ids, strict=True))
    finally:
        if srv is not None:
            srv.stop()
