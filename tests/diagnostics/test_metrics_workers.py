"""/metrics under the real server: gunicorn's workers each count their own requests, and any worker's scrape sums
them exactly (prometheus-client's multiprocess mode, set up by gunicorn.conf.py)."""

import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest
from prometheus_client.multiprocess import MultiProcessCollector
from prometheus_client.parser import text_string_to_metric_families

from llm import metrics
from tests.fake_ollama import free_port_refused

ROOT = Path(__file__).resolve().parents[2]
TOKEN = "workers-test-" + "t" * 32
BATCH = 8
MAX_BATCHES = 12
BODY = {"role": "copywriter", "task": "sns", "payload": {"product": "Green tea", "tone": "calm"}}


def run_manage(env: dict, *args: str) -> str:
    result = subprocess.run([sys.executable, "manage.py", *args], cwd=ROOT, env=env, capture_output=True,
                            text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    return result.stdout


@pytest.fixture(scope="module")
def database(tmp_path_factory):
    """A SQLite file of its own, migrated, with one consumer's API key: what the servers below share."""
    folder = tmp_path_factory.mktemp("metrics-workers")
    (folder / "empty.env").write_text("")
    env = {k: v for k, v in os.environ.items() if k not in ("DJANGO_SETTINGS_MODULE", "PROMETHEUS_MULTIPROC_DIR",
                                                              "LLM_GATEWAY_OWN_METRICS_DIR")}
    env.update({"ENV_FILE": str(folder / "empty.env"), "DATABASE_URL": f"sqlite:///{folder}/gateway.sqlite3",
                "SECRET_KEY": "metrics-workers-test-" + "k" * 40, "GENERATOR_MODE": "mock",
                "MOCK_RESPONSE_DELAY": "0", "METRICS_TOKEN": TOKEN, "RATE_LIMIT_PER_MINUTE": "0"})
    run_manage(env, "migrate", "--noinput")
    key = run_manage(env, "create_api_key", "scraped-team").strip().splitlines()[-1]
    return env, key, folder


class Server:
    """gunicorn started as in production (`gunicorn` from the project root), on a free port."""

    def __init__(self, env: dict, log: Path, **extra: str):
        self.url = free_port_refused()
        self.log = log
        env = {**env, "GUNICORN_BIND": self.url.removeprefix("http://"), **extra}
        with log.open("w") as out:
            self.process = subprocess.Popen([sys.executable, "-m", "gunicorn"], cwd=ROOT, env=env, stdout=out,
                                            stderr=subprocess.STDOUT)

    def wait_until_up(self, workers: int) -> None:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and self.process.poll() is None:
            if len(self.workers()) == workers:
                try:
                    if httpx.get(f"{self.url}/healthz", timeout=2, trust_env=False).status_code == 200:
                        return
                except httpx.TransportError:
                    pass
            time.sleep(0.1)
        raise AssertionError(f"gunicorn did not start:\n{self.log.read_text()}")

    def workers(self) -> list[int]:
        """The pids of the master's worker processes."""
        children = []
        for stat in Path("/proc").glob("[0-9]*/stat"):
            try:
                fields = stat.read_text().rsplit(")", 1)[1].split()
            except (OSError, IndexError):
                continue
            if int(fields[1]) == self.process.pid:
                children.append(int(stat.parent.name))
        return children

    def scrape(self) -> dict:
        """One scrape over a new connection: {(sample name, labels): value}."""
        response = httpx.get(f"{self.url}/metrics", headers={"Authorization": f"Bearer {TOKEN}"}, timeout=10,
                             trust_env=False)
        assert response.status_code == 200, response.text
        samples = {"families": set()}
        for family in text_string_to_metric_families(response.text):
            samples["families"].add(family.name)
            for sample in family.samples:
                samples[(sample.name, frozenset(sample.labels.items()))] = sample.value
        return samples

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            self.process.wait(timeout=30)


def requests_per_worker(metrics_dir: Path) -> dict[int, float]:
    """How many requests each worker process counted, read from its own file in the multiprocess directory."""
    counted = {}
    for path in metrics_dir.glob("counter_*.db"):
        alone = metrics_dir.parent / f"alone-{path.stem}"
        alone.mkdir(exist_ok=True)
        shutil.copy(path, alone / path.name)
        pid = int(path.stem.split("_")[1])
        counted[pid] = sum(s.value for family in MultiProcessCollector(None, str(alone)).collect()
                           for s in family.samples if s.name == "llm_gateway_requests_total")
        shutil.rmtree(alone)
    return counted


def leave_stale_counts(metrics_dir: Path, env: dict) -> None:
    """A previous run's files, as a killed gateway leaves them: the master must not count them again."""
    code = ("from llm import metrics; "
            "metrics.REQUESTS.labels('succeeded', 'none', 'qwen2.5:7b', 'scraped-team', 'native').inc(1000)")
    subprocess.run([sys.executable, "-c", code], cwd=ROOT, check=True, timeout=60,
                   env={**env, "PROMETHEUS_MULTIPROC_DIR": str(metrics_dir), "DJANGO_SETTINGS_MODULE":
                        "gateway_project.settings", "PYTHONPATH": str(ROOT)})
    assert list(metrics_dir.glob("counter_*.db"))


def generate(url: str, key: str | None):
    # A client of its own per request: a new connection each time, so that either worker may accept it.
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    response = httpx.post(f"{url}/api/v1/llm/generate", json=BODY, headers=headers, timeout=30, trust_env=False)
    return response.status_code, response.json()


def sample(scraped: dict, name: str, **labels) -> float:
    return scraped.get((name, frozenset(labels.items())), 0.0)


def test_two_workers_count_each_generation_once_whichever_answers_the_scrape(database, tmp_path):
    env, key, _ = database
    metrics_dir = tmp_path / "metrics"
    metrics_dir.mkdir()
    leave_stale_counts(metrics_dir, env)
    server = Server(env, tmp_path / "gunicorn.log", WEB_CONCURRENCY="2", PROMETHEUS_MULTIPROC_DIR=str(metrics_dir))
    try:
        server.wait_until_up(workers=2)
        answers = []
        with ThreadPoolExecutor(BATCH) as pool:
            answers += pool.map(lambda _: generate(server.url, None), range(2))  # anonymous: refused
            for _ in range(MAX_BATCHES):
                answers += pool.map(lambda _: generate(server.url, key), range(BATCH))
                if len([n for n in requests_per_worker(metrics_dir).values() if n]) == 2:
                    break
        per_worker = requests_per_worker(metrics_dir)
        assert len([n for n in per_worker.values() if n]) == 2, f"requests counted per worker process: {per_worker}"
        assert sum(per_worker.values()) == len(answers)

        succeeded = [body for status, body in answers if status == 200]
        assert len(succeeded) == len(answers) - 2
        prompt_tokens = sum(body["usage"]["prompt_tokens"] for body in succeeded)
        completion_tokens = sum(body["usage"]["completion_tokens"] for body in succeeded)
        latency = sum(body["latency_ms"] for body in succeeded) / 1000
        model, team = {"model": "qwen2.5:7b"}, {"consumer": "scraped-team"}
        native = {"dialect": "native"}
        scrapes = [server.scrape() for _ in range(6)]
        for scraped in scrapes:
            assert scraped["families"] == {f.name for m in metrics.FAMILIES for f in m.describe()}
            assert sample(scraped, "llm_gateway_requests_total", outcome="succeeded", error_type="none", **model,
                          **team, **native) == len(succeeded)
            assert sample(scraped, "llm_gateway_requests_total", outcome="failed", error_type="not_authenticated",
                          model="none", consumer="anonymous", **native) == 2
            assert sum(v for k, v in scraped.items() if k[0] == "llm_gateway_requests_total") == len(answers)
            assert sample(scraped, "llm_gateway_request_duration_seconds_count", outcome="succeeded", **model,
                          **native) == len(succeeded)
            assert sample(scraped, "llm_gateway_request_duration_seconds_sum", outcome="succeeded", **model,
                          **native) == pytest.approx(latency)
            assert sample(scraped, "llm_gateway_request_duration_seconds_bucket", outcome="succeeded", le="+Inf",
                          **model, **native) == len(succeeded)
            assert sample(scraped, "llm_gateway_upstream_duration_seconds_count", **model, **native) == len(succeeded)
            assert sample(scraped, "llm_gateway_overhead_seconds_count", **native) == len(succeeded)
            assert sample(scraped, "llm_gateway_time_to_first_token_seconds_count", stream="false", **model,
                          **native) == len(succeeded)
            assert sample(scraped, "llm_gateway_tokens_total", type="prompt", **model, **team,
                          **native) == prompt_tokens
            assert sample(scraped, "llm_gateway_tokens_total", type="completion", **model, **team,
                          **native) == completion_tokens
            assert sample(scraped, "llm_gateway_upstream_retries_total") == 0
            assert sample(scraped, "llm_gateway_requests_in_flight", **native) == 0
    finally:
        server.stop()
    assert metrics_dir.is_dir()  # an operator's own directory is kept


def test_a_dead_workers_requests_are_no_longer_in_flight_and_its_directory_goes_at_exit(database, tmp_path):
    env, key, _ = database
    server = Server(env, tmp_path / "gunicorn.log", WEB_CONCURRENCY="1", MOCK_RESPONSE_DELAY="60")
    try:
        server.wait_until_up(workers=1)
        [worker] = server.workers()
        # The directory the master made: the worker has its files mapped into memory.
        [metrics_dir] = {Path(line.split()[-1]).parent for line in Path(f"/proc/{worker}/maps").read_text()
                         .splitlines() if "/llm-gateway-metrics-" in line}
        outcome = []

        def wait_for_the_slow_generation():
            try:
                outcome.append(generate(server.url, key))
            except httpx.TransportError as exc:
                outcome.append(exc)

        stuck = threading.Thread(target=wait_for_the_slow_generation)
        stuck.start()
        deadline = time.monotonic() + 20
        while sample(server.scrape(), "llm_gateway_requests_in_flight", dialect="native") != 1:
            assert time.monotonic() < deadline, "the generation never showed as in flight"
            time.sleep(0.1)

        os.kill(worker, signal.SIGKILL)
        stuck.join(timeout=30)
        assert isinstance(outcome[0], httpx.TransportError), outcome  # it died with the worker
        deadline = time.monotonic() + 30
        while server.workers() in ([], [worker]):
            assert time.monotonic() < deadline, "gunicorn did not replace the killed worker"
            time.sleep(0.1)
        server.wait_until_up(workers=1)

        assert sample(server.scrape(), "llm_gateway_requests_in_flight", dialect="native") == 0
        assert not list(metrics_dir.glob(f"gauge_livesum_{worker}.db"))
        assert list(metrics_dir.glob(f"counter_{worker}.db"))  # what it counted still counts
    finally:
        server.stop()
    assert not metrics_dir.exists()  # the master made it, the master removed it
