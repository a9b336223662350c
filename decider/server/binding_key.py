"""Where the args_hash key comes from: outside the database (issue 24 item 12).

`args_hash` is an HMAC of the call (agent, tool, arguments — masked ones included) under this key.
Kept in the database beside the hashes, anyone holding a copy of the database could try every
value of a masked argument (a 4-digit PIN in 0.07 s). So `decider serve` takes the key from a file
(`--binding-key-file`) or the environment (`DECIDER_BINDING_KEY`), as hex, at least 32 bytes, and
refuses to start without one unless `--dev` is given (then the key is the database's own, as in
earlier releases, with a warning).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from pathlib import Path

from decider.errors import InvalidRequest

__all__ = ["ENV", "MIN_BYTES", "resolve_binding_key", "parse_key"]

log = logging.getLogger("decider.server")

ENV = "DECIDER_BINDING_KEY"
MIN_BYTES = 32

_MISSING = (f"the args_hash key must come from outside the database: give --binding-key-file FILE or set "
            f"${ENV} ({2 * MIN_BYTES}+ hex characters, e.g. `openssl rand -hex 32`); --dev keeps it in "
            "the database (development only)")


def parse_key(text: str, where: str) -> bytes:
    """The key in `text` (hex, whitespace around it ignored); InvalidRequest naming `where` otherwise."""
    value = text.strip()
    try:
        key = bytes.fromhex(value)
    except ValueError:
        raise InvalidRequest(where, "is not hex (write the key as hex: `openssl rand -hex 32`)") from None
    if len(key) < MIN_BYTES:
        raise InvalidRequest(where, f"is {len(key)} bytes; the key must be at least {MIN_BYTES} bytes "
                                    f"({2 * MIN_BYTES} hex characters)")
    return key


def resolve_binding_key(file: str | None, dev: bool, environ: Mapping[str, str] = os.environ) -> bytes | None:
    """The key for `decider serve`: the file if given, else the environment; None only with `--dev`
    (the database's key). The file wins over the environment, so one host can run several."""
    if file:
        path = Path(file)
        try:
            text = path.read_text(encoding="ascii")
        except (OSError, UnicodeDecodeError) as e:
            raise InvalidRequest("--binding-key-file", f"cannot read {file}: {e}") from None
        if path.stat().st_mode & 0o077:
            log.warning("binding key file is readable by group or others", extra={"file": file})
        return parse_key(text, "--binding-key-file")
    if environ.get(ENV):
        return parse_key(environ[ENV], f"${ENV}")
    if dev:
        log.warning("--dev: the args_hash key is kept in the database; a copy of the database lets its "
                    "reader guess masked arguments")
        return None
    raise InvalidRequest("--binding-key-file", _MISSING)
