"""Two gateways on one host, started by the same user: neither takes the other's gunicorn control socket."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from tests.fake_ollama import free_port_refused

ROOT = Path(__file__).resolve().parents[2]
GUNICORNC = Path(sys.executable).with_name("gunicornc")


class Gateway:
    """`gunicorn` from the project root, as production starts it, with one worker on a free port."""

    def __init__(self, env: dict, log: Path, **extra: str):
        self.url = free_port_refused()
        self.log = log
        env = {**env, "GUNICORN_BIND": self.url.removeprefix("http://"), "WEB_CONCURRENCY": "1", **extra}
        with log.open("w") as out:
            self.process = subprocess.Popen([sys.executable, "-m", "gunicorn"], cwd=ROOT, env=env, stdout=out,
                                            stderr=subprocess.STDOUT)

    def answers(self) -> bool:
        try:
            return httpx.get(f"{self.url}/healthz", timeout=2, trust_env=False).status_code == 200
        except httpx.TransportError:
            return False

    def wait_until_up(self) -> None:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and self.process.poll() is None:
            if self.answers():
                return
            time.sleep(0.1)
        raise AssertionError(f"gunicorn did not start:\n{self.log.read_text()}")

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


@pytest.fixture
def environment(tmp_path):
    """What one user's shell gives both gateways: the same HOME (no XDG_RUNTIME_DIR, so gunicorn's default control
    socket would be ~/.gunicorn/gunicorn.ctl), mock mode, a secret key."""
    (tmp_path / "home").mkdir()
    (tmp_path / "empty.env").write_text("")
    env = {k: v for k, v in os.environ.items()
           if k not in ("DJANGO_SETTINGS_MODULE", "PROMETHEUS_MULTIPROC_DIR", "LLM_GATEWAY_OWN_METRICS_DIR",
                        "XDG_RUNTIME_DIR", "GUNICORN_CONTROL_SOCKET")}
    env.update({"HOME": str(tmp_path / "home"), "ENV_FILE": str(tmp_path / "empty.env"),
                "SECRET_KEY": "control-socket-test-" + "k" * 40, "DATABASE_URL": f"sqlite:///{tmp_path}/db.sqlite3"})
    return env


def control(socket: Path, command: str) -> dict:
    result = subprocess.run([str(GUNICORNC), "-s", str(socket), "-c", command, "-j"], capture_output=True,
                            text=True, timeout=30)
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def test_two_gateways_side_by_side_share_no_control_socket(environment, tmp_path):
    first = Gateway(environment, tmp_path / "first.log")
    second = Gateway(environment, tmp_path / "second.log")
    try:
        first.wait_until_up()
        second.wait_until_up()

        # gunicorn's per-user default would have let the second take it from the first.
        assert not (tmp_path / "home" / ".gunicorn").exists()
        second.stop()
        assert first.answers()
    finally:
        first.stop()
        second.stop()
    assert first.process.returncode == 0, first.log.read_text()


def test_each_gateway_may_have_a_control_socket_of_its_own(environment, tmp_path):
    sockets = tmp_path / "first.ctl", tmp_path / "second.ctl"
    first = Gateway(environment, tmp_path / "first.log", GUNICORN_CONTROL_SOCKET=str(sockets[0]))
    second = Gateway(environment, tmp_path / "second.log", GUNICORN_CONTROL_SOCKET=str(sockets[1]))
    try:
        first.wait_until_up()
        second.wait_until_up()

        # Each socket steers its own master: it lists that gateway's address, and only that one.
        for gateway, socket in zip((first, second), sockets):
            listeners = control(socket, "show listeners")["listeners"]
            assert [listener["address"] for listener in listeners] == [gateway.url]
        second.stop()
        assert not sockets[1].exists() and sockets[0].exists()
        assert first.answers()
        assert [item["address"] for item in control(sockets[0], "show listeners")["listeners"]] == [first.url]
    finally:
        first.stop()
        second.stop()
