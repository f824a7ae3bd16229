"""langchain-openai against real cloud and proxy processes: `with_structured_output` (default
json_schema method, json_mode, function_calling), `bind_tools` with tool_choice required, a named
tool, auto and none, a tool-result turn, and streamed tool-call chunks that add up to the call."""

from __future__ import annotations

import langchain_openai
import pytest
from langchain_core.messages import AIMessage, HumanMessage, ToolMessage
from langchain_core.tools import tool
from pydantic import BaseModel, Field

from api_helpers import MODEL, TIMEOUT


class Weather(BaseModel):
    """A weather report."""

    city: str = Field(description="the city")
    celsius: int = Field(description="temperature")


@tool
def get_weather(city: str, unit: str) -> str:
    """The weather forecast for a city, in celsius or fahrenheit."""
    return f"sunny in {city}"


@tool
def get_time(tz: str) -> str:
    """The local time in a time zone."""
    return "noon"


@pytest.fixture
def llm(proxy):
    return langchain_openai.ChatOpenAI(model=MODEL, base_url=proxy.url + "/v1", api_key="unused", temperature=0,
                                       max_tokens=80, max_retries=0, timeout=TIMEOUT)


@pytest.mark.parametrize("method", ["json_schema", None, "json_mode", "function_calling"])
def test_with_structured_output(llm, method):
    kwargs = {} if method is None else {"method": method}
    chain = llm.with_structured_output(Weather, include_raw=True, **kwargs)
    prompt = "Report the weather in Paris as JSON with keys city and celsius."
    out = chain.invoke([HumanMessage(prompt)])
    if method == "json_mode":  # json_object only promises an object: the keys are up to the model
        assert isinstance(out["raw"].content, str) and out["raw"].content.startswith("{")
        return
    assert out["parsing_error"] is None, out["parsing_error"]
    assert isinstance(out["parsed"], Weather)


@pytest.mark.parametrize("choice", ["required", "get_time", "any"])
def test_bind_tools_forced(llm, choice):
    message = llm.bind_tools([get_weather, get_time], tool_choice=choice).invoke("What's the weather in Oslo?")
    assert message.tool_calls and not message.invalid_tool_calls
    for call in message.tool_calls:
        assert call["id"].startswith("call_")
        expected = {"get_weather": {"city", "unit"}, "get_time": {"tz"}}[call["name"]]
        assert set(call["args"]) == expected
    if choice == "get_time":
        assert [c["name"] for c in message.tool_calls] == ["get_time"]


@pytest.mark.parametrize("choice", ["auto", "none"])
def test_bind_tools_free(llm, choice):
    message = llm.bind_tools([get_weather, get_time], tool_choice=choice).invoke("Hello!")
    assert not message.invalid_tool_calls
    if choice == "none":
        assert not message.tool_calls and isinstance(message.content, str)


def test_tool_result_turn(llm):
    bound = llm.bind_tools([get_weather], tool_choice="get_weather", parallel_tool_calls=False)
    question = HumanMessage("Weather in Rome?")
    first = bound.invoke([question])
    assert isinstance(first, AIMessage) and len(first.tool_calls) == 1
    call = first.tool_calls[0]
    result = ToolMessage(get_weather.invoke(call["args"]), tool_call_id=call["id"])
    answer = llm.bind_tools([get_weather]).invoke([question, first, result])
    assert isinstance(answer, AIMessage)
    assert answer.response_metadata["finish_reason"] in ("stop", "length", "tool_calls")


def test_streamed_tool_call_chunks_add_up(llm):
    bound = llm.bind_tools([get_weather, get_time], tool_choice="required")
    whole = bound.invoke("Weather in Lima?")
    total = None
    for chunk in bound.stream("Weather in Lima?"):
        total = chunk if total is None else total + chunk
    assert [(c["name"], c["args"]) for c in total.tool_calls] == [(c["name"], c["args"]) for c in whole.tool_calls]
    assert total.response_metadata["finish_reason"] == "tool_calls"
