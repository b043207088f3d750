"""The fake Ollama server, exercised over real sockets with httpx."""

import asyncio
import json
import resource
import socket
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timezone
from pathlib import Path

import httpx
import pytest

from tests.fake_ollama import RUNNER_CRASH, FakeOllama, free_port_refused

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


def ndjson(response):
    return [json.loads(line) for line in response.iter_lines() if line]


def raw_chat(fake, *, stream=False, extra=b""):
    body = json.dumps({**CHAT, "stream": stream}).encode()
    return (b"POST /api/chat HTTP/1.1\r\nHost: %s:%d\r\nContent-Type: application/json\r\nContent-Length: %d\r\n%s\r\n"
            % (fake.host.encode(), fake.port, len(body), extra) + body)


@pytest.mark.parametrize("path, payload, key", [("/api/chat", CHAT, "message"), ("/api/generate", GENERATE, "response")])
def test_streams_by_default_in_ollamas_shapes(client, path, payload, key):
    with client.stream("POST", path, json=payload) as r:
        *parts, last = ndjson(r)
    for part in parts:
        assert list(part) == ["model", "created_at", key, "done"]
        assert (part["model"], part["done"]) == (payload["model"], False)
        assert datetime.fromisoformat(part["created_at"]).tzinfo is not None
    if key == "message":
        assert {p["message"]["role"] for p in parts} == {"assistant"}
    assert (last["done"], last["done_reason"]) == (True, "stop")
    assert all(isinstance(last[k], int) and last[k] > 0 for k in STATS)
    assert ("context" in last) == (key == "response")


def test_ps_lists_the_models_generations_loaded(fake, client):
    assert client.get("/api/ps").json() == {"models": []}
    client.post("/api/chat", json={**CHAT, "stream": False})
    client.post("/api/generate", json={"model": "llama3.2:1b", "keep_alive": "10m"})  # load only
    running = client.get("/api/ps").json()["models"]
    assert [m["name"] for m in running] == ["llama3.2:1b", "qwen2.5:7b"]  # longest time left first, as PsHandler
    assert list(running[0]) == ["name", "model", "size", "digest", "details", "expires_at", "size_vram",
                                "context_length"]
    assert running[0]["details"]["format"] == "gguf" and running[0]["size_vram"] == running[0]["size"]
    assert running[0]["context_length"] == 4096
    left = [(datetime.fromisoformat(m["expires_at"]) - datetime.now(timezone.utc)).total_seconds() for m in running]
    assert 500 < left[0] <= 600 and 200 < left[1] <= 300
    client.post("/api/generate", json={"model": "llama3.2:1b", "keep_alive": 0})  # unload
    assert [m["name"] for m in client.get("/api/ps").json()["models"]] == ["qwen2.5:7b"]
    fake.reset()
    assert client.get("/api/ps").json() == {"models": []}


def test_reset_restores_the_load_settings():
    fake = FakeOllama(delay=0.5, chunks=3)
    fake.delay, fake.chunks, fake.reply = 0, None, "changed"
    fake.reset()
    assert (fake.delay, fake.chunks, fake.chunk_delay, fake.reply) == (0.5, 3, 0.0, None)


def test_chunks_and_chunk_delay_shape_every_stream():
    with FakeOllama(chunks=4, chunk_delay=0.2, reply="one two three four five") as fake:
        started = time.monotonic()
        with httpx.stream("POST", f"{fake.url}/api/chat", json=CHAT, timeout=5) as r:
            *parts, last = ndjson(r)
        elapsed = time.monotonic() - started
    assert len(parts) == 4 and "".join(p["message"]["content"] for p in parts) == "one two three four five"
    assert last["eval_count"] == 4
    assert elapsed >= 0.75  # four gaps of 0.2 s between five lines


def test_delay_holds_every_generation_without_holding_up_others():
    with FakeOllama(delay=1.0) as fake, ThreadPoolExecutor(20) as pool:
        started = time.monotonic()
        chats = [pool.submit(httpx.post, f"{fake.url}/api/chat", json={**CHAT, "stream": False}, timeout=10)
                 for _ in range(20)]
        assert fake.wait_for_requests(20, timeout=5)
        asked = time.monotonic()
        assert httpx.get(f"{fake.url}/api/tags", timeout=5).status_code == 200
        tags_took = time.monotonic() - asked
        replies = [c.result() for c in chats]
        elapsed = time.monotonic() - started
    assert [r.status_code for r in replies] == [200] * 20
    assert min(r.elapsed.total_seconds() for r in replies) >= 1.0
    assert tags_took < 0.5 and elapsed < 5  # twenty in a row would take 20 s


def test_slow_chunk_delay_paces_a_stream_while_other_requests_go_on(fake, client):
    fake.reply = "one two"
    fake.fault("slow", paths="/api/chat", delay=0, chunk_delay=0.6)
    with httpx.Client(base_url=fake.url, timeout=5) as other:
        with client.stream("POST", "/api/chat", json=CHAT) as r:
            lines = r.iter_lines()
            assert json.loads(next(lines))["message"]["content"] == "one"
            started = time.monotonic()
            assert other.get("/api/tags").status_code == 200
            assert time.monotonic() - started < 0.5
            rest = [json.loads(line) for line in lines if line]
        elapsed = time.monotonic() - started
    assert [p["done"] for p in rest] == [False, True]
    assert elapsed >= 1.1  # two more gaps of 0.6 s


def test_stream_error_sends_an_error_line_and_ends_the_stream(fake, client):
    fake.reply = "one two three four"
    fake.fault("stream_error", times=1, after=2, message="CUDA error: out of memory")
    with client.stream("POST", "/api/chat", json=CHAT) as r:
        assert r.status_code == 200
        parts = ndjson(r)  # ends cleanly: the terminating chunk was sent
    assert [p["message"]["content"] for p in parts[:2]] == ["one", " two"]
    assert parts[2:] == [{"error": "CUDA error: out of memory"}]
    assert client.get("/api/version").status_code == 200
    assert fake.requests[0].peer == fake.requests[1].peer  # and the connection was kept alive
    fake.fault("stream_error", times=2)
    with client.stream("POST", "/api/generate", json=GENERATE) as r:
        assert ndjson(r)[1:] == [{"error": RUNNER_CRASH}]
    r = client.post("/api/generate", json={**GENERATE, "stream": False})
    assert (r.status_code, r.json()) == (500, {"error": RUNNER_CRASH})


def test_cut_off_after_some_chunks(fake, client):
    fake.reply = "one two three four"
    fake.fault("cut_off", after=2)
    lines = []
    with pytest.raises(httpx.RemoteProtocolError):
        with client.stream("POST", "/api/chat", json=CHAT) as r:
            lines.extend(r.iter_lines())
    assert [json.loads(line)["message"]["content"] for line in lines if line] == ["one", " two"]
    assert fake.cancelled == []


def test_stall_mid_stream_trips_a_read_timeout(fake, client):
    fake.fault("stall", after=1, seconds=3)
    lines = []
    started = time.monotonic()
    with pytest.raises(httpx.ReadTimeout):
        with client.stream("POST", "/api/chat", json=CHAT, timeout=httpx.Timeout(5, read=0.3)) as r:
            lines.extend(r.iter_lines())
    assert time.monotonic() - started < 2
    assert len(lines) == 1 and json.loads(lines[0])["done"] is False
    assert fake.wait_for_cancelled(1)  # the client gave up during the stall


@pytest.mark.parametrize("then", ["continue", "close"])
def test_stall_then_continues_or_closes(fake, client, then):
    fake.fault("stall", after=2, seconds=0.5, then=then)
    started = time.monotonic()
    lines = []
    try:
        with client.stream("POST", "/api/chat", json=CHAT) as r:
            lines.extend(r.iter_lines())
        broke = False
    except httpx.RemoteProtocolError:
        broke = True
    assert time.monotonic() - started >= 0.45
    assert broke == (then == "close")
    parts = [json.loads(line) for line in lines if line]
    assert len(parts) == (2 if then == "close" else 4) and parts[-1]["done"] == (then == "continue")


def test_stall_of_a_whole_reply_sends_the_headers_then_waits(fake, client):
    fake.fault("stall", seconds=3)
    with client.stream("POST", "/api/chat", json={**CHAT, "stream": False},
                       timeout=httpx.Timeout(5, read=0.3)) as r:
        assert r.status_code == 200
        with pytest.raises(httpx.ReadTimeout):
            r.read()


def test_load_waits_before_anything_and_reports_load_duration(fake, client):
    fake.fault("load", times=1, delay=0.5)
    started = time.monotonic()
    with client.stream("POST", "/api/chat", json=CHAT) as r:
        headers_after = time.monotonic() - started
        last = ndjson(r)[-1]
    assert headers_after >= 0.5
    assert last["load_duration"] == 500_000_000
    assert last["total_duration"] >= last["load_duration"] + last["eval_duration"]
    fake.fault("load", times=1, delay=0.2)
    assert client.post("/api/generate", json={**GENERATE, "stream": False}).json()["load_duration"] == 200_000_000
    assert client.post("/api/generate", json={**GENERATE, "stream": False}).json()["load_duration"] < 100_000_000


@pytest.mark.parametrize("stream", [True, False])
def test_cached_prompt_leaves_out_prompt_eval_count(fake, client, stream):
    fake.fault("cached_prompt")
    with client.stream("POST", "/api/chat", json={**CHAT, "stream": stream}) as r:
        last = ndjson(r)[-1]
    assert last["done"] is True and "prompt_eval_count" not in last
    assert all(k in last for k in STATS if k != "prompt_eval_count")


def test_a_client_leaving_mid_stream_is_seen_at_once(fake, client):
    fake.fault("slow", delay=0, chunk_delay=3)
    with socket.create_connection((fake.host, fake.port), timeout=5) as sock:
        sock.sendall(raw_chat(fake, stream=True))
        assert b'"done":false' in sock.recv(65536)
        assert fake.cancelled == []
    left = time.monotonic()
    assert fake.wait_for_cancelled(1, timeout=2)
    assert time.monotonic() - left < 1  # not at the next line, 3 s later
    assert fake.cancelled == fake.requests


@pytest.mark.parametrize("kind, params", [("slow", {"delay": 5}), ("hang", {}), ("load", {"delay": 5})])
def test_a_client_leaving_mid_delay_is_seen_at_once(fake, kind, params):
    fake.fault(kind, **params)
    with socket.create_connection((fake.host, fake.port), timeout=5) as sock:
        sock.sendall(raw_chat(fake))
        assert fake.wait_for_requests(1)
        time.sleep(0.1)
        assert fake.cancelled == []
    left = time.monotonic()
    assert fake.wait_for_cancelled(1, timeout=2)
    assert time.monotonic() - left < 1
    assert fake.cancelled[0].path == "/api/chat"
    started = time.monotonic()
    fake.stop()
    assert time.monotonic() - started < 0.5  # the handler ended with its client, no sleeping it out


def test_a_client_leaving_the_base_delay_is_seen_too():
    with FakeOllama(delay=5) as fake:
        with pytest.raises(httpx.ReadTimeout):
            httpx.post(f"{fake.url}/api/chat", json=CHAT, timeout=0.3)
        assert fake.wait_for_cancelled(1, timeout=1)


def test_only_clients_giving_up_count_as_cancelled(fake, client):
    client.post("/api/chat", json={**CHAT, "stream": False})
    with client.stream("POST", "/api/chat", json=CHAT) as r:
        ndjson(r)
    fake.fault("cut_off", times=1)
    with pytest.raises(httpx.RemoteProtocolError):
        client.post("/api/chat", json={**CHAT, "stream": False})
    fake.fault("reset", times=1)
    with pytest.raises((httpx.ReadError, httpx.RemoteProtocolError)):
        client.get("/api/tags")
    fake.fault("hang", times=1, limit=0.2)
    with pytest.raises(httpx.RemoteProtocolError):
        client.get("/api/tags")
    fake.fault("hang", times=1)
    with socket.create_connection((fake.host, fake.port), timeout=5) as sock:
        sock.sendall(raw_chat(fake))
        assert fake.wait_for_requests(6)
        fake.stop()  # drops the hung request: the server's doing, not the client's
        assert sock.recv(100) == b""
    time.sleep(0.2)
    assert len(fake.requests) == 6 and fake.cancelled == []


def test_pipelined_requests_and_a_chunked_body_on_one_raw_connection(fake):
    body = json.dumps({**CHAT, "stream": False}).encode()
    chunked = (b"POST /api/chat HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
               b"a\r\n%s\r\n%x;ext=1\r\n%s\r\n0\r\n\r\n" % (body[:10], len(body) - 10, body[10:]))
    closing = b"GET /api/version HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    with socket.create_connection((fake.host, fake.port), timeout=5) as sock:
        sock.sendall(chunked + closing)
        data = b""
        while chunk := sock.recv(65536):  # the server closes after the second reply
            data += chunk
    assert data.count(b"HTTP/1.1 200 OK\r\n") == 2
    assert b"Connection: close" in data and data.endswith(b'{"version":"0.5.7"}')
    assert [r.json for r in fake.requests] == [{**CHAT, "stream": False}, None]


def test_a_garbled_request_is_400_and_closed(fake):
    with socket.create_connection((fake.host, fake.port), timeout=5) as sock:
        sock.sendall(b"HELLO\r\n\r\n")
        data = sock.recv(65536)
        assert data.startswith(b"HTTP/1.1 400 Bad Request\r\n") and sock.recv(100) == b""
    assert fake.requests == []


def test_fault_parameters_are_checked(fake):
    with pytest.raises(TypeError):
        fake.fault("stall", after=1, delay=2)
    with pytest.raises(ValueError):
        fake.fault("stall", then="explode")


CONNECTIONS = 2000


def test_holds_2000_concurrent_connections_each_waiting_out_a_delay():
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    needed = 2 * CONNECTIONS + 256  # both ends live in this process
    if soft < needed:
        if hard != resource.RLIM_INFINITY and hard < needed:
            pytest.skip(f"RLIMIT_NOFILE hard limit {hard} < {needed}")
        resource.setrlimit(resource.RLIMIT_NOFILE, (needed, hard))
    try:
        with FakeOllama(delay=1.0) as fake:
            request = raw_chat(fake)

            async def one():
                reader, writer = await asyncio.open_connection(fake.host, fake.port)
                try:
                    writer.write(request)
                    head = await reader.readuntil(b"\r\n\r\n")
                    length = int(head.split(b"Content-Length: ", 1)[1].split(b"\r\n", 1)[0])
                    return head.split(b" ", 2)[1], json.loads(await reader.readexactly(length))
                finally:
                    writer.close()
                    await writer.wait_closed()

            async def all_at_once():
                return await asyncio.wait_for(asyncio.gather(*(one() for _ in range(CONNECTIONS))), timeout=60)

            started = time.monotonic()
            replies = asyncio.run(all_at_once())
            elapsed = time.monotonic() - started
            assert fake.wait_for_requests(CONNECTIONS, timeout=0)
            time.sleep(0.1)
            assert fake.cancelled == []
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
    assert all(status == b"200" and reply["done"] is True for status, reply in replies)
    # One after another they would take 2000 s; a couple of seconds means they waited side by side.
    assert 1.0 <= elapsed < 10, elapsed


def test_command_line_serves_with_the_load_settings():
    script = Path(__file__).with_name("fake_ollama.py")
    proc = subprocess.Popen(
        [sys.executable, str(script), "--port", "0", "--model", "m:1b", "--reply", "a b c d", "--chunks", "2",
         "--chunk-delay", "0.2", "--delay", "0.3"],
        stdout=subprocess.PIPE, text=True,
    )
    try:
        line = proc.stdout.readline()  # what bench/overhead.py waits for
        assert line.startswith("fake Ollama on http://127.0.0.1:") and " with m:1b " in line
        url = line.split(" on ", 1)[1].split()[0]
        started = time.monotonic()
        with httpx.stream("POST", f"{url}/api/chat", json={**CHAT, "model": "m:1b"}, timeout=5) as r:
            *parts, last = ndjson(r)
        assert time.monotonic() - started >= 0.45  # the delay, then one gap between the two lines
        assert [p["message"]["content"] for p in parts] == ["a b", " c d"] and last["done"] is True
    finally:
        proc.terminate()
        proc.wait(5)
