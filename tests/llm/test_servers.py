"""Several Ollama servers (llm.servers): three fake Ollama servers on loopback behind the gateway served over a real
socket, each with its own scheduler (num_parallel, loaded models, load delay) and faults."""

import asyncio
import json
import time

import httpx
import pytest

from llm import servers
from llm.models import Generation, OllamaServer
from tests.conftest import require_redis, wait_for
from tests.fake_ollama import FakeOllama

pytestmark = pytest.mark.django_db(transaction=True)

MODEL = "qwen2.5:7b"
OTHER = "llama3.2:1b"


@pytest.fixture
def fakes():
    started = [FakeOllama(num_parallel=1).start() for _ in range(3)]
    yield started
    for fake in started:
        fake.stop()


@pytest.fixture
def listed(gateway, fakes, settings, monkeypatch, refused_url):
    """The three fakes listed in the admin as a, b and c; OLLAMA_BASE_URL points nowhere (it is ignored)."""
    settings.GENERATOR_MODE = "live"
    settings.OLLAMA_BASE_URL = refused_url
    settings.OLLAMA_TIMEOUT = 10
    settings.OLLAMA_CONNECT_TIMEOUT = 1
    settings.RATE_LIMIT_PER_MINUTE = 0
    settings.DEFAULT_MAX_CONCURRENT = 0
    monkeypatch.setattr(servers, "PS_EVERY", 0.2)
    monkeypatch.setattr(servers, "TAGS_EVERY", 0.5)
    for name, fake in zip("abc", fakes):
        OllamaServer.objects.create(name=name, base_url=fake.url, slots=1)
    assert servers.registry.listed
    # Every server's models read by the poller before the test sends anything.
    assert wait_for(lambda: all(servers.pool().health_of(n).models is not None for n in "abc"), 5)
    return gateway


def chat(gateway, content, *, model=MODEL, history=(), stream=False, key=None):
    messages = [*history, {"role": "user", "content": content}]
    with httpx.Client(base_url=gateway.url, timeout=30, trust_env=False,
                      headers={"Authorization": f"Bearer {key or gateway.key}"}) as client:
        return client.post("/api/chat", json={"model": model, "messages": messages, "stream": stream})


async def achat(client, content, *, model=MODEL, key):
    return await client.post("/api/chat", json={"model": model, "messages": [{"role": "user", "content": content}],
                                                "stream": False}, headers={"Authorization": f"Bearer {key}"})


def served_by(fake, content):
    return [r for r in fake.requests if r.path == "/api/chat"
            and r.json["messages"][-1]["content"] == content]


def poll_now():
    servers.pool().poller().refresh_now()


def test_a_model_on_one_server_only_goes_there(listed, fakes):
    a, b, c = fakes
    a.models[:] = [OTHER]
    b.models[:] = [MODEL]
    c.models[:] = [OTHER]
    poll_now()
    assert wait_for(lambda: servers.pool().health_of("b").models == {MODEL}, 3)

    for i in range(3):
        assert chat(listed, f"hello {i}").status_code == 200
    assert [len(served_by(f, f"hello {i}")) for f in fakes for i in range(3)] == [0] * 3 + [1] * 3 + [0] * 3
    rows = list(Generation.objects.order_by("created_at"))
    assert {row.server for row in rows} == {"b"}
    assert rows[0].models_tried == [{"model": MODEL, "server": "b", "outcome": "succeeded"}]

    # A model no server has: model_not_found, the row naming the servers asked, the client's error none.
    response = chat(listed, "missing", model="nothere:1b")
    assert response.status_code == 404
    assert "a" not in response.json()["error"].split("'")[0:1] and fakes[0].url not in response.text
    row = Generation.objects.get(error_type="model_not_found")
    assert {t["server"] for t in row.models_tried} == {"a", "b", "c"}
    assert "a, b, c" in row.error_message


def test_a_loaded_model_is_preferred_while_it_has_a_free_slot(listed, fakes):
    a, b, c = fakes
    b.preload(MODEL)
    poll_now()
    assert wait_for(lambda: MODEL in servers.pool().health_of("b").loaded, 3)
    assert chat(listed, "first").status_code == 200
    assert served_by(b, "first")

    # b's one slot busy: the next goes to another server.
    b.delay = 1.0

    async def two():
        async with httpx.AsyncClient(base_url=listed.url, timeout=30, trust_env=False) as client:
            slow = asyncio.create_task(achat(client, "slow", key=listed.key))
            await asyncio.sleep(0.3)
            other = await achat(client, "other", key=listed.key)
            return await slow, other

    slow, other = asyncio.run(two())
    assert slow.status_code == other.status_code == 200
    assert served_by(b, "slow") and not served_by(b, "other")
    assert served_by(a, "other") or served_by(c, "other")
    assert all(f.peak_running_total <= 1 for f in fakes)


def test_the_next_turn_of_a_conversation_goes_back_to_its_server(listed, fakes):
    a, b, c = fakes
    c.preload(MODEL)
    poll_now()
    assert wait_for(lambda: MODEL in servers.pool().health_of("c").loaded, 3)
    first = chat(listed, "turn one", history=[{"role": "system", "content": "be brief"}])
    assert first.status_code == 200 and served_by(c, "turn one")

    # Now a has the model loaded and c not: placement alone would choose a; the conversation goes back to c.
    c.unload(MODEL)
    a.preload(MODEL)
    poll_now()
    assert wait_for(lambda: MODEL in servers.pool().health_of("a").loaded
                    and MODEL not in servers.pool().health_of("c").loaded, 3)
    history = [{"role": "system", "content": "be brief"}, {"role": "user", "content": "turn one"},
               {"role": "assistant", "content": first.json()["message"]["content"]}]
    assert chat(listed, "turn two", history=history).status_code == 200
    assert served_by(c, "turn two")
    # A new conversation goes where the model is loaded.
    assert chat(listed, "another conversation").status_code == 200
    assert served_by(a, "another conversation")


def test_a_server_killed_mid_load_costs_no_client_an_error_and_is_used_again_once_back(listed, fakes, settings):
    a, b, c = fakes
    for fake in fakes:
        fake.load_delay = 0.5
    a.preload(MODEL)
    poll_now()
    assert wait_for(lambda: MODEL in servers.pool().health_of("a").loaded, 3)
    a.unload(MODEL)  # the gateway still believes it loaded on a: a is chosen, and loads it for 0.5 s

    async def during_kill():
        async with httpx.AsyncClient(base_url=listed.url, timeout=30, trust_env=False) as client:
            call = asyncio.create_task(client.post(
                "/api/chat", json={"model": MODEL, "stream": True, "messages": [{"role": "user", "content": "k"}]},
                headers={"Authorization": f"Bearer {listed.key}"}))
            await asyncio.sleep(0.2)
            await asyncio.to_thread(a.stop)
            return await call

    response = asyncio.run(during_kill())
    assert response.status_code == 200
    lines = [json.loads(line) for line in response.text.splitlines() if line.strip()]
    assert lines[-1]["done"] is True and not any("error" in line for line in lines)
    row = Generation.objects.get()
    assert row.status == "succeeded" and row.server in ("b", "c")
    assert row.models_tried[0]["server"] == "a" and row.models_tried[0]["outcome"] != "succeeded"

    # Down after its failures; the probe brings it back within seconds of its return.
    assert wait_for(lambda: servers.pool().health_of("a").down, 5)
    a.start()
    assert wait_for(lambda: servers.pool().health_of("a").usable, 3)
    a.preload(MODEL)
    b.delay = c.delay = 0
    poll_now()
    assert wait_for(lambda: MODEL in servers.pool().health_of("a").loaded, 3)
    assert chat(listed, "after return").status_code == 200
    assert served_by(a, "after return")


def test_every_server_down_is_an_immediate_503_naming_how_many_were_tried(listed, fakes):
    for fake in fakes:
        fake.stop()
    assert wait_for(lambda: all(servers.pool().health_of(n).down for n in "abc"), 5)
    started = time.monotonic()
    response = chat(listed, "nobody")
    assert time.monotonic() - started < 1.0
    assert response.status_code == 503
    assert "3 servers tried" in response.text
    for fake in fakes:
        assert fake.url not in response.text


def test_a_stream_cut_after_its_first_chunk_is_not_spliced_onto_another_server(listed, fakes):
    a, b, c = fakes
    for fake in fakes:
        fake.fault("cut_off", paths="/api/chat", after=2, times=1)
    response = chat(listed, "cut", stream=True)
    assert response.status_code == 200
    lines = [json.loads(line) for line in response.text.splitlines() if line.strip()]
    assert "error" in lines[-1]
    assert sum(len(served_by(f, "cut")) for f in fakes) == 1
    row = Generation.objects.get()
    assert row.status == "failed" and len(row.models_tried) == 1


def test_a_server_drained_during_a_load_gets_no_new_work_and_loses_none_in_flight(listed, fakes):
    a, b, c = fakes
    a.preload(MODEL)
    poll_now()
    assert wait_for(lambda: MODEL in servers.pool().health_of("a").loaded, 3)
    a.delay = 1.0

    async def run():
        async with httpx.AsyncClient(base_url=listed.url, timeout=30, trust_env=False) as client:
            in_flight = asyncio.create_task(achat(client, "in flight", key=listed.key))
            await asyncio.sleep(0.3)
            await asyncio.to_thread(lambda: OllamaServer.objects.filter(name="a").update(state="draining"))
            await asyncio.sleep(servers.REFRESH_SECONDS + 0.2)
            later = [await achat(client, f"later {i}", key=listed.key) for i in range(3)]
            return await in_flight, later

    in_flight, later = asyncio.run(run())
    assert in_flight.status_code == 200 and served_by(a, "in flight")
    assert all(r.status_code == 200 for r in later)
    assert not any(served_by(a, f"later {i}") for i in range(3))


def test_a_server_added_in_the_admin_is_used_within_seconds_without_a_restart(listed, fakes):
    d = FakeOllama(models=["only-on-d:1b"]).start()
    try:
        # Written by another connection without the admin's signal, as another process's admin would.
        OllamaServer.objects.bulk_create([OllamaServer(name="d", base_url=d.url)])
        started = time.monotonic()

        def served():
            return chat(listed, "on d", model="only-on-d:1b").status_code == 200

        assert wait_for(served, 5, interval=0.2)
        assert time.monotonic() - started < 5
        assert served_by(d, "on d")
    finally:
        d.stop()


def test_a_server_refusing_the_gateway_is_misconfigured_and_skipped(listed, fakes):
    """A 401/403 (an authenticating proxy in front of Ollama, say) marks the server misconfigured: not routed to,
    shown in diagnostics, until a read of it succeeds again."""
    a, b, c = fakes
    a.preload(MODEL)
    poll_now()
    assert wait_for(lambda: MODEL in servers.pool().health_of("a").loaded, 3)
    a.fault("status", paths=["/api/ps", "/api/tags", "/api/chat"], status=401, message="unauthorized")
    response = chat(listed, "refused")
    assert response.status_code == 200
    assert len(served_by(b, "refused")) + len(served_by(c, "refused")) == 1
    row = Generation.objects.get()
    # Refused by a (if the poller had not found out first), then answered by another server.
    assert row.models_tried[0] in ({"model": MODEL, "server": "a", "outcome": "upstream_error"},
                                   {"model": MODEL, "server": row.server, "outcome": "succeeded"})
    assert wait_for(lambda: servers.pool().health_of("a").misconfigured, 3)
    for i in range(3):
        assert chat(listed, f"after {i}").status_code == 200
        assert not served_by(a, f"after {i}")
    assert servers.snapshot()["servers"][0]["health"] == "misconfigured"
    a.clear_faults()
    assert wait_for(lambda: servers.pool().health_of("a").usable, 3)


def test_one_queue_per_model_is_fair_across_consumers(listed, fakes, settings):
    """One slot upstream: A queues 40 generations, then B sends one; B is served among the next two, and A's own
    queue bound answers 429 with Retry-After: 1."""
    from llm import api_keys
    from llm.models import Consumer

    settings.UPSTREAM_QUEUE_PER_CONSUMER = 40
    OllamaServer.objects.filter(name__in=["b", "c"]).update(state="disabled")
    servers.registry.refresh()
    upstream = fakes[0]
    upstream.delay = 0.05
    upstream.fault("slow", paths="/api/chat", times=1, delay=2.0)  # the first holds the one slot a while
    key_b = api_keys.issue_key(Consumer.objects.create(name="consumer-b"))[1]

    def chats():
        return [r.json["messages"][-1]["content"] for r in upstream.requests if r.path == "/api/chat"]

    async def run():
        async with httpx.AsyncClient(base_url=listed.url, timeout=60, trust_env=False,
                                     limits=httpx.Limits(max_connections=100)) as client:
            a_calls = [asyncio.create_task(achat(client, f"A {i}", key=listed.key)) for i in range(41)]
            deadline = time.monotonic() + 10
            while servers.pool().queued_everywhere() < 40 and time.monotonic() < deadline:
                await asyncio.sleep(0.01)
            assert servers.pool().queued_everywhere() == 40
            over = await achat(client, "A over", key=listed.key)
            before = len(chats())
            b_call = await achat(client, "B", key=key_b)
            answers = await asyncio.gather(*a_calls)
            return over, before, b_call, answers

    over, before, b_call, answers = asyncio.run(run())
    assert over.status_code == 429 and over.headers["Retry-After"] == "1"
    assert over.json()["error"]
    assert b_call.status_code == 200
    assert all(r.status_code == 200 for r in answers)
    order = chats()
    assert before == 1
    assert order.index("B") < before + 2, order[: before + 3]
    assert upstream.peak_running_total == 1


def test_two_gateway_processes_sharing_redis_never_exceed_a_servers_slots(fakes, settings, transactional_db):
    """Two pools (two processes' worth: each its own lease manager and Redis client) send 12 generations at once
    to one server with 2 slots for the model: never more than 2 run there together."""
    import uuid

    import redis

    from llm.leases import LeaseManager
    from llm.providers.base import GenerationRequest, Message

    url = "redis://127.0.0.1:6379/8"
    require_redis(url)
    settings.GENERATOR_MODE = "live"
    upstream = fakes[0]
    upstream.num_parallel = None
    upstream.delay = 0.15
    OllamaServer.objects.create(name="one", base_url=upstream.url, slots=1, model_slots={MODEL: 2})
    prefix = f"test-servers-{uuid.uuid4().hex}:"
    first, second = servers.Pool(), servers.Pool()
    first.lease_manager = LeaseManager(url, prefix=prefix)
    second.lease_manager = LeaseManager(url, prefix=prefix)
    request = GenerationRequest(role="", task="", payload=None, mode="text", model=MODEL,
                                messages=[Message(role="user", content="hi")])

    async def run():
        replies = await asyncio.gather(*((first if i % 2 else second).generate(request) for i in range(12)))
        await first.lease_manager.close()
        await second.lease_manager.close()
        return replies

    replies = asyncio.run(run())
    assert len(replies) == 12 and all(r.content for r in replies)
    assert upstream.peak_running_total == 2
    client = redis.Redis.from_url(url)
    assert not list(client.scan_iter(f"{prefix}*")) or all(client.zcard(k) == 0 for k in client.scan_iter(f"{prefix}*"))


def test_only_superusers_edit_servers_and_urls_are_masked(client, django_user_model, db):
    from django.urls import reverse

    server = OllamaServer.objects.create(name="gpu-1", base_url="http://ops:s3cret-token@10.0.0.5:11434")
    staff = django_user_model.objects.create_user("staff", password="pw-123-long", is_staff=True)
    client.force_login(staff)
    listing = client.get(reverse("admin:llm_ollamaserver_changelist"))
    assert listing.status_code == 200 and "s3cret-token" not in listing.content.decode()
    assert "********@10.0.0.5:11434" in listing.content.decode()
    assert client.get(reverse("admin:llm_ollamaserver_add")).status_code == 403
    page = client.get(reverse("admin:llm_ollamaserver_change", args=[server.pk]))
    assert page.status_code == 200 and "s3cret-token" not in page.content.decode()
    response = client.post(reverse("admin:llm_ollamaserver_change", args=[server.pk]),
                           {"name": "gpu-1", "base_url": "http://elsewhere:1", "state": "enabled", "slots": 1,
                            "model_slots": "{}"})
    assert response.status_code == 403
    server.refresh_from_db()
    assert server.base_url == "http://ops:s3cret-token@10.0.0.5:11434"

    boss = django_user_model.objects.create_superuser("boss", password="pw-123-long")
    client.force_login(boss)
    page = client.get(reverse("admin:llm_ollamaserver_change", args=[server.pk])).content.decode()
    assert "s3cret-token" not in page
    # The masked URL sent back unchanged keeps the stored one; the slots change.
    response = client.post(reverse("admin:llm_ollamaserver_change", args=[server.pk]),
                           {"name": "gpu-1", "base_url": "http://********@10.0.0.5:11434", "state": "draining",
                            "slots": 4, "model_slots": '{"qwen2.5:7b": 2}', "max_in_flight": ""})
    assert response.status_code == 302, response.content.decode()[:2000]
    server.refresh_from_db()
    assert server.base_url == "http://ops:s3cret-token@10.0.0.5:11434" and server.slots == 4
    assert server.state == "draining" and server.model_slots == {"qwen2.5:7b": 2}
    # The change reached this process's list at once.
    configs = [(c.name, c.state, c.slots_for("qwen2.5:7b")) for c in servers.registry.configs]
    assert configs == [("gpu-1", "draining", 2)]


@pytest.mark.parametrize("url, model_slots", [
    ("file:///etc/passwd", {}), ("gopher://x:70", {}), ("http://", {}), ("http://h:99999", {}),
    ("http://h:1/?q=1", {}), ("http://h:1", {"m": -1}), ("http://h:1", {"m": "2"}), ("http://h:1", ["m"]),
    ("http://h:1", {"m": True}),
])
def test_a_server_url_is_http_or_https_and_per_model_slots_are_whole_numbers(url, model_slots, db):
    from django.core.exceptions import ValidationError

    with pytest.raises(ValidationError):
        OllamaServer(name="bad", base_url=url, model_slots=model_slots).full_clean()
    OllamaServer(name="good", base_url="https://h.example:443/ollama", model_slots={"m": 0, "n:7b": 8}).full_clean()


def listing(gateway, method, path, body=None):
    with httpx.Client(base_url=gateway.url, timeout=30, trust_env=False,
                      headers={"Authorization": f"Bearer {gateway.key}"}) as client:
        return client.request(method, path, json=body)


def test_listings_are_the_union_over_healthy_servers(listed, fakes, consumer):
    a, b, c = fakes
    a.models[:] = ["only-a:1b", MODEL]
    b.models[:] = ["only-b:1b", MODEL]
    c.models[:] = ["only-c:1b"]
    a.version, b.version, c.version = "0.5.7", "0.4.2", "0.6.0"
    b.preload(MODEL)
    poll_now()
    assert wait_for(lambda: servers.pool().health_of("c").models == {"only-c:1b"}, 3)
    c.stop()
    assert wait_for(lambda: servers.pool().health_of("c").down, 5)

    names = sorted(m["name"] for m in listing(listed, "GET", "/api/tags").json()["models"])
    assert names == sorted(["only-a:1b", "only-b:1b", MODEL])  # c is down: its models are not offered
    assert sorted(m["id"] for m in listing(listed, "GET", "/v1/models").json()["data"]) == names
    assert [m["name"] for m in listing(listed, "GET", "/api/ps").json()["models"]] == [MODEL]
    assert listing(listed, "GET", "/api/version").json() == {"version": "0.4.2"}
    shown = listing(listed, "POST", "/api/show", {"model": "only-b:1b"})
    assert shown.status_code == 200
    assert [r.path for r in b.requests if r.path == "/api/show"] == ["/api/show"]
    assert listing(listed, "POST", "/api/show", {"model": "nowhere:1b"}).status_code == 404

    # The consumer's allow-list filters the union.
    consumer.allowed_models = ["only-a:1b"]
    consumer.save()
    assert [m["name"] for m in listing(listed, "GET", "/api/tags").json()["models"]] == ["only-a:1b"]


def test_an_ollama_500_tries_the_model_on_another_server_first(listed, fakes):
    a, b, c = fakes
    a.preload(MODEL)
    poll_now()
    assert wait_for(lambda: MODEL in servers.pool().health_of("a").loaded, 3)
    a.fault("status", paths="/api/chat", status=500, message="model requires more system memory", times=1)
    response = chat(listed, "oom")
    assert response.status_code == 200
    row = Generation.objects.get()
    assert [(t["server"], t["outcome"]) for t in row.models_tried][0] == ("a", "upstream_error")
    assert row.models_tried[-1]["outcome"] == "succeeded" and row.server in ("b", "c")
    assert "memory" not in response.text


def test_readyz_does_not_depend_on_the_servers(listed, fakes):
    for fake in fakes:
        fake.stop()
    assert wait_for(lambda: all(servers.pool().health_of(n).down for n in "abc"), 5)
    with httpx.Client(base_url=listed.url, trust_env=False) as client:
        assert client.get("/readyz").status_code == 200


def test_check_ollama_checks_every_server_one_block_each(listed, fakes):
    from tests.conftest import run_check_ollama

    fakes[2].stop()
    OllamaServer.objects.filter(name="b").update(base_url=fakes[1].url.replace("http://", "http://ops:pw@"))
    code, out = run_check_ollama("--json")
    assert code == 1
    reports = json.loads(out)
    assert [r["name"] for r in reports] == ["a", "b", "c"]
    assert [r["ok"] for r in reports] == [True, True, False]
    assert "ops:pw" not in out
    code, out = run_check_ollama("--server", "a")
    assert code == 0 and "[a]" in out and "[b]" not in out
    code, out = run_check_ollama()
    assert code == 1 and "[a]" in out and "[b]" in out and "[c]" in out and "OLLAMA_BASE_URL is ignored" in out
    code, out = run_check_ollama("--server", "zz")
    assert code == 2


def test_diagnostics_and_metrics_show_each_server(listed, fakes, django_user_model):
    from django.test import Client
    from django.urls import reverse

    fakes[0].version = "0.9.0"
    poll_now()
    assert wait_for(lambda: servers.pool().health_of("a").version == "0.9.0", 3)
    assert chat(listed, "counted").status_code == 200
    staff = django_user_model.objects.create_user("staff", password="pw-123-long", is_staff=True)
    client = Client()
    client.force_login(staff)
    page = client.get(reverse("admin:diagnostics_servers")).content.decode()
    assert 'id="ollama-servers"' in page
    for name in "abc":
        assert f'<th scope="row">{name}</th>' in page
    assert "OLLAMA_BASE_URL" in page and "is ignored" in page
    assert "different versions" in page
    assert client.post(reverse("admin:diagnostics_servers")).status_code == 302

    from llm import metrics

    text = metrics.exposition(None)[0].decode()
    assert 'llm_gateway_server_up{server="a"} 1.0' in text
    assert 'llm_gateway_server_slots{server="b"} 1.0' in text
    assert any(line.startswith("llm_gateway_server_requests_total{") and 'outcome="succeeded"' in line
               for line in text.splitlines())
    assert 'llm_gateway_server_in_flight{server="' in text


def test_one_retry_budget_moves_at_once_to_another_server_then_stops(listed, fakes, settings):
    """Three servers answering 503: OLLAMA_MAX_RETRIES=2 gives three calls, one per server, with no pause between
    them; the client gets the last error, its row every call."""
    settings.OLLAMA_MAX_RETRIES = 2
    settings.OLLAMA_RETRY_BACKOFF = 5  # a pause would show in the time taken
    for fake in fakes:
        fake.fault("status", paths="/api/chat", status=503, message="server busy")
    started = time.monotonic()
    response = chat(listed, "busy")
    assert time.monotonic() - started < 2
    assert response.status_code == 502
    row = Generation.objects.get()
    assert sorted(t["server"] for t in row.models_tried) == ["a", "b", "c"]
    assert {t["outcome"] for t in row.models_tried} == {"upstream_error"}
    assert row.attempts == 3 and row.server == ""
    assert sum(len(served_by(f, "busy")) for f in fakes) == 3

    # With one retry left, the same server is tried again only when no other is left (after the backoff).
    settings.OLLAMA_MAX_RETRIES = 1
    settings.OLLAMA_RETRY_BACKOFF = 0.001
    OllamaServer.objects.filter(name__in=["b", "c"]).update(state="disabled")
    servers.registry.refresh()
    fakes[0].clear_faults()
    fakes[0].fault("status", paths="/api/chat", status=503, message="server busy", times=1)
    assert chat(listed, "again").status_code == 200
    assert len(served_by(fakes[0], "again")) == 2


OTHER_PROCESS = r"""
import asyncio, os, sys, time
os.environ["DJANGO_SETTINGS_MODULE"] = "tests.settings"
import django
django.setup()
from django.conf import settings
settings.GENERATOR_MODE = "live"
from llm import servers
from llm.leases import LeaseManager
from llm.providers.base import GenerationRequest, Message

url, redis_url, prefix, model, count = sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4], int(sys.argv[5])
servers.registry.configs = (servers.ServerConfig(name="one", base_url=url, state="enabled", slots=1,
                                                 model_slots={model: 2}),)
pool = servers.Pool()
pool.lease_manager = LeaseManager(redis_url, prefix=prefix)
request = GenerationRequest(role="", task="", payload=None, mode="text", model=model,
                            messages=[Message(role="user", content="from the other process")])

async def main():
    print("ready", flush=True)
    replies = await asyncio.gather(*(pool.generate(request) for _ in range(count)))
    print("done", len([r for r in replies if r.content]), flush=True)

asyncio.run(main())
"""


def test_two_real_processes_sharing_redis_never_exceed_a_servers_slots(fakes, settings, transactional_db):
    """A second Python process (its own pool, lease manager and Redis client) and this one send 8 generations each
    to one server with 2 slots for the model, this one while the other holds both slots: never more than 2 run
    there together. (A freed slot goes to the releasing process's own waiters first: fairness is per process.)"""
    import subprocess
    import sys
    import uuid


    from llm.leases import LeaseManager
    from llm.providers.base import GenerationRequest, Message

    url = "redis://127.0.0.1:6379/8"
    require_redis(url)
    settings.GENERATOR_MODE = "live"
    upstream = fakes[0]
    upstream.num_parallel = None
    upstream.delay = 0.2
    OllamaServer.objects.create(name="one", base_url=upstream.url, slots=1, model_slots={MODEL: 2})
    prefix = f"test-servers-{uuid.uuid4().hex}:"
    other = subprocess.Popen([sys.executable, "-c", OTHER_PROCESS, upstream.url, url, prefix, MODEL, "8"],
                             stdout=subprocess.PIPE, text=True)
    try:
        assert other.stdout.readline().strip() == "ready"
        assert wait_for(lambda: upstream.running_total == 2, 5)  # the other process holds both slots
        pool = servers.Pool()
        pool.lease_manager = LeaseManager(url, prefix=prefix)
        request = GenerationRequest(role="", task="", payload=None, mode="text", model=MODEL,
                                    messages=[Message(role="user", content="from this process")])

        async def run():
            replies = await asyncio.gather(*(pool.generate(request) for _ in range(8)))
            await pool.lease_manager.close()
            return replies

        assert len(asyncio.run(run())) == 8
        assert other.stdout.readline().strip() == "done 8"
        assert other.wait(10) == 0
    finally:
        if other.poll() is None:
            other.kill()
            other.wait(5)
    contents = [r.json["messages"][-1]["content"] for r in upstream.requests if r.path == "/api/chat"]
    assert contents.count("from the other process") == 8 and contents.count("from this process") == 8
    # This process asked while the other one held both slots: without shared leases it would have run 2 more.
    assert upstream.peak_running_total == 2
