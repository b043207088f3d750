"""check_ollama_connection against the loopback Ollama test server and deliberately broken settings."""

import json
import socket
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from diagnostics.ollama_check import check_ollama_connection


def step_names(report):
    return [(step.name, step.ok) for step in report.steps]


def test_a_working_ollama_passes_every_step(ollama):
    report = check_ollama_connection()

    assert report.ok and report.cause is None
    assert step_names(report) == [("resolve host", True), ("connect", True), ("GET /api/version", True),
                                  ("GET /api/tags", True), ("model", True)]
    assert all(step.elapsed_ms >= 0 for step in report.steps)
    assert report.version == "0.5.7"
    assert report.models == ["qwen2.5:7b", "llama3.2:1b"]
    assert (report.model, report.model_available) == ("qwen2.5:7b", True)
    assert report.generation is None
    # It never generates unless asked.
    assert [(r.method, r.path) for r in ollama.requests] == [("GET", "/api/version"), ("GET", "/api/tags")]


def test_the_test_generation_reports_the_reply_its_length_and_time(ollama):
    ollama.reply = "ready"
    report = check_ollama_connection(generate=True, model="llama3.2:1b")

    assert report.ok
    assert report.generation["reply"] == "ready"
    assert report.generation["length"] == 5
    assert report.generation["elapsed_ms"] > 0
    sent = ollama.requests[-1]
    assert (sent.method, sent.path) == ("POST", "/api/chat")
    assert sent.json["model"] == "llama3.2:1b" and sent.json["stream"] is False
    assert sent.json["options"]["num_predict"] == 16


def test_invalid_setting_a_timeout_that_is_not_positive(ollama):
    report = check_ollama_connection(timeout=0)
    assert report.cause.code == "invalid_setting"
    assert "not a positive number of seconds" in report.cause.message
    assert ollama.requests == []


def test_invalid_setting_a_base_url_with_a_path(ollama, settings):
    settings.OLLAMA_BASE_URL = ollama.url + "/api"
    report = check_ollama_connection()
    assert report.cause.code == "invalid_setting"
    assert "has a path (/api)" in report.cause.message
    assert f"OLLAMA_BASE_URL={ollama.url}" in report.cause.fix


def test_invalid_setting_a_base_url_that_does_not_parse(ollama):
    report = check_ollama_connection(base_url="http://[::1")
    assert report.cause.code == "invalid_setting"


def test_dns_failure(ollama, settings):
    settings.OLLAMA_BASE_URL = "http://ollama-box.invalid:11434"
    report = check_ollama_connection()
    assert report.cause.code == "dns_failure"
    assert "'ollama-box.invalid' does not resolve" in report.cause.message
    assert step_names(report) == [("resolve host", False)]


def test_connection_refused(ollama, settings, refused_url):
    settings.OLLAMA_BASE_URL = refused_url
    report = check_ollama_connection()
    assert report.cause.code == "connection_refused"
    assert f"Nothing listens at {refused_url.removeprefix('http://')}" in report.cause.message
    assert "OLLAMA_HOST" in report.cause.fix
    assert step_names(report) == [("resolve host", True), ("connect", False)]


def test_timeout_of_a_hung_server(ollama):
    ollama.fault("hang", paths="/api/version", limit=5)
    report = check_ollama_connection(timeout=0.5)
    assert report.cause.code == "timeout"
    assert "did not answer GET /api/version within 0.5s" in report.cause.message
    assert report.steps[-1].name == "GET /api/version" and not report.steps[-1].ok
    assert report.steps[-1].elapsed_ms >= 450


def test_timeout_of_a_connection_nobody_accepts(ollama, settings):
    # A listening socket whose backlog is full: the kernel drops further SYNs, so connect() waits.
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen(0)
        port = server.getsockname()[1]
        fillers = []
        try:
            for _ in range(8):
                filler = socket.socket()
                filler.setblocking(False)
                filler.connect_ex(("127.0.0.1", port))
                fillers.append(filler)
            settings.OLLAMA_BASE_URL = f"http://127.0.0.1:{port}"
            report = check_ollama_connection(timeout=0.5)
        finally:
            for filler in fillers:
                filler.close()
    assert report.cause.code == "timeout", report.cause
    assert "did not answer a TCP connection" in report.cause.message


def test_not_ollama(ollama):
    ollama.fault("not_ollama")
    report = check_ollama_connection()
    assert report.cause.code == "not_ollama"
    assert "Something answers at" in report.cause.message
    assert "HTTP 404" in report.cause.message and "Server: nginx/1.24.0" in report.cause.message
    assert "11434" in report.cause.fix


def test_not_ollama_when_the_server_does_not_speak_http(settings):
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen(2)

        def greet():
            for _ in range(2):  # the connect step, then the HTTP request
                conn, _ = server.accept()
                with conn:
                    try:
                        conn.sendall(b"SSH-2.0-OpenSSH_9.6\r\n")
                        conn.recv(1024)
                    except OSError:
                        pass  # the connect step hangs up at once

        threading.Thread(target=greet, daemon=True).start()
        settings.OLLAMA_BASE_URL = "http://127.0.0.1:%d" % server.getsockname()[1]
        report = check_ollama_connection(timeout=2)
    assert report.cause.code == "not_ollama"


def test_http_error_when_ollama_answers_with_its_error(ollama):
    ollama.fault("status", paths="/api/tags", status=500, message="llama runner process has terminated")
    report = check_ollama_connection()
    assert report.cause.code == "http_error"
    assert "HTTP 500: llama runner process has terminated" in report.cause.message
    assert report.version == "0.5.7"


def test_model_missing_names_the_pull_command_and_the_models_there(ollama, settings):
    settings.OLLAMA_DEFAULT_MODEL = "mistral:7b"
    report = check_ollama_connection()
    assert report.cause.code == "model_missing"
    assert report.model_available is False
    assert "Models there: qwen2.5:7b, llama3.2:1b." in report.cause.message
    assert "ollama pull mistral:7b" in report.cause.fix
    assert "OLLAMA_DEFAULT_MODEL was overridden in Django settings after start-up." in report.cause.message


def test_model_missing_says_where_the_default_model_came_from(ollama, gateway_env):
    gateway_env({"OLLAMA_DEFAULT_MODEL": "mistral:7b"}, f"OLLAMA_BASE_URL={ollama.url}\n")
    report = check_ollama_connection()
    assert report.cause.code == "model_missing"
    assert "OLLAMA_DEFAULT_MODEL=mistral:7b comes from the OS environment." in report.cause.message


def test_a_model_without_a_tag_means_latest(ollama):
    ollama.models.append("phi3:latest")
    assert check_ollama_connection(model="PHI3").ok


def test_generation_failed(ollama):
    ollama.fault("status", paths="/api/chat", status=500, message="llama runner process has terminated")
    report = check_ollama_connection(generate=True)
    assert report.cause.code == "generation_failed"
    assert "llama runner process has terminated" in report.cause.message
    assert report.steps[-1].name == "test generation" and not report.steps[-1].ok


def test_an_os_variable_shadowing_the_env_file_is_part_of_the_cause(ollama, gateway_env, refused_url):
    gateway_env({"OLLAMA_BASE_URL": refused_url}, f"OLLAMA_BASE_URL={ollama.url}\n")

    report = check_ollama_connection()

    assert report.source == "environment"
    assert report.cause.code == "connection_refused"
    assert (f"OLLAMA_BASE_URL={refused_url} comes from the OS environment and overrides {ollama.url} in "
            in report.cause.message)
    assert "unset OLLAMA_BASE_URL" in report.cause.message
    assert report.cause.fix.startswith(f"`unset OLLAMA_BASE_URL` (and remove it from the service's environment) so "
                                       f"that {ollama.url} from ")
    assert "If the OS value is the right one: Start Ollama there" in report.cause.fix
    assert any(w.startswith(f"OLLAMA_BASE_URL from the OS environment ({refused_url}) overrides the .env value "
                            f"({ollama.url})") for w in report.warnings)


def test_an_inline_comment_in_the_env_file_is_part_of_the_cause(ollama, gateway_env):
    gateway_env({}, f"OLLAMA_BASE_URL={ollama.url}\nOLLAMA_DEFAULT_MODEL=llama3.2:1b # small and fast\n")

    report = check_ollama_connection()

    assert report.source == "env_file"
    assert report.cause.code == "model_missing"
    assert "Model 'llama3.2:1b # small and fast' is not on Ollama" in report.cause.message
    assert "keeps the inline comment ' # small and fast'" in report.cause.message
    assert any("inline comment" in w for w in report.warnings)


def test_an_inline_comment_after_the_base_url_is_warned_about_but_reaches_the_server(ollama, gateway_env):
    # The gateway's httpx client reads " # ..." as a URL fragment, so live mode works: the check must agree.
    gateway_env({}, f"OLLAMA_BASE_URL={ollama.url} # the GPU box\n")

    report = check_ollama_connection()

    assert report.ok, report.cause
    assert any("keeps the inline comment ' # the GPU box'" in w for w in report.warnings)


def test_a_password_in_the_base_url_is_masked_everywhere(ollama, settings):
    host = ollama.url.removeprefix("http://")
    settings.OLLAMA_BASE_URL = f"http://admin:hunter2@{host}"
    report = check_ollama_connection()
    assert report.ok
    assert report.target_url == f"http://admin:********@{host}"
    assert "hunter2" not in str(report.as_dict())
    assert ollama.requests[0].headers["authorization"].startswith("Basic ")


def test_mock_mode_still_checks_ollama_and_says_who_serves_requests(ollama, settings):
    settings.GENERATOR_MODE = "mock"
    report = check_ollama_connection()
    assert report.ok
    assert any("served by the mock provider" in w for w in report.warnings)


def test_comfyui_is_checked_when_configured(ollama, settings, refused_url):
    settings.COMFYUI_BASE_URL = refused_url
    report = check_ollama_connection(timeout=2)
    assert report.ok  # ComfyUI is a warning, not the Ollama verdict
    assert report.comfyui["ok"] is False
    assert report.steps[-1].name == "ComfyUI GET /system_stats" and not report.steps[-1].ok
    assert any("ComfyUI" in w and "not reachable" in w for w in report.warnings)


class _ComfyUI(BaseHTTPRequestHandler):
    """ComfyUI's GET /system_stats, as much of it as the check reads."""

    def do_GET(self):
        body = json.dumps({"system": {"os": "posix", "comfyui_version": "0.3.10"}, "devices": []}).encode()
        self.send_response(200 if self.path == "/system_stats" else 404)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


def test_a_reachable_comfyui_is_a_passing_step(ollama, settings):
    server = ThreadingHTTPServer(("127.0.0.1", 0), _ComfyUI)
    threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
    try:
        settings.COMFYUI_BASE_URL = "http://127.0.0.1:%d" % server.server_address[1]
        report = check_ollama_connection()
    finally:
        server.shutdown()
        server.server_close()
    assert report.ok
    assert report.comfyui["ok"] is True
    assert ("ComfyUI GET /system_stats", True) in step_names(report)
    assert not any("ComfyUI" in w for w in report.warnings)


def test_the_check_ignores_proxy_variables_like_the_gateway(ollama, monkeypatch, refused_url):
    monkeypatch.setenv("HTTP_PROXY", refused_url)
    report = check_ollama_connection()
    assert report.ok
    assert any("HTTP_PROXY" in w and "ignores proxy variables" in w for w in report.warnings)
