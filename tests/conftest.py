import importlib
import json
import os
import time
import uuid
from contextlib import contextmanager

import pytest
from django.core.cache import cache

from gateway_project.environment import resolve
from llm import api_keys
from llm.models import Consumer
from tests.fake_ollama import FakeOllama, free_port_refused

GENERATE_URL = "/api/v1/llm/generate"
# A rate-limit window for tests that count: windows start at multiples of their length since the epoch, so with
# this one the next boundary is in 2033 and a count is never cut short in mid-test (an hour-long one was, at 22:00).
LONG_WINDOW = 10**9


def require_redis(url: str) -> None:
    """Skip the test when no Redis answers at `url`; under CI, where Redis runs, fail it instead."""
    import redis

    try:
        redis.Redis.from_url(url, socket_connect_timeout=1).ping()
    except Exception as exc:  # noqa: BLE001 - any failure means no Redis here
        if os.environ.get("CI"):
            pytest.fail(f"Redis is not reachable at {url}: {exc}")
        pytest.skip(f"Redis is not reachable at {url}: {exc}")


def point_cache_at_redis(settings, url: str, name: str = "test") -> str:
    """The gateway's cache in Redis at `url`, under a key prefix of this test's own, which is returned."""
    require_redis(url)
    prefix = f"{name}-{uuid.uuid4().hex}"
    settings.CACHES = {"default": {"BACKEND": "django.core.cache.backends.redis.RedisCache", "LOCATION": url,
                                   "KEY_PREFIX": prefix}}
    return prefix


def delete_redis_keys(url: str, pattern: str) -> None:
    import redis

    client = redis.Redis.from_url(url)
    for key in client.scan_iter(pattern):
        client.delete(key)


@contextmanager
def cache_in_redis(settings, url: str, name: str = "test"):
    """point_cache_at_redis() for the block (the prefix yielded), the prefix's keys deleted afterwards."""
    prefix = point_cache_at_redis(settings, url, name)
    try:
        yield prefix
    finally:
        delete_redis_keys(url, f"{prefix}:*")


@pytest.fixture(autouse=True)
def _no_mock_delay(settings):
    """The mock's one-second think time is for people watching a demo, not for a test suite."""
    settings.MOCK_RESPONSE_DELAY = 0
    # Retries stay on (OLLAMA_MAX_RETRIES=2 as in production) but pause for milliseconds.
    settings.OLLAMA_RETRY_BACKOFF = 0.001


@pytest.fixture(autouse=True)
def _no_condition_carried_over():
    """Expected conditions are logged once per process until they clear: each test starts from none."""
    from gateway_project.conditions import forget_all

    forget_all()
    yield
    forget_all()


@pytest.fixture(autouse=True)
def audit_spool_dir(tmp_path, settings):
    """Each test's own audit spool: outcomes the database refused are kept there, never in the checkout."""
    from llm import audit_spool

    settings.AUDIT_SPOOL_DIR = str(tmp_path / "audit-spool")
    audit_spool.forget()
    yield tmp_path / "audit-spool"
    audit_spool.forget()


@pytest.fixture(autouse=True)
def _no_servers_carried_over():
    """The admin's list of Ollama servers, as a process read it, and what it knows of them: each test reads its own
    (a list left behind would route the next test's generations to servers that are gone)."""
    from llm import servers

    servers.registry.forget()
    servers.pool().forget()
    yield
    servers.registry.forget()
    servers.pool().forget()


@pytest.fixture(autouse=True)
def _fresh_cache():
    """Rate-limit counters live in the cache; a test must not inherit another's (primary keys get reused)."""
    cache.clear()
    yield
    cache.clear()


@pytest.fixture(scope="session")
def ollama_server():
    with FakeOllama() as server:
        yield server


@pytest.fixture
def ollama(ollama_server, settings):
    """The loopback Ollama test server, with the gateway in live mode pointed at it."""
    ollama_server.reset()
    settings.GENERATOR_MODE = "live"
    settings.OLLAMA_BASE_URL = ollama_server.url
    settings.OLLAMA_TIMEOUT = 5
    settings.OLLAMA_CONNECT_TIMEOUT = 2
    yield ollama_server
    ollama_server.reset()


@pytest.fixture
def refused_url():
    return free_port_refused()


@pytest.fixture
def shipped_templates(db):
    """The prompt templates the seed migration ships, present even after a transactional test's flush."""
    from django.apps import apps

    seed = importlib.import_module("llm.migrations.0004_seed_prompt_templates")
    seed.seed_templates(apps)
    return seed.TEMPLATES


@pytest.fixture
def make_template(db):
    """Create a template with its first version; content fields default to a plain one-placeholder prompt."""
    from llm import prompt_templates
    from llm.models import PromptTemplate

    def make(role="tester", task="echo", *, sample_payload=None, **content):
        template = PromptTemplate.objects.create(role=role, task=task, sample_payload=sample_payload or {})
        fields = {"system_prompt": "You test things.", "user_template": "Say {word}.", "mode": "json",
                  "model": "", "fallback_models": [], "allowed_models": [], "options": {}, "output_schema": None}
        return prompt_templates.save_version(template=template, content={**fields, **content}, author="pytest")

    return make


@pytest.fixture
def consumer(db):
    return Consumer.objects.create(name="test-team")


@pytest.fixture
def api_key(consumer):
    """A valid key of the test consumer, as the client sends it."""
    return api_keys.issue_key(consumer)[1]


@pytest.fixture
def generate(client, api_key, shipped_templates):
    """POST a generation request the way an API consumer would: a dict is sent as JSON, with a valid API key.

    key=None sends no key; key="..." sends that one. Extra headers go in as HTTP_... keyword arguments.
    """

    def post(body=None, *, raw=None, content_type="application/json", key=api_key, **extra):
        data = raw if raw is not None else json.dumps(body if body is not None else {})
        if key is not None:
            extra.setdefault("HTTP_AUTHORIZATION", f"Bearer {key}")
        return client.post(GENERATE_URL, data=data, content_type=content_type, **extra)

    return post


@pytest.fixture
def live_generate(site, api_key, shipped_templates):
    """POST a generation request to the live server over a real socket, as a browser test's API consumer does.

    (The test client would run the async request path in the test's thread, where Playwright's loop runs.)
    """
    import httpx

    def post(body, *, key=api_key):
        return httpx.post(f"{site.url}{GENERATE_URL}", json=body, timeout=10, trust_env=False,
                          headers={"Authorization": f"Bearer {key}"} if key else {})

    return post


class LiveGateway:
    """The gateway served over a loopback socket: its URL, and a key-carrying httpx client factory."""

    def __init__(self, url: str, key: str):
        self.url = url
        self.key = key

    def client(self, **kwargs):
        import httpx

        kwargs.setdefault("timeout", 10)
        return httpx.Client(base_url=self.url, trust_env=False, headers={"Authorization": f"Bearer {self.key}"},
                            **kwargs)

    def async_client(self, **kwargs):
        import httpx

        kwargs.setdefault("timeout", 30)
        return httpx.AsyncClient(base_url=self.url, trust_env=False,
                                 headers={"Authorization": f"Bearer {self.key}"}, **kwargs)


@contextmanager
def serving_asgi():
    """The gateway's ASGI application under uvicorn on a loopback port, in this process, as production runs it:
    one event loop, sync views (the admin) through Django's sync thread, database steps in their bounded pool."""
    import socket
    import threading

    import uvicorn

    from gateway_project.asgi import application
    from gateway_project.workers import GatewayWorker

    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(application, lifespan="off", log_config=None, access_log=False,
                                           http=GatewayWorker.CONFIG_KWARGS["http"], timeout_graceful_shutdown=2))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not server.started and time.monotonic() < deadline:
        time.sleep(0.01)
    assert server.started, "uvicorn did not start"
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(10)
        sock.close()


@pytest.fixture
def gateway(transactional_db, settings, api_key, shipped_templates):
    """The gateway served over a real socket (committed data: the test is transactional)."""
    settings.DB_STEPS_IN_CALLER_THREAD = False
    with serving_asgi() as url:
        yield LiveGateway(url, api_key)


@pytest.fixture
def site(transactional_db, settings):
    """What pytest-django's live_server is to a browser test, but the production ASGI server instead of Django's
    threaded WSGI one: the browser tests click through the admin as it is served in production."""
    from types import SimpleNamespace

    settings.DB_STEPS_IN_CALLER_THREAD = False
    with serving_asgi() as url:
        yield SimpleNamespace(url=url)


def run_check_ollama(*args) -> tuple[int, str]:
    """manage.py check_ollama as an operator runs it: its exit status and what it printed."""
    from io import StringIO

    from django.core.management import CommandError, call_command

    out = StringIO()
    try:
        call_command("check_ollama", *args, stdout=out, no_color=True)
    except CommandError as exc:
        return exc.returncode, out.getvalue()
    return 0, out.getvalue()


def wait_for(predicate, timeout: float = 5.0, interval: float = 0.02):
    """Poll until predicate() is truthy (its value) or the timeout passes (then the last value)."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value or time.monotonic() > deadline:
            return value
        time.sleep(interval)


@pytest.fixture
def valid_request():
    return {"role": "copywriter", "task": "sns", "payload": {"product": "Green tea", "tone": "calm"}}


# A reply that matches the shipped copywriter/sns output schema, for live-mode tests that need a success.
SNS_REPLY = json.dumps({"caption": "Slow down with a cup of green tea.", "hashtags": ["#greentea", "#calm"],
                        "call_to_action": "Try it today"})


def assert_error(response, status: int, type_: str):
    """The one error shape: {"error": {"type", "message", "request_id"}} with the id of the X-Request-ID header."""
    assert response.status_code == status, response.content
    assert response["Content-Type"].startswith("application/json")
    error = response.json()["error"]
    assert error["type"] == type_
    assert error["message"]
    assert error["request_id"] == response["X-Request-ID"]
    return error


CHROMIUM = "/usr/bin/chromium"


def pytest_collection_modifyitems(items):
    """Browser tests last: from the first one on, Playwright's event loop runs in the main thread for the rest of
    the session, and the test client cannot run the async request path in a thread with a running loop."""
    items.sort(key=lambda item: item.get_closest_marker("browser") is not None)


@pytest.fixture(scope="session")
def browser():
    """Debian's headless Chromium driven by Playwright; Playwright never downloads a browser of its own here."""
    import os

    if not os.path.exists(CHROMIUM):
        message = f"{CHROMIUM} is missing: `make test` installs it (apt-get install chromium)"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    from playwright.sync_api import sync_playwright

    # Playwright's sync API runs an event loop in this thread; the ORM calls the tests make around it are
    # still synchronous, so Django's async-safety guard would refuse them.
    os.environ["DJANGO_ALLOW_ASYNC_UNSAFE"] = "true"
    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(
            executable_path=CHROMIUM,
            headless=True,
            args=["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
                  "--disable-sync", "--no-first-run"],
        )
        yield chromium
        chromium.close()


# Every page the browser tests open reports the Content-Security-Policy violations it causes to the test (an
# exposed function survives navigation; the browser calls it from an event listener added before any page script).
REPORT_CSP_VIOLATIONS = """
document.addEventListener("securitypolicyviolation", (e) => window.reportCspViolation({
    page: document.location.pathname, directive: e.effectiveDirective, blocked: e.blockedURI,
    source: e.sourceFile, line: e.lineNumber, sample: e.sample}));
"""


@pytest.fixture
def page(browser):
    """A fresh browser page; the test fails if any page it opened violated the Content-Security-Policy."""
    context = browser.new_context()
    violations: list[dict] = []
    context.expose_function("reportCspViolation", lambda violation: violations.append(violation))
    context.add_init_script(REPORT_CSP_VIOLATIONS)
    page = context.new_page()
    page.csp_violations = violations
    page.set_default_timeout(10_000)
    yield page
    context.close()
    assert violations == [], f"Content-Security-Policy violations: {violations}"


@pytest.fixture
def staff_user(django_user_model):
    """A staff member with no explicit permissions: what an operator reviewing generations is given."""
    return django_user_model.objects.create_user("operator", password="correct-horse-battery", is_staff=True)


@pytest.fixture
def admin_login(page, site, staff_user):
    """Log the browser in to the admin as the staff user."""

    def login():
        page.goto(f"{site.url}/admin/login/")
        page.fill("#id_username", "operator")
        page.fill("#id_password", "correct-horse-battery")
        page.click("input[type=submit]")
        page.wait_for_url(f"{site.url}/admin/")
        return page

    return login


# The Django settings each gateway setting becomes (the rest are reshaped, e.g. DATABASE_URL into DATABASES).
GATEWAY_SETTINGS = ("GENERATOR_MODE", "OLLAMA_BASE_URL", "OLLAMA_TIMEOUT", "OLLAMA_CONNECT_TIMEOUT",
                    "OLLAMA_DEFAULT_MODEL", "MOCK_RESPONSE_DELAY", "COMFYUI_BASE_URL")


@pytest.fixture
def gateway_env(tmp_path, settings):
    """Start the gateway's settings over from an OS environment and an env file: as if the process started so.

    Returns the Resolved; settings.GATEWAY_ENV and the Django settings it feeds are set from it.
    """

    def start(os_values: dict | None = None, env_file: str = "", *, strict: bool = True):
        path = tmp_path / ".env"
        path.write_text(env_file or "")
        # strict=False starts as `manage.py check_ollama` does: invalid values listed, defaults in their place.
        resolved = resolve({**(os_values or {}), "ENV_FILE": str(path)}, strict=strict)
        settings.GATEWAY_ENV = resolved
        for name in GATEWAY_SETTINGS:
            setattr(settings, name, resolved.values[name])
        return resolved

    return start


@contextmanager
def table_missing(table: str):
    """Make a table unreadable and unwritable for real, as a dropped or locked-out database would."""
    from django.db import connection

    with connection.cursor() as cursor:
        cursor.execute(f"ALTER TABLE {table} RENAME TO {table}_away")
    try:
        yield
    finally:
        with connection.cursor() as cursor:
            cursor.execute(f"ALTER TABLE {table}_away RENAME TO {table}")
