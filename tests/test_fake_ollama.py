"""The fake Ollama server, exercised over real sockets with httpx."""

import json
import threading
import time

import httpx
import pytest

from tests.fake_ollama import FakeOllama, free_port_refused

CHAT = {
    "model": "qwen2.5:7b",
    "messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "hello there"}],
}
GENERATE = {"model": "llama3.2:1b", "prompt": "why is the sky blue"}
STATS = ("total_duration", "load_duration", "prompt_eval_count", "prompt_eval_duration", "eval_count", "eval_duration")


@pytest.fixture
def fake():
    with FakeOllama() as server:
        yield server


@pytest.fixture
def client(fake):
    with httpx.Client(base_url=fake.url, timeout=5) as c:
        yield c


def test_root_version_tags_and_show(fake, client):
    root = client.get("/")
    assert (root.status_code, root.text) == (200, "Ollama is running")
    assert root.headers["content-type"].startswith("text/plain")
    assert client.get("/api/version").json() == {"version": "0.5.7"}
    fake.models.append("mistral")
    models = client.get("/api/tags").json()["models"]
    assert [m["name"] for m in models] == ["qwen2.5:7b", "llama3.2:1b", "mistral"]
    assert {"model", "modified_at", "size", "digest", "details"} <= models[0].keys()
    assert models[0]["details"]["parameter_size"] == "7B"
    assert client.post("/api/show", json={"model": "mistral:latest"}).json()["details"]["format"] == "gguf"


def test_chat_non_stream(client):
    r = client.post("/api/chat", json={**CHAT, "stream": False})
    assert r.status_code == 200 and r.headers["content-type"].startswith("application/json")
    body = r.json()
    assert body["message"] == {"role": "assistant", "content": "Echo: hello there"}
    assert (body["model"], body["done"], body["done_reason"]) == ("qwen2.5:7b", True, "stop")
    assert (body["prompt_eval_count"], body["eval_count"]) == (4, 3)
    assert all(isinstance(body[k], int) and body[k] > 0 for k in STATS)


def test_generate_non_stream(client):
    body = client.post("/api/generate", json={**GENERATE, "stream": False}).json()
    assert body["response"] == "Echo: why is the sky blue"
    assert (body["prompt_eval_count"], body["eval_count"]) == (5, 6)
    assert body["done"] is True and len(body["context"]) == 11


@pytest.mark.parametrize("path, payload", [("/api/chat", CHAT), ("/api/generate", GENERATE)])
def test_stream_is_ndjson_ending_in_done(client, path, payload):
    with client.stream("POST", path, json=payload) as r:
        assert r.headers["content-type"] == "application/x-ndjson"
        assert r.headers["transfer-encoding"] == "chunked"
        *parts, last = [json.loads(line) for line in r.iter_lines() if line]
    text = "".join(p["message"]["content"] if "message" in p else p["response"] for p in parts)
    assert len(parts) > 1 and not any(p["done"] for p in parts)
    assert text == "Echo: " + (payload.get("prompt") or "hello there")
    assert last["done"] is True and last["done_reason"] == "stop" and all(k in last for k in STATS)
    assert (last["message"]["content"] if "message" in last else last["response"]) == ""


def test_json_format_and_reply_override(fake, client):
    schema = {"type": "object", "properties": {"echo": {"type": "string"}}}
    for fmt in ("json", schema):
        r = client.post("/api/chat", json={**CHAT, "format": fmt, "stream": False})
        assert json.loads(r.json()["message"]["content"]) == {"echo": "hello there", "model": "qwen2.5:7b"}
    fake.reply = "Sure! Here is your JSON:"
    r = client.post("/api/chat", json={**CHAT, "format": "json", "stream": False})
    assert r.json()["message"]["content"] == "Sure! Here is your JSON:"


@pytest.mark.parametrize("path", ["/api/chat", "/api/generate"])
def test_request_errors(client, path):
    r = client.post(path, json={**CHAT, "model": "nope:1b", "prompt": "x"})
    assert (r.status_code, r.json()) == (404, {"error": 'model "nope:1b" not found, try pulling it first'})
    r = client.post(path, json={"prompt": "x", "messages": CHAT["messages"]})
    assert (r.status_code, r.json()) == (400, {"error": "model is required"})
    r = client.post(path, content=b"{oops", headers={"Content-Type": "application/json"})
    assert r.status_code == 400 and r.json()["error"]


def test_slow_fault_trips_a_short_read_timeout(fake, client):
    fake.fault("slow", delay=3)
    started = time.monotonic()
    with pytest.raises(httpx.ReadTimeout):
        client.get("/api/tags", timeout=0.2)
    assert time.monotonic() - started < 1


def test_hang_holds_the_request_until_stop_which_is_prompt():
    fake = FakeOllama().start()
    fake.fault("hang")
    with pytest.raises(httpx.ReadTimeout):
        httpx.post(f"{fake.url}/api/chat", json=CHAT, timeout=0.2)
    errors = []

    def call():
        try:
            httpx.post(f"{fake.url}/api/chat", json=CHAT, timeout=10)
        except httpx.HTTPError as exc:
            errors.append(exc)

    caller = threading.Thread(target=call)
    caller.start()
    assert fake.wait_for_requests(2)
    time.sleep(0.1)
    assert caller.is_alive()
    started = time.monotonic()
    fake.stop()
    assert time.monotonic() - started < 2
    caller.join(2)
    assert not caller.is_alive() and isinstance(errors[0], httpx.TransportError)
    with pytest.raises(httpx.ConnectError):
        httpx.get(fake.url, timeout=1)


def test_status_fault_sends_ollama_error_body(fake, client):
    fake.fault("status")
    r = client.post("/api/chat", json=CHAT)
    assert (r.status_code, r.json()) == (500, {"error": "llama runner process has terminated: exit status 2"})
    fake.fault("status", status=503, message="server busy")
    assert client.get("/api/tags").status_code == 503


def test_malformed_fault(fake, client):
    fake.fault("malformed")
    r = client.post("/api/chat", json={**CHAT, "stream": False})
    assert r.status_code == 200 and r.headers["content-type"].startswith("application/json")
    with pytest.raises(json.JSONDecodeError):
        r.json()


@pytest.mark.parametrize("stream", [False, True])
def test_cut_off_fault_breaks_the_body(fake, client, stream):
    fake.fault("cut_off")
    lines = []
    with pytest.raises(httpx.RemoteProtocolError):
        with client.stream("POST", "/api/chat", json={**CHAT, "stream": stream}) as r:
            assert r.status_code == 200
            lines.extend(r.iter_lines())
    if stream:
        assert lines and json.loads(lines[0])["done"] is False


def test_reset_fault(fake, client):
    fake.fault("reset")
    with pytest.raises((httpx.ReadError, httpx.RemoteProtocolError)):
        client.get("/api/tags")


def test_not_ollama_fault(fake, client):
    fake.fault("not_ollama")
    r = client.get("/api/tags")
    assert r.status_code == 404 and r.headers["content-type"].startswith("text/html")
    root = client.get("/")
    assert root.status_code == 200 and "Ollama is running" not in root.text


def test_refused_url():
    with pytest.raises(httpx.ConnectError):
        httpx.get(free_port_refused() + "/api/tags", timeout=2)


def test_fault_times_and_paths(fake, client):
    fake.fault("status", paths=["/api/chat"], times=2, status=502)
    assert client.get("/api/tags").status_code == 200
    codes = [client.post("/api/chat", json={**CHAT, "stream": False}).status_code for _ in range(3)]
    assert codes == [502, 502, 200]
    with pytest.raises(ValueError):
        fake.fault("explode")


def test_requests_are_recorded_over_one_kept_alive_connection(fake, client):
    client.post("/api/chat", json={**CHAT, "stream": False}, headers={"X-Trace": "abc"})
    client.get("/api/version?x=1")
    first, second = fake.requests
    assert (first.method, first.path, first.json) == ("POST", "/api/chat", {**CHAT, "stream": False})
    assert first.headers["x-trace"] == "abc" and json.loads(first.raw) == first.json
    assert (second.method, second.path, second.query, second.json, second.raw) == ("GET", "/api/version", "x=1", None, b"")
    assert first.peer == second.peer
    fake.fault("reset")
    fake.clear()
    assert fake.requests == [] and client.get("/").status_code == 200
