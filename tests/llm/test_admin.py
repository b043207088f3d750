"""The generation history in admin: staff read it; nobody adds, changes or deletes it."""

import pytest
from django.urls import reverse

from llm.models import Generation

pytestmark = pytest.mark.django_db


@pytest.fixture
def rows():
    ok = Generation.objects.create(status="succeeded", http_status=200, role="copywriter", task="sns",
                                   mode="json", provider="ollama", model="qwen2.5:7b", request={"role": "copywriter"},
                                   prompt=[{"role": "user", "content": "Task: sns"}],
                                   output={"caption": "Calm <b>tea</b>"}, prompt_tokens=12, completion_tokens=5,
                                   latency_ms=812.5, upstream_ms=810.0)
    failed = Generation.objects.create(status="failed", http_status=503, role="marketer", task="brief",
                                       mode="text", provider="ollama", model="llama3.2:1b",
                                       error_type="upstream_unavailable", error_message="Cannot connect")
    return ok, failed


@pytest.fixture
def staff_client(client, staff_user):
    client.force_login(staff_user)
    return client


def test_staff_see_the_list_with_its_columns(staff_client, rows):
    response = staff_client.get(reverse("admin:llm_generation_changelist"))

    assert response.status_code == 200
    html = response.content.decode()
    for text in ("copywriter", "marketer", "qwen2.5:7b", "812.5", "upstream_unavailable"):
        assert text in html
    assert "Add generation" not in html


@pytest.mark.parametrize(
    "query, shown, hidden",
    [
        ("status__exact=failed", "marketer", "copywriter"),
        ("provider__exact=ollama&mode__exact=json", "copywriter", "marketer"),
        ("model=llama3.2:1b", "marketer", "copywriter"),
    ],
)
def test_filters(staff_client, rows, query, shown, hidden):
    html = staff_client.get(reverse("admin:llm_generation_changelist") + "?" + query).content.decode()

    assert shown in html
    assert f">{hidden}<" not in html


def test_search_by_id(staff_client, rows):
    ok, failed = rows
    url = reverse("admin:llm_generation_changelist")

    found = staff_client.get(url, {"q": str(failed.id)}).content.decode()
    assert "marketer" in found and ">copywriter<" not in found
    nothing = staff_client.get(url, {"q": "not-a-uuid"})
    assert nothing.status_code == 200 and ">marketer<" not in nothing.content.decode()


def test_detail_page_shows_request_prompt_and_output_as_readable_json(staff_client, rows):
    ok, _ = rows

    response = staff_client.get(reverse("admin:llm_generation_change", args=[ok.id]))

    assert response.status_code == 200
    html = response.content.decode()
    assert '<pre class="json"' in html
    assert "&quot;caption&quot;: &quot;Calm &lt;b&gt;tea&lt;/b&gt;&quot;" in html  # indented JSON, escaped
    assert "Task: sns" in html
    assert 'name="_save"' not in html  # read-only: no save button


@pytest.mark.parametrize("as_superuser", [False, True])
def test_nobody_can_add_change_or_delete(client, rows, staff_user, django_user_model, as_superuser):
    user = (django_user_model.objects.create_superuser("root", password="x") if as_superuser else staff_user)
    client.force_login(user)
    ok, _ = rows

    assert client.get(reverse("admin:llm_generation_add")).status_code == 403
    assert client.post(reverse("admin:llm_generation_add"), {"role": "x"}).status_code == 403
    assert client.post(reverse("admin:llm_generation_change", args=[ok.id]), {"role": "edited"}).status_code == 403
    assert client.post(reverse("admin:llm_generation_delete", args=[ok.id]), {"post": "yes"}).status_code == 403
    bulk = client.post(reverse("admin:llm_generation_changelist"),
                       {"action": "delete_selected", "_selected_action": [ok.id], "post": "yes"})
    assert bulk.status_code in (200, 302)
    ok.refresh_from_db()
    assert ok.role == "copywriter"
    assert Generation.objects.count() == 2


def test_anonymous_users_are_sent_to_login(client, rows):
    response = client.get(reverse("admin:llm_generation_changelist"))

    assert response.status_code == 302 and "/admin/login/" in response["Location"]


def test_non_staff_users_cannot_log_in(client, django_user_model, rows):
    django_user_model.objects.create_user("consumer", password="pw-123-long")
    client.login(username="consumer", password="pw-123-long")

    assert client.get(reverse("admin:llm_generation_changelist")).status_code == 302
