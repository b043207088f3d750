"""Who may call: API keys (Bearer or X-API-Key), refused keys answered 401 and audited, keys managed in admin."""

import hashlib
import json
import re
from datetime import timedelta

import pytest
from django.core.management import CommandError, call_command
from django.urls import reverse
from django.utils import timezone

from llm import api_keys
from llm.models import ApiKey, Consumer, Generation
from tests.conftest import assert_error, table_missing

pytestmark = pytest.mark.django_db


def only_row():
    rows = list(Generation.objects.all())
    assert len(rows) == 1, rows
    return rows[0]


def assert_refused(response, type_):
    error = assert_error(response, 401, type_)
    assert response["WWW-Authenticate"].startswith("Bearer")
    row = only_row()
    assert (row.status, row.http_status, row.error_type) == ("failed", 401, type_)
    assert str(row.id) == error["request_id"]
    assert row.request is None and row.prompt is None and row.provider == ""  # the body was not even read
    assert row.request_bytes > 0
    return error, row


def test_a_valid_bearer_key_is_served_and_the_row_names_consumer_and_prefix(generate, valid_request, api_key,
                                                                             consumer):
    response = generate(valid_request)

    assert response.status_code == 200
    row = only_row()
    assert row.consumer == consumer
    assert api_key.startswith(f"gw_{row.api_key_prefix}_")
    assert len(row.api_key_prefix) == ApiKey.PREFIX_LENGTH
    stored = json.dumps([str(getattr(row, f.attname)) for f in Generation._meta.fields])
    assert api_key not in stored and api_key.split("_", 2)[-1] not in stored  # the secret may hold "_" itself


def test_x_api_key_header_is_accepted(generate, valid_request, api_key):
    response = generate(valid_request, key=None, HTTP_X_API_KEY=api_key)

    assert response.status_code == 200, response.content
    assert only_row().consumer.name == "test-team"


def test_x_api_key_is_used_beside_an_authorization_header_of_another_scheme(generate, valid_request, api_key):
    response = generate(valid_request, key=None, HTTP_AUTHORIZATION="Basic dXNlcjpwYXNz", HTTP_X_API_KEY=api_key)

    assert response.status_code == 200, response.content


def test_scheme_is_case_insensitive(generate, valid_request, api_key):
    assert generate(valid_request, key=None, HTTP_AUTHORIZATION=f"bearer {api_key}").status_code == 200


def test_no_key_is_401_not_authenticated_and_nothing_is_generated(generate, valid_request, ollama):
    error, row = assert_refused(generate(valid_request, key=None), "not_authenticated")

    assert "Authorization: Bearer" in error["message"]
    assert row.consumer is None and row.api_key_prefix == ""
    assert ollama.requests == []


@pytest.mark.parametrize(
    "headers, message",
    [
        ({"HTTP_AUTHORIZATION": "Bearer gw_00000000_not-a-real-key"}, "not valid"),
        ({"HTTP_AUTHORIZATION": "Basic dXNlcjpwYXNz"}, "Bearer"),
        ({"HTTP_AUTHORIZATION": "Bearer "}, "no API key"),
        ({"HTTP_X_API_KEY": ""}, "empty"),
        ({"HTTP_X_API_KEY": "gw_\udcff"}, "not valid"),
    ],
)
def test_bad_keys_are_401_authentication_failed(generate, valid_request, headers, message):
    error, row = assert_refused(generate(valid_request, key=None, **headers), "authentication_failed")

    assert message in error["message"]
    assert row.consumer is None


def test_an_invalid_key_is_never_echoed(generate, valid_request):
    secret = "gw_deadbeef_this-is-what-the-caller-sent"

    response = generate(valid_request, key=secret)

    assert secret not in response.content.decode()
    assert "deadbeef" not in response.content.decode()


def test_expired_key_is_401_and_the_row_names_its_consumer(generate, valid_request, consumer):
    key, raw = api_keys.issue_key(consumer, expires_at=timezone.now() - timedelta(seconds=1))

    error, row = assert_refused(generate(valid_request, key=raw), "authentication_failed")

    assert "expired" in error["message"]
    assert (row.consumer, row.api_key_prefix) == (consumer, key.prefix)


def test_a_key_with_a_future_expiry_works(generate, valid_request, consumer):
    _, raw = api_keys.issue_key(consumer, expires_at=timezone.now() + timedelta(days=1))

    assert generate(valid_request, key=raw).status_code == 200


def test_revoked_key_is_401(generate, valid_request, consumer):
    key, raw = api_keys.issue_key(consumer)
    assert generate(valid_request, key=raw).status_code == 200
    Generation.objects.all().delete()

    assert api_keys.revoke(ApiKey.objects.filter(pk=key.pk)) == 1

    error, row = assert_refused(generate(valid_request, key=raw), "authentication_failed")
    assert "revoked" in error["message"]
    assert row.api_key_prefix == key.prefix


def test_a_disabled_consumer_s_keys_are_refused(generate, valid_request, consumer, api_key):
    Consumer.objects.filter(pk=consumer.pk).update(is_active=False)

    error, _ = assert_refused(generate(valid_request), "authentication_failed")
    assert "disabled" in error["message"]


def test_keys_are_stored_as_sha256_only(consumer):
    key, raw = api_keys.issue_key(consumer)

    stored = ApiKey.objects.get(pk=key.pk)
    assert stored.hash == hashlib.sha256(raw.encode()).hexdigest()
    assert raw.startswith(f"gw_{stored.prefix}_") and len(raw) > 50
    assert raw.split("_", 2)[2] not in json.dumps([str(getattr(stored, f.attname)) for f in ApiKey._meta.fields])


def test_last_used_at_is_recorded(generate, valid_request, consumer, api_key):
    assert ApiKey.objects.get().last_used_at is None

    generate(valid_request)

    assert ApiKey.objects.get().last_used_at is not None


# -- manage.py create_api_key ------------------------------------------------------------------------------------


def run_create_api_key(*args):
    from io import StringIO

    out = StringIO()
    call_command("create_api_key", *args, stdout=out)
    return out.getvalue().splitlines()


def test_create_api_key_prints_a_working_key_alone_on_its_last_line(generate, valid_request):
    lines = run_create_api_key("marketing-site")

    key = lines[-1]
    assert key.startswith("gw_") and " " not in key
    assert "Created consumer 'marketing-site'" in lines[0]
    assert generate(valid_request, key=key).status_code == 200
    assert only_row().consumer.name == "marketing-site"


def test_create_api_key_again_adds_a_key_to_the_same_consumer():
    first = run_create_api_key("crm")[-1]
    second = run_create_api_key("crm", "--rate-limit", "5", "--expires-in-days", "30")[-1]

    assert first != second
    consumer = Consumer.objects.get(name="crm")
    assert consumer.api_keys.count() == 2
    assert consumer.rate_limit_per_minute == 5
    newest = consumer.api_keys.order_by("-created_at").first()
    assert timedelta(days=29) < newest.expires_at - timezone.now() <= timedelta(days=30)


def test_create_api_key_sets_and_lifts_the_concurrency_cap():
    lines = run_create_api_key("batch-jobs", "--max-concurrent", "3")

    assert Consumer.objects.get(name="batch-jobs").max_concurrent == 3
    assert any("At most 3 generations in flight" in line and "(max_concurrent)" in line for line in lines)
    lines = run_create_api_key("batch-jobs", "--max-concurrent", "0")
    assert Consumer.objects.get(name="batch-jobs").max_concurrent == 0
    assert any("No cap on generations in flight" in line for line in lines)
    lines = run_create_api_key("batch-jobs", "--max-concurrent", "default")
    assert Consumer.objects.get(name="batch-jobs").max_concurrent is None
    assert any("At most 16 generations in flight" in line and "(DEFAULT_MAX_CONCURRENT)" in line for line in lines)


def test_a_new_consumer_gets_the_default_concurrency_cap(settings):
    settings.DEFAULT_MAX_CONCURRENT = 5

    lines = run_create_api_key("new-team")

    assert Consumer.objects.get(name="new-team").max_concurrent is None
    assert any("At most 5 generations in flight" in line for line in lines)


@pytest.mark.parametrize("args", [("",), ("x" * 101,), ("crm", "--expires-in-days", "0"),
                                  ("crm", "--rate-limit", "-1"), ("crm", "--max-concurrent", "-2"),
                                  ("crm", "--max-concurrent", "lots")])
def test_create_api_key_refuses_bad_arguments(args):
    with pytest.raises(CommandError):
        call_command("create_api_key", *args)
    assert ApiKey.objects.count() == 0


# -- admin -------------------------------------------------------------------------------------------------------


@pytest.fixture
def admin_client_(client, django_user_model):
    user = django_user_model.objects.create_superuser("boss", password="correct-horse-battery")
    client.force_login(user)
    return client


def test_admin_creates_a_key_and_shows_it_once(admin_client_, consumer, generate, valid_request):
    response = admin_client_.post(reverse("admin:llm_apikey_add"), {"consumer": consumer.pk, "expires_at_0": "",
                                                                    "expires_at_1": ""})

    assert response.status_code == 200, response.content
    html = response.content.decode()
    key = ApiKey.objects.latest("created_at")
    start = html.index('id="api-key"')
    raw = html[html.index(">", start) + 1: html.index("</code>", start)]
    assert raw.startswith(f"gw_{key.prefix}_")
    assert key.hash == hashlib.sha256(raw.encode()).hexdigest()
    assert "cannot be shown again" in html

    change_page = admin_client_.get(reverse("admin:llm_apikey_change", args=[key.pk])).content.decode()
    assert key.prefix in change_page
    assert raw not in change_page and key.hash not in change_page
    assert generate(valid_request, key=raw).status_code == 200


def test_admin_shows_each_consumers_concurrency_cap_and_takes_0_and_empty(admin_client_, consumer, settings):
    settings.DEFAULT_MAX_CONCURRENT = 16
    Consumer.objects.create(name="batch-jobs", max_concurrent=3)
    Consumer.objects.create(name="trusted", max_concurrent=0)

    listing = admin_client_.get(reverse("admin:llm_consumer_changelist")).content.decode()
    form = admin_client_.get(reverse("admin:llm_consumer_change", args=[consumer.pk])).content.decode()
    admin_client_.post(reverse("admin:llm_consumer_change", args=[consumer.pk]), {
        "name": consumer.name, "is_active": "on", "rate_limit_per_minute": "", "max_concurrent": "0",
        "allowed_models": "", "api_keys-TOTAL_FORMS": "0", "api_keys-INITIAL_FORMS": "0"})

    cells = {name: re.search(rf'>{name}</a></th>.*?<td class="field-concurrency_cap">(.*?)</td>', listing,
                             re.S).group(1) for name in ("test-team", "batch-jobs", "trusted")}
    assert cells == {"test-team": "16 (default)", "batch-jobs": "3", "trusted": "no cap"}
    assert "empty: the global DEFAULT_MAX_CONCURRENT; 0: no cap." in form
    assert Consumer.objects.get(pk=consumer.pk).max_concurrent == 0


def test_admin_revoke_action(admin_client_, consumer, generate, valid_request):
    key, raw = api_keys.issue_key(consumer)

    response = admin_client_.post(reverse("admin:llm_apikey_changelist"),
                                  {"action": "revoke_keys", "_selected_action": [key.pk]}, follow=True)

    assert "Revoked 1 API key(s)." in response.content.decode()
    assert ApiKey.objects.get(pk=key.pk).revoked_at is not None
    assert_error(generate(valid_request, key=raw), 401, "authentication_failed")


def test_admin_filters_generations_by_consumer(admin_client_, consumer, generate, valid_request):
    other = Consumer.objects.create(name="other-team")
    generate({**valid_request, "role": "poet"})
    generate({**valid_request, "role": "lawyer"}, key=api_keys.issue_key(other)[1])

    url = reverse("admin:llm_generation_changelist")
    html = admin_client_.get(f"{url}?consumer__id__exact={other.pk}").content.decode()

    assert "lawyer" in html and "poet" not in html


# -- an API key opens the generation API and nothing else ---------------------------------------------------------


@pytest.mark.parametrize("method, url", [("get", "/api/v1/debug/settings"), ("post", "/api/v1/debug/ollama")])
@pytest.mark.parametrize("header", ["HTTP_AUTHORIZATION", "HTTP_X_API_KEY"])
def test_an_api_key_does_not_open_the_debug_endpoints(client, api_key, ollama, method, url, header):
    value = f"Bearer {api_key}" if header == "HTTP_AUTHORIZATION" else api_key

    response = getattr(client, method)(url, content_type="application/json", **{header: value})

    assert response.status_code in (401, 403), response.content
    assert response.json()["error"]["type"] in ("not_authenticated", "authentication_failed", "permission_denied")
    assert ollama.requests == []  # the check was not run


@pytest.mark.parametrize("url", ["/admin/", "/admin/llm/generation/", "/admin/llm/apikey/",
                                 "/admin/diagnostics/connectioncheck/"])
@pytest.mark.parametrize("header", ["HTTP_AUTHORIZATION", "HTTP_X_API_KEY"])
def test_an_api_key_does_not_open_the_admin(client, api_key, url, header):
    value = f"Bearer {api_key}" if header == "HTTP_AUTHORIZATION" else api_key

    response = client.get(url, **{header: value})

    # The admin answers anyone without a staff session by sending them to its login page.
    assert response.status_code == 302
    assert response["Location"].startswith("/admin/login/")


@pytest.mark.django_db(transaction=True)
def test_unreadable_key_table_is_503_not_500(generate, valid_request, api_key):
    with table_missing("llm_apikey"):
        response = generate(valid_request)

    assert_error(response, 503, "audit_unavailable")
