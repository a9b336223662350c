"""Value parsing shared by the readers: arguments, ids, timestamps, numbers, MCP names.

Real files break conventions (README "Recorded agent traces"): arguments arrive as a JSON string,
an object, a Python repr or wrapped; ids as hex or base64; times as ISO text or epoch numbers.
Each helper here either returns a clean value or says why it could not, and never guesses.
"""

from __future__ import annotations

import ast
import base64
import binascii
import json
import re
from datetime import datetime, timedelta, timezone
from pathlib import PurePath
from typing import Any

__all__ = [
    "json_loads",
    "parse_arguments",
    "decode_json_text",
    "normalize_id",
    "parse_time",
    "from_unix_nanos",
    "from_unix_micros",
    "to_int",
    "to_float",
    "split_mcp_name",
    "model_from_filename",
    "text_or_none",
]

_EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)
_HEX = re.compile(r"[0-9a-fA-F]+")
_raw_decode = json.JSONDecoder().raw_decode


def json_loads(text: str) -> Any:
    """`json.loads` for text that starts with its value: half the cost on the small strings the
    readers parse per call (arguments, JSONL lines), by skipping `loads`' checks and regexes."""
    value, end = _raw_decode(text)
    if end != len(text) and not text[end:].isspace():
        raise json.JSONDecodeError("Extra data", text, end)
    return value


def _kind(value: object) -> str:
    if isinstance(value, list):
        return "a JSON array"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, (int, float)):
        return "a number"
    return f"a {type(value).__name__}"


def decode_json_text(text: str) -> tuple[Any, str | None]:
    """Parse text holding JSON, or a Python literal repr as pydantic-ai and LiveMCPBench write them.

    Returns (value, None) or (None, reason). `ast.literal_eval` only builds literals, so a repr is
    read without ever executing it. A JSON string that itself holds JSON (double encoding, seen in
    Langfuse exports) is decoded once more.
    """
    s = text.strip()
    if not s:
        return None, "arguments are an empty string"
    try:
        value = json_loads(s)
    except ValueError as json_err:
        if s[0] not in "{[(":
            return None, f"arguments are not valid JSON ({json_err})"
        try:
            return ast.literal_eval(s), None
        except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError):
            return None, f"arguments are neither JSON nor a Python literal ({json_err})"
    if isinstance(value, str) and value.strip()[:1] in ("{", "["):
        inner, reason = decode_json_text(value)
        if reason is None:
            return inner, None
    return value, None


def _unwrap(args: dict[str, Any], unwrap_input: bool) -> dict[str, Any]:
    """Remove a one-key wrapper that an instrumentation put around the real arguments.

    `{"input_str": "..."}` is LangChain's and always a wrapper. `{"input": {...}}` is only a wrapper
    where the caller knows the instrumentation adds it (LangSmith / Claude Agent SDK): a real tool
    can take an argument named `input` (the C# agent's `final_result` does), so it is unwrapped
    only on request. The inner value must itself be an object, else the outer one is kept.
    """
    if len(args) != 1:
        return args
    key, inner = next(iter(args.items()))
    if key != "input_str" and not (unwrap_input and key == "input"):
        return args
    if isinstance(inner, str):
        inner, reason = decode_json_text(inner)
        if reason is not None:
            return args
    return inner if isinstance(inner, dict) else args


def parse_arguments(raw: object, *, unwrap_input: bool = False) -> tuple[dict[str, Any] | None, str | None]:
    """The call's arguments as a JSON object, or (None, why not)."""
    if raw is None:
        return None, "arguments absent from the trace"
    if type(raw) is str and raw[:1] == "{":
        # The usual case, a JSON object in a string: parsed directly, the general path below
        # handles everything else (and reports why this failed, if it did).
        try:
            value = json_loads(raw)
        except ValueError:
            value = None
        if type(value) is dict:
            return (_unwrap(value, unwrap_input) if len(value) == 1 else value), None
    value: Any = raw
    if isinstance(raw, str):
        value, reason = decode_json_text(raw)
        if reason is not None:
            return None, reason
    if not isinstance(value, dict):
        return None, f"arguments are {_kind(value)}, not an object"
    return _unwrap(value, unwrap_input), None


def normalize_id(value: object) -> str | None:
    """A trace or span id as lowercase hex: OTLP/JSON writes hex, some emitters base64."""
    if value is None or value == "":
        return None
    s = str(value)
    if _HEX.fullmatch(s) and len(s) in (16, 32):
        return s.lower()
    pad = -len(s) % 4
    if pad < 3:  # some emitters drop the base64 padding
        try:
            raw = base64.b64decode(s + "=" * pad, validate=True)
        except (binascii.Error, ValueError):
            raw = b""
        if len(raw) in (8, 16):
            return raw.hex()
    return s.lower() if _HEX.fullmatch(s) else s


def from_unix_nanos(value: object) -> datetime | None:
    n = to_int(value)
    if n is None or n <= 0:
        return None
    # Integer arithmetic: a float of nanoseconds since 1970 loses microseconds.
    return _EPOCH + timedelta(microseconds=n // 1000)


def from_unix_micros(value: object) -> datetime | None:
    n = to_int(value)
    if n is None or n <= 0:
        return None
    return _EPOCH + timedelta(microseconds=n)


def parse_time(value: object) -> datetime | None:
    """ISO-8601 text or an epoch number (s, ms, µs or ns, told apart by magnitude), as aware UTC.

    Times written without a zone (OpenHands) are taken as UTC so every TraceCall time compares.
    """
    if value is None or isinstance(value, bool):
        return None
    if isinstance(value, (int, float)):
        n = float(value)
        if n <= 0:
            return None
        if n > 1e17:
            return from_unix_nanos(int(value))
        if n > 1e14:
            return from_unix_micros(int(value))
        if n > 1e11:
            n /= 1000.0
        return _EPOCH + timedelta(seconds=n)
    if not isinstance(value, str) or not value:
        return None
    try:
        t = datetime.fromisoformat(value)
    except ValueError:
        return None
    return t if t.tzinfo else t.replace(tzinfo=timezone.utc)


def to_int(value: object) -> int | None:
    """OTLP writes int64 as strings and Langfuse copies attribute values as text."""
    if value is None or isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    try:
        return int(value)  # type: ignore[call-overload]
    except (TypeError, ValueError):
        try:
            f = float(value)  # type: ignore[arg-type]
        except (TypeError, ValueError):
            return None
        return int(f) if f == f and abs(f) != float("inf") else None


def to_float(value: object) -> float | None:
    if value is None or isinstance(value, bool):
        return None
    try:
        return float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return None


def text_or_none(value: object) -> str | None:
    """A non-empty string form of an id or name, or None."""
    if value is None or value == "":
        return None
    return value if isinstance(value, str) else str(value)


def split_mcp_name(name: str) -> tuple[str | None, str]:
    """`mcp__<server>__<tool>` (Claude Code / Agent SDK) → (server, tool); other names unchanged."""
    if name.startswith("mcp__"):
        server, sep, tool = name[5:].partition("__")
        if sep and server and tool:
            return server, tool
    return None, name


_MODEL_TOKEN = re.compile(
    r"(gpt-|o[1-9]\b|o[1-9]-|chatgpt|claude-|gemini-|llama|mistral|mixtral|qwen|deepseek|grok|command-r)",
    re.IGNORECASE,
)


def model_from_filename(path: str) -> str | None:
    """The model named in a file name, for formats whose records do not carry it (tau-bench,
    LiveMCPBench): `tau-bench_airline_gpt-4o_trajectories.json` → `gpt-4o`."""
    name = PurePath(path).name
    for suffix in (".gz", ".jsonl", ".ndjson", ".json", ".traj", ".log"):
        if name.endswith(suffix):
            name = name[: -len(suffix)]
    for token in name.split("_"):
        if _MODEL_TOKEN.match(token):
            return token
    return None
