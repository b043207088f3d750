"""Upstream faults: bounded retries with backoff for connection errors, 429 and 5xx; never for other 4xx."""

import asyncio
import json
import socket
import time

import pytest

from llm.models import Generation
from llm.providers import OllamaProvider
from tests.conftest import SNS_REPLY, assert_error

pytestmark = pytest.mark.django_db


def only_row():
    rows = list(Generation.objects.all())
    assert len(rows) == 1, rows
    return rows[0]


def chat_calls(ollama):
    return [r for r in ollama.requests if r.path == "/api/chat"]


@pytest.fixture
def one_model(valid_request):
    """The request naming its model: no fallback model is tried, so every call counted is a retry of this one."""
    return {**valid_request, "model": "qwen2.5:7b"}


@pytest.mark.parametrize(
    "fault, params",
    [
        ("status", {"status": 500}),
        ("status", {"status": 503, "message": "server busy, please try again."}),
        ("status", {"status": 429, "message": "too many requests"}),
        ("reset", {}),
        ("cut_off", {}),
    ],
)
def test_a_passing_fault_is_retried_and_the_client_never_sees_it(generate, valid_request, ollama, fault, params):
    ollama.reply = SNS_REPLY
    ollama.fault(fault, times=2, **params)

    response = generate(valid_request)

    assert response.status_code == 200, response.content
    assert len(chat_calls(ollama)) == 3
    row = only_row()
    assert (row.status, row.attempts) == ("succeeded", 3)


@pytest.mark.parametrize(
    "fault, params, status, type_",
    [
        ("status", {"status": 500}, 502, "upstream_error"),
        ("status", {"status": 429, "message": "too many requests"}, 503, "upstream_unavailable"),
        ("reset", {}, 502, "upstream_error"),
    ],
)
def test_retries_are_bounded(generate, one_model, ollama, fault, params, status, type_):
    ollama.fault(fault, **params)

    error = assert_error(generate(one_model), status, type_)

    assert len(chat_calls(ollama)) == 3  # OLLAMA_MAX_RETRIES=2: one try and two retries
    row = only_row()
    assert (row.error_type, row.attempts) == (type_, 3)
    assert error["message"].endswith("(3 attempts)")


def test_max_retries_setting(generate, one_model, ollama, settings):
    settings.OLLAMA_MAX_RETRIES = 0
    ollama.fault("status", status=500, times=1)

    assert_error(generate(one_model), 502, "upstream_error")
    assert len(chat_calls(ollama)) == 1
    assert only_row().attempts == 1


@pytest.mark.parametrize(
    "status, message, expected_status, type_",
    [
        (400, "invalid options", 400, "invalid_request"),
        (404, 'model "qwen2.5:7b" not found, try pulling it first', 404, "model_not_found"),
        (401, "unauthorized", 502, "upstream_error"),
        (413, "request too large", 502, "upstream_error"),
    ],
)
def test_other_4xx_are_never_retried(generate, one_model, ollama, status, message, expected_status, type_):
    ollama.fault("status", status=status, message=message)

    assert_error(generate(one_model), expected_status, type_)
    assert len(chat_calls(ollama)) == 1
    assert only_row().attempts == 1


def test_a_read_timeout_is_not_retried(generate, valid_request, ollama, settings):
    settings.OLLAMA_TIMEOUT = 0.3
    ollama.fault("slow", delay=2)

    started = time.monotonic()
    assert_error(generate(valid_request), 504, "upstream_timeout")

    assert time.monotonic() - started < 1.5  # one wait of OLLAMA_TIMEOUT, not three
    assert len(chat_calls(ollama)) == 1
    assert only_row().attempts == 1


def test_connection_refused_is_retried_then_503(generate, valid_request, settings, refused_url):
    settings.GENERATOR_MODE = "live"
    settings.OLLAMA_BASE_URL = refused_url
    settings.OLLAMA_RETRY_BACKOFF = 0.05

    started = time.monotonic()
    error = assert_error(generate(valid_request), 503, "upstream_unavailable")

    # Two pauses: 25-50 ms, then 50-100 ms.
    assert time.monotonic() - started >= 0.075
    assert "3 attempts" in error["message"]
    assert only_row().attempts == 3


@pytest.fixture
def unresponsive_listener():
    """A loopback port whose accept queue is full: new connections get no SYN-ACK, so connecting times out."""
    server = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    server.bind(("127.0.0.1", 0))
    server.listen(0)
    port = server.getsockname()[1]
    fillers = []
    for _ in range(4):
        filler = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        filler.setblocking(False)
        filler.connect_ex(("127.0.0.1", port))
        fillers.append(filler)
    time.sleep(0.05)
    yield f"http://127.0.0.1:{port}"
    for sock in (*fillers, server):
        sock.close()


def test_the_connect_timeout_is_separate_and_short(generate, valid_request, settings, unresponsive_listener):
    settings.GENERATOR_MODE = "live"
    settings.OLLAMA_BASE_URL = unresponsive_listener
    settings.OLLAMA_CONNECT_TIMEOUT = 0.2
    settings.OLLAMA_TIMEOUT = 30
    settings.OLLAMA_MAX_RETRIES = 0

    started = time.monotonic()
    error = assert_error(generate(valid_request), 503, "upstream_unavailable")

    assert time.monotonic() - started < 5
    assert "within 0.2s" in error["message"]


def test_backoff_grows_exponentially_with_jitter():
    provider = OllamaProvider(base_url="http://127.0.0.1:9", timeout=1, connect_timeout=1, retry_backoff=0.02)

    async def pause(attempt):
        started = time.perf_counter()
        await provider._pause(attempt)
        return time.perf_counter() - started

    async def pauses():
        return [await pause(1) for _ in range(6)], [await pause(2) for _ in range(3)]

    first, second = asyncio.run(pauses())

    # base/2 .. base, then doubled; a sleep never ends early, and may end late on a busy machine (the slack).
    assert all(0.01 <= p < 0.02 + 0.1 for p in first)
    assert all(0.02 <= p < 0.04 + 0.1 for p in second)
    assert len({round(p, 4) for p in first}) > 1  # jittered, not in lockstep


# -- json mode: a reply that is not a JSON object is asked for once more -------------------------------------------


def chat_reply(content: str) -> str:
    return json.dumps({"model": "qwen2.5:7b", "created_at": "2025-01-20T10:00:00Z",
                       "message": {"role": "assistant", "content": content}, "done": True,
                       "prompt_eval_count": 10, "eval_count": 3})


def test_prose_in_json_mode_is_retried_once_and_then_succeeds(generate, valid_request, ollama):
    ollama.reply = SNS_REPLY
    ollama.fault("malformed", body=chat_reply("Sure! Here is your caption."), times=1)

    response = generate(valid_request)

    assert response.status_code == 200, response.content
    assert isinstance(response.json()["output"], dict)
    assert len(chat_calls(ollama)) == 2
    assert only_row().attempts == 2


def test_prose_twice_in_json_mode_is_invalid_output_with_the_raw_text_kept(generate, valid_request, ollama):
    ollama.reply = "Sure! Here is your caption."

    assert_error(generate(valid_request), 502, "invalid_output")

    assert len(chat_calls(ollama)) == 2
    row = only_row()
    assert (row.error_type, row.attempts, row.raw_output) == ("invalid_output", 2, "Sure! Here is your caption.")


def test_text_mode_is_not_retried_for_its_content(generate, valid_request, ollama):
    ollama.reply = "Sure! Here is your caption."

    assert generate({**valid_request, "mode": "text"}).status_code == 200
    assert len(chat_calls(ollama)) == 1


def test_mock_and_early_failures_record_attempts(generate, valid_request):
    assert generate(valid_request).status_code == 200
    assert Generation.objects.get().attempts == 1
    Generation.objects.all().delete()

    assert_error(generate({"role": 1}), 400, "invalid_request")
    assert only_row().attempts == 0


def test_a_client_whose_pool_leaked_its_connections_is_replaced(ollama, generate, valid_request, monkeypatch):
    """httpcore can lose pool slots to cancelled requests until every call waits for a connection (PoolTimeout,
    encode/httpcore#1093); the gateway then replaces that client, and the call goes through on the new one."""
    import httpx

    from llm.providers import get_provider

    ollama.reply = SNS_REPLY
    provider = get_provider()
    real_new_client = provider._new_client
    made = []

    def new_client():
        if not made:  # the first client's pool is "full" for ever
            def exhausted(request):
                raise httpx.PoolTimeout("no connection available", request=request)
            client = httpx.AsyncClient(base_url=provider.base_url, transport=httpx.MockTransport(exhausted))
        else:
            client = real_new_client()
        made.append(client)
        return client

    monkeypatch.setattr(provider, "_new_client", new_client)

    response = generate(valid_request)

    assert response.status_code == 200, response.content
    assert len(made) == 2
    assert Generation.objects.get().attempts == 2
