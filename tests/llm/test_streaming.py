"""Streaming (NDJSON) and disconnects, over a real socket to the gateway under uvicorn."""

import json
import socket
import time

import httpx
import pytest

from llm.models import Generation
from tests.conftest import GENERATE_URL, SNS_REPLY, wait_for

pytestmark = pytest.mark.django_db(transaction=True)


def read_lines(response) -> list[dict]:
    return [json.loads(line) for line in response.iter_lines() if line.strip()]


def stream(gateway, body, **kwargs):
    with gateway.client() as client:
        with client.stream("POST", GENERATE_URL, json={**body, "stream": True}, **kwargs) as response:
            return response, read_lines(response)


def row_when_done(row_id, timeout=5.0) -> Generation:
    return wait_for(lambda: Generation.objects.filter(id=row_id).exclude(status="pending").first(), timeout)


# -- success ----------------------------------------------------------------------------------------------------------


def test_mock_streams_json_mode_in_pieces_then_the_validated_output(gateway, valid_request):
    response, lines = stream(gateway, valid_request)

    assert response.status_code == 200
    assert response.headers["content-type"] == "application/x-ndjson"
    row_id = response.headers["x-request-id"]
    *deltas, last = lines
    assert len(deltas) > 1 and all(line == {"id": row_id, "delta": line["delta"], "done": False} for line in deltas)
    assert last["done"] is True and last["id"] == row_id
    assert json.loads("".join(d["delta"] for d in deltas)) == last["output"]
    assert set(last["output"]) == {"caption", "hashtags", "call_to_action"}
    assert last["provider"] == "mock" and last["mode"] == "json"
    assert last["first_token_ms"] > 0 and last["latency_ms"] >= last["first_token_ms"]
    assert "upstream;dur=" in response.headers["server-timing"]

    row = Generation.objects.get(id=row_id)
    assert (row.status, row.http_status, row.stream) == ("succeeded", 200, True)
    assert row.output == last["output"] and row.first_token_ms == last["first_token_ms"]


def test_mock_streams_text_mode(gateway, valid_request):
    response, lines = stream(gateway, {**valid_request, "mode": "text"})

    text = "".join(line.get("delta", "") for line in lines[:-1])
    assert lines[-1]["output"] == text and text.startswith("[mock ")


def test_ollama_stream_is_relayed_piece_by_piece(gateway, ollama, valid_request):
    ollama.reply = SNS_REPLY

    response, lines = stream(gateway, valid_request)

    assert response.status_code == 200
    assert "".join(line.get("delta", "") for line in lines[:-1]) == SNS_REPLY
    assert len(lines) > 3
    last = lines[-1]
    assert last["output"] == json.loads(SNS_REPLY) and last["provider"] == "ollama"
    assert last["usage"]["prompt_tokens"] > 0 and last["usage"]["completion_tokens"] > 0
    sent = ollama.requests[-1].json
    assert sent["stream"] is True and sent["format"]["type"] == "object"
    row = Generation.objects.get(id=response.headers["x-request-id"])
    assert row.status == "succeeded" and row.completion_tokens == last["usage"]["completion_tokens"]


def test_a_request_without_stream_stays_unstreamed_upstream(gateway, ollama, valid_request):
    ollama.reply = SNS_REPLY
    with gateway.client() as client:
        response = client.post(GENERATE_URL, json=valid_request)

    assert response.status_code == 200 and response.json()["output"] == json.loads(SNS_REPLY)
    assert ollama.requests[-1].json["stream"] is False
    timing = dict(part.strip().split(";dur=") for part in response.headers["server-timing"].split(","))
    assert set(timing) == {"upstream", "gateway"} and float(timing["upstream"]) > 0
    assert Generation.objects.get(id=response.headers["x-request-id"]).stream is False


def test_live_client_is_built_once_and_keeps_its_connection(gateway, ollama, valid_request):
    ollama.reply = SNS_REPLY
    with gateway.client() as client:
        for _ in range(3):
            assert client.post(GENERATE_URL, json=valid_request).status_code == 200

    peers = {r.peer for r in ollama.requests}
    assert len(peers) == 1, f"expected one pooled keep-alive connection, saw {peers}"


# -- failures before the first token: the normal status and error body ------------------------------------------------


def test_a_missing_model_before_the_first_token_is_a_normal_404(gateway, ollama, valid_request):
    ollama.models[:] = []

    response, lines = stream(gateway, valid_request)

    assert response.status_code == 404
    assert lines[0]["error"]["type"] == "model_not_found"
    row = Generation.objects.get(id=response.headers["x-request-id"])
    assert (row.status, row.http_status, row.error_type) == ("failed", 404, "model_not_found")


def test_retries_and_fallback_happen_before_the_first_token(gateway, ollama, make_template):
    make_template("tester", "echo", mode="text", model="qwen2.5:7b", fallback_models=["llama3.2:1b"])
    # Ollama's 500 (the runner crashed) for every try of the first model: retried twice, then the fallback.
    ollama.fault("status", paths="/api/chat", times=3, status=500)
    ollama.reply = "Hello there."

    response, lines = stream(gateway, {"role": "tester", "task": "echo", "payload": {"word": "hi"}})

    assert response.status_code == 200
    assert lines[-1]["output"] == "Hello there." and lines[-1]["model"] == "llama3.2:1b"
    row = Generation.objects.get(id=response.headers["x-request-id"])
    assert [t["model"] for t in row.models_tried] == ["qwen2.5:7b", "llama3.2:1b"]
    assert row.attempts == 4


# -- failures after the stream started: an error line, the row says what happened ------------------------------------


def test_a_connection_cut_mid_stream_ends_it_with_an_error_line(gateway, ollama, valid_request):
    ollama.reply = SNS_REPLY
    ollama.fault("cut_off", paths="/api/chat")

    response, lines = stream(gateway, valid_request)

    assert response.status_code == 200
    last = lines[-1]
    assert last["done"] is True and last["error"]["type"] == "upstream_error"
    assert last["error"]["request_id"] == response.headers["x-request-id"]
    row = Generation.objects.get(id=response.headers["x-request-id"])
    assert (row.status, row.http_status, row.error_type) == ("failed", 200, "upstream_error")
    assert row.raw_output == "".join(line.get("delta", "") for line in lines[:-1])


def test_invalid_json_at_the_end_of_a_stream_is_an_invalid_output_line(gateway, ollama, valid_request):
    ollama.reply = "Sure! Here is your caption: tea."

    response, lines = stream(gateway, valid_request)

    assert lines[-1]["error"]["type"] == "invalid_output"
    assert len([r for r in ollama.requests if r.path == "/api/chat"]) == 1  # the text was sent: no second ask
    row = Generation.objects.get(id=response.headers["x-request-id"])
    assert row.error_type == "invalid_output" and row.raw_output == "Sure! Here is your caption: tea."


def test_silence_mid_stream_longer_than_the_timeout_is_an_upstream_timeout_line(gateway, ollama, settings,
                                                                                 valid_request):
    settings.OLLAMA_TIMEOUT = 0.5
    ollama.reply = SNS_REPLY
    ollama.fault("slow", paths="/api/chat", delay=0, chunk_delay=1.5)

    response, lines = stream(gateway, valid_request)

    assert lines[-1]["error"]["type"] == "upstream_timeout"
    assert "mid-stream" in lines[-1]["error"]["message"]


# -- clients that go away ---------------------------------------------------------------------------------------------


def raw_post(gateway, body: dict) -> socket.socket:
    """Send a generation request on a plain socket, to hang up on it at will."""
    host, port = gateway.url.removeprefix("http://").split(":")
    data = json.dumps(body).encode()
    sock = socket.create_connection((host, int(port)))
    sock.sendall(f"POST {GENERATE_URL} HTTP/1.1\r\nHost: {host}\r\nAuthorization: Bearer {gateway.key}\r\n"
                 f"Content-Type: application/json\r\nContent-Length: {len(data)}\r\n\r\n".encode() + data)
    return sock


def test_a_client_that_disconnects_mid_stream_leaves_a_499_row_and_cancels_upstream(gateway, ollama,
                                                                                      valid_request):
    ollama.reply = SNS_REPLY
    ollama.fault("slow", paths="/api/chat", delay=0, chunk_delay=0.3)
    sock = raw_post(gateway, {**valid_request, "stream": True})
    received = b""
    while b'"delta"' not in received:
        received += sock.recv(4096)
    row_id = received.split(b"x-request-id: ")[1].split(b"\r\n")[0].decode()
    sock.close()

    row = row_when_done(row_id)
    assert (row.status, row.error_type, row.http_status) == ("failed", "client_disconnected", 499)
    assert row.raw_output and SNS_REPLY.startswith(row.raw_output)
    assert row.prompt_tokens is None and row.completion_tokens >= 1
    assert row.first_token_ms is not None
    assert ollama.wait_for_cancelled(1, timeout=5)


def test_a_client_that_disconnects_before_a_plain_answer_cancels_upstream(gateway, ollama, valid_request):
    ollama.reply = SNS_REPLY
    ollama.fault("slow", paths="/api/chat", delay=5)
    sock = raw_post(gateway, valid_request)
    assert ollama.wait_for_requests(1, timeout=5)
    sock.close()

    row = wait_for(lambda: Generation.objects.exclude(status="pending").first())
    assert (row.status, row.error_type, row.http_status) == ("failed", "client_disconnected", 499)
    assert ollama.wait_for_cancelled(1, timeout=5)


# -- many at once -----------------------------------------------------------------------------------------------------


def test_200_concurrent_streams_leave_one_completed_row_each(gateway, ollama, valid_request, consumer):
    import asyncio

    consumer.rate_limit_per_minute = 0
    consumer.max_concurrent = 0  # 200 at once from one consumer: no cap in the way
    consumer.save()
    ollama.reply = SNS_REPLY
    ollama.fault("slow", paths="/api/chat", delay=0.2, chunk_delay=0.01)

    async def one(client):
        async with client.stream("POST", GENERATE_URL, json={**valid_request, "stream": True}) as response:
            lines = [json.loads(line) async for line in response.aiter_lines() if line.strip()]
            return response.status_code, lines[-1]

    async def run():
        limits = httpx.Limits(max_connections=200)
        async with gateway.async_client(limits=limits) as client:
            return await asyncio.gather(*(one(client) for _ in range(200)))

    results = asyncio.run(run())

    assert [status for status, _ in results] == [200] * 200
    assert all(last["done"] and "output" in last for _, last in results)
    assert Generation.objects.count() == 200
    assert Generation.objects.filter(status="succeeded", stream=True).count() == 200


# -- admission control --------------------------------------------------------------------------------------------------


def concurrently(gateway, bodies, stagger=0.15):
    """POST the bodies at once (each a bit after the previous), return the responses in order."""
    import asyncio

    async def run():
        async with gateway.async_client() as client:
            async def one(index, body):
                await asyncio.sleep(index * stagger)
                return await client.post(GENERATE_URL, json=body)
            return await asyncio.gather(*(one(i, b) for i, b in enumerate(bodies)))

    return asyncio.run(run())


def test_a_full_upstream_queue_answers_503_upstream_busy_and_audits_it(gateway, ollama, settings, valid_request):
    settings.UPSTREAM_MAX_IN_FLIGHT = 1
    settings.UPSTREAM_QUEUE_TIMEOUT = 0.2
    ollama.reply = SNS_REPLY
    ollama.fault("slow", paths="/api/chat", delay=1)

    first, second = concurrently(gateway, [valid_request, valid_request])

    assert first.status_code == 200
    assert second.status_code == 503 and second.json()["error"]["type"] == "upstream_busy"
    row = Generation.objects.get(id=second.headers["x-request-id"])
    assert (row.status, row.error_type, row.http_status) == ("failed", "upstream_busy", 503)
    assert len([r for r in ollama.requests if r.path == "/api/chat"]) == 1


def test_a_consumer_at_its_concurrency_cap_gets_429(gateway, ollama, consumer, valid_request):
    consumer.max_concurrent = 1
    consumer.save()
    ollama.reply = SNS_REPLY
    ollama.fault("slow", paths="/api/chat", delay=1)

    first, second = concurrently(gateway, [valid_request, valid_request])

    assert first.status_code == 200
    assert second.status_code == 429 and second.json()["error"]["type"] == "rate_limited"
    assert "max_concurrent=1" in second.json()["error"]["message"] and second.headers["retry-after"]
    assert Generation.objects.get(id=second.headers["x-request-id"]).error_type == "rate_limited"
    # The slot is given back: the next one goes through.
    with gateway.client() as client:
        assert client.post(GENERATE_URL, json=valid_request).status_code == 200


def test_a_consumer_without_a_cap_of_its_own_has_the_default_one(gateway, ollama, consumer, valid_request, settings):
    settings.DEFAULT_MAX_CONCURRENT = 2
    settings.RATE_LIMIT_PER_MINUTE = 0
    ollama.reply = SNS_REPLY
    ollama.fault("slow", paths="/api/chat", delay=1)

    answers = concurrently(gateway, [valid_request] * 3)

    assert sorted(a.status_code for a in answers) == [200, 200, 429]
    refused = next(a for a in answers if a.status_code == 429)
    assert "DEFAULT_MAX_CONCURRENT=2" in refused.json()["error"]["message"]
    assert len([r for r in ollama.requests if r.path == "/api/chat"]) == 2


def test_a_consumer_with_a_cap_of_0_has_none(gateway, ollama, consumer, valid_request, settings):
    settings.DEFAULT_MAX_CONCURRENT = 1
    settings.RATE_LIMIT_PER_MINUTE = 0
    consumer.max_concurrent = 0
    consumer.save()
    ollama.reply = SNS_REPLY
    ollama.fault("slow", paths="/api/chat", delay=1)

    answers = concurrently(gateway, [valid_request] * 3)

    assert [a.status_code for a in answers] == [200, 200, 200]


def test_the_generation_deadline_covers_retries_and_answers_504(gateway, ollama, settings, valid_request):
    settings.GENERATION_DEADLINE = 0.6
    ollama.fault("slow", paths="/api/chat", delay=3)
    started = time.monotonic()

    with gateway.client() as client:
        response = client.post(GENERATE_URL, json=valid_request)

    assert response.status_code == 504 and response.json()["error"]["type"] == "upstream_timeout"
    assert "GENERATION_DEADLINE" in response.json()["error"]["message"]
    assert time.monotonic() - started < 2
    row = Generation.objects.get(id=response.headers["x-request-id"])
    assert (row.status, row.error_type) == ("failed", "upstream_timeout")


def test_a_client_that_leaves_during_the_first_database_step_still_leaves_its_row(gateway, monkeypatch,
                                                                                   valid_request):
    from llm import services

    real_begin = services._begin
    entered = []

    def slow_begin(**kwargs):
        entered.append(True)
        time.sleep(0.5)  # the client hangs up meanwhile
        return real_begin(**kwargs)

    monkeypatch.setattr(services, "_begin", slow_begin)
    sock = raw_post(gateway, valid_request)
    assert wait_for(lambda: entered, timeout=5)
    sock.close()

    row = wait_for(lambda: Generation.objects.exclude(status="pending").first())
    assert (row.status, row.error_type, row.http_status) == ("failed", "client_disconnected", 499)
    assert Generation.objects.count() == 1


def test_a_stream_is_logged_once_when_it_ends_with_its_real_duration(gateway, settings, valid_request, caplog):
    import logging

    settings.MOCK_RESPONSE_DELAY = 0.4
    with caplog.at_level(logging.INFO, logger="gateway.request"):
        response, lines = stream(gateway, valid_request)
        wait_for(lambda: [r for r in caplog.records if getattr(r, "request_id", None) == lines[-1]["id"]])

    records = [r for r in caplog.records if getattr(r, "request_id", None) == response.headers["x-request-id"]]
    assert len(records) == 1
    assert records[0].status == 200 and records[0].stream is True
    assert records[0].duration_ms >= 400  # the whole stream, not the time to its first byte


def test_the_template_catalog_gives_its_database_connection_back(gateway, settings, valid_request):
    """More catalog reads than the pool has connections (PostgreSQL), then a generation: nothing waits for one."""
    with gateway.client(timeout=5) as client:
        for _ in range(settings.DATABASE_POOL_SIZE + 4):
            assert client.get("/api/v1/llm/templates").status_code == 200
        assert client.post(GENERATE_URL, json=valid_request).status_code == 200
