"""Reasoning models through every door: thinking asked for or not reaches the client apart from the content, as
Ollama gives it directly; the stream opens at the first thought; the row keeps thinking apart from the output."""

import json
import time

import httpx
import ollama as ollama_client
import openai
import pytest

from llm.models import Generation
from tests.conftest import GENERATE_URL, wait_for

pytestmark = pytest.mark.django_db(transaction=True)

THINKER = "qwen3:8b"  # tools and thinking on the fake; it thinks unless told not to, as Ollama's thinking models do
ASK = [{"role": "user", "content": "Why is the sky blue?"}]


@pytest.fixture
def ollama(ollama):
    """The fake Ollama with a reasoning model installed."""
    ollama.models.append(THINKER)
    return ollama


def via_gateway(gateway) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{gateway.url}/v1", api_key=gateway.key, timeout=10, max_retries=0)


def direct(ollama) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{ollama.url}/v1", api_key="ollama", timeout=10, max_retries=0)


def ollama_via_gateway(gateway) -> ollama_client.Client:
    return ollama_client.Client(host=gateway.url, headers={"Authorization": f"Bearer {gateway.key}"}, timeout=10,
                                trust_env=False)


def only_row() -> Generation:
    row = wait_for(lambda: Generation.objects.exclude(status="pending").first())
    assert Generation.objects.count() == 1
    return row


@pytest.mark.parametrize("effort", [None, "high"])
def test_openai_thinking_comes_back_as_reasoning_and_reasoning_content(gateway, ollama, effort):
    extra = {"reasoning_effort": effort} if effort else {}

    completion = via_gateway(gateway).chat.completions.create(model=THINKER, messages=ASK, **extra)
    expected = direct(ollama).chat.completions.create(model=THINKER, messages=ASK, **extra)

    message = completion.choices[0].message
    thought = f"Thinking (think={effort or 'true'}) about: Why is the sky blue?"
    assert message.reasoning == message.reasoning_content == expected.choices[0].message.reasoning == thought
    assert message.content == expected.choices[0].message.content == "Echo: Why is the sky blue?"
    assert completion.usage.completion_tokens == expected.usage.completion_tokens  # thinking tokens counted
    row = only_row()
    assert (row.thinking, row.output) == (thought, "Echo: Why is the sky blue?")
    assert row.completion_tokens == completion.usage.completion_tokens > len(row.output.split())


def test_openai_streamed_thinking_arrives_before_the_content_and_never_in_it(gateway, ollama):
    ollama.chunk_delay = 0.15
    started = time.monotonic()
    reasoning_at = content_at = None
    reasoning, content, reasoning_content = "", "", ""
    for chunk in via_gateway(gateway).chat.completions.create(model=THINKER, messages=ASK, stream=True):
        delta = chunk.choices[0].delta if chunk.choices else None
        if delta is None:
            continue
        if getattr(delta, "reasoning", None):
            reasoning_at = reasoning_at or time.monotonic() - started
            reasoning += delta.reasoning
            reasoning_content += delta.reasoning_content
        if delta.content:
            content_at = content_at or time.monotonic() - started
            content += delta.content

    expected = direct(ollama).chat.completions.create(model=THINKER, messages=ASK, stream=True)
    expected_reasoning = "".join(getattr(c.choices[0].delta, "reasoning", None) or "" for c in expected
                                 if c.choices)
    assert reasoning == reasoning_content == expected_reasoning and reasoning.startswith("Thinking (think=true)")
    assert content == "Echo: Why is the sky blue?"
    # The stream opened at the first thought: the client did not wait for the thinking phase to end.
    assert content_at - reasoning_at > 0.5
    row = only_row()
    assert row.first_token_ms < content_at * 1000 - 400
    assert (row.thinking, row.output) == (reasoning, content)


def test_replayed_reasoning_goes_back_as_thinking(gateway, ollama):
    conversation = ASK + [{"role": "assistant", "content": "Rayleigh scattering.", "reasoning": "Physics."},
                          {"role": "user", "content": "Shorter?"}]

    via_gateway(gateway).chat.completions.create(model=THINKER, messages=conversation, reasoning_effort="none")

    sent = ollama.requests[-1].json
    assert sent["messages"][1] == {"role": "assistant", "content": "Rayleigh scattering.", "thinking": "Physics."}
    assert sent["think"] is False


def test_ollama_dialect_thinking_unasked_and_streamed(gateway, ollama):
    client = ollama_via_gateway(gateway)

    whole = client.chat(model=THINKER, messages=ASK)
    expected = ollama_client.Client(host=ollama.url, trust_env=False).chat(model=THINKER, messages=ASK)
    parts = list(client.chat(model=THINKER, messages=ASK, stream=True, think="low"))

    assert (whole.message.thinking, whole.message.content) == (expected.message.thinking, expected.message.content)
    assert whole.message.thinking == "Thinking (think=true) about: Why is the sky blue?"
    assert whole.eval_count == expected.eval_count
    thinking = "".join(p.message.thinking or "" for p in parts)
    assert thinking == "Thinking (think=low) about: Why is the sky blue?"
    assert "".join(p.message.content for p in parts) == "Echo: Why is the sky blue?"
    assert not any(p.message.thinking and p.message.content for p in parts)


def test_generate_returns_thinking_beside_the_response(gateway, ollama):
    reply = ollama_via_gateway(gateway).generate(model=THINKER, prompt="Why is the sky blue?", think="medium")
    lines = [json.loads(line) for line in httpx.post(
        f"{gateway.url}/api/generate", json={"model": THINKER, "prompt": "Why?"}, trust_env=False,
        headers={"Authorization": f"Bearer {gateway.key}"}).text.splitlines()]

    assert reply.thinking == "Thinking (think=medium) about: Why is the sky blue?"
    assert reply.response == "Echo: Why is the sky blue?"
    assert "".join(line.get("thinking", "") for line in lines) == "Thinking (think=true) about: Why?"
    assert lines[-1]["done"] is True


def test_a_json_mode_check_reads_the_content_only(gateway, ollama):
    schema = {"type": "object", "properties": {"echo": {"type": "string"}}, "required": ["echo"]}

    reply = ollama_via_gateway(gateway).chat(model=THINKER, messages=ASK, format=schema, stream=False)

    assert json.loads(reply.message.content)["echo"] == "Why is the sky blue?"
    assert reply.message.thinking.startswith("Thinking")
    row = only_row()
    assert row.status == "succeeded" and row.output["echo"] == "Why is the sky blue?"
    assert row.thinking.startswith("Thinking")


def test_the_native_api_gains_thinking_when_the_model_produced_any(client, api_key, ollama, make_template):
    make_template("thinker", "explain", mode="text", model=THINKER, user_template="Explain {word}.")

    response = client.post(GENERATE_URL, {"role": "thinker", "task": "explain", "payload": {"word": "rain"}},
                           content_type="application/json", HTTP_AUTHORIZATION=f"Bearer {api_key}")

    body = response.json()
    assert response.status_code == 200, body
    assert body["thinking"].startswith("Thinking (think=true)") and body["output"].startswith("Echo:")
    assert Generation.objects.get().thinking == body["thinking"]


def test_mock_thinking_when_asked(gateway, settings):
    completion = via_gateway(gateway).chat.completions.create(model=THINKER, messages=ASK, reasoning_effort="low")

    assert completion.choices[0].message.reasoning.startswith("[mock thinking (low)]")
    assert "[mock thinking" not in completion.choices[0].message.content


def test_a_stream_cut_while_thinking_keeps_the_thinking_sent_on_its_row(gateway, ollama):
    ollama.fault("stream_error", after=3, message="runner died")

    with pytest.raises(ollama_client.ResponseError):
        list(ollama_via_gateway(gateway).chat(model=THINKER, messages=ASK, stream=True))

    row = only_row()
    assert (row.status, row.http_status, row.output, row.raw_output) == ("failed", 200, None, "")
    assert row.thinking == "Thinking (think=true) about:"  # the three pieces the client got
