"""Tool calling through both dialects, each call made through the gateway and, with the same client, to the fake
Ollama directly (its /v1 layer follows Ollama's openai.go): the same answers, one audit row per call, and tool calls
never split, lost or held back in a stream."""

import json
import time

import httpx
import ollama as ollama_client
import openai
import pytest

from llm.models import Generation, ToolSet
from tests.conftest import wait_for

pytestmark = pytest.mark.django_db(transaction=True)

MODEL = "qwen2.5:7b"  # has the "tools" capability on the fake
WEATHER = {"type": "function", "function": {
    "name": "get_weather", "description": "The weather in a city.",
    "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}}
CLOCK = {"type": "function", "function": {
    "name": "get_time", "description": "The time in a time zone.",
    "parameters": {"type": "object", "properties": {"zone": {"type": "string"}}, "required": ["zone"]}}}
NEWS = {"type": "function", "function": {"name": "get_news", "parameters": {"type": "object", "properties": {}}}}
ASK = [{"role": "user", "content": "Weather in Paris?"}]


def via_gateway(gateway) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{gateway.url}/v1", api_key=gateway.key, timeout=10, max_retries=0)


def direct(ollama) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{ollama.url}/v1", api_key="ollama", timeout=10, max_retries=0)


def ollama_via_gateway(gateway) -> ollama_client.Client:
    return ollama_client.Client(host=gateway.url, headers={"Authorization": f"Bearer {gateway.key}"}, timeout=10,
                                trust_env=False)


def ollama_direct(ollama) -> ollama_client.Client:
    return ollama_client.Client(host=ollama.url, timeout=10, trust_env=False)


def rows(count: int) -> list[Generation]:
    wait_for(lambda: Generation.objects.exclude(status="pending").count() == count)
    assert Generation.objects.count() == count
    return list(Generation.objects.order_by("created_at"))


def calls_of(completion) -> list[tuple]:
    message = completion.choices[0].message
    return [(c.id, c.type, c.function.name, json.loads(c.function.arguments)) for c in message.tool_calls or []]


def streamed(client: openai.OpenAI, **kwargs) -> tuple[list[list[tuple]], str, str, str]:
    """A streamed completion: the tool calls chunk by chunk (as sent), the text, the reasoning, the finish reason."""
    groups, text, reasoning, finish = [], "", "", None
    for chunk in client.chat.completions.create(stream=True, **kwargs):
        if not chunk.choices:
            continue
        choice = chunk.choices[0]
        delta = choice.delta
        if delta.tool_calls:
            groups.append([(c.index, c.id, c.function.name, json.loads(c.function.arguments))
                           for c in delta.tool_calls])
        text += delta.content or ""
        reasoning += getattr(delta, "reasoning", None) or ""
        finish = choice.finish_reason or finish
    return groups, text, reasoning, finish


def ndjson(url: str, body: dict, headers: dict | None = None) -> list[dict]:
    with httpx.stream("POST", url, json=body, headers=headers or {}, timeout=10, trust_env=False) as response:
        assert response.status_code == 200, response.read()
        return [json.loads(line) for line in response.iter_lines() if line]


# -- OpenAI dialect -----------------------------------------------------------------------------------------------------


def test_openai_tool_round_trip_gives_the_same_answers_as_ollama_directly(gateway, ollama):
    gateway_sdk, direct_sdk = via_gateway(gateway), direct(ollama)

    first = gateway_sdk.chat.completions.create(model=MODEL, messages=ASK, tools=[WEATHER])
    expected = direct_sdk.chat.completions.create(model=MODEL, messages=ASK, tools=[WEATHER])

    assert calls_of(first) == calls_of(expected) == [(expected.choices[0].message.tool_calls[0].id, "function",
                                                      "get_weather", {"city": "Weather in Paris?"})]
    assert first.choices[0].finish_reason == expected.choices[0].finish_reason == "tool_calls"
    assert first.choices[0].message.content is None  # OpenAI's shape of a reply that only calls tools
    assert first.usage.completion_tokens == expected.usage.completion_tokens

    call = first.choices[0].message.tool_calls[0]
    conversation = ASK + [first.choices[0].message.model_dump(exclude_none=True),
                          {"role": "tool", "tool_call_id": call.id, "content": "Sunny, 21 C"}]
    final = gateway_sdk.chat.completions.create(model=MODEL, messages=conversation, tools=[WEATHER])
    final_direct = direct_sdk.chat.completions.create(model=MODEL, messages=conversation, tools=[WEATHER])

    assert final.choices[0].message.content == final_direct.choices[0].message.content
    assert final.choices[0].message.content == "Tool results: get_weather: Sunny, 21 C"
    assert final.choices[0].finish_reason == "stop" and not final.choices[0].message.tool_calls

    asked, answered = rows(2)
    assert asked.tool_calls == [{"id": call.id, "name": "get_weather", "arguments": {"city": "Weather in Paris?"}}]
    assert (asked.status, asked.output, asked.finish_reason) == ("succeeded", "", "stop")
    assert asked.tool_set_id == answered.tool_set_id == ToolSet.objects.get().sha256
    assert answered.prompt[-1] == {"role": "tool", "content": "Sunny, 21 C", "tool_name": "get_weather",
                                   "tool_call_id": call.id}
    assert answered.prompt[-2]["tool_calls"] == asked.tool_calls
    assert answered.output == "Tool results: get_weather: Sunny, 21 C" and answered.tool_calls is None


def test_openai_streamed_tool_calls_match_ollama_directly_chunk_by_chunk(gateway, ollama):
    ollama.tool_mode = "all"
    kwargs = {"model": MODEL, "messages": ASK, "tools": [WEATHER, CLOCK, NEWS]}

    through = streamed(via_gateway(gateway), **kwargs)
    expected = streamed(direct(ollama), **kwargs)

    groups, text, _, finish = through
    assert groups == expected[0]
    assert [len(group) for group in groups] == [1, 1, 1]
    assert [call[0] for group in groups for call in group] == [0, 1, 2]  # numbered over the whole stream
    assert finish == expected[3] == "tool_calls" and text == ""
    row = rows(1)[0]
    assert row.stream and [c["name"] for c in row.tool_calls] == ["get_weather", "get_time", "get_news"]
    assert [c["id"] for c in row.tool_calls] == [call[1] for group in groups for call in group]


def test_a_streamed_call_is_passed_on_as_soon_as_it_arrives(gateway, ollama):
    ollama.tool_mode, ollama.chunk_delay = "all", 0.3
    started, arrivals, finished = time.monotonic(), [], None
    for chunk in via_gateway(gateway).chat.completions.create(model=MODEL, messages=ASK, stream=True,
                                                             tools=[WEATHER, CLOCK, NEWS]):
        if chunk.choices and chunk.choices[0].delta.tool_calls:
            arrivals.append(time.monotonic() - started)
        if chunk.choices and chunk.choices[0].finish_reason:
            finished = time.monotonic() - started

    assert len(arrivals) == 3
    # Each call reached the client while Ollama was still generating the next: none was held back.
    assert arrivals[1] - arrivals[0] > 0.2 and arrivals[2] - arrivals[1] > 0.2 and finished - arrivals[0] > 0.5


@pytest.mark.parametrize("per_chunk", [3, 0])
def test_several_calls_in_one_chunk_stay_together_in_both_dialects(gateway, ollama, per_chunk):
    """3: Ollama sends the three calls in one chunk; 0: on its final chunk, as llama-server's path does."""
    ollama.tool_mode, ollama.tool_calls_per_chunk = "all", per_chunk
    kwargs = {"model": MODEL, "messages": ASK, "tools": [WEATHER, CLOCK, NEWS]}

    groups, _, _, finish = streamed(via_gateway(gateway), **kwargs)
    assert groups == streamed(direct(ollama), **kwargs)[0]
    assert [len(group) for group in groups] == [3] and [c[0] for c in groups[0]] == [0, 1, 2]
    assert finish == "tool_calls"

    body = {"model": MODEL, "messages": ASK, "tools": [WEATHER, CLOCK, NEWS]}
    through = ndjson(f"{gateway.url}/api/chat", body, {"Authorization": f"Bearer {gateway.key}"})
    expected = ndjson(f"{ollama.url}/api/chat", body)
    sent_calls = [line["message"]["tool_calls"] for line in through if line["message"].get("tool_calls")]
    assert sent_calls == [line["message"]["tool_calls"] for line in expected if line["message"].get("tool_calls")]
    assert len(sent_calls) == 1 and len(sent_calls[0]) == 3
    assert through[-1]["done"] is True and "error" not in through[-1]


def test_a_tool_call_reply_in_json_mode_is_not_checked_as_json(gateway, ollama):
    completion = via_gateway(gateway).chat.completions.create(
        model=MODEL, messages=ASK, tools=[WEATHER], response_format={"type": "json_object"})

    assert calls_of(completion)[0][2] == "get_weather"
    row = rows(1)[0]
    assert (row.status, row.mode, row.output, row.error_type) == ("succeeded", "json", "", "")


def test_ids_are_minted_when_ollama_sends_none(gateway, ollama):
    # An older Ollama: tool calls without ids.
    reply = {"model": MODEL, "created_at": "2025-01-20T10:00:00Z", "done": True, "done_reason": "stop",
             "message": {"role": "assistant", "content": "", "tool_calls": [
                 {"function": {"name": "get_weather", "arguments": {"city": "Paris"}}},
                 {"function": {"name": "get_weather", "arguments": {"city": "Lyon"}}}]},
             "prompt_eval_count": 10, "eval_count": 12}
    ollama.fault("malformed", body=json.dumps(reply), times=2)

    completion = via_gateway(gateway).chat.completions.create(model=MODEL, messages=ASK, tools=[WEATHER])
    native = ollama_via_gateway(gateway).chat(model=MODEL, messages=ASK, tools=[WEATHER])

    ids = [call.id for call in completion.choices[0].message.tool_calls]
    assert len(set(ids)) == 2 and all(i.startswith("call_") and len(i) == 29 for i in ids)
    assert completion.choices[0].finish_reason == "tool_calls"
    openai_row, ollama_row = rows(2)
    assert [c["id"] for c in openai_row.tool_calls] == ids
    # The Ollama dialect gives the calls back as Ollama sent them: no id added.
    assert [c.model_dump(exclude_none=True) for c in native.message.tool_calls] == [
        {"function": {"name": "get_weather", "arguments": {"city": "Paris"}}},
        {"function": {"name": "get_weather", "arguments": {"city": "Lyon"}}}]
    assert all(c["id"].startswith("call_") for c in ollama_row.tool_calls)


def test_the_mock_provider_calls_a_tool_and_reads_its_result(gateway):
    client = via_gateway(gateway)

    first = client.chat.completions.create(model=MODEL, messages=ASK, tools=[WEATHER])
    call = first.choices[0].message.tool_calls[0]
    final = client.chat.completions.create(model=MODEL, tools=[WEATHER], messages=ASK + [
        first.choices[0].message.model_dump(exclude_none=True),
        {"role": "tool", "tool_call_id": call.id, "content": "Sunny"}])

    assert call.function.name == "get_weather" and json.loads(call.function.arguments)["city"]
    assert first.choices[0].finish_reason == "tool_calls"
    assert "read the result of get_weather: Sunny" in final.choices[0].message.content


def test_a_model_without_tools_gets_ollamas_own_error(gateway, ollama):
    ollama.models.append("deepseek-r1:7b")  # thinking, no tools

    with pytest.raises(openai.BadRequestError) as raised:
        via_gateway(gateway).chat.completions.create(model="deepseek-r1:7b", messages=ASK, tools=[WEATHER])

    assert "does not support tools" in raised.value.message
    assert rows(1)[0].error_type == "invalid_request"


# -- Ollama dialect -----------------------------------------------------------------------------------------------------


def test_ollama_tool_round_trip_gives_back_the_calls_byte_for_byte(gateway, ollama):
    gateway_client, direct_client = ollama_via_gateway(gateway), ollama_direct(ollama)

    first = gateway_client.chat(model=MODEL, messages=ASK, tools=[WEATHER], stream=False)
    expected = direct_client.chat(model=MODEL, messages=ASK, tools=[WEATHER], stream=False)

    assert first.message.tool_calls == expected.message.tool_calls
    assert first.done_reason == expected.done_reason == "stop"
    with gateway.client() as http:
        raw = http.post("/api/chat", json={"model": MODEL, "messages": ASK, "tools": [WEATHER], "stream": False})
    direct_raw = httpx.post(f"{ollama.url}/api/chat", json={"model": MODEL, "messages": ASK, "tools": [WEATHER],
                                                            "stream": False}, trust_env=False)
    assert raw.json()["message"]["tool_calls"] == direct_raw.json()["message"]["tool_calls"]
    assert raw.json()["message"]["tool_calls"][0]["function"]["index"] == 0

    conversation = ASK + [first.message, {"role": "tool", "tool_name": "get_weather", "content": "Sunny",
                                          "tool_call_id": first.message.tool_calls[0].model_dump().get("id")}]
    final = gateway_client.chat(model=MODEL, messages=conversation, tools=[WEATHER])
    final_direct = direct_client.chat(model=MODEL, messages=conversation, tools=[WEATHER])

    assert final.message.content == final_direct.message.content == "Tool results: get_weather: Sunny"
    assert len(rows(3)) == 3


def test_ollama_streamed_tool_calls_come_back_as_sent(gateway, ollama):
    ollama.tool_mode = "all"

    parts = list(ollama_via_gateway(gateway).chat(model=MODEL, messages=ASK, tools=[WEATHER, CLOCK], stream=True))
    expected = list(ollama_direct(ollama).chat(model=MODEL, messages=ASK, tools=[WEATHER, CLOCK], stream=True))

    calls = [p.message.tool_calls for p in parts if p.message.tool_calls]
    assert calls == [p.message.tool_calls for p in expected if p.message.tool_calls] and len(calls) == 2
    assert parts[-1].done and parts[-1].eval_count == expected[-1].eval_count
    assert [c["name"] for c in rows(1)[0].tool_calls] == ["get_weather", "get_time"]


def test_streamed_round_trips_in_both_dialects(gateway, ollama):
    """Call, tool result, final answer, every step streamed, as agents with streaming on run them."""
    groups, _, _, finish = streamed(via_gateway(gateway), model=MODEL, messages=ASK, tools=[WEATHER])
    (_, call_id, name, arguments), = groups[0]
    assert finish == "tool_calls"
    replay = ASK + [{"role": "assistant", "content": None, "tool_calls": [
        {"id": call_id, "type": "function", "function": {"name": name, "arguments": json.dumps(arguments)}}]},
        {"role": "tool", "tool_call_id": call_id, "content": "Sunny"}]
    _, text, _, finish = streamed(via_gateway(gateway), model=MODEL, messages=replay, tools=[WEATHER])
    assert (text, finish) == ("Tool results: get_weather: Sunny", "stop")

    client = ollama_via_gateway(gateway)
    parts = list(client.chat(model=MODEL, messages=ASK, tools=[WEATHER], stream=True))
    calls = [call for part in parts for call in part.message.tool_calls or []]
    answer = "".join(part.message.content for part in client.chat(model=MODEL, tools=[WEATHER], stream=True, messages=[
        *ASK, {"role": "assistant", "content": "", "tool_calls": calls},
        {"role": "tool", "tool_name": "get_weather", "content": "Sunny"}]))
    assert answer == "Tool results: get_weather: Sunny"
    assert [row.stream for row in rows(4)] == [True] * 4
