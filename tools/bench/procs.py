"""Process helpers the benchmarks share: a server started in its own process group is stopped with
its children, and never waited for without a bound."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess


def stop_group(proc: subprocess.Popen[bytes], timeout_s: float = 20.0, sig: int = signal.SIGTERM) -> None:
    """Send `sig` to `proc`'s process group (started with `start_new_session=True`); SIGKILL it after
    `timeout_s` if it has not exited. A group already gone is not an error."""
    if proc.poll() is not None:
        return
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, sig)
    try:
        proc.wait(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=timeout_s)
