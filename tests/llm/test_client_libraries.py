"""The client libraries teams use, with their defaults, over a socket: LangChain (langchain-openai, langchain-ollama)
and LlamaIndex's Ollama LLM. Each call is made through the gateway and, with the same client, to the fake Ollama
directly: the same answer, and exactly one audit row per call through the gateway."""

import pytest
from langchain_core.messages import HumanMessage, ToolMessage
from langchain_core.tools import tool
from langchain_ollama import ChatOllama
from langchain_openai import ChatOpenAI
from llama_index.core.llms import ChatMessage
from llama_index.llms.ollama import Ollama
from pydantic import BaseModel

from llm.models import Generation
from tests.conftest import wait_for

pytestmark = pytest.mark.django_db(transaction=True)

MODEL = "qwen2.5:7b"


@tool
def get_weather(city: str) -> str:
    """The weather in a city."""
    return f"Sunny in {city}"


class Echo(BaseModel):
    """The fake model's JSON answer."""

    echo: str
    model: str


def audited(count: int) -> list[Generation]:
    """Exactly `count` rows, all completed."""
    assert wait_for(lambda: Generation.objects.exclude(status="pending").count() == count)
    assert Generation.objects.count() == count
    return list(Generation.objects.order_by("created_at"))


def openai_chat(gateway=None, ollama=None, **kwargs) -> ChatOpenAI:
    if gateway is not None:
        return ChatOpenAI(model=MODEL, base_url=f"{gateway.url}/v1", api_key=gateway.key, max_retries=0, timeout=10,
                          **kwargs)
    return ChatOpenAI(model=MODEL, base_url=f"{ollama.url}/v1", api_key="ollama", max_retries=0, timeout=10, **kwargs)


def ollama_chat(gateway=None, ollama=None, **kwargs) -> ChatOllama:
    if gateway is not None:
        return ChatOllama(model=MODEL, base_url=gateway.url, **kwargs,
                          client_kwargs={"headers": {"Authorization": f"Bearer {gateway.key}"}, "timeout": 10})
    return ChatOllama(model=MODEL, base_url=ollama.url, client_kwargs={"timeout": 10}, **kwargs)


def without_ids(calls: list[dict]) -> list[dict]:
    return [{k: v for k, v in call.items() if k != "id"} for call in calls]


# -- langchain-openai ---------------------------------------------------------------------------------------------------


def test_langchain_openai_bind_tools_round_trip(gateway, ollama):
    through, direct = (openai_chat(gateway).bind_tools([get_weather]),
                       openai_chat(ollama=ollama).bind_tools([get_weather]))
    question = [HumanMessage("Weather in Paris?")]

    asked = through.invoke(question)
    expected = direct.invoke(question)

    assert asked.tool_calls == expected.tool_calls
    assert asked.tool_calls[0]["name"] == "get_weather" and asked.tool_calls[0]["id"].startswith("call_")
    assert asked.response_metadata["finish_reason"] == "tool_calls"
    result = ToolMessage(get_weather.invoke(asked.tool_calls[0]["args"]), tool_call_id=asked.tool_calls[0]["id"])
    answer = through.invoke([*question, asked, result])
    assert answer.content == direct.invoke([*question, expected, result]).content
    assert answer.content.startswith("Tool results: get_weather: Sunny in")
    first, second = audited(2)
    assert first.tool_calls[0]["id"] == asked.tool_calls[0]["id"] and second.prompt[-1]["role"] == "tool"


def test_langchain_openai_streamed_tool_calls(gateway, ollama):
    ollama.tool_mode = "all"

    def gathered(model):
        total = None
        for chunk in model.bind_tools([get_weather]).stream("Weather in Paris and Oslo?"):
            total = chunk if total is None else total + chunk
        return total

    through, expected = gathered(openai_chat(gateway)), gathered(openai_chat(ollama=ollama))

    assert through.tool_calls == expected.tool_calls and len(through.tool_calls) == 1
    assert audited(1)[0].stream


def test_langchain_openai_with_structured_output(gateway, ollama):
    question = "Repeat after me."

    answer = openai_chat(gateway).with_structured_output(Echo).invoke(question)
    expected = openai_chat(ollama=ollama).with_structured_output(Echo).invoke(question)

    assert answer == expected == Echo(echo=question, model=MODEL)
    row = audited(1)[0]
    assert (row.mode, row.output) == ("json", {"echo": question, "model": MODEL})
    assert ollama.requests[0].json["format"]["properties"].keys() == {"echo", "model"}


# -- langchain-ollama ---------------------------------------------------------------------------------------------------


def test_langchain_ollama_bind_tools_round_trip(gateway, ollama):
    through, direct = (ollama_chat(gateway).bind_tools([get_weather]),
                       ollama_chat(ollama=ollama).bind_tools([get_weather]))
    question = [HumanMessage("Weather in Paris?")]

    asked = through.invoke(question)
    expected = direct.invoke(question)

    # langchain-ollama mints its own ids: the calls agree otherwise.
    assert without_ids(asked.tool_calls) == without_ids(expected.tool_calls)
    assert asked.tool_calls[0]["name"] == "get_weather"
    result = ToolMessage(get_weather.invoke(asked.tool_calls[0]["args"]), tool_call_id=asked.tool_calls[0]["id"])
    answer = through.invoke([*question, asked, result])
    assert answer.content == direct.invoke([*question, expected, result]).content
    # langchain-ollama sends a tool result without the tool's name, to the gateway as to Ollama.
    assert answer.content == "Tool results: tool: Sunny in Weather in Paris?"
    assert len(audited(2)) == 2


def test_langchain_ollama_with_structured_output_and_null_options(gateway, ollama):
    question = "Repeat after me."

    answer = ollama_chat(gateway).with_structured_output(Echo).invoke(question)
    expected = ollama_chat(ollama=ollama).with_structured_output(Echo).invoke(question)

    assert answer == expected == Echo(echo=question, model=MODEL)
    sent = ollama.requests[0].json
    assert isinstance(sent["format"], dict) and all(value is not None for value in sent.get("options", {}).values())
    assert audited(1)[0].output == {"echo": question, "model": MODEL}


def test_langchain_ollama_thinking(gateway, ollama):
    ollama.models.append("qwen3:8b")

    answer = ollama_chat(gateway, reasoning=True).model_copy(update={"model": "qwen3:8b"}).invoke("Why?")
    expected = ollama_chat(ollama=ollama, reasoning=True).model_copy(update={"model": "qwen3:8b"}).invoke("Why?")

    assert answer.content == expected.content
    assert answer.additional_kwargs["reasoning_content"] == expected.additional_kwargs["reasoning_content"]
    assert audited(1)[0].thinking == answer.additional_kwargs["reasoning_content"]


# -- LlamaIndex ---------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("model", ["qwen2.5:7b", "llama3.2:1b"])
def test_llamaindex_ollama_with_its_defaults(gateway, ollama, model):
    """LlamaIndex sends "temperature": null and num_ctx as the model's whole context (read from /api/show)."""
    through = Ollama(model=model, base_url=gateway.url, headers={"Authorization": f"Bearer {gateway.key}"},
                     request_timeout=10)
    direct = Ollama(model=model, base_url=ollama.url, request_timeout=10)
    messages = [ChatMessage(role="user", content="Hello there")]

    chat = through.chat(messages)
    assert chat.message.content == direct.chat(messages).message.content == "Echo: Hello there"
    completed = through.complete("Complete me")
    assert completed.text == direct.complete("Complete me").text
    streamed = "".join(part.delta for part in through.stream_chat(messages))
    assert streamed == "Echo: Hello there"

    rows = audited(3)
    assert [row.status for row in rows] == ["succeeded"] * 3
    through_sent = [r.json for r in ollama.requests if r.path in ("/api/chat", "/api/generate")
                    and r.headers.get("user-agent") == "llm-gateway"]
    assert len(through_sent) == 3
    assert all(s["options"] == {"num_ctx": through.context_window} for s in through_sent)  # null: unset
    # The gateway's /api/show says how much context a client may use: the operator's NUM_CTX_MAX at most.
    assert through.context_window == min(direct.context_window, 32768)
