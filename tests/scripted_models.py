"""Scripted models for real agent loops without a network: each asks for one tool call, then
answers with the text the tool call produced, so a test can see what the model was shown."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Sequence
from typing import Any

from agents import Model, ModelResponse, Usage
from agents.testing import assistant_message, function_call
from langchain_core.callbacks import CallbackManagerForLLMRun
from langchain_core.language_models.chat_models import BaseChatModel
from langchain_core.messages import AIMessage, BaseMessage, ToolMessage
from langchain_core.outputs import ChatGeneration, ChatResult


class ScriptedAgentsModel(Model):
    """An `agents.Model`: turn 1 calls `tool(arguments)`; later turns reply with the tool's output."""

    def __init__(self, tool: str, arguments: dict[str, Any], call_id: str = "call-1") -> None:
        self.tool, self.arguments, self.call_id = tool, arguments, call_id
        self.seen: list[str] = []     # every tool output the model was given

    async def get_response(self, system_instructions: str | None, input: str | list[Any], *args: Any,
                           **kwargs: Any) -> ModelResponse:
        items = input if isinstance(input, list) else []
        outputs = [i for i in items if isinstance(i, dict) and i.get("type") == "function_call_output"]
        if outputs:
            text = str(outputs[-1]["output"])
            self.seen.append(text)
            return ModelResponse(output=[assistant_message(f"the tool said: {text}")], usage=Usage(),
                                 response_id=None)
        return ModelResponse(output=[function_call(self.tool, json.dumps(self.arguments), call_id=self.call_id)],
                             usage=Usage(), response_id=None)

    def stream_response(self, *args: Any, **kwargs: Any) -> AsyncIterator[Any]:
        raise NotImplementedError("the scripted model does not stream")


class ScriptedChatModel(BaseChatModel):
    """A LangChain chat model with tools: turn 1 calls `tool(arguments)`; later turns reply with the
    last tool message's content."""

    tool: str
    arguments: dict[str, Any]
    seen: list[str] = []

    @property
    def _llm_type(self) -> str:
        return "scripted"

    def bind_tools(self, tools: Sequence[Any], **kwargs: Any) -> ScriptedChatModel:  # type: ignore[override]
        return self

    def _generate(self, messages: list[BaseMessage], stop: list[str] | None = None,
                  run_manager: CallbackManagerForLLMRun | None = None, **kwargs: Any) -> ChatResult:
        if messages and isinstance(messages[-1], ToolMessage):
            text = str(messages[-1].content)
            self.seen.append(text)
            reply = AIMessage(content=f"the tool said: {text}")
        else:
            reply = AIMessage(content="", tool_calls=[{"name": self.tool, "args": self.arguments, "id": "call-1",
                                                       "type": "tool_call"}])
        return ChatResult(generations=[ChatGeneration(message=reply)])
