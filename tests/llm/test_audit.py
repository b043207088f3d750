"""The audit guarantees: a pending row exists while the provider works, and no row means no generation."""

import threading
import time
import pytest
from django.db import connections

from llm import audit_spool
from llm.models import Generation
from tests.conftest import SNS_REPLY, assert_error, table_missing


@pytest.mark.django_db(transaction=True)
def test_no_audit_row_means_no_generation_and_503(generate, valid_request, ollama):
    with table_missing("llm_generation"):
        response = generate(valid_request)

    error = assert_error(response, 503, "audit_unavailable")
    assert "nothing was generated" in error["message"]
    assert ollama.requests == []  # the provider was never called
    assert Generation.objects.count() == 0


@pytest.mark.django_db(transaction=True)
def test_unreadable_templates_are_503_and_audited(generate, valid_request, ollama):
    with table_missing("llm_prompttemplateversion"):
        response = generate(valid_request)

    error = assert_error(response, 503, "audit_unavailable")
    assert "The database (prompt templates) cannot be read" in error["message"]
    assert ollama.requests == []
    row = Generation.objects.get()
    assert (row.status, row.error_type, str(row.id)) == ("failed", "audit_unavailable", error["request_id"])


@pytest.mark.django_db(transaction=True)
def test_an_invalid_request_whose_row_is_spooled_gets_its_own_answer(generate):
    with table_missing("llm_generation"):
        response = generate({"role": 1})

    # The row is kept to be replayed: the client is told what was wrong with its request, not that the
    # gateway could not audit it.
    assert_error(response, 400, "invalid_request")
    assert audit_spool.replay().written == 1
    row = Generation.objects.get()
    assert (str(row.id), row.status, row.error_type) == (response["X-Request-ID"], "failed", "invalid_request")


@pytest.mark.django_db(transaction=True)
def test_a_row_that_cannot_be_written_or_kept_is_503(generate, settings, audit_spool_dir):
    audit_spool_dir.parent.joinpath("not-a-directory").write_text("")
    settings.AUDIT_SPOOL_DIR = str(audit_spool_dir.parent / "not-a-directory")
    settings.AUDIT_SPOOL_MEMORY_BYTES = 0
    with table_missing("llm_generation"):
        response = generate({"role": 1})

    assert_error(response, 503, "audit_unavailable")


def in_thread(function, *args):
    """Run function in a thread of its own, closing the database connection that thread opens."""

    def run():
        try:
            function(*args)
        finally:
            connections.close_all()

    thread = threading.Thread(target=run)
    thread.start()
    return thread


@pytest.mark.django_db(transaction=True)
def test_row_is_pending_while_the_provider_works(generate, valid_request, ollama):
    ollama.reply = SNS_REPLY
    ollama.fault("slow", delay=1.0)
    responses = []
    worker = in_thread(lambda: responses.append(generate(valid_request)))
    try:
        assert ollama.wait_for_requests(1, timeout=5)
        # The provider has the request and has not answered: the row is already on record.
        row = Generation.objects.get()
        assert row.status == Generation.Status.PENDING
        assert row.finished_at is None and row.provider == "ollama"
        assert row.prompt[1]["content"].count("Green tea") == 1
    finally:
        worker.join(timeout=10)

    assert responses[0].status_code == 200
    row.refresh_from_db()
    assert row.status == Generation.Status.SUCCEEDED and row.finished_at is not None


@pytest.mark.django_db(transaction=True)
def test_every_concurrent_request_leaves_exactly_one_row(generate, valid_request, ollama, settings):
    settings.OLLAMA_MAX_RETRIES = 0  # each injected fault reaches exactly one client (retries: test_retries.py)
    ollama.reply = SNS_REPLY
    # A garbled reply is a server fault: no fallback model is tried, so exactly five requests fail.
    ollama.fault("malformed", times=5)
    ollama.fault("slow", delay=0.05, times=5)
    results = []
    lock = threading.Lock()

    def call(index):
        response = generate({**valid_request, "payload": {"product": f"Tea {index}", "tone": "calm"}})
        with lock:
            results.append(response)

    started = time.monotonic()
    threads = [in_thread(call, i) for i in range(20)]
    for thread in threads:
        thread.join(timeout=30)

    assert time.monotonic() - started < 30
    assert len(results) == 20
    statuses = sorted(r.status_code for r in results)
    assert statuses.count(502) == 5 and statuses.count(200) == 15
    ids = {r["X-Request-ID"] for r in results}
    rows = {str(pk): status for pk, status in Generation.objects.values_list("id", "status")}
    assert set(rows) == ids
    assert sorted(rows.values()).count("failed") == 5


# -- whatever the client accepts ---------------------------------------------------------------------------------
# The endpoint answers JSON only; a client that asks for something else still gets its JSON (not a 406 before
# any row exists), and its attempt is audited like every other.


@pytest.mark.django_db
@pytest.mark.parametrize("accept", ["text/html", "image/png", "text/html;q=0.9, application/xml", "*/*;q=0"])
def test_any_accept_header_gets_the_json_answer_and_one_row(generate, valid_request, accept):
    response = generate(valid_request, HTTP_ACCEPT=accept)

    assert response.status_code == 200, response.content
    assert response["Content-Type"].startswith("application/json")
    body = response.json()
    assert body["output"]["caption"].startswith("[mock]")
    row = Generation.objects.get()
    assert str(row.id) == body["id"] == response["X-Request-ID"]
    assert row.status == Generation.Status.SUCCEEDED


@pytest.mark.django_db
@pytest.mark.parametrize("accept", ["text/html", "image/png"])
def test_a_refused_request_with_any_accept_header_gets_the_json_error_and_one_row(generate, valid_request, accept):
    response = generate(valid_request, key=None, HTTP_ACCEPT=accept)

    assert_error(response, 401, "not_authenticated")
    row = Generation.objects.get()
    assert str(row.id) == response["X-Request-ID"] and row.http_status == 401


@pytest.mark.django_db
def test_a_format_query_parameter_does_not_change_the_answer(client, api_key, shipped_templates, valid_request):
    response = client.post("/api/v1/llm/generate?format=html", data=valid_request, content_type="application/json",
                           HTTP_AUTHORIZATION=f"Bearer {api_key}")

    assert response.status_code == 200, response.content
    assert response["Content-Type"].startswith("application/json")
    assert Generation.objects.count() == 1


def test_the_content_fields_are_published_and_name_real_columns():
    """A later issue stores a hash in place of exactly these for consumers whose content must not be kept."""
    from django.apps import apps

    from llm.models import CONTENT_FIELDS

    assert set(CONTENT_FIELDS) == {"llm.Generation", "llm.ToolSet"}
    for label, fields in CONTENT_FIELDS.items():
        names = {field.name for field in apps.get_model(label)._meta.get_fields()}
        assert set(fields) <= names, label
    assert {"request", "prompt", "output", "raw_output", "thinking", "tool_calls", "end_user"} <= set(
        CONTENT_FIELDS["llm.Generation"])
