"""Password checks (HTTP Basic on the debug API and /metrics, the admin login) cannot be turned against the server:
one hash at a time per process, failures delayed per address and per user name without lockout, successes
remembered for a minute and forgotten as soon as the user changes."""

import base64
import json
import os
import statistics
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from types import SimpleNamespace

import httpx
import pytest
from django.contrib.auth.hashers import PBKDF2PasswordHasher

from gateway_project import passwords, throttling
from tests.conftest import GENERATE_URL, assert_error, point_cache_at_redis

pytestmark = pytest.mark.django_db
PROJECT = Path(__file__).resolve().parents[2]
SETTINGS_URL = "/api/v1/debug/settings"
PASSWORD = "correct-horse-battery"


class FastPBKDF2(PBKDF2PasswordHasher):
    """The production hasher with fewer rounds: the tests count hashes, they need not wait for them."""

    iterations = 1000


def basic(username, password):
    return {"HTTP_AUTHORIZATION": "Basic " + base64.b64encode(f"{username}:{password}".encode()).decode()}


@pytest.fixture(autouse=True)
def _fresh_successes():
    passwords.forget_successes()
    yield
    passwords.forget_successes()


@pytest.fixture
def fast_hashing(settings):
    settings.PASSWORD_HASHERS = ["tests.gateway_project.test_passwords.FastPBKDF2"]


@pytest.fixture
def hashes(monkeypatch):
    """Every PBKDF2 computation (checks, and the stand-in hash for an unknown name): how many, and most at once."""
    seen = SimpleNamespace(calls=0, running=0, most=0, seconds=0.0, lock=threading.Lock())
    original = PBKDF2PasswordHasher.encode

    def encode(self, password, salt, iterations=None):
        with seen.lock:
            seen.calls += 1
            seen.running += 1
            seen.most = max(seen.most, seen.running)
        started = time.perf_counter()
        try:
            return original(self, password, salt, iterations)
        finally:
            with seen.lock:
                seen.running -= 1
                seen.seconds += time.perf_counter() - started

    monkeypatch.setattr(PBKDF2PasswordHasher, "encode", encode)
    return seen


@pytest.fixture
def clock(monkeypatch):
    """The wall clock the delays are measured on, moved by hand."""
    now = SimpleNamespace(value=1_900_000_000.0)
    monkeypatch.setattr(throttling, "now", lambda: now.value)
    return now


@pytest.fixture
def operator(django_user_model, fast_hashing, hashes):
    user = django_user_model.objects.create_user("operator", password=PASSWORD, is_staff=True)
    hashes.calls = 0
    return user


def get(client, username, password, address="203.0.113.10", url=SETTINGS_URL, **extra):
    return client.get(url, REMOTE_ADDR=address, **basic(username, password), **extra)


# -- delays -----------------------------------------------------------------------------------------------------------


def test_failures_from_an_address_earn_a_doubling_delay_answered_without_a_hash(client, operator, hashes, clock,
                                                                               settings):
    settings.PASSWORD_FAILURE_MAX_DELAY = 5
    for _ in range(throttling.FREE_FAILURES):
        assert_error(get(client, "operator", "wrong"), 401, "authentication_failed")
    assert hashes.calls == throttling.FREE_FAILURES

    waits = []
    for _ in range(5):
        refused = get(client, "operator", "wrong")
        error = assert_error(refused, 429, "auth_throttled")
        waits.append(int(refused["Retry-After"]))
        assert error["details"] == {"retry_after": waits[-1]}
        assert get(client, "operator", "wrong").status_code == 429  # still waiting: refused again, no hash
        clock.value += waits[-1]
        assert_error(get(client, "operator", "wrong"), 401, "authentication_failed")  # heard again: one hash

    # 1, 2, 4 s, then the cap; each 429 cost no hash, each 401 one.
    assert waits == [1, 2, 4, 5, 5]
    assert hashes.calls == throttling.FREE_FAILURES + 5


def test_no_lockout_the_right_password_works_once_the_delay_is_over(client, operator, clock):
    for _ in range(throttling.FREE_FAILURES + 3):
        clock.value += 10  # each failure heard: 10 s is more than the delays so far (1, 2, 4 s)
        assert_error(get(client, "operator", "wrong"), 401, "authentication_failed")
    refused = get(client, "operator", PASSWORD)
    assert_error(refused, 429, "auth_throttled")
    assert refused["Retry-After"] == "8"

    clock.value += int(refused["Retry-After"])
    assert get(client, "operator", PASSWORD).status_code == 200


def test_a_delayed_client_is_refused_without_a_database_query(client, operator, clock, django_assert_num_queries):
    for _ in range(throttling.FREE_FAILURES):
        get(client, "operator", "wrong")

    with django_assert_num_queries(0):
        assert_error(get(client, "operator", "wrong"), 429, "auth_throttled")


def test_a_password_this_process_accepted_lately_is_heard_from_a_delayed_address(client, operator, hashes, clock):
    """An operator's polling script behind the same address as someone guessing: its remembered success holds."""
    assert get(client, "operator", PASSWORD).status_code == 200
    for _ in range(throttling.FREE_FAILURES + 1):
        get(client, "intruder", "guess")
    assert_error(get(client, "intruder", "guess"), 429, "auth_throttled")

    assert get(client, "operator", PASSWORD).status_code == 200
    assert_error(get(client, "operator", "another guess"), 429, "auth_throttled")
    assert hashes.calls == 1 + throttling.FREE_FAILURES


def test_the_address_is_remote_addr_never_a_forwarded_header_a_client_sets(client, operator, hashes, clock):
    for n in range(throttling.FREE_FAILURES):
        get(client, "operator", "wrong", HTTP_X_FORWARDED_FOR=f"192.0.2.{n}")

    # A new X-Forwarded-For each time changes nothing: uvicorn alone turns it into REMOTE_ADDR, and only for a
    # proxy listed in FORWARDED_ALLOW_IPS.
    assert_error(get(client, "nobody", "wrong", HTTP_X_FORWARDED_FOR="192.0.2.99"), 429, "auth_throttled")
    assert hashes.calls == throttling.FREE_FAILURES


def test_a_user_names_failures_delay_it_from_new_addresses_but_not_from_one_it_signed_in_from(
        client, operator, django_user_model, hashes, clock):
    assert get(client, "operator", PASSWORD, address="198.51.100.1").status_code == 200  # its usual address
    passwords.forget_successes()
    # Someone guesses at the name from many addresses, never enough from one to be delayed there.
    for n in range(throttling.FREE_FAILURES):
        assert_error(get(client, "operator", "guess", address=f"192.0.2.{n}"), 401, "authentication_failed")
    hashes.calls = 0

    assert_error(get(client, "operator", "guess", address="192.0.2.200"), 429, "auth_throttled")
    # The operator from the address it works from is not kept out by the others' failures ...
    assert get(client, "operator", PASSWORD, address="198.51.100.1").status_code == 200
    # ... and other users are not delayed at all.
    django_user_model.objects.create_user("auditor", password=PASSWORD, is_staff=True)
    assert get(client, "auditor", PASSWORD, address="192.0.2.201").status_code == 200
    assert hashes.calls == 1 + 1 + 1  # the operator, the auditor's creation, the auditor; never the refused guess


def test_an_unknown_user_name_costs_the_same_hash_and_is_delayed_the_same(client, operator, hashes, clock):
    for _ in range(throttling.FREE_FAILURES):
        assert_error(get(client, "ghost", "wrong"), 401, "authentication_failed")
    assert hashes.calls == throttling.FREE_FAILURES
    assert_error(get(client, "ghost", "wrong"), 429, "auth_throttled")
    assert hashes.calls == throttling.FREE_FAILURES


def test_a_user_name_no_database_can_hold_is_an_unknown_name_not_a_500(client, operator, hashes):
    assert_error(get(client, "oper\x00ator", PASSWORD), 401, "authentication_failed")
    assert hashes.calls == 1  # the same stand-in hash as for any unknown name


# -- remembered successes ---------------------------------------------------------------------------------------------


def test_a_success_is_remembered_so_polling_costs_no_hash(client, operator, hashes):
    for _ in range(5):
        assert get(client, "operator", PASSWORD).status_code == 200
    assert hashes.calls == 1
    # Remembered for the password that succeeded only.
    assert_error(get(client, "operator", PASSWORD + "!"), 401, "authentication_failed")
    assert hashes.calls == 2


def remembered(client, hashes) -> None:
    """Sign in twice: one hash, the second time answered from memory."""
    assert get(client, "operator", PASSWORD).status_code == 200
    assert get(client, "operator", PASSWORD).status_code == 200
    assert hashes.calls == 1


def test_a_remembered_success_lasts_at_most_a_minute(client, operator, hashes, monkeypatch):
    remembered(client, hashes)
    later = time.monotonic() + passwords.SUCCESS_TTL + 1
    monkeypatch.setattr(passwords.time, "monotonic", lambda: later)

    assert get(client, "operator", PASSWORD).status_code == 200
    assert hashes.calls == 2


def test_a_password_change_drops_the_remembered_success_at_once(client, operator, hashes):
    remembered(client, hashes)

    operator.set_password("a-new-long-passphrase")
    operator.save()
    hashes.calls = 0

    assert_error(get(client, "operator", PASSWORD), 401, "authentication_failed")
    assert hashes.calls == 1  # checked again, not answered from memory
    assert get(client, "operator", "a-new-long-passphrase").status_code == 200


def test_losing_staff_status_drops_the_remembered_success_at_once(client, operator, hashes):
    remembered(client, hashes)

    operator.is_staff = False
    operator.save()
    hashes.calls = 0

    assert_error(get(client, "operator", PASSWORD), 403, "permission_denied")
    assert hashes.calls == 1


def test_a_deactivated_user_is_refused_although_its_success_was_remembered(client, operator, hashes):
    remembered(client, hashes)

    operator.is_active = False
    operator.save()

    assert_error(get(client, "operator", PASSWORD), 401, "authentication_failed")


def test_the_remembered_success_holds_no_password(client, operator, hashes):
    remembered(client, hashes)

    # The user's state with the password, and the name with the password (the hint a delayed client is checked by).
    assert len(passwords._successes) == 2
    memory = repr(list(passwords._successes.items())).encode()
    assert PASSWORD.encode() not in memory and operator.password.encode() not in memory


# -- the same backend everywhere a password is taken ------------------------------------------------------------------


def test_metrics_take_basic_auth_through_the_same_delays(client, operator, hashes, clock):
    for _ in range(throttling.FREE_FAILURES):
        assert_error(get(client, "operator", "wrong", url="/metrics"), 401, "authentication_failed")
    refused = get(client, "operator", "wrong", url="/metrics")
    assert_error(refused, 429, "auth_throttled")
    assert refused["Retry-After"] == "1"
    assert hashes.calls == throttling.FREE_FAILURES


def test_the_public_schema_checks_no_password(client, operator, hashes):
    for _ in range(3):
        response = get(client, "operator", "wrong", url="/api/v1/schema/")
        assert response.status_code == 200
    assert hashes.calls == 0


def test_the_admin_login_form_says_when_to_try_again(client, operator, hashes, clock):
    def login(password):
        return client.post("/admin/login/?next=/admin/", {"username": "operator", "password": password},
                           REMOTE_ADDR="203.0.113.10")

    for _ in range(throttling.FREE_FAILURES):
        assert login("wrong").status_code == 200  # the form again, with Django's own error
    refused = login(PASSWORD)

    assert refused.status_code == 429
    assert refused["Retry-After"] == "1"
    assert "Too many failed sign-ins from this address or for this user name; try again in 1 s." in \
        refused.content.decode()
    assert hashes.calls == throttling.FREE_FAILURES
    clock.value += 1
    assert login(PASSWORD).status_code == 302


# -- shared through Redis ---------------------------------------------------------------------------------------------

REDIS_URL = "redis://127.0.0.1:6379/5"

ANOTHER_PROCESS = """
import sys
import django
from django.test.utils import override_settings

django.setup()
from gateway_project import passwords

location, prefix, address, times = sys.argv[1:]
caches = {"default": {"BACKEND": "django.core.cache.backends.redis.RedisCache", "LOCATION": location,
                      "KEY_PREFIX": prefix}}
with override_settings(CACHES=caches):
    for _ in range(int(times)):
        passwords._Subjects(address, "operator").failed()
"""


def test_the_delays_are_shared_by_every_process_through_redis(client, operator, hashes, settings):
    prefix = _point_cache_at_redis(settings)
    # Enough failures for a 32 s delay: a slow start of either process cannot outlast it.
    result = subprocess.run([sys.executable, "-c", ANOTHER_PROCESS, REDIS_URL, prefix, "203.0.113.10",
                             str(throttling.FREE_FAILURES + 5)],
                            cwd=PROJECT, env={**os.environ, "DJANGO_SETTINGS_MODULE": "tests.settings"},
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr

    assert_error(get(client, "operator", PASSWORD), 429, "auth_throttled")
    assert hashes.calls == 0


def _point_cache_at_redis(settings) -> str:
    return point_cache_at_redis(settings, REDIS_URL)


def test_an_unreachable_cache_delays_nobody_and_says_so_once(client, operator, settings, refused_url, caplog):
    port = refused_url.rsplit(":", 1)[1]
    settings.CACHES = {"default": {"BACKEND": "django.core.cache.backends.redis.RedisCache",
                                   "LOCATION": f"redis://127.0.0.1:{port}/0",
                                   "OPTIONS": {"socket_connect_timeout": 0.2, "socket_timeout": 0.2}}}
    with caplog.at_level("WARNING", logger="gateway.throttling"):
        statuses = [get(client, "operator", "wrong").status_code for _ in range(throttling.FREE_FAILURES + 2)]
        assert get(client, "operator", PASSWORD).status_code == 200

    assert statuses == [401] * (throttling.FREE_FAILURES + 2)
    warnings = [r for r in caplog.records if r.name == "gateway.throttling"]
    assert [r.getMessage() for r in warnings] == [
        "failed attempts not counted: the cache is unavailable; nobody is delayed until it answers"]
    assert warnings[0].levelname == "WARNING"


# -- over a socket: one hash at a time, and a flood that consumers do not feel ----------------------------------------


def test_one_hash_at_a_time_and_a_bounded_wait_for_it(gateway, operator, hashes, monkeypatch, caplog):
    """Eight clients from eight addresses at once: the hashes run one after another; who would wait too long for
    one is answered 503 with Retry-After, at once, instead of queueing; and the logs are not flooded with errors."""
    caplog.set_level("WARNING")
    original = PBKDF2PasswordHasher.encode

    def slow(self, *args, **kwargs):
        time.sleep(0.3)
        return original(self, *args, **kwargs)

    monkeypatch.setattr(FastPBKDF2, "encode", slow)
    monkeypatch.setattr(passwords, "HASH_SLOT_WAIT", 0.5)
    answers = []

    def attempt(n):
        headers = {"X-Forwarded-For": f"192.0.2.{n}", **_basic_header("operator", f"wrong-{n}")}
        started = time.perf_counter()
        response = httpx.get(f"{gateway.url}{SETTINGS_URL}", headers=headers, timeout=10, trust_env=False)
        answers.append((response.status_code, response.headers.get("Retry-After"), time.perf_counter() - started,
                        response.json()["error"]["type"]))

    threads = [threading.Thread(target=attempt, args=(n,)) for n in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    assert hashes.most == 1
    statuses = sorted(status for status, *_ in answers)
    assert 401 in statuses and 503 in statuses and set(statuses) <= {401, 503}
    assert statuses.count(401) == hashes.calls <= 3  # 0.3 s each within a 0.5 s wait (plus the first)
    for status, retry_after, took, type_ in answers:
        if status == 503:
            assert type_ == "auth_busy" and retry_after == "1" and took < 2
    # Expected under a flood: a warning while it lasts, not an error per refused request. (On a busy machine a
    # hash may end between two refusals: the condition clears and is warned about once more.)
    logged = [(r.levelname, r.getMessage()) for r in caplog.records if r.levelno >= 30]
    assert 1 <= len(logged) <= 2 and len(logged) < statuses.count(503) + 1
    assert set(logged) == {
        ("WARNING", "password checks refused: this process is busy hashing others (one hash at a time); refused "
                    "with 503 auth_busy until it catches up")}


def _on_postgresql() -> bool:
    from django.db import connection

    return connection.vendor == "postgresql"


@pytest.mark.skipif(not _on_postgresql(), reason="SQLite has no connection pool to exhaust")
def test_checks_waiting_for_the_hash_hold_no_database_connection(gateway, operator, monkeypatch, settings):
    """Twenty checks waiting for the process's hashing slot, more than the pool's DATABASE_POOL_SIZE connections:
    a generation meanwhile still gets a connection at once."""
    monkeypatch.setattr(passwords, "HASH_SLOT_WAIT", 4.0)
    body = {"role": "copywriter", "task": "sns", "payload": {"product": "Green tea", "tone": "calm"}}
    assert settings.DATABASE_POOL_SIZE < 20
    passwords._hash_slot.acquire()  # busy hashing: every check waits
    held = True
    try:
        with ThreadPoolExecutor(20) as pool:
            waiting = [pool.submit(httpx.get, f"{gateway.url}{SETTINGS_URL}", timeout=10, trust_env=False,
                                   headers={"X-Forwarded-For": f"192.0.2.{n}", **_basic_header("operator", "x")})
                       for n in range(20)]
            time.sleep(1.5)  # all of them past their user lookup, waiting for the slot
            started = time.perf_counter()
            generated = httpx.post(f"{gateway.url}{GENERATE_URL}", json=body, timeout=10, trust_env=False,
                                   headers={"Authorization": f"Bearer {gateway.key}"})
            took = time.perf_counter() - started
            passwords._hash_slot.release()
            held = False
            statuses = {future.result().status_code for future in waiting}
    finally:
        if held:
            passwords._hash_slot.release()

    assert generated.status_code == 200 and took < 1.0, took
    assert statuses <= {401, 429, 503}


def _basic_header(username, password) -> dict:
    return {"Authorization": "Basic " + base64.b64encode(f"{username}:{password}".encode()).decode()}


ATTACKERS = """
import asyncio, base64, json, random, sys, time
import httpx

url, clients, seconds = sys.argv[1], int(sys.argv[2]), float(sys.argv[3])
statuses = {}

async def attacker(n):
    # Its own address (through the proxy the gateway trusts) and a new user name each time: neither delay holds it.
    async with httpx.AsyncClient(timeout=30, trust_env=False) as client:
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            credentials = base64.b64encode(f"user{random.random()}:wrong".encode()).decode()
            response = await client.get(url + "/api/v1/debug/settings", headers={
                "Authorization": f"Basic {credentials}", "X-Forwarded-For": f"10.77.{n}.{random.randrange(256)}"})
            statuses[response.status_code] = statuses.get(response.status_code, 0) + 1

async def main():
    await asyncio.gather(*(attacker(n) for n in range(clients)))

asyncio.run(main())
print(json.dumps(statuses))
"""


def test_a_flood_of_wrong_basic_passwords_leaves_generations_near_their_quiet_latency(gateway, django_user_model,
                                                                                        hashes, capsys, settings):
    """Twenty clients sending wrong Basic passwords with the production hasher (PBKDF2, 1,000,000 rounds), from
    addresses and user names of their own, while a consumer generates: the consumer hardly notices."""
    settings.RATE_LIMIT_PER_MINUTE = 0
    django_user_model.objects.create_user("operator", password=PASSWORD, is_staff=True)
    one_hash = _time_one_hash()

    with httpx.Client(base_url=gateway.url, trust_env=False, timeout=30,
                      headers={"Authorization": f"Bearer {gateway.key}"}) as consumer:
        body = {"role": "copywriter", "task": "sns", "payload": {"product": "Green tea", "tone": "calm"}}

        def latencies(count):
            taken = []
            for _ in range(count):
                started = time.perf_counter()
                assert consumer.post(GENERATE_URL, json=body).status_code == 200
                taken.append((time.perf_counter() - started) * 1000)
            return taken

        latencies(5)  # warm up
        quiet = latencies(40)
        hashes.calls, hashes.most, hashes.seconds = 0, 0, 0.0
        flood_seconds = 6.0
        flood_started = time.monotonic()
        # Niced: the attackers stand for clients on other machines, whose own CPU is not the gateway's.
        attackers = subprocess.Popen([sys.executable, "-c", ATTACKERS, gateway.url, "20", str(flood_seconds)],
                                     stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                     preexec_fn=lambda: os.nice(10))
        try:
            time.sleep(1.0)  # the flood under way
            started = time.monotonic()
            flooded = latencies(40)
            measured_for = time.monotonic() - started
            out, err = attackers.communicate(timeout=60)
        finally:
            attackers.kill()
        assert attackers.returncode == 0, err
        flood_took = time.monotonic() - flood_started
        # The consumer's own correct password still works after everyone else's failures.
        assert consumer.get(SETTINGS_URL, headers=_basic_header("operator", PASSWORD)).status_code == 200

    statuses = {int(k): v for k, v in json.loads(out).items()}
    figures = {name: (statistics.median(values), _p99(values)) for name, values in (("quiet", quiet),
                                                                                   ("flood", flooded))}
    with capsys.disabled():
        print(f"\nBasic flood: one hash {one_hash * 1000:.0f} ms; generation p50/p99 quiet "
              f"{figures['quiet'][0]:.1f}/{figures['quiet'][1]:.1f} ms, under flood "
              f"{figures['flood'][0]:.1f}/{figures['flood'][1]:.1f} ms (measured {measured_for:.1f} s); "
              f"{hashes.calls} hashes ({hashes.seconds:.1f} s) for {sum(statuses.values())} attempts {statuses}")

    assert set(statuses) <= {401, 429, 503}, statuses
    # One hash at a time: they took no more CPU time than the flood lasted, however many clients sent passwords.
    assert hashes.most == 1 and hashes.seconds <= flood_took + 1
    assert hashes.calls < sum(statuses.values()) / 4
    # Without the bounds twenty hashes ran at once: p50 went from 0.1 s to 2.4–5.5 s in the field, and in one run
    # here from 4 to 147 ms (p99 24 to 496 ms). The margins absorb a shared test machine's noise, not that.
    assert figures["flood"][0] <= max(4 * figures["quiet"][0], figures["quiet"][0] + 50)
    # p99 of 40 is their slowest: one scheduling hiccup of a machine that other jobs share, so only a loose bound.
    assert figures["flood"][1] <= max(4 * figures["quiet"][1], figures["quiet"][1] + 1000)


def _time_one_hash() -> float:
    hasher = PBKDF2PasswordHasher()
    started = time.perf_counter()
    hasher.encode("x", hasher.salt())
    return time.perf_counter() - started


def _p99(values: list[float]) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))]
