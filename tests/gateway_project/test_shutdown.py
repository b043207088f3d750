"""SIGTERM with generations in flight: they get the grace period, then end with an error and a completed row."""

import json
import os
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx

from tests.fake_ollama import free_port_refused

ROOT = Path(__file__).resolve().parents[2]
BODY = {"role": "copywriter", "task": "sns", "payload": {"product": "Green tea", "tone": "calm"}, "mode": "text"}


def run_manage(env: dict, *args: str) -> str:
    result = subprocess.run([sys.executable, "manage.py", *args], cwd=ROOT, env=env, capture_output=True,
                            text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    return result.stdout


def test_sigterm_drains_then_ends_what_is_left_with_errors_and_completed_rows(tmp_path, ollama_server):
    ollama_server.reset()
    (tmp_path / "empty.env").write_text("")
    database = tmp_path / "gateway.sqlite3"
    url = free_port_refused()
    env = {k: v for k, v in os.environ.items() if k not in ("DJANGO_SETTINGS_MODULE", "PROMETHEUS_MULTIPROC_DIR")}
    env.update({"ENV_FILE": str(tmp_path / "empty.env"), "DATABASE_URL": f"sqlite:///{database}",
                "SECRET_KEY": "shutdown-test-" + "k" * 40, "GENERATOR_MODE": "live",
                "OLLAMA_BASE_URL": ollama_server.url, "OLLAMA_TIMEOUT": "60", "RATE_LIMIT_PER_MINUTE": "0",
                "GRACEFUL_TIMEOUT": "2", "WEB_CONCURRENCY": "1", "GUNICORN_BIND": url.removeprefix("http://")})
    run_manage(env, "migrate", "--noinput")
    key = run_manage(env, "create_api_key", "draining-team").strip().splitlines()[-1]
    headers = {"Authorization": f"Bearer {key}"}
    log = tmp_path / "gunicorn.log"
    with log.open("w") as out:
        server = subprocess.Popen([sys.executable, "-m", "gunicorn"], cwd=ROOT, env=env, stdout=out,
                                  stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            try:
                if httpx.get(f"{url}/healthz", timeout=1, trust_env=False).status_code == 200:
                    break
            except httpx.TransportError:
                time.sleep(0.1)
        results = {}

        def call(name, body):
            try:
                with httpx.Client(base_url=url, headers=headers, timeout=30, trust_env=False) as client:
                    with client.stream("POST", "/api/v1/llm/generate", json=body) as response:
                        lines = [json.loads(line) for line in response.iter_lines() if line.strip()]
                        results[name] = (response.status_code, lines)
            except httpx.HTTPError as exc:
                results[name] = exc

        # A stream that has started and then stalls, a call that ends within the grace period, one that would not.
        ollama_server.fault("slow", paths="/api/chat", times=1, delay=0, chunk_delay=20)
        threads = [threading.Thread(target=call, args=("stream", {**BODY, "stream": True}))]
        threads[0].start()
        assert ollama_server.wait_for_requests(1, timeout=10)
        ollama_server.fault("slow", paths="/api/chat", times=1, delay=0.5)
        threads.append(threading.Thread(target=call, args=("quick", BODY)))
        threads[1].start()
        assert ollama_server.wait_for_requests(2, timeout=10)
        ollama_server.fault("slow", paths="/api/chat", times=1, delay=30)
        threads.append(threading.Thread(target=call, args=("slow", BODY)))
        threads[2].start()
        assert ollama_server.wait_for_requests(3, timeout=10)
        time.sleep(0.2)

        stopped = time.monotonic()
        server.send_signal(signal.SIGTERM)
        for thread in threads:
            thread.join(30)
        assert server.wait(timeout=30) == 0
        took = time.monotonic() - stopped
    finally:
        if server.poll() is None:
            server.kill()
    text = log.read_text()

    assert results["quick"][0] == 200 and results["quick"][1][0]["output"], text
    assert results["slow"][0] == 503 and results["slow"][1][0]["error"]["type"] == "shutting_down", text
    stream_status, stream_lines = results["stream"]
    assert stream_status == 200 and stream_lines[0]["delta"], text
    assert stream_lines[-1]["done"] is True and stream_lines[-1]["error"]["type"] == "shutting_down", text
    assert 2 <= took < 15, text
    # A shutdown is expected: one warning says the grace period is over, no error per generation it ended.
    assert '"level": "ERROR"' not in text, text
    assert text.count("grace period over: ending generations in flight") == 1, text

    with sqlite3.connect(database) as db:
        rows = db.execute("SELECT status, error_type, http_status, stream FROM llm_generation").fetchall()
    assert sorted(rows) == sorted([("succeeded", "", 200, 0), ("failed", "shutting_down", 503, 0),
                                   ("failed", "shutting_down", 200, 1)]), rows
