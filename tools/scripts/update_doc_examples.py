"""Run the marked console examples of one page and print (or, with --write, store) their real output.

    .venv/bin/python tools/scripts/update_doc_examples.py README.md            # show what they print now
    .venv/bin/python tools/scripts/update_doc_examples.py README.md --write    # replace the shown output

Uses the same runner as tests/test_doc_examples.py (scratch folder, server, id mapping). After
--write, read the diff: a changed output is either a regression or a behaviour change to describe.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from tests.test_doc_examples import SERVER, ULID, blocks, scratch, start_server  # noqa: E402


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("page", help="README.md or docs/NAME.md")
    p.add_argument("--write", action="store_true", help="store the real output in the page")
    args = p.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="doc-examples-"))
    work = scratch(tmp)
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"}
    env.pop("DECIDER_SERVER", None)
    env.pop("DECIDER_ADDR", None)
    env.pop("DECIDER_TOKEN", None)
    page_blocks = blocks(args.page)
    srv = None
    if any("server" in b.options for b in page_blocks):
        extra = ["--tokens", str(work / "examples" / "tokens.yaml")] \
            if any("tokens" in b.options for b in page_blocks) else []
        srv = start_server(tmp, work / "policies", f"sqlite:///{work / 'decider.db'}", *extra)
    target = srv.target if srv else SERVER
    ids: dict[str, str] = {}
    rc = 0
    bodies: dict[int, list[str]] = {}
    try:
        for block in page_blocks:
            body: list[str] = []
            for command, expected in block.steps:
                for shown, real in ids.items():   # ids the page shows → this run's (stored that way)
                    command = command.replace(shown, real)
                cmd = command.replace(SERVER, target)
                if cmd.strip() == "echo $?":
                    out = f"{rc}\n"
                else:
                    done = subprocess.run(["bash", "-c", cmd], cwd=work, env=env, stdout=subprocess.PIPE,
                                          stderr=subprocess.STDOUT, text=True, timeout=120)
                    out, rc = done.stdout, done.returncode
                shown_out = out.replace(target, SERVER).replace(str(work) + "/", "")
                body += ["$ " + command, *shown_out.rstrip("\n").splitlines()]
                want = "\n".join(expected)
                if len(ULID.findall(want)) == len(ULID.findall(out)):
                    ids.update(zip(ULID.findall(want), ULID.findall(out), strict=True))
            bodies[block.line] = body
            print(f"--- {args.page}:{block.line}")
            print("\n".join(body))
    finally:
        if srv is not None:
            srv.stop()
    if args.write:
        path = ROOT / args.page
        lines = path.read_text(encoding="utf-8").splitlines()
        for start in sorted(bodies, reverse=True):
            end = start - 1
            while not lines[end].startswith("```"):
                end += 1
            lines[start - 1:end] = bodies[start]
        path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
