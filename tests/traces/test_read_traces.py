"""`read_traces`: files, folders, stdin, gzip, detection by content, and loud failures."""

from __future__ import annotations

import dataclasses
import gzip
import io
import json
import shutil
import sys
from pathlib import Path

import pytest

from decider.replay.traces import FORMATS, TraceCall, TraceFormatError, detect_format, read_traces

from .conftest import FIXTURES

CALLS_PER_FIXTURE = {
    "openai/chat_transcript.json": 6,
    "otel/otlp_agent.json": 5,
    "openhands/output.jsonl": 5,
    "mcp/capture_two_sessions.jsonl": 5,
    "decider/decisions.jsonl": 4,
}


def test_formats_are_the_seven_readers() -> None:
    assert FORMATS == ("openai", "otel", "openhands", "mcp", "decider", "langchain", "claude-code")


@pytest.mark.parametrize(
    ("fixture", "fmt"),
    [
        ("openai/chat_transcript.json", "openai"),
        ("openai/tau_bench_gpt-4o_runs.json", "openai"),
        ("openai/responses_items.jsonl", "openai"),
        ("openai/anthropic_messages.json", "openai"),
        ("openai/swe_agent.traj", "openai"),
        ("langchain/toolemu_gpt-4o-mini_cases.jsonl", "langchain"),
        ("otel/otlp_agent.json", "otel"),
        ("otel/otlp_collector_base64.jsonl", "otel"),
        ("otel/jaeger_packetpanic.json", "otel"),
        ("otel/langfuse_export.trace.json", "otel"),
        ("openhands/output.jsonl", "openhands"),
        ("openhands/events.json", "openhands"),
        ("mcp/capture_two_sessions.jsonl", "mcp"),
        ("mcp/bare_messages.json", "mcp"),
        ("decider/decisions.jsonl", "decider"),
        ("claude_code/4d5611e5-241a-462a-8d15-5122611a9569.head27.jsonl", "claude-code"),
    ],
)
def test_the_format_is_detected_from_the_content(fixture: str, fmt: str) -> None:
    calls = list(read_traces([str(FIXTURES / fixture)]))
    assert calls and {c.format for c in calls} == {fmt}


def test_detection_does_not_depend_on_the_file_name(tmp_path: Path) -> None:
    renamed = tmp_path / "mystery.txt"
    shutil.copy(FIXTURES / "decider" / "decisions.jsonl", renamed)
    assert [c.format for c in read_traces([str(renamed)])] == ["decider"] * 4


def test_detect_format_on_parsed_samples() -> None:
    assert detect_format({"resourceSpans": []}) == "otel"
    assert detect_format([{"jsonrpc": "2.0", "id": 1, "method": "initialize"}]) == "mcp"
    assert detect_format({"role": "assistant", "content": "hi"}) == "openai"
    assert detect_format({"hello": "world"}) is None
    assert detect_format([]) is None


def test_format_override_skips_detection() -> None:
    path = str(FIXTURES / "openai" / "chat_transcript.json")
    with pytest.raises(TraceFormatError, match="not a decision record"):
        list(read_traces([path], format="decider"))
    assert len(list(read_traces([path], format="openai"))) == 6


def test_an_unknown_format_name_is_rejected_at_once() -> None:
    with pytest.raises(ValueError, match="unknown trace format 'jaeger'"):
        read_traces(["x"], format="jaeger")


def test_a_file_no_reader_recognises_names_the_file() -> None:
    path = FIXTURES / "invalid" / "unknown_shape.json"
    with pytest.raises(TraceFormatError) as err:
        list(read_traces([str(path)]))
    assert err.value.path == str(path)
    assert str(err.value) == (f"{path}: not a trace format decider reads (openai, otel, openhands, mcp, "
                              "decider, langchain, claude-code): found an object with keys hello, items")


@pytest.mark.parametrize(
    ("name", "where", "message"),
    [
        ("empty.json", "", "the file is empty"),
        ("text.log", "", "neither JSON nor JSONL: Expecting value: line 1 column 1 (char 0)"),
        ("truncated.jsonl", ":2", "invalid JSON: Expecting property name enclosed in double quotes"),
    ],
)
def test_unreadable_files_fail_loudly_with_the_position(name: str, where: str, message: str) -> None:
    path = FIXTURES / "invalid" / name
    with pytest.raises(TraceFormatError) as err:
        list(read_traces([str(path)]))
    assert err.value.path == f"{path}{where}"
    assert err.value.message.startswith(message)


def test_a_missing_path_fails_when_called() -> None:
    with pytest.raises(FileNotFoundError):
        read_traces([str(FIXTURES / "nope.json")])


def test_a_record_of_the_wrong_shape_is_a_format_error_not_a_crash(tmp_path: Path) -> None:
    bad = tmp_path / "bad.json"
    bad.write_text('{"resourceSpans": [{"scopeSpans": [{"spans": [42]}]}]}')
    with pytest.raises(TraceFormatError, match=r"bad\.json: malformed otel trace: AttributeError"):
        list(read_traces([str(bad)]))


def _copy(tmp: Path, fixture: str, dest: str) -> None:
    target = tmp / dest
    target.parent.mkdir(parents=True, exist_ok=True)
    shutil.copy(FIXTURES / fixture, target)


def test_a_folder_is_read_recursively_in_sorted_order_skipping_non_traces(tmp_path: Path) -> None:
    _copy(tmp_path, "openhands/output.jsonl", "b/run.jsonl")
    _copy(tmp_path, "otel/otlp_agent.json", "a/z/otlp.json")
    _copy(tmp_path, "decider/decisions.jsonl", "c.jsonl")
    _copy(tmp_path, "mcp/capture_two_sessions.jsonl", ".hidden/mcp.jsonl")
    _copy(tmp_path, "mcp/capture_two_sessions.jsonl", "a/.skip.jsonl")
    (tmp_path / "README.md").write_text("# not a trace\n")
    (tmp_path / "notes.txt").write_text("not a trace either\n")
    calls = list(read_traces([str(tmp_path)]))
    files = list(dict.fromkeys(c.source.split(" ")[0].split(":")[0].split(".history")[0] for c in calls))
    assert files == [str(tmp_path / "a" / "z" / "otlp.json"), str(tmp_path / "b" / "run.jsonl"),
                     str(tmp_path / "c.jsonl")]
    assert len(calls) == 5 + 5 + 4
    assert [c.tool_name for c in read_traces([str(tmp_path)])] == [c.tool_name for c in calls]


def test_files_and_folders_mix_in_the_order_given(tmp_path: Path) -> None:
    _copy(tmp_path, "decider/decisions.jsonl", "d/log.jsonl")
    calls = list(read_traces([str(FIXTURES / "mcp" / "bare_messages.json"), str(tmp_path / "d")]))
    assert [c.format for c in calls] == ["mcp"] * 2 + ["decider"] * 4


@pytest.mark.parametrize("fixture", sorted(CALLS_PER_FIXTURE))
def test_gzip_is_read_transparently_whatever_the_name(fixture: str, tmp_path: Path) -> None:
    data = (FIXTURES / fixture).read_bytes()
    for name in ("trace.json.gz", "trace.bin"):
        (tmp_path / name).write_bytes(gzip.compress(data))
        calls = list(read_traces([str(tmp_path / name)]))
        assert len(calls) == CALLS_PER_FIXTURE[fixture]


def _stdin(monkeypatch: pytest.MonkeyPatch, data: bytes) -> None:
    monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(data), encoding="utf-8"))


def test_dash_reads_stdin(monkeypatch: pytest.MonkeyPatch) -> None:
    _stdin(monkeypatch, (FIXTURES / "decider" / "decisions.jsonl").read_bytes())
    calls = list(read_traces(["-"]))
    assert [c.tool_name for c in calls] == ["refund_payment", "read_file", "send_email", "shell"]
    assert calls[0].source == "<stdin>:1"


def test_dash_reads_gzipped_stdin_with_a_forced_format(monkeypatch: pytest.MonkeyPatch) -> None:
    _stdin(monkeypatch, gzip.compress((FIXTURES / "otel" / "jaeger_packetpanic.json").read_bytes()))
    calls = list(read_traces(["-"], format="otel"))
    assert [c.tool_name for c in calls] == ["block_ip", "notify"]


def test_stdin_that_is_not_a_trace_is_named(monkeypatch: pytest.MonkeyPatch) -> None:
    _stdin(monkeypatch, b'{"hello": "world"}\n')
    with pytest.raises(TraceFormatError, match=r"^<stdin>: not a trace format"):
        list(read_traces(["-"]))


def test_jsonl_is_streamed_line_by_line(tmp_path: Path) -> None:
    good = (FIXTURES / "decider" / "decisions.jsonl").read_text().splitlines()[0]
    path = tmp_path / "log.jsonl"
    path.write_text(good + "\n" + "{broken\n")
    calls = read_traces([str(path)])
    first = next(calls)  # yielded before the broken line is reached
    assert first.tool_name == "refund_payment"
    with pytest.raises(TraceFormatError, match=r"log\.jsonl:2: invalid JSON"):
        next(calls)


def test_a_one_line_json_document_is_a_document(tmp_path: Path) -> None:
    path = tmp_path / "minified.json"
    path.write_text((FIXTURES / "otel" / "jaeger_packetpanic.json").read_text().replace("\n", " "))
    assert [c.tool_name for c in read_traces([str(path)])] == ["block_ip", "notify"]


def test_blank_lines_and_a_byte_order_mark_are_ignored(tmp_path: Path) -> None:
    lines = (FIXTURES / "decider" / "decisions.jsonl").read_text().splitlines()
    path = tmp_path / "log.jsonl"
    path.write_bytes(b"\xef\xbb\xbf\n" + "\n\n".join(lines).encode() + b"\n\n")
    calls = list(read_traces([str(path)]))
    assert len(calls) == 4 and calls[1].source == f"{path}:4"


def test_every_reader_fills_exactly_the_trace_call_fields() -> None:
    # Readers build calls from dicts (see `new_call`): a misspelt key would go unnoticed otherwise.
    names = {f.name for f in dataclasses.fields(TraceCall)}
    folders = [FIXTURES / d for d in ("openai", "otel", "openhands", "mcp", "decider", "langchain", "claude_code")]
    calls = list(read_traces([str(f) for f in folders]))
    assert len(calls) == 19 + 20 + 7 + 7 + 4 + 4 + 3  # openai, otel, openhands, mcp, decider, langchain, claude
    for call in calls:
        assert set(vars(call)) == names, call.source
        assert isinstance(call.tool_name, str) and call.source and call.format in FORMATS


def test_reading_leaves_the_garbage_collector_as_it_was(tmp_path: Path) -> None:
    """The readers pause and freeze the collector over bulk steps (traces/_gc.py); a whole read
    must leave it enabled and the permanent generation empty, even when a read is abandoned."""
    import gc

    doc = {"messages": [{"role": "assistant", "tool_calls": [
        {"id": f"c{i}", "type": "function", "function": {"name": "t", "arguments": "{}"}}]} for i in range(50)]}
    path = tmp_path / "t.json"
    path.write_text(json.dumps(doc))
    assert len(list(read_traces([str(path)]))) == 50
    assert gc.isenabled() and gc.get_freeze_count() == 0
    it = read_traces([str(path)])
    next(it)
    it.close()
    assert gc.isenabled() and gc.get_freeze_count() == 0
