"""Agent frameworks against the server (live gunicorn, the fake answering like a protocol-following model).

The OpenAI Agents SDK on both of its OpenAI models (Chat Completions and Responses), streamed and not, and
pydantic-ai with a structured output type and a tool. Each run must end with the final answer built from the
tool's result, which it only can if every call came back as a real tool call.
"""

from __future__ import annotations

import asyncio

import pytest
from agents import (
    Agent,
    ModelSettings,
    OpenAIChatCompletionsModel,
    OpenAIResponsesModel,
    Runner,
    function_tool,
    set_tracing_disabled,
)
from openai import AsyncOpenAI
from pydantic import BaseModel
from pydantic_ai import Agent as PydanticAgent
from pydantic_ai.models.openai import OpenAIChatModel
from pydantic_ai.models.openai import OpenAIResponsesModel as PydanticResponsesModel
from pydantic_ai.providers.openai import OpenAIProvider

from perplexity.testing import ProtocolModel

QUESTION = "What is the weather in Paris?"


@pytest.fixture(autouse=True)
def protocol_model(fake):
    fake.responder = ProtocolModel()
    set_tracing_disabled(True)  # the SDK would export traces to OpenAI's servers otherwise
    yield


@function_tool
def get_weather(city: str) -> str:
    """The current weather in a city."""
    return f"21 C and sunny in {city}"


def openai_agent(live_server, api: str) -> tuple[Agent, AsyncOpenAI]:
    client = AsyncOpenAI(base_url=live_server.url + "/v1", api_key="unused", max_retries=0, timeout=20)
    model_class = OpenAIChatCompletionsModel if api == "chat" else OpenAIResponsesModel
    model = model_class(model="perplexity-auto", openai_client=client)
    agent = Agent(
        name="weather",
        instructions="Answer weather questions with the get_weather tool.",
        tools=[get_weather],
        model=model,
        model_settings=ModelSettings(tool_choice="auto"),
    )
    return agent, client


async def run_agent(agent: Agent, client: AsyncOpenAI, streamed: bool) -> str:
    async with client:
        if not streamed:
            return (await Runner.run(agent, QUESTION, max_turns=4)).final_output
        result = Runner.run_streamed(agent, QUESTION, max_turns=4)
        kinds = [event.type async for event in result.stream_events()]
        assert "raw_response_event" in kinds and "run_item_stream_event" in kinds
        return result.final_output


@pytest.mark.parametrize("streamed", [False, True], ids=["run", "streamed"])
@pytest.mark.parametrize("api", ["chat", "responses"])
def test_openai_agents_sdk_runs_a_function_tool(fake, live_server, api, streamed) -> None:
    agent, client = openai_agent(live_server, api)
    before = len(fake.asks)
    final = asyncio.run(run_agent(agent, client, streamed))
    assert final == "Done: 21 C and sunny in Paris"
    asks = fake.asks[before:]
    assert len(asks) == 2 and asks[0].thread == asks[1].thread  # the call, then its result on the same thread
    assert '<tool_response name="get_weather"' in asks[1].json["query_str"]


class Forecast(BaseModel):
    city: str
    summary: str


def get_forecast(city: str) -> str:
    """The forecast for a city."""
    return f"rain tomorrow in {city}"


@pytest.mark.parametrize("api", ["chat", "responses"])
def test_pydantic_ai_structured_output_and_a_tool(fake, live_server, api) -> None:
    client = AsyncOpenAI(base_url=live_server.url + "/v1", api_key="unused", max_retries=0, timeout=20)
    model_class = OpenAIChatModel if api == "chat" else PydanticResponsesModel
    model = model_class("perplexity-auto", provider=OpenAIProvider(openai_client=client))
    agent = PydanticAgent(model, output_type=Forecast, tools=[get_forecast])

    async def run():
        async with client:  # closed here: a provider's own client would outlive the test
            return await agent.run("What is the forecast for Paris?")

    before = len(fake.asks)
    result = asyncio.run(run())
    assert isinstance(result.output, Forecast) and result.output.city == "Paris"
    tool_returns = [
        part.content for message in result.all_messages() for part in message.parts if part.part_kind == "tool-return"
    ]
    assert "rain tomorrow in Paris" in tool_returns
    asks = fake.asks[before:]
    assert len({ask.thread for ask in asks}) == 1 and len(asks) >= 2
