"""A worker killed with generations in flight: gunicorn's master marks their rows failed (worker_lost) at once."""

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
import pytest
from django.db import connection

from gateway_project import process_name
from gateway_project.workers import WORKER_LOST_MESSAGE, mark_worker_lost
from llm.models import Generation
from tests.fake_ollama import free_port_refused

ROOT = Path(__file__).resolve().parents[2]
BODY = {"role": "copywriter", "task": "sns", "payload": {"product": "Green tea", "tone": "calm"}, "mode": "text"}


def run_manage(env: dict, *args: str) -> str:
    result = subprocess.run([sys.executable, "manage.py", *args], cwd=ROOT, env=env, capture_output=True,
                            text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    return result.stdout


def workers_of(master: int) -> list[int]:
    children = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        if int(fields[1]) == master:
            children.append(int(stat.parent.name))
    return children


def rows(database: Path) -> list[tuple]:
    with sqlite3.connect(database) as db:
        return db.execute("SELECT status, error_type, error_message, finished_at, stream, worker "
                          "FROM llm_generation").fetchall()


def test_a_killed_workers_generations_are_marked_worker_lost_at_once(tmp_path, ollama_server):
    ollama_server.reset()
    (tmp_path / "empty.env").write_text("")
    database = tmp_path / "gateway.sqlite3"
    url = free_port_refused()
    env = {k: v for k, v in os.environ.items() if k not in ("DJANGO_SETTINGS_MODULE", "PROMETHEUS_MULTIPROC_DIR",
                                                              "LLM_GATEWAY_OWN_METRICS_DIR")}
    env.update({"ENV_FILE": str(tmp_path / "empty.env"), "DATABASE_URL": f"sqlite:///{database}",
                "SECRET_KEY": "worker-lost-test-" + "k" * 40, "GENERATOR_MODE": "live",
                "OLLAMA_BASE_URL": ollama_server.url, "OLLAMA_TIMEOUT": "60", "RATE_LIMIT_PER_MINUTE": "0",
                "WEB_CONCURRENCY": "1", "GUNICORN_BIND": url.removeprefix("http://"),
                "AUDIT_SPOOL_DIR": str(tmp_path / "spool")})
    run_manage(env, "migrate", "--noinput")
    key = run_manage(env, "create_api_key", "lost-team").strip().splitlines()[-1]
    log = tmp_path / "gunicorn.log"
    with log.open("w") as out:
        server = subprocess.Popen([sys.executable, "-m", "gunicorn"], cwd=ROOT, env=env, stdout=out,
                                  stderr=subprocess.STDOUT)
    results = {}

    def call(name, body):
        try:
            with httpx.Client(base_url=url, headers={"Authorization": f"Bearer {key}"}, timeout=30,
                              trust_env=False) as client:
                with client.stream("POST", "/api/v1/llm/generate", json=body) as response:
                    results[name] = (response.status_code, [json.loads(x) for x in response.iter_lines() if x])
        except httpx.HTTPError as exc:
            results[name] = exc

    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            try:
                if httpx.get(f"{url}/healthz", timeout=1, trust_env=False).status_code == 200:
                    break
            except httpx.TransportError:
                time.sleep(0.1)
        # A stream that has started and hangs, and a call whose Ollama never answers.
        ollama_server.fault("slow", paths="/api/chat", times=1, delay=0, chunk_delay=30)
        threads = [threading.Thread(target=call, args=("stream", {**BODY, "stream": True}))]
        threads[0].start()
        assert ollama_server.wait_for_requests(1, timeout=10)
        ollama_server.fault("slow", paths="/api/chat", times=1, delay=30)
        threads.append(threading.Thread(target=call, args=("hanging", BODY)))
        threads[1].start()
        assert ollama_server.wait_for_requests(2, timeout=10)
        time.sleep(0.3)
        (worker,) = workers_of(server.pid)
        in_flight = rows(database)
        assert [r[0] for r in in_flight] == ["pending", "pending"], in_flight
        assert {r[5] for r in in_flight} == {process_name.name_of(worker, in_flight[0][5].rsplit(":", 1)[1])}

        killed = time.monotonic()
        os.kill(worker, signal.SIGKILL)
        while time.monotonic() - killed < 5 and any(r[0] == "pending" for r in rows(database)):
            time.sleep(0.05)
        took = time.monotonic() - killed
        for thread in threads:
            thread.join(10)
        # The master carries on: a new worker answers.
        assert httpx.get(f"{url}/healthz", timeout=5, trust_env=False).status_code == 200
    finally:
        server.terminate()
        try:
            server.wait(timeout=30)
        except subprocess.TimeoutExpired:
            server.kill()
    text = log.read_text()

    marked = rows(database)
    assert [(r[0], r[1], r[2]) for r in marked] == [("failed", "worker_lost", WORKER_LOST_MESSAGE)] * 2, text
    assert all(r[3] for r in marked) and sorted(r[4] for r in marked) == [0, 1]
    assert took < 2, (took, text)
    assert "stopped with 2 generations in flight: marked failed (worker_lost)" in text
    # The clients saw the connection cut: no answer, or a stream with no last line.
    assert isinstance(results["hanging"], httpx.HTTPError)


@pytest.mark.django_db(transaction=True)
def test_marking_works_on_the_suites_database_and_touches_only_that_workers_pending_rows():
    """The master's plain SQL, against the database the suite runs on (PostgreSQL or SQLite), and the model."""
    lost, other = "host:101:aaaa", "host:202:bbbb"
    Generation.objects.create(worker=lost)
    Generation.objects.create(worker=lost, status=Generation.Status.SUCCEEDED)
    Generation.objects.create(worker=other)
    database = {**connection.settings_dict}

    assert mark_worker_lost(database, lost) == 1

    marked = Generation.objects.get(status=Generation.Status.FAILED)
    assert (marked.worker, marked.error_type, marked.error_message) == (lost, "worker_lost", WORKER_LOST_MESSAGE)
    assert marked.finished_at is not None and marked.finished_at >= marked.created_at
    assert Generation.objects.filter(status="pending").get().worker == other
    assert Generation.objects.filter(status="succeeded").get().error_type == ""
    # The SQL's names are the model's.
    assert Generation._meta.db_table == "llm_generation"
    assert {"status", "error_type", "error_message", "finished_at", "worker"} <= {
        f.column for f in Generation._meta.concrete_fields}
