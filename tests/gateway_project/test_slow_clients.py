"""Slow clients: a request head that does not arrive within REQUEST_HEADER_TIMEOUT closes its connection with 408, a
body that does not arrive within REQUEST_BODY_TIMEOUT is answered 408 (audited on the generation endpoints), and
neither slows down anyone else. Over a real socket, with the workers' own HTTP protocol."""

import os
import signal
import statistics
import subprocess
import sys
import time

import httpx
import pytest

from llm.models import Generation
from tests.conftest import GENERATE_URL
from tests.fake_ollama import free_port_refused
from tests.gateway_project.test_shutdown import ROOT, run_manage
from tests.raw_http import RawConnection, head

BODY = b'{"role": "copywriter", "task": "sns", "payload": {"product": "Green tea", "tone": "calm"}}'


def test_a_trickling_request_head_gets_408_and_its_connection_closed(gateway, settings):
    settings.REQUEST_HEADER_TIMEOUT = 0.5
    with RawConnection(gateway.url) as connection:
        connection.trickle(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Padding: " + b"x" * 12, every=0.1)
        response = connection.response()
        assert connection.closed_by_server()

    assert response.status == 408
    assert b"REQUEST_HEADER_TIMEOUT" in response.body
    assert 0.5 <= response.seconds < 1.5, response.seconds


def test_a_connection_that_sends_nothing_is_closed_without_an_answer(gateway, settings):
    settings.REQUEST_HEADER_TIMEOUT = 0.5
    with RawConnection(gateway.url) as connection:
        started = time.monotonic()
        connection.sock.settimeout(5)
        assert connection.sock.recv(1024) == b""  # closed, and nothing sent

    assert time.monotonic() - started < 1.5


def test_on_a_kept_alive_connection_the_next_head_is_bounded_from_its_first_byte(gateway, settings):
    settings.REQUEST_HEADER_TIMEOUT = 0.5
    with RawConnection(gateway.url) as connection:
        connection.send(head("GET", "/healthz"))
        assert connection.response().status == 200
        time.sleep(0.7)  # idle, within uvicorn's keep-alive: not counted against the next head
        connection.send(head("GET", "/healthz"))
        assert connection.response().status == 200
        connection.trickle(b"GET /healthz HTTP/1.1\r\nX-Padding: " + b"x" * 12, every=0.1)
        assert connection.response().status == 408


@pytest.mark.parametrize("path, dialect", [(GENERATE_URL, "native"), ("/v1/chat/completions", "openai"),
                                           ("/api/chat", "ollama")])
def test_a_trickling_body_on_a_generation_endpoint_is_408_and_audited(gateway, settings, path, dialect):
    settings.REQUEST_BODY_TIMEOUT = 0.5
    with RawConnection(gateway.url) as connection:
        connection.send(head("POST", path, key=gateway.key, content_type="application/json",
                             content_length=str(len(BODY))))
        connection.trickle(BODY, every=0.1)
        response = connection.response()

    assert response.status == 408, response.body
    assert 0.5 <= response.seconds < 1.5, response.seconds
    assert response.headers["connection"] == "close"
    error = response.json()["error"]
    if dialect == "native":
        assert error["type"] == "request_timeout" and "REQUEST_BODY_TIMEOUT" in error["message"]
    elif dialect == "openai":
        assert error["code"] == "request_timeout"
    else:
        assert "REQUEST_BODY_TIMEOUT" in error
    row = Generation.objects.get()
    assert (row.dialect, row.status, row.error_type, row.http_status, row.consumer.name) == (
        dialect, "failed", "request_timeout", 408, "test-team")
    assert 0 < row.request_bytes < len(BODY)  # what had come


def test_a_trickling_body_with_a_key_that_is_not_valid_is_refused_for_its_key(gateway, settings):
    settings.REQUEST_BODY_TIMEOUT = 0.5
    with RawConnection(gateway.url) as connection:
        connection.send(head("POST", GENERATE_URL, key="gw_nope_nope", content_type="application/json",
                             content_length=str(len(BODY))))
        connection.trickle(BODY, every=0.1)
        response = connection.response()

    assert response.status == 401 and response.json()["error"]["type"] == "authentication_failed"
    assert Generation.objects.get().error_type == "authentication_failed"


def test_a_trickling_body_elsewhere_is_408_in_the_path_s_shape_without_a_row(gateway, settings):
    settings.REQUEST_BODY_TIMEOUT = 0.5
    body = b'{"model": "qwen2.5:7b"}'
    with RawConnection(gateway.url) as connection:
        connection.send(head("POST", "/api/show", key=gateway.key, content_type="application/json",
                             content_length=str(len(body))))
        connection.trickle(body, every=0.1)
        response = connection.response()

    assert response.status == 408
    assert "REQUEST_BODY_TIMEOUT" in response.json()["error"]
    assert not Generation.objects.exists()


def test_slow_clients_do_not_slow_down_the_others(gateway, settings):
    """50 clients trickle their heads and 50 their bodies; meanwhile every normal request is answered promptly, and
    at their timeouts every slow client is answered 408 and let go."""
    settings.REQUEST_HEADER_TIMEOUT = settings.REQUEST_BODY_TIMEOUT = 4
    settings.RATE_LIMIT_PER_MINUTE = 0
    quiet = normal_latencies(gateway, 10)
    slow = []
    for i in range(100):
        connection = RawConnection(gateway.url, timeout=10)
        if i % 2:
            connection.send(head("POST", "/v1/chat/completions", key=gateway.key, content_type="application/json",
                                 content_length="1000"))
        else:
            connection.send(b"GET /healthz HTTP/1.1\r\n")
        connection.sock.setblocking(False)
        slow.append(connection)
    started = time.monotonic()
    trickled = normal_latencies(gateway, 20, while_doing=lambda: drip(slow))
    assert time.monotonic() - started < 3.5, "the slow clients' timeouts passed before the normal requests ended"
    assert all(not closed(connection) for connection in slow), "a slow client was let go before its timeout"

    assert max(trickled) < 1.0, trickled
    assert statistics.median(trickled) < statistics.median(quiet) + 0.1, (quiet, trickled)
    deadline = time.monotonic() + 8
    while time.monotonic() < deadline and not all(closed(connection) for connection in slow):
        drip(slow)
        time.sleep(0.2)
    assert all(closed(connection) for connection in slow)
    for connection in slow:
        connection.close()
    # The body timeouts on the chat endpoint: each is an audited attempt of the key's consumer.
    assert Generation.objects.filter(error_type="request_timeout", http_status=408).count() == 50


def normal_latencies(gateway, count: int, while_doing=lambda: None) -> list[float]:
    latencies = []
    with gateway.client() as client:
        for i in range(count):
            while_doing()
            started = time.monotonic()
            if i % 2:
                response = client.post(GENERATE_URL, content=BODY, headers={"Content-Type": "application/json"})
            else:
                response = client.get("/healthz")
            latencies.append(time.monotonic() - started)
            assert response.status_code == 200, response.text
    return latencies


def drip(connections: list[RawConnection]) -> None:
    """One more byte from every slow client still connected: a header line's or a body's."""
    for connection in connections:
        if not getattr(connection, "gone", False):
            try:
                connection.sock.send(b"x")
            except (BlockingIOError, OSError):
                connection.gone = True


def closed(connection: RawConnection) -> bool:
    """Whether the server answered or closed this (non-blocking) connection."""
    if getattr(connection, "answered", False):
        return True
    try:
        data = connection.sock.recv(65536)
    except BlockingIOError:
        return False
    except OSError:
        data = b""
    connection.answered = data == b"" or data.startswith(b"HTTP/1.1 408")
    return connection.answered


def test_gunicorn_workers_bound_slow_heads_and_bodies_and_refuse_lying_lengths(tmp_path):
    """As deployed: gunicorn with the gateway's worker class, its HTTP protocol and its ASGI handlers."""
    (tmp_path / "empty.env").write_text("")
    url = free_port_refused()
    env = {k: v for k, v in os.environ.items() if k not in ("DJANGO_SETTINGS_MODULE", "PROMETHEUS_MULTIPROC_DIR")}
    env.update({"ENV_FILE": str(tmp_path / "empty.env"), "DATABASE_URL": f"sqlite:///{tmp_path / 'gateway.sqlite3'}",
                "SECRET_KEY": "slow-clients-test-" + "k" * 40, "WEB_CONCURRENCY": "1",
                "REQUEST_HEADER_TIMEOUT": "1", "REQUEST_BODY_TIMEOUT": "1",
                "GUNICORN_BIND": url.removeprefix("http://")})
    run_manage(env, "migrate", "--noinput")
    server = subprocess.Popen([sys.executable, "-m", "gunicorn"], cwd=ROOT, env=env, stdout=subprocess.DEVNULL,
                              stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            try:
                if httpx.get(f"{url}/healthz", timeout=1, trust_env=False).status_code == 200:
                    break
            except httpx.TransportError:
                time.sleep(0.1)

        with RawConnection(url) as lying:
            lying.send(head("POST", GENERATE_URL, content_type="application/json",
                            content_length="99999999999") + b"0123456789")
            refused = lying.response()
        with RawConnection(url) as slow_head:
            slow_head.trickle(b"GET /healthz HTTP/1.1\r\nX-Padding: " + b"x" * 30, every=0.1)
            head_timed_out = slow_head.response()
        with RawConnection(url) as slow_body:
            slow_body.send(head("POST", "/api/show", content_type="application/json", content_length="100"))
            slow_body.trickle(b"{" + b" " * 40, every=0.1)
            body_timed_out = slow_body.response()
    finally:
        server.send_signal(signal.SIGTERM)
        try:
            server.wait(timeout=30)
        except subprocess.TimeoutExpired:
            server.kill()

    assert refused.status == 401 and refused.seconds < 1, (refused.status, refused.seconds)
    assert head_timed_out.status == 408 and 1 <= head_timed_out.seconds < 2.5, head_timed_out.seconds
    assert body_timed_out.status == 408 and 1 <= body_timed_out.seconds < 2.5, body_timed_out.seconds
