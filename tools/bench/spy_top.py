"""The top frames of a py-spy collapsed-stack file (`thread_cpu.py --spy`, or `py-spy record --format raw`).

    python tools/bench/spy_top.py /tmp/spy-C32.txt [--thread MainThread] [--top 30]

Self share (the frame at the top of the stack) and inclusive share (anywhere in the stack) of the
samples of the threads whose name contains --thread, largest first.
"""

from __future__ import annotations

import argparse
import collections
import sys
from pathlib import Path


def top(path: Path, thread: str) -> tuple[int, collections.Counter[str], collections.Counter[str]]:
    own: collections.Counter[str] = collections.Counter()
    inclusive: collections.Counter[str] = collections.Counter()
    total = 0
    for line in path.read_text().splitlines():
        stack, _, count = line.rstrip().rpartition(" ")
        if not stack or not count.isdigit():
            continue
        frames = stack.split(";")
        if thread not in frames[0]:
            continue
        n = int(count)
        total += n
        own[frames[-1]] += n
        for frame in set(frames[1:]):
            inclusive[frame] += n
    return total, own, inclusive


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("file", type=Path)
    ap.add_argument("--thread", default="MainThread")
    ap.add_argument("--top", type=int, default=30)
    args = ap.parse_args()
    total, own, inclusive = top(args.file, args.thread)
    if not total:
        print(f"no samples of a thread named like {args.thread!r} in {args.file}", file=sys.stderr)
        return 1
    print(f"{total} samples of {args.thread}")
    for title, counter in (("self", own), ("inclusive", inclusive)):
        print(f"--- {title}")
        for frame, n in counter.most_common(args.top):
            print(f"{n / total * 100:5.1f}%  {frame}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
