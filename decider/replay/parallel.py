"""Replay on several cores: forked workers evaluate the calls, the caller gets them back in order.

Why fork, and why this shape: sending calls to worker processes costs more than evaluating them
(a pickled `TraceCall` is as dear as a decision; a reading process feeding workers through pipes
was measured no faster than one process). Here the calls are read first, a window at a time, and
then the workers are forked: each inherits the window (copy-on-write, nothing is sent) and
evaluates every `workers`-th chunk of it with the same `engine.decide` the server uses. Only the
small result of each call (outcome, rule, reason, matched rules) comes back, one pickled chunk at
a time, and the parent yields the results in input order as the chunks arrive, so a progress line
and streamed output keep moving. Results are exactly those of a serial replay (tests check this).

Fork is used only where the platform has it; a worker that fails sends its exception back and the
parent re-raises it, and a caller that stops early has its workers killed and reaped.
"""

from __future__ import annotations

import contextlib
import gc
import os
import pickle
import signal
import sys
import traceback
from collections.abc import Callable, Iterable, Iterator, Sequence
from itertools import islice
from typing import IO, Any, TypeVar

__all__ = ["available_cpus", "can_fork", "default_workers", "map_forked"]

T = TypeVar("T")
R = TypeVar("R")

# Calls read ahead and shared with one generation of workers. Larger windows amortise the fork
# (a few ms for a big heap); smaller ones bound memory on huge inputs.
WINDOW = 65_536
# Calls per message from a worker: big enough that pickling is per-chunk, small enough that the
# parent can start yielding (and the progress line move) soon after the workers start.
CHUNK = 512
# Below this a window is evaluated in the caller: forking would cost more than it saves.
MIN_FORKED = 2_048
# Room in each pipe for many chunks, so a worker is not held up while the parent is busy.
_PIPE_BYTES = 1 << 20
_HEADER = 9  # 8-byte length + 1 kind byte
_OK, _ERROR = b"r", b"e"


def can_fork() -> bool:
    return hasattr(os, "fork") and sys.platform.startswith("linux")


def available_cpus() -> int:
    """CPUs this process may run on (its affinity mask, not the machine's count)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - not Linux
        return os.cpu_count() or 1


def default_workers() -> int:
    """`decider replay`'s default: one worker per CPU beyond the one the reading parent needs, and
    none (in-process) on fewer than 3 CPUs. Measured on the 2-vCPU development VM, 2 workers gave
    the best single runs (20.6k vs 18k calls/s) but no better median, at ~40 % more CPU per call:
    two busy processes there each run up to 2x slower than one alone (docs/performance.md)."""
    n = available_cpus()
    return n - 1 if n >= 3 and can_fork() else 1


def map_forked(fn: Callable[[T], R], items: Iterable[T], workers: int) -> Iterator[tuple[T, R]]:
    """(item, fn(item)) for every item, in order, with `fn` run in `workers` forked processes.

    `fn`'s results must pickle. Falls back to calling `fn` here when forking is unavailable, when
    `workers` < 2 or for a short input.
    """
    it = iter(items)
    while True:
        window: list[T] = []
        failure: BaseException | None = None
        try:
            for item in islice(it, WINDOW):
                window.append(item)
        except Exception as err:  # noqa: BLE001 - re-raised below, after the items read before it
            # As in a serial replay, every item before a failing read (a malformed trace file)
            # still gets its result before the error surfaces.
            failure = err
        if workers < 2 or len(window) < MIN_FORKED or not can_fork():
            for item in window:
                yield item, fn(item)
        elif window:
            yield from _window(fn, window, workers)
        if failure is not None:
            raise failure
        if len(window) < WINDOW:
            return


def _child(fn: Callable[[T], R], window: Sequence[T], first: int, step: int, out: IO[bytes]) -> int:
    """A worker's whole life: chunks first, first+step, … of the window, each sent when done."""
    # A short-lived process that builds nothing cyclic: a collection would only copy pages
    # shared with the parent (every object it walks gets written to).
    gc.disable()
    try:
        for c in range(first, (len(window) + CHUNK - 1) // CHUNK, step):
            results = [fn(item) for item in window[c * CHUNK:(c + 1) * CHUNK]]
            _send(out, _OK, pickle.dumps(results, pickle.HIGHEST_PROTOCOL))
            out.flush()  # now, not when the buffer fills: the parent yields (and merges) as chunks come
        return 0
    except BrokenPipeError:
        return 1  # the parent stopped reading: nobody to tell
    except BaseException as err:  # noqa: BLE001 - any failure must reach the parent, never be lost
        try:
            payload = pickle.dumps(err, pickle.HIGHEST_PROTOCOL)
            pickle.loads(payload)  # some exceptions pickle but do not unpickle
        except Exception:  # noqa: BLE001
            payload = pickle.dumps(RuntimeError("".join(traceback.format_exception(err))))
        with contextlib.suppress(OSError):
            _send(out, _ERROR, payload)
            out.flush()
        return 1


def _send(out: IO[bytes], kind: bytes, payload: bytes) -> None:
    out.write(len(payload).to_bytes(8, "little") + kind)
    out.write(payload)


def _receive(f: IO[bytes]) -> Any:
    header = f.read(_HEADER)
    if len(header) != _HEADER:
        raise RuntimeError("a replay worker exited without sending its results")
    n = int.from_bytes(header[:8], "little")
    payload = f.read(n)
    if len(payload) != n:
        raise RuntimeError("a replay worker exited in the middle of its results")
    value = pickle.loads(payload)
    if header[8:] == _ERROR:
        raise value
    return value


def _window(fn: Callable[[T], R], window: list[T], workers: int) -> Iterator[tuple[T, R]]:
    nchunks = (len(window) + CHUNK - 1) // CHUNK
    workers = min(workers, nchunks)
    procs: list[tuple[int, IO[bytes]]] = []
    finished = False
    # Flush before forking so nothing buffered here is written twice; a worker leaves by
    # os._exit and never flushes the parent's buffers itself.
    sys.stdout.flush()
    sys.stderr.flush()
    try:
        for w in range(workers):
            r, wfd = os.pipe()
            with contextlib.suppress(OSError, AttributeError):
                import fcntl

                fcntl.fcntl(wfd, fcntl.F_SETPIPE_SZ, _PIPE_BYTES)
            pid = os.fork()
            if pid == 0:  # the worker: never returns into the caller's code
                code = 1
                try:
                    os.close(r)
                    for _, f in procs:
                        f.close()
                    with os.fdopen(wfd, "wb", buffering=_PIPE_BYTES) as out:
                        code = _child(fn, window, w, workers, out)
                finally:
                    os._exit(code)
            os.close(wfd)
            procs.append((pid, os.fdopen(r, "rb", buffering=_PIPE_BYTES)))
        for c in range(nchunks):
            results = _receive(procs[c % workers][1])
            yield from zip(window[c * CHUNK:(c + 1) * CHUNK], results, strict=True)
        finished = True
    finally:
        # Normally every worker has sent everything and is exiting; after an error, or when the
        # caller stopped early, the ones still running are killed. Either way all are reaped.
        for pid, f in procs:
            f.close()
            if not finished:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
            with contextlib.suppress(ChildProcessError):
                os.waitpid(pid, 0)
