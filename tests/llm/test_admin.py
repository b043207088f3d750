"""The generation history in admin: staff read it; nobody adds, changes or deletes it."""

import re

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
    for text in ("copywriter", "marketer", "qwen2.5:7b", "812 ms", "upstream_<wbr>unavailable"):
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


CHANGELIST_PAGES = ["", "?status__exact=failed", "?status__exact=abandoned", "?consumer__id__exact=1",
                    "?consumer__isnull=True", "?provider=ollama", "?mode=json", "?model=llama3.2:1b",
                    "?error_type=upstream_unavailable", "?created_at__gte=2026-01-01+00%3A00%3A00%2B00%3A00",
                    "?model=qwen2.5:7b&error_type=", "?p=1", "?q=chatcmpl-0b6f3d0e-6c1e-4a53-9d0f-1f6a0b2a9c41"]


@pytest.mark.parametrize("query", CHANGELIST_PAGES)
def test_the_list_never_counts_the_table_or_reads_distinct_values(staff_client, rows, query,
                                                                  django_assert_max_num_queries):
    """What makes a log admin slow at a million rows: a full COUNT(*) and SELECT DISTINCT per filter."""
    with django_assert_max_num_queries(12) as captured:
        response = staff_client.get(reverse("admin:llm_generation_changelist") + query)

    assert response.status_code == 200
    generation_queries = [q["sql"] for q in captured.captured_queries if '"llm_generation"' in q["sql"]]
    assert generation_queries
    for sql in generation_queries:
        assert "DISTINCT" not in sql.upper(), sql
        if "COUNT(" in sql.upper():
            assert "LIMIT 10001" in sql, sql  # counted up to the cap, through a subquery
    assert not any("pg_class" in q["sql"] for q in captured.captured_queries if query)


def test_the_list_shows_what_a_reviewer_scans_for(staff_client, rows):
    html = staff_client.get(reverse("admin:llm_generation_changelist")).content.decode()

    headers = re.findall(r'<th scope="col" class="(?:sortable )?column-(\w+)', html)
    assert headers == ["created", "status", "consumer", "role_task", "model", "latency", "error"]
    assert "copywriter/<wbr>sns" in html and "812 ms" in html
    # Only time sorts: any other column would sort the whole table.
    assert html.count('class="sortable') == 1


def test_filter_choices_are_the_values_in_the_table(staff_client, rows):
    html = staff_client.get(reverse("admin:llm_generation_changelist")).content.decode()

    filters = html[html.index('id="changelist-filter"'):]
    for choice in ("?model=llama3.2%3A1b", "?model=qwen2.5%3A7b", "?error_type=upstream_unavailable",
                   "?error_type=", "?mode=text", "?provider=ollama", "?status__exact=abandoned"):
        assert f'href="{choice}"' in filters, choice
    assert "(none)" in filters  # the rows without an error type


def test_abandoned_rows_are_shown_and_filtered_as_such(staff_client, rows):
    Generation.objects.create(status="abandoned", role="copywriter", task="ad_headline", error_type="abandoned")

    html = staff_client.get(reverse("admin:llm_generation_changelist"), {"status__exact": "abandoned"}).content.decode()

    assert "copywriter/<wbr>ad_headline" in html and "Abandoned" in html
    assert "marketer/<wbr>brief" not in html


def test_search_takes_the_openai_dialect_id_too(staff_client, rows):
    ok, _ = rows

    html = staff_client.get(reverse("admin:llm_generation_changelist"), {"q": f"chatcmpl-{ok.id}"}).content.decode()

    assert "copywriter/<wbr>sns" in html and "marketer/<wbr>brief" not in html


def test_the_detail_page_shows_streaming_fields(staff_client, rows):
    ok, _ = rows
    Generation.objects.filter(pk=ok.pk).update(stream=True, first_token_ms=42.5)

    html = staff_client.get(reverse("admin:llm_generation_change", args=[ok.id])).content.decode()

    assert "field-stream" in html and "field-first_token_ms" in html and "42.5" in html


def test_pages_stop_at_the_cap_and_say_so(staff_client, monkeypatch):
    from llm.admin import CappedPaginator, GenerationAdmin

    monkeypatch.setattr(CappedPaginator, "CAP", 6)
    monkeypatch.setattr(GenerationAdmin, "list_per_page", 2)
    Generation.objects.bulk_create([Generation(role="r", task=f"t{i}") for i in range(9)])
    url = reverse("admin:llm_generation_changelist")

    last = staff_client.get(url, {"p": 3})
    assert last.status_code == 200
    assert "more than 6 generations" in last.content.decode()
    beyond = staff_client.get(url, {"p": 4})
    assert beyond.status_code == 302 and "e=1" in beyond["Location"]

    few = staff_client.get(url, {"task": "t1"}).content.decode()
    assert "1 generation" in few and "more than" not in few
