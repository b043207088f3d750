"""An error of the gateway's own code, wherever it strikes: the client gets an error in its dialect (a final error
line for a stream, never a cut stream), the attempt one completed row with the text sent, and the log a bounded
record. Driven over a real socket, by the official clients, in the three dialects."""

import json
import logging

import httpx
import ollama as ollama_client
import openai
import pytest

from gateway_project.log_format import BoundedJsonFormatter
from llm import services
from llm.models import Generation
from tests.conftest import GENERATE_URL, wait_for

pytestmark = pytest.mark.django_db(transaction=True)

REPLY = "One two three four five six seven."
HELLO = [{"role": "user", "content": "Count."}]
NATIVE = {"role": "copywriter", "task": "sns", "payload": {"product": "Green tea", "tone": "calm"}, "mode": "text"}
# What a validator's exception carries: the whole reply it checked, quoted in its message.
HUGE = "x" * 150_000


@pytest.fixture
def broken_output_check(monkeypatch):
    """The output check raises what it was never meant to: not InvalidOutput, and with a huge message."""

    async def checked_output(content, mode, schema):
        raise RuntimeError(f"validator crashed on {content!r} {HUGE}")

    monkeypatch.setattr(services, "checked_output", checked_output)


def completed_row() -> Generation:
    row = wait_for(lambda: Generation.objects.exclude(status="pending").first())
    assert row is not None, "the row stayed pending"
    assert Generation.objects.count() == 1
    return row


def assert_bounded_log(caplog, message: str):
    records = [r for r in caplog.records if r.getMessage() == message]
    assert len(records) == 1, [r.getMessage() for r in caplog.records]
    line = BoundedJsonFormatter().format(records[0])
    assert "RuntimeError" in line and "characters left out" in line
    assert len(line) < 12_000, len(line)


def native_stream(gateway) -> tuple[int, list[dict]]:
    with gateway.client() as client:
        with client.stream("POST", GENERATE_URL, json={**NATIVE, "stream": True}) as response:
            return response.status_code, [json.loads(line) for line in response.iter_lines() if line.strip()]


# -- the output check after the last delta ---------------------------------------------------------------------------


def test_native_stream_ends_with_an_error_line_and_a_completed_row(gateway, ollama, broken_output_check, caplog):
    ollama.reply = REPLY

    status, lines = native_stream(gateway)

    assert status == 200
    *deltas, last = lines
    assert "".join(d["delta"] for d in deltas) == REPLY
    assert last["done"] is True and last["error"]["type"] == "internal_error"
    assert HUGE not in last["error"]["message"] and last["error"]["request_id"] == last["id"]
    row = completed_row()
    assert (str(row.id), row.status, row.error_type, row.http_status) == (last["id"], "failed", "internal_error", 200)
    assert row.raw_output == REPLY and row.stream is True and row.completion_tokens
    assert_bounded_log(caplog, "stream failed unexpectedly")


def test_native_unstreamed_is_a_500_in_the_error_shape_with_its_row(gateway, ollama, broken_output_check, caplog):
    ollama.reply = REPLY

    with gateway.client() as client:
        response = client.post(GENERATE_URL, json=NATIVE)

    assert response.status_code == 500
    error = response.json()["error"]
    assert error["type"] == "internal_error" and HUGE not in error["message"]
    row = completed_row()
    assert (str(row.id), row.status, row.error_type, row.http_status) == (error["request_id"], "failed",
                                                                          "internal_error", 500)
    assert_bounded_log(caplog, "generation failed unexpectedly")


def test_openai_stream_ends_with_the_sdks_error_event(gateway, ollama, broken_output_check):
    ollama.reply = REPLY
    client = openai.OpenAI(base_url=f"{gateway.url}/v1", api_key=gateway.key, timeout=10, max_retries=0)
    received = []

    with pytest.raises(openai.APIError) as raised:
        for chunk in client.chat.completions.create(model="qwen2.5:7b", messages=HELLO, stream=True):
            received.append(chunk.choices[0].delta.content or "")

    assert "".join(received) == REPLY
    assert raised.value.body["code"] == "internal_error" and raised.value.body["type"] == "server_error"
    row = completed_row()
    assert (row.dialect, row.status, row.error_type, row.raw_output) == ("openai", "failed", "internal_error", REPLY)


def test_openai_unstreamed_is_the_sdks_internal_server_error(gateway, ollama, broken_output_check):
    ollama.reply = REPLY
    client = openai.OpenAI(base_url=f"{gateway.url}/v1", api_key=gateway.key, timeout=10, max_retries=0)

    with pytest.raises(openai.InternalServerError) as raised:
        client.chat.completions.create(model="qwen2.5:7b", messages=HELLO)

    assert raised.value.body["code"] == "internal_error"
    row = completed_row()
    assert (row.dialect, row.status, row.error_type, row.http_status) == ("openai", "failed", "internal_error", 500)


def test_ollama_stream_ends_with_an_error_line(gateway, ollama, broken_output_check):
    ollama.reply = REPLY
    client = ollama_client.Client(host=gateway.url, headers={"Authorization": f"Bearer {gateway.key}"}, timeout=10,
                                  trust_env=False)
    received = []

    with pytest.raises(ollama_client.ResponseError) as raised:
        for part in client.chat(model="qwen2.5:7b", messages=HELLO, stream=True):
            received.append(part.message.content)

    assert "".join(received) == REPLY and "Unexpected gateway error" in raised.value.error
    row = completed_row()
    assert (row.dialect, row.status, row.error_type, row.raw_output) == ("ollama", "failed", "internal_error", REPLY)


def test_ollama_unstreamed_is_a_500_error(gateway, ollama, broken_output_check):
    ollama.reply = REPLY
    client = ollama_client.Client(host=gateway.url, headers={"Authorization": f"Bearer {gateway.key}"}, timeout=10,
                                  trust_env=False)

    with pytest.raises(ollama_client.ResponseError) as raised:
        client.chat(model="qwen2.5:7b", messages=HELLO, stream=False)

    assert raised.value.status_code == 500
    row = completed_row()
    assert (row.dialect, row.status, row.error_type, row.http_status) == ("ollama", "failed", "internal_error", 500)


# -- the front door's own rendering ------------------------------------------------------------------------------------


def test_a_delta_the_front_door_cannot_render_ends_the_stream_with_an_error_line(gateway, ollama, monkeypatch):
    from llm.dialects import ollama as dialect

    ollama.reply = REPLY
    render_piece = dialect._piece
    calls = []

    def piece(row, text, as_chat):
        calls.append(text)
        if len(calls) == 3:
            raise ValueError("cannot render this piece")
        return render_piece(row, text, as_chat)

    monkeypatch.setattr(dialect, "_piece", piece)
    with httpx.Client(base_url=gateway.url, headers={"Authorization": f"Bearer {gateway.key}"}, timeout=10,
                      trust_env=False) as client:
        response = client.post("/api/chat", json={"model": "qwen2.5:7b", "messages": HELLO})

    lines = [json.loads(line) for line in response.text.splitlines()]
    assert [line["message"]["content"] for line in lines[:-1]] == calls[:2]
    assert "Unexpected gateway error (ValueError)" in lines[-1]["error"]
    row = completed_row()
    assert (row.status, row.error_type, row.http_status) == ("failed", "internal_error", 200)
    assert row.raw_output == "".join(calls[:2])  # what the client was sent, not the piece that failed


def test_a_last_line_the_front_door_cannot_render_becomes_an_error_line(gateway, ollama, monkeypatch):
    from llm import views

    ollama.reply = REPLY

    def generation_body(row):
        raise TypeError("cannot render the answer")

    monkeypatch.setattr(views, "generation_body", generation_body)
    status, lines = native_stream(gateway)

    assert status == 200
    assert "".join(line.get("delta", "") for line in lines[:-1]) == REPLY
    assert lines[-1]["done"] is True and lines[-1]["error"]["type"] == "internal_error"
    row = completed_row()
    # The model's answer is on record, and so is the failure the client saw.
    assert (row.status, row.error_type, row.output, row.raw_output) == ("failed", "internal_error", REPLY, REPLY)


def test_an_unexpected_error_before_the_provider_is_a_500_with_its_row(gateway, ollama, monkeypatch):
    from llm.dialects import openai as dialect

    def parse(data):
        raise KeyError("a bug in the parser")

    monkeypatch.setattr(dialect, "parse", parse)
    client = openai.OpenAI(base_url=f"{gateway.url}/v1", api_key=gateway.key, timeout=10, max_retries=0)

    with pytest.raises(openai.InternalServerError):
        client.chat.completions.create(model="qwen2.5:7b", messages=HELLO)

    row = completed_row()
    assert (row.status, row.error_type, row.http_status, row.consumer.name) == ("failed", "internal_error", 500,
                                                                                "test-team")
    assert ollama.requests == []


# -- the log record --------------------------------------------------------------------------------------------------


def test_a_huge_traceback_becomes_a_bounded_record_with_its_ends():
    def innermost():
        raise RuntimeError("validator crashed: " + HUGE)

    try:
        innermost()
    except RuntimeError:
        record = logging.LogRecord("llm.services", logging.ERROR, __file__, 1, "failed " + "y" * 10_000, (), None)
        import sys

        record.exc_info = sys.exc_info()
    record.request_id = "abc"
    record.error = "z" * 50_000

    line = BoundedJsonFormatter().format(record)

    assert len(line) < 16_000
    data = json.loads(line)
    assert data["request_id"] == "abc"
    assert "innermost" in data["exc_info"] and "RuntimeError: validator crashed" in data["exc_info"]
    assert data["exc_info"].startswith("Traceback")
    assert len(data["error"]) <= 2_000 and len(data["message"]) <= 2_000
