"""The fake Ollama's scheduler: slots per model, the queue bound, loads, keep_alive, eviction, kill and restart.

What several-server routing is tested against: each fake runs at most num_parallel generations of a model at once,
keeps a loaded-model state that /api/ps shows, and can be killed mid-load or mid-stream and brought back.
"""

import json
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

from tests.fake_ollama import SERVER_BUSY, FakeOllama

CHAT = {"model": "qwen2.5:7b", "messages": [{"role": "user", "content": "hello"}], "stream": False}


def post(fake, path="/api/chat", timeout=10, **body):
    return httpx.post(f"{fake.url}{path}", json={**CHAT, **body}, timeout=timeout)


def ps(fake):
    return httpx.get(f"{fake.url}/api/ps", timeout=5).json()["models"]


def eventually(check, timeout=3.0):
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.01)
    return True


def test_at_most_num_parallel_generations_per_model_the_rest_wait():
    with FakeOllama(num_parallel=2, delay=0.3) as fake, ThreadPoolExecutor(8) as pool:
        started = time.monotonic()
        qwen = [pool.submit(post, fake) for _ in range(4)]
        llama = [pool.submit(post, fake, model="llama3.2:1b") for _ in range(2)]
        assert fake.wait_for_running(4)  # two of each model
        assert eventually(lambda: fake.waiting == 2)
        assert fake.running == {"qwen2.5:7b": 2, "llama3.2:1b": 2}
        replies = [f.result() for f in qwen + llama]
        elapsed = time.monotonic() - started
    assert [r.status_code for r in replies] == [200] * 6  # waited, none refused
    assert fake.peak_running == {"qwen2.5:7b": 2, "llama3.2:1b": 2} and fake.peak_running_total == 4
    assert fake.requests_per_model == {"qwen2.5:7b": 4, "llama3.2:1b": 2}
    assert 0.6 <= elapsed < 3  # the four qwen generations ran two by two
    assert fake.running == {} and fake.running_total == 0 and fake.waiting == 0


def test_a_models_spec_overrides_num_parallel_and_none_means_no_limit():
    from tests.fake_ollama import ModelSpec
    with FakeOllama(specs={"qwen2.5:7b": ModelSpec(("completion",), num_parallel=1)}, delay=0.2) as fake, \
            ThreadPoolExecutor(6) as pool:
        futures = [pool.submit(post, fake) for _ in range(3)] + [
            pool.submit(post, fake, model="llama3.2:1b") for _ in range(3)]
        assert all(f.result().status_code == 200 for f in futures)
    assert fake.peak_running == {"qwen2.5:7b": 1, "llama3.2:1b": 3}


def test_beyond_max_queue_the_answer_is_ollamas_503():
    with FakeOllama(num_parallel=1, max_queue=1, delay=1.5) as fake, ThreadPoolExecutor(2) as pool:
        running = pool.submit(post, fake)
        assert fake.wait_for_running(1)
        queued = pool.submit(post, fake)
        assert eventually(lambda: fake.waiting == 1)
        refused = post(fake)
        v1 = httpx.post(f"{fake.url}/v1/chat/completions", json={"model": "qwen2.5:7b", "messages": CHAT["messages"]})
        embed = httpx.post(f"{fake.url}/api/embed", json={"model": "qwen2.5:7b", "input": "x"})
        assert (refused.status_code, refused.json()) == (503, {"error": SERVER_BUSY})
        assert (v1.status_code, v1.json()["error"]) == (503, {"message": SERVER_BUSY, "type": "api_error",
                                                             "param": None, "code": None})
        assert embed.status_code == 503
        assert running.result().status_code == queued.result().status_code == 200
    assert SERVER_BUSY == "server busy, please try again.  maximum pending requests exceeded"


def test_a_cold_model_pays_the_load_delay_once_and_loads_one_at_a_time():
    with FakeOllama(load_delay=0.4) as fake, ThreadPoolExecutor(4) as pool:
        started = time.monotonic()
        together = [pool.submit(post, fake) for _ in range(3)]
        bodies = [f.result().json() for f in together]
        first_took = time.monotonic() - started
        assert fake.loads_per_model == {"qwen2.5:7b": 1}  # one load served all three
        warm = post(fake).json()
        started = time.monotonic()
        other = post(fake, model="llama3.2:1b").json()
        other_took = time.monotonic() - started
        assert fake.loads_per_model == {"qwen2.5:7b": 1, "llama3.2:1b": 1}
    assert first_took >= 0.4 and max(b["load_duration"] for b in bodies) >= 400_000_000
    assert all(b["load_duration"] != 2_345_678 for b in bodies)  # each waited for the load, none invented one
    assert warm["load_duration"] < 100_000_000  # already loaded
    assert other_took >= 0.4 and other["load_duration"] >= 400_000_000
    assert all(b["total_duration"] >= b["load_duration"] for b in bodies)


def test_keep_alive_sets_the_expiry_zero_unloads_and_negative_keeps_for_ever():
    with FakeOllama() as fake:
        post(fake, keep_alive="10m")
        post(fake, model="llama3.2:1b", keep_alive=-1)
        models = {m["name"]: m for m in ps(fake)}
        left = (datetime.fromisoformat(models["qwen2.5:7b"]["expires_at"]) - datetime.now(timezone.utc))
        assert 590 < left.total_seconds() <= 600
        assert datetime.fromisoformat(models["llama3.2:1b"]["expires_at"]).year > 2200  # Go's now + MaxInt64
        assert [m["name"] for m in ps(fake)] == ["llama3.2:1b", "qwen2.5:7b"]
        post(fake, model="llama3.2:1b")  # no keep_alive: the loaded model keeps its own
        assert fake.loaded_models()["llama3.2:1b"]["keep_alive"] is None
        post(fake, keep_alive=0)  # answered, then unloaded
        assert [m["name"] for m in ps(fake)] == ["llama3.2:1b"]
        post(fake, keep_alive=1.5)  # seconds as a number
        assert 0.5 < fake.loaded_models()["qwen2.5:7b"]["expires"] - time.time() <= 1.5
        time.sleep(1.6)
        assert [m["name"] for m in ps(fake)] == ["llama3.2:1b"]


def test_a_model_is_listed_while_it_runs_and_expires_at_is_zero_until_its_first_idle():
    with FakeOllama(delay=0.5) as fake, ThreadPoolExecutor(1) as pool:
        reply = pool.submit(post, fake)
        assert fake.wait_for_running(1)
        running = ps(fake)
        assert [m["name"] for m in running] == ["qwen2.5:7b"] and running[0]["expires_at"] == "0001-01-01T00:00:00Z"
        assert reply.result().status_code == 200
        assert fake.loaded_models()["qwen2.5:7b"]["running"] == 0


def test_another_num_ctx_reloads_the_model():
    with FakeOllama(load_delay=0.2) as fake:
        post(fake)
        assert ps(fake)[0]["context_length"] == 4096
        assert post(fake, options={"num_ctx": 4096}).json()["load_duration"] < 100_000_000
        reloaded = post(fake, options={"num_ctx": 100_000}).json()  # capped at the model's 32768
        assert reloaded["load_duration"] >= 200_000_000 and ps(fake)[0]["context_length"] == 32768
        assert post(fake).json()["load_duration"] < 100_000_000  # no num_ctx: whatever is loaded will do


def test_max_loaded_models_unloads_the_least_recently_used_idle_model():
    with FakeOllama(models=["a:1b", "b:1b", "c:1b"], max_loaded_models=2) as fake:
        post(fake, model="a:1b")
        post(fake, model="b:1b")
        post(fake, model="a:1b")
        post(fake, model="c:1b")  # b went idle longest ago
        assert sorted(fake.loaded_models()) == ["a:1b", "c:1b"]
        assert fake.loads_per_model == {"a:1b": 1, "b:1b": 1, "c:1b": 1}
        post(fake, model="b:1b")
        assert sorted(fake.loaded_models()) == ["b:1b", "c:1b"] and fake.loads_per_model["b:1b"] == 2


def test_a_load_waits_for_a_busy_model_to_go_idle_before_evicting_it():
    with FakeOllama(models=["a:1b", "b:1b"], max_loaded_models=1, delay=0.5) as fake, ThreadPoolExecutor(2) as pool:
        busy = pool.submit(post, fake, model="a:1b")
        assert fake.wait_for_running(1)
        started = time.monotonic()
        waiting = pool.submit(post, fake, model="b:1b")
        assert busy.result().status_code == 200
        assert waiting.result().status_code == 200
        assert time.monotonic() - started >= 0.9  # a's 0.5 s, then b's own 0.5 s
        assert fake.peak_running_total == 1 and list(fake.loaded_models()) == ["b:1b"]


def test_preload_unload_and_state_for_tests():
    with FakeOllama(load_delay=5) as fake:
        fake.preload("qwen2.5:7b", keep_alive=None)
        assert fake.loaded_models() == {"qwen2.5:7b": {"num_ctx": 4096, "keep_alive": None, "running": 0,
                                                       "expires": None}}
        assert post(fake).json()["load_duration"] < 100_000_000  # no load paid
        assert fake.loads_per_model == {}
        with pytest.raises(ValueError):
            fake.preload("nope:1b")
        fake.unload("qwen2.5:7b")
        assert fake.loaded_models() == {} and ps(fake) == []
        fake.preload("qwen2.5:7b", "llama3.2:1b")
        fake.reset()
        assert fake.loaded_models() == {} and fake.requests_per_model == {} and fake.peak_running == {}


def test_a_client_leaving_the_line_gives_up_its_place_and_leaks_no_slot():
    with FakeOllama(num_parallel=1, delay=0.5) as fake, ThreadPoolExecutor(1) as pool:
        first = pool.submit(post, fake)
        assert fake.wait_for_running(1)
        with pytest.raises(httpx.ReadTimeout):
            post(fake, timeout=0.2)  # waits in line, then leaves
        assert fake.wait_for_cancelled(1)
        # Its place in line is given up as its handler unwinds, a moment after it is counted as cancelled.
        deadline = time.monotonic() + 2
        while fake.waiting and time.monotonic() < deadline:
            time.sleep(0.01)
        assert fake.waiting == 0
        assert first.result().status_code == 200
        started = time.monotonic()
        assert post(fake).status_code == 200
        assert time.monotonic() - started < 3  # the slot came back (a leaked one would hold it for ever)
        assert fake.running_total == 0


def test_stopped_mid_load_then_back_on_the_same_port_with_nothing_loaded():
    fake = FakeOllama(load_delay=5).start()
    port, errors = fake.port, []

    def call():
        try:
            post(fake)
        except httpx.HTTPError as exc:
            errors.append(exc)

    caller = threading.Thread(target=call)
    caller.start()
    assert fake.wait_for_requests(1)
    time.sleep(0.1)
    assert fake.waiting == 1  # loading
    fake.stop()
    caller.join(2)
    assert isinstance(errors[0], httpx.TransportError) and fake.cancelled == []
    with pytest.raises(httpx.ConnectError):
        httpx.get(fake.url, timeout=1)
    fake.load_delay = 0
    fake.restart()
    try:
        assert fake.port == port and ps(fake) == [] and fake.waiting == 0
        assert post(fake).status_code == 200
    finally:
        fake.stop()


def test_stopped_mid_stream_the_client_sees_the_stream_cut():
    fake = FakeOllama(reply="one two three four", chunk_delay=0.3).start()
    stopping = threading.Thread(target=fake.stop)
    try:
        lines = []
        with pytest.raises(httpx.RemoteProtocolError):
            with httpx.stream("POST", f"{fake.url}/api/chat", json={**CHAT, "stream": True}, timeout=5) as r:
                for line in r.iter_lines():
                    lines.append(json.loads(line))
                    if len(lines) == 1:
                        stopping.start()
        assert len(lines) < 5 and not lines[-1]["done"]
        stopping.join(5)
        assert fake.cancelled == [] and fake.loaded_models() == {} and fake.running_total == 0
    finally:
        fake.stop()


def test_a_refused_connection_after_stop_and_requests_again_after_restart():
    with FakeOllama() as fake:
        fake.stop()
        with socket.socket() as sock:
            assert sock.connect_ex((fake.host, fake.port)) != 0
        fake.start()
        assert post(fake).status_code == 200
        assert len(fake.requests) == 1  # what was recorded survives a restart


def test_command_line_serves_with_the_scheduler_settings():
    script = Path(__file__).with_name("fake_ollama.py")
    proc = subprocess.Popen(
        [sys.executable, str(script), "--port", "0", "--model", "m:1b=completion,tools", "--model", "e:1b=embedding",
         "--num-parallel", "1", "--delay", "0.3", "--load-delay", "0.2"],
        stdout=subprocess.PIPE, text=True,
    )
    try:
        line = proc.stdout.readline()
        assert line.startswith("fake Ollama on http://127.0.0.1:") and " with m:1b, e:1b " in line
        url = line.split(" on ", 1)[1].split()[0]
        shown = httpx.post(f"{url}/api/show", json={"model": "e:1b"}, timeout=5).json()
        assert shown["capabilities"] == ["embedding"]
        started = time.monotonic()
        with ThreadPoolExecutor(2) as pool:
            replies = list(pool.map(lambda _: httpx.post(f"{url}/api/chat", json={**CHAT, "model": "m:1b"},
                                                         timeout=5), range(2)))
        assert [r.status_code for r in replies] == [200, 200]
        assert time.monotonic() - started >= 0.8  # one load, then two generations one after the other
    finally:
        proc.terminate()
        proc.wait(5)
