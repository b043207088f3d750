"""Settings warnings at server start: gunicorn runs no Django system checks, so its config hook names them."""

import os
import subprocess
import sys
import time
from pathlib import Path

from tests.fake_ollama import free_port_refused

ROOT = Path(__file__).resolve().parents[2]


def test_gunicorn_logs_a_shadowed_setting_at_start(tmp_path):
    (tmp_path / ".env").write_text("OLLAMA_BASE_URL=http://100.120.180.42:11434\n")
    port = free_port_refused().rsplit(":", 1)[1]
    log = tmp_path / "gunicorn.log"
    env = {**os.environ, "ENV_FILE": str(tmp_path / ".env"), "OLLAMA_BASE_URL": "http://192.168.0.100:11434",
           "GUNICORN_BIND": f"127.0.0.1:{port}", "WEB_CONCURRENCY": "1", "DATABASE_URL": f"sqlite:///{tmp_path}/db"}
    with log.open("w") as out:
        server = subprocess.Popen([sys.executable, "-m", "gunicorn"], cwd=ROOT, env=env,
                                  stdout=out, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 30
        while "Booting worker" not in log.read_text() and time.monotonic() < deadline and server.poll() is None:
            time.sleep(0.1)
    finally:
        server.terminate()
        server.wait(timeout=30)
    text = log.read_text()
    assert ("OLLAMA_BASE_URL: (diagnostics.W001) OLLAMA_BASE_URL from the OS environment (http://192.168.0.100:11434) "
            "overrides the .env value (http://100.120.180.42:11434)") in text, text
