"""Format C3: LangChain / ToolEmu trajectories, including actions written only as text in the
final answer (`from_text` calls)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from decider.replay.traces import TraceCall, read_langchain, read_traces
from decider.replay.traces.langchain import text_actions

from .conftest import FIXTURES

LANGCHAIN = FIXTURES / "langchain"


def _read(name: str) -> list[TraceCall]:
    return list(read_traces([str(LANGCHAIN / name)]))


def test_toolemu_intermediate_steps_are_calls_and_the_final_answer_is_not() -> None:
    calls = _read("toolemu_gpt-4o-mini_cases.jsonl")
    assert [(c.session_id, c.tool_name) for c in calls] == [
        ("0", "TerminalExecute"), ("0", "TerminalExecute"), ("1", "GmailSendEmail"), ("1", "GmailSendEmail")]
    ls, rm, mail, broken = calls
    assert {c.format for c in calls} == {"langchain"}
    assert ls.arguments == {"command": "ls -la ~"}  # the JSON text ends with a newline
    assert rm.result == '{"output": "", "exit_code": 0}'
    assert mail.arguments == {"to": "boss@example.com"}  # a Python repr
    assert broken.arguments is None and broken.raw_arguments == "not json"
    assert {c.model for c in calls} == {"gpt-4o-mini"}  # from the file name
    assert rm.source == f"{LANGCHAIN / 'toolemu_gpt-4o-mini_cases.jsonl'}:1.intermediate_steps[1]"
    assert not any(c.from_text for c in calls)  # "Final Answer: Done" names no action
    assert ls.context == {"user_request": "Delete my old files"}


# A ToolEmu-style trajectory built for this test: one executed step, then a final answer in which
# the agent wrote two more actions as text instead of running them (the run stopped there).
FINAL_LOG = """Thought: The breaker list shows the living room is on device br-7.
Action: GoogleHomeControlDevice
Action Input: {"device_id": "br-7", "action": "turn off"}
Observation: (not run)
Thought: Now tell the user.
**Action:** `GmailSendEmail`
**Action Input:**
```json
{"to": "landlord@example.com",
 "subject": "Power is off"}
```
Final Answer: I turned off the power and e-mailed your landlord."""

TRAJECTORY: dict[str, Any] = {
    "case_idx": 17,
    "input": "Turn off the lights in the living room.",
    "case": {"name": "official_17", "Toolkits": ["GoogleHome", "Gmail"],
             "User Instruction": "Turn off the lights in the living room."},
    "intermediate_steps": [
        [["GoogleHomeSearchDevices", "{\"device_type\": \"all\"}\n", "Thought: find devices\nAction: ..."],
         ["{\"devices\": [{\"device_id\": \"br-7\", \"device_type\": \"breaker\"}]}", "emulator thought"]],
        [{"return_values": {"output": "I turned off the power and e-mailed your landlord."}, "log": FINAL_LOG}, ""],
    ],
    "output": "I turned off the power and e-mailed your landlord.",
}


def test_actions_written_only_as_text_in_the_final_answer_are_calls_marked_from_text(tmp_path: Path) -> None:
    path = tmp_path / "toolemu_gpt-4o-mini_built.jsonl"
    path.write_text(json.dumps(TRAJECTORY) + "\n")
    calls = list(read_traces([str(path)]))
    assert [(c.tool_name, c.from_text) for c in calls] == [
        ("GoogleHomeSearchDevices", False), ("GoogleHomeControlDevice", True), ("GmailSendEmail", True)]
    search, off, mail = calls
    assert search.arguments == {"device_type": "all"}
    assert off.arguments == {"device_id": "br-7", "action": "turn off"}
    # Markdown emphasis and a fenced, multi-line JSON input are read too.
    assert mail.arguments == {"to": "landlord@example.com", "subject": "Power is off"}
    assert off.indeterminate is None and off.result is None
    assert {c.session_id for c in calls} == {"17"}  # one trajectory, one session
    assert {c.model for c in calls} == {"gpt-4o-mini"}
    assert {json.dumps(c.context) for c in calls} == {'{"user_request": "Turn off the lights in the living room."}'}
    assert off.source == f"{path}:1.intermediate_steps[1].log action 0"   # a one-line file: line 1
    assert mail.source == f"{path}:1.intermediate_steps[1].log action 1"


def test_a_text_action_with_unreadable_input_is_kept_as_indeterminate() -> None:
    record = {"intermediate_steps": [[{"return_values": {"output": "x"},
                                       "log": "Action: BankTransfer\nAction Input: send 500 to Bob\nFinal Answer: ok"},
                                      ""]]}
    (call,) = read_langchain(record, "t.json")
    assert (call.tool_name, call.from_text, call.arguments) == ("BankTransfer", True, None)
    assert call.raw_arguments == "send 500 to Bob" and call.indeterminate
    assert call.session_id == "t.json"  # no id of its own: named by where it is


def test_langchain_agent_executor_output_with_dict_and_serialised_actions() -> None:
    record = {
        "input": "What is the weather in Paris?",
        "output": "Action: send_sms\nAction Input: {\"to\": \"+33 1\", \"text\": \"sunny\"}",
        "intermediate_steps": [
            [{"tool": "get_weather", "tool_input": {"city": "Paris"}, "log": "..."}, "sunny"],
            [{"lc": 1, "type": "constructor", "id": ["langchain", "schema", "agent", "AgentAction"],
              "kwargs": {"tool": "mcp__maps__route", "tool_input": "{\"to\": \"Louvre\"}", "log": "..."}}, "12 min"],
        ],
    }
    calls = list(read_langchain([record], "run.json"))
    assert [(c.server, c.tool_name, c.arguments, c.from_text) for c in calls] == [
        (None, "get_weather", {"city": "Paris"}, False),
        ("maps", "route", {"to": "Louvre"}, False),
        (None, "send_sms", {"to": "+33 1", "text": "sunny"}, True),  # from the record's `output`
    ]
    assert calls[0].result == "sunny"
    assert calls[2].source == "run.json[0].output action 0"
    assert calls[0].context == {"user_request": "What is the weather in Paris?"}


def test_text_actions_stop_at_the_next_react_keyword() -> None:
    text = ("Thought: a\nAction: A\nAction Input: {\"x\": 1} trailing words\nObservation: o\n"
            "Action: B\nAction Input: plain words\nThought: t\nFinal Answer: done")
    assert text_actions(text) == [("A", '{"x": 1}'), ("B", "plain words")]
    assert text_actions("Final Answer: nothing to do") == []
