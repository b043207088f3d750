"""Consumers whose content is not stored: a canary sent every way a client can send content (prompt, payload, tool
arguments and definitions, an image, the end user, a value a validation error quotes, Ollama's own error text)
appears nowhere the gateway keeps anything: not in any column of any table, not in dumpdata, not in the log records
or their JSON lines, not in the audit spool, not in the admin. What stays is metadata, and an HMAC and a length of
each content field, which the operator can check a known text against."""

import base64
import hashlib
import json
import logging
from datetime import timedelta
from io import StringIO

import httpx
import ollama as ollama_client
import openai
import pytest
from django.core.management import call_command
from django.db import OperationalError, connection
from django.urls import reverse
from django.utils import timezone

from gateway_project.log_format import BoundedJsonFormatter
from llm import api_keys, audit_spool, content_hmac
from llm.models import Consumer, Generation, ToolSet
from tests.conftest import GENERATE_URL, wait_for
from tests.pictures import png_bytes

pytestmark = pytest.mark.django_db(transaction=True)

CANARY = "zebracanary7f3a9q"
PNG = png_bytes(2, 2)
PNG_B64 = base64.b64encode(PNG).decode()
PNG_SHA256 = hashlib.sha256(PNG).hexdigest()
# Whatever would tell the content: the canary, and the image's bytes or its SHA-256 (which identifies it).
SECRETS = (CANARY, PNG_B64[:24], PNG_SHA256)
MODEL = "qwen2.5:7b"
TOOL = {"type": "function", "function": {
    "name": "lookup_record", "description": f"Looks up the record {CANARY}.",
    "parameters": {"type": "object", "properties": {"query": {"type": "string"}}, "required": ["query"]}}}
END_USER_HEADER = {"X-OpenWebUI-User-Email": f"{CANARY}@example.com"}


@pytest.fixture
def metadata_only(consumer):
    consumer.metadata_only = True
    consumer.save()
    return consumer


@pytest.fixture
def logs(caplog):
    caplog.set_level(logging.DEBUG)
    return caplog


def openai_sdk(gateway, **headers) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{gateway.url}/v1", api_key=gateway.key, timeout=10, max_retries=0,
                         default_headers=headers or None)


def ollama_sdk(gateway) -> ollama_client.Client:
    return ollama_client.Client(host=gateway.url, timeout=10, trust_env=False,
                                headers={"Authorization": f"Bearer {gateway.key}", **END_USER_HEADER})


def finished(count: int) -> list[Generation]:
    wait_for(lambda: Generation.objects.exclude(status="pending").count() >= count)
    rows = list(Generation.objects.order_by("created_at"))
    assert len(rows) == count and all(row.status != "pending" for row in rows)
    return rows


def every_stored_value() -> str:
    """Every column of every table, read with SQL (no model in between), as one text."""
    found = []
    with connection.cursor() as cursor:
        for table in connection.introspection.table_names():
            cursor.execute(f"SELECT * FROM {connection.ops.quote_name(table)}")
            found.extend(repr(row) for row in cursor.fetchall())
    return "\n".join(found)


def dumpdata() -> str:
    out = StringIO()
    call_command("dumpdata", stdout=out)
    return out.getvalue()


def log_text(caplog) -> str:
    """Each record as the console prints it (the JSON line), and each record's attributes as they are."""
    formatter = BoundedJsonFormatter()
    lines = []
    for record in caplog.records:
        lines.append(formatter.format(record))
        lines.append(repr(record.__dict__))
    return "\n".join(lines)


def spool_text(directory) -> str:
    if not directory.exists():
        return ""
    return "\n".join(path.read_text(errors="replace") for path in directory.rglob("*") if path.is_file())


def assert_nowhere(text: str, where: str) -> None:
    for secret in SECRETS:
        assert secret not in text, f"{secret!r} found in {where}"


def assert_kept_nowhere(caplog, spool_dir, client=None) -> None:
    assert_nowhere(every_stored_value(), "the database")
    assert_nowhere(dumpdata(), "dumpdata")
    assert_nowhere(log_text(caplog), "the logs")
    # The request's log line: the client's address as its HMAC, no error detail (Ollama's answer).
    lines = [r for r in caplog.records if r.name == "gateway.request" and getattr(r, "consumer", "") == "test-team"]
    assert lines
    for line in lines:
        assert line.client_ip is None and line.client_ip_hmac == content_hmac.digest("127.0.0.1")["hmac_sha256"]
        assert line.content_stored is False and not hasattr(line, "error_detail")
    assert_nowhere(spool_text(spool_dir), "the audit spool")
    if client is not None:
        pages = [client.get(reverse("admin:llm_generation_changelist")).content.decode()]
        for row in Generation.objects.all():
            page = client.get(reverse("admin:llm_generation_change", args=[row.pk]))
            assert page.status_code == 200
            assert "content not stored" in page.content.decode()
            pages.append(page.content.decode())
        assert "content not stored" in pages[0]
        assert_nowhere("\n".join(pages), "the admin")


def assert_metadata_kept(row: Generation, *, dialect: str) -> None:
    assert row.content_stored is False
    assert row.consumer is not None and row.api_key_prefix and row.dialect == dialect and row.endpoint
    assert row.created_at and row.finished_at and row.latency_ms is not None and row.http_status
    assert row.request_bytes > 0
    for name in Generation.WITHHELD_FIELDS:
        assert getattr(row, name) in (None, ""), name
    assert row.tool_set_id is None
    digests = row.content_hmac
    assert {"request", "client_ip"} <= set(digests)
    for digest in digests.values():
        assert set(digest) == {"hmac_sha256", "length"} and len(digest["hmac_sha256"]) == 64


# -- every way in ---------------------------------------------------------------------------------------------------


def test_native_api_calls_keep_no_content(gateway, metadata_only, ollama, logs, audit_spool_dir, admin_client):
    payload = {"product": CANARY, "tone": "calm"}
    with gateway.client() as http:
        answered = http.post(GENERATE_URL, json={"role": "copywriter", "task": "sns", "payload": payload},
                             headers=END_USER_HEADER)
        streamed = http.post(GENERATE_URL, json={"role": "copywriter", "task": "sns", "payload": payload,
                                                 "stream": True}, headers=END_USER_HEADER)
        # Validation errors that quote the value they refuse, and a body that is refused whole.
        bad_mode = http.post(GENERATE_URL, json={"role": "copywriter", "task": "sns", "payload": payload,
                                                 "mode": CANARY})
        bad_role = http.post(GENERATE_URL, json={"role": CANARY, "task": "sns", "payload": payload})
    # The fake echoes the prompt as JSON that misses the template's schema: the reply, canary and all, is
    # what the row would have kept as raw output.
    assert answered.status_code == 502 and answered.json()["error"]["type"] == "invalid_output"
    assert streamed.status_code == 200 and CANARY in streamed.text
    assert bad_mode.status_code == 400 and CANARY in bad_mode.text
    assert bad_role.status_code == 400 and CANARY in bad_role.text

    rows = finished(4)
    for row in rows:
        assert_metadata_kept(row, dialect="native")
    assert {"request", "prompt", "raw_output", "end_user", "error_message", "client_ip"} <= set(rows[0].content_hmac)
    assert rows[0].role == "copywriter" and rows[0].task == "sns" and rows[0].model
    assert rows[0].attempts == 2 and rows[0].upstream_ms  # asked twice: json-mode replies get one more try
    # A refused request keeps no part of what it said, not even the role it named.
    assert rows[3].role == "" and rows[3].error_type == "invalid_request"
    assert_kept_nowhere(logs, audit_spool_dir, admin_client)


def test_openai_dialect_calls_keep_no_content(gateway, metadata_only, ollama, logs, audit_spool_dir, admin_client):
    ollama.models.append("llava:7b")
    sdk = openai_sdk(gateway, **END_USER_HEADER)
    ask = [{"role": "user", "content": f"Find {CANARY} for me"}]
    called = sdk.chat.completions.create(model=MODEL, messages=ask, tools=[TOOL], user=CANARY)
    assert CANARY in called.choices[0].message.tool_calls[0].function.arguments
    text = "".join(chunk.choices[0].delta.content or "" for chunk in sdk.chat.completions.create(
        model=MODEL, messages=ask, stream=True) if chunk.choices)
    assert CANARY in text
    picture = sdk.chat.completions.create(model="llava:7b", messages=[{"role": "user", "content": [
        {"type": "text", "text": CANARY},
        {"type": "image_url", "image_url": {"url": f"data:image/png;base64,{PNG_B64}"}}]}])
    assert picture.choices[0].message.content
    # Ollama's own error text, which the staff message quotes.
    ollama.fault("status", status=500, message=f"runner crashed on {CANARY}", times=3)  # retries included
    with pytest.raises(openai.InternalServerError):
        sdk.chat.completions.create(model=MODEL, messages=ask)
    ollama.fault("stream_error", after=1, message=f"runner died reading {CANARY}", times=1)
    with pytest.raises(openai.APIError):
        list(sdk.chat.completions.create(model=MODEL, messages=ask, stream=True))
    # A value the dialect refuses, quoted back to the client.
    with pytest.raises(openai.BadRequestError) as refused:
        sdk.chat.completions.create(model=MODEL, messages=ask, reasoning_effort=CANARY)
    assert CANARY in str(refused.value.body)

    rows = finished(6)
    for row in rows:
        assert_metadata_kept(row, dialect="openai")
    assert {"tool_calls", "end_user", "prompt"} <= set(rows[0].content_hmac)
    assert "output" in rows[1].content_hmac
    assert rows[0].content_hmac["end_user"] == content_hmac.digest(CANARY)  # OpenAI's `user` wins over the header
    assert rows[3].error_type and "error_message" in rows[3].content_hmac
    assert not ToolSet.objects.exists()
    assert_kept_nowhere(logs, audit_spool_dir, admin_client)


def test_ollama_dialect_calls_keep_no_content(gateway, metadata_only, ollama, logs, audit_spool_dir, admin_client):
    ollama.models.append("qwen3:8b")
    sdk = ollama_sdk(gateway)
    ask = [{"role": "user", "content": f"Find {CANARY} for me"}]
    called = sdk.chat(model=MODEL, messages=ask, tools=[TOOL])
    assert CANARY in json.dumps(called.message.tool_calls[0].function.arguments)
    # A thinking model thinks about the question: thinking is content too.
    text = "".join(part.message.content or "" for part in sdk.chat(model="qwen3:8b", messages=ask, stream=True))
    assert CANARY in text
    ollama.models.append("llava:7b")
    completed = sdk.generate(model="llava:7b", prompt=f"Say {CANARY}", images=[PNG])
    assert completed.response
    ollama.fault("status", status=500, message=f"llama runner process has terminated: {CANARY}", times=3)
    with pytest.raises(ollama_client.ResponseError):
        sdk.chat(model=MODEL, messages=ask)
    ollama.fault("stream_error", after=1, message=f"runner died reading {CANARY}", times=1)
    with pytest.raises(ollama_client.ResponseError):
        list(sdk.chat(model=MODEL, messages=ask, stream=True))
    with pytest.raises(ollama_client.ResponseError):
        sdk.chat(model=MODEL, messages=ask, keep_alive=CANARY)

    rows = finished(6)
    for row in rows:
        assert_metadata_kept(row, dialect="ollama")
    assert {"tool_calls", "end_user", "prompt"} <= set(rows[0].content_hmac)
    assert {"thinking", "output"} <= set(rows[1].content_hmac)
    assert not ToolSet.objects.exists()
    assert_kept_nowhere(logs, audit_spool_dir, admin_client)


def test_embedding_calls_keep_no_content(gateway, metadata_only, ollama, logs, audit_spool_dir, admin_client):
    """Embedding inputs are content: through both dialects, the legacy endpoint, a refusal and an Ollama error."""
    ollama.models.append("nomic-embed-text:latest")
    texts = [f"The record {CANARY} is filed.", "Grass is green."]
    sdk = ollama_sdk(gateway)
    assert len(sdk.embed(model="nomic-embed-text", input=texts).embeddings) == 2
    assert sdk.embeddings(model="nomic-embed-text", prompt=texts[0]).embedding
    vectors = openai_sdk(gateway, **END_USER_HEADER).embeddings.create(model="nomic-embed-text", input=texts)
    assert len(vectors.data) == 2
    with pytest.raises(openai.BadRequestError):  # a token array: refused, and the refusal's body is content too
        openai_sdk(gateway).embeddings.create(model="nomic-embed-text", input=[[1, 2, 3], CANARY])
    ollama.fault("status", status=500, message=f"llama runner process has terminated: {CANARY}", times=3)
    with pytest.raises(ollama_client.ResponseError):
        sdk.embed(model="nomic-embed-text", input=texts)

    rows = finished(5)
    assert [row.kind for row in rows] == ["embedding"] * 5
    assert_metadata_kept(rows[0], dialect="ollama")
    assert_metadata_kept(rows[2], dialect="openai")
    assert rows[0].input_count == 2 and rows[0].input_chars == sum(len(text) for text in texts)
    assert {"inputs", "end_user"} <= set(rows[0].content_hmac)
    assert rows[4].status == "failed" and rows[4].error_type
    assert_kept_nowhere(logs, audit_spool_dir, admin_client)


def test_a_database_outage_spools_only_the_hashed_form(gateway, metadata_only, ollama, logs, audit_spool_dir,
                                                       monkeypatch, settings):
    settings.AUDIT_SPOOL_REPLAY_SECONDS = 3600  # replayed by the test, once it has read the spool

    def refused(self):
        raise OperationalError("server closed the connection unexpectedly")

    monkeypatch.setattr(Generation, "save_outcome", refused)
    sdk = openai_sdk(gateway, **END_USER_HEADER)
    completion = sdk.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": CANARY}],
                                             tools=[TOOL])
    assert CANARY in completion.choices[0].message.tool_calls[0].function.arguments
    files = wait_for(lambda: list(audit_spool_dir.glob("*.json")))
    assert len(files) == 1
    kept = json.loads(files[0].read_text())[0]["fields"]
    assert kept["content_stored"] is False and kept["output"] is None and kept["client_ip"] is None
    assert {"request", "prompt", "tool_calls", "end_user", "client_ip"} <= set(kept["content_hmac"])
    assert_nowhere(spool_text(audit_spool_dir), "the audit spool")
    assert_nowhere(log_text(logs), "the logs")

    monkeypatch.undo()
    assert audit_spool.replay().written == 1
    [row] = finished(1)
    assert row.status == "succeeded" and row.content_hmac == kept["content_hmac"]
    assert_nowhere(every_stored_value(), "the database")


def test_a_gateway_error_is_logged_without_its_message(gateway, metadata_only, ollama, logs, monkeypatch):
    from llm import services

    def broken(neutral, row, caller):
        raise ValueError(f"cannot resolve {neutral!r}")  # a message that quotes the request, as many do

    monkeypatch.setattr(services, "_resolve", broken)
    with gateway.client() as http:
        response = http.post("/v1/chat/completions", json={"model": MODEL, "messages": [
            {"role": "user", "content": CANARY}]})
    assert response.status_code == 500
    [row] = finished(1)
    assert row.error_type == "internal_error" and row.content_stored is False
    record = next(r for r in logs.records if getattr(r, "traceback", None))
    assert "ValueError: [message withheld" in record.traceback and record.exc_info is None
    assert_nowhere(log_text(logs), "the logs")


# -- what stays, and what a normal consumer keeps ---------------------------------------------------------------------


def test_the_hmac_tells_whether_a_known_text_was_sent(gateway, metadata_only, ollama, settings):
    settings.CONTENT_HMAC_KEY = "a-dedicated-key-of-32-characters"
    ollama.reply = "Noted."
    with gateway.client() as http:
        http.post("/v1/chat/completions", json={"model": MODEL, "user": "alice@example.com",
                                                "messages": [{"role": "user", "content": "Hello"}]})
    [row] = finished(1)
    assert row.content_hmac["end_user"] == content_hmac.digest("alice@example.com")
    assert row.content_hmac["end_user"] != content_hmac.digest("bob@example.com")
    assert row.content_hmac["end_user"]["length"] == len("alice@example.com")
    assert row.content_hmac["output"] == content_hmac.digest("Noted.")
    assert row.content_hmac["prompt"] == content_hmac.digest([{"role": "user", "content": "Hello"}])
    out = StringIO()
    call_command("content_hmac", "alice@example.com", stdout=out)
    assert row.content_hmac["end_user"]["hmac_sha256"] in out.getvalue()
    # Another key, other HMACs: without the key nobody can test guesses.
    settings.CONTENT_HMAC_KEY = "another-dedicated-key-32-chars!!"
    assert row.content_hmac["end_user"] != content_hmac.digest("alice@example.com")


def test_a_normal_consumers_rows_keep_their_content(gateway, metadata_only, ollama):
    other = Consumer.objects.create(name="open-team")
    key = api_keys.issue_key(other)[1]
    with httpx.Client(base_url=gateway.url, trust_env=False, timeout=10) as http:
        for bearer in (key, gateway.key):
            response = http.post("/v1/chat/completions", headers={"Authorization": f"Bearer {bearer}",
                                                                  **END_USER_HEADER},
                                 json={"model": MODEL, "tools": [TOOL],
                                       "messages": [{"role": "user", "content": CANARY}]})
            assert response.status_code == 200
    normal, withheld = finished(2)
    assert normal.consumer == other and normal.content_stored is True and normal.content_hmac is None
    assert CANARY in json.dumps(normal.request) and CANARY in json.dumps(normal.prompt)
    assert CANARY in json.dumps(normal.tool_calls) and normal.end_user == f"{CANARY}@example.com"
    assert normal.client_ip == "127.0.0.1" and normal.tool_set_id
    assert withheld.content_stored is False and withheld.client_ip is None and withheld.tool_set_id is None


def test_metrics_and_usage_count_them_as_usual(gateway, metadata_only, ollama):
    from tests.llm.test_metrics import Delta

    delta = Delta()
    with gateway.client() as http:
        assert http.post("/v1/chat/completions", json={"model": MODEL, "messages": [
            {"role": "user", "content": "Count me"}]}).status_code == 200
    [row] = finished(1)
    assert row.prompt_tokens and row.completion_tokens
    labels = {"model": MODEL, "consumer": "test-team", "dialect": "openai"}
    assert wait_for(lambda: delta("llm_gateway_requests_total", outcome="succeeded", error_type="none", **labels))
    assert delta("llm_gateway_requests_total", outcome="succeeded", error_type="none", **labels) == 1
    assert delta("llm_gateway_tokens_total", type="completion", **labels) == row.completion_tokens
    # The usage rollup (the dashboard's source) counts the row and its tokens.
    from llm import usage
    from llm.models import UsageHour

    usage.fold(until=timezone.now() + timedelta(hours=1))
    [hour] = UsageHour.objects.filter(consumer=row.consumer)
    assert (hour.requests, hour.succeeded, hour.prompt_tokens, hour.completion_tokens) == (
        1, 1, row.prompt_tokens, row.completion_tokens)


def test_changing_the_setting_applies_to_new_rows_only(gateway, consumer, ollama):
    with gateway.client() as http:
        http.post("/v1/chat/completions", json={"model": MODEL, "messages": [{"role": "user", "content": CANARY}]})
        before = finished(1)[0]
        consumer.metadata_only = True
        consumer.save()
        http.post("/v1/chat/completions", json={"model": MODEL, "messages": [{"role": "user", "content": CANARY}]})
    old, new = finished(2)
    assert old.pk == before.pk and old.content_stored and CANARY in json.dumps(old.prompt)
    assert new.content_stored is False and new.prompt is None


# -- prune_audit --strip-content ------------------------------------------------------------------------------------


def test_prune_audit_strips_a_consumers_older_rows_and_keeps_them(gateway, consumer, ollama):
    other = Consumer.objects.create(name="open-team")
    other_key = api_keys.issue_key(other)[1]
    with httpx.Client(base_url=gateway.url, trust_env=False, timeout=10) as http:
        for bearer in (gateway.key, gateway.key, gateway.key, other_key):
            http.post("/v1/chat/completions", headers={"Authorization": f"Bearer {bearer}", **END_USER_HEADER},
                      json={"model": MODEL, "tools": [TOOL], "messages": [{"role": "user", "content": CANARY}]})
    rows = finished(4)
    before = {row.pk: row for row in rows}
    assert ToolSet.objects.count() == 1

    out = StringIO()
    call_command("prune_audit", "--strip-content", "--consumer", "test-team", "--batch-size", "2", stdout=out)

    assert "Stripped the content of 3 generations of consumer 'test-team' in 2 batches" in out.getvalue()
    assert Generation.objects.count() == 4
    for row in Generation.objects.filter(consumer=consumer):
        assert row.content_stored is False and row.tool_set_id is None
        for name in Generation.WITHHELD_FIELDS:
            assert getattr(row, name) in (None, ""), name
        kept = before[row.pk]
        assert row.content_hmac["prompt"] == content_hmac.digest(kept.prompt)
        assert row.content_hmac["end_user"] == content_hmac.digest(kept.end_user)
        assert row.content_hmac["client_ip"] == content_hmac.digest(kept.client_ip)
        # Everything else stays as it was.
        for name in ("status", "model", "prompt_tokens", "completion_tokens", "latency_ms", "created_at",
                     "api_key_prefix", "dialect", "endpoint"):
            assert getattr(row, name) == getattr(kept, name), name
    untouched = Generation.objects.get(consumer=other)
    assert untouched.content_stored and CANARY in json.dumps(untouched.prompt)
    # The tool set is still offered by the other consumer's row; strip that one too and it goes.
    assert ToolSet.objects.count() == 1
    # Tool sets first seen within the longest request stay: a request in flight may be about to point to one.
    call_command("prune_audit", "--strip-content", "--consumer", "open-team", stdout=StringIO())
    assert ToolSet.objects.count() == 1
    ToolSet.objects.update(created_at=timezone.now() - timedelta(hours=1))
    call_command("prune_audit", "--strip-content", "--consumer", "open-team", stdout=StringIO())
    assert not ToolSet.objects.exists()
    assert_nowhere(every_stored_value(), "the database")
    # Run again: nothing left to strip.
    again = StringIO()
    call_command("prune_audit", "--strip-content", "--consumer", "test-team", stdout=again)
    assert "Stripped the content of 0 generations" in again.getvalue()


def test_prune_audit_strip_content_needs_a_known_consumer(db):
    from django.core.management import CommandError

    with pytest.raises(CommandError, match="--consumer"):
        call_command("prune_audit", "--strip-content", stdout=StringIO())
    with pytest.raises(CommandError, match="no consumer named 'nobody'"):
        call_command("prune_audit", "--strip-content", "--consumer", "nobody", stdout=StringIO())


# -- setting it, and the columns ----------------------------------------------------------------------------------


def test_create_api_key_no_content_sets_metadata_only(db):
    out = StringIO()
    call_command("create_api_key", "hr-bot", "--no-content", stdout=out)
    assert Consumer.objects.get(name="hr-bot").metadata_only is True
    assert "Metadata only" in out.getvalue()


def test_the_consumer_admin_sets_it(admin_client, consumer):
    page = admin_client.get(reverse("admin:llm_consumer_change", args=[consumer.pk])).content.decode()
    assert 'name="metadata_only"' in page


# Generation's columns that hold no content: what a metadata-only row keeps as it is.
METADATA_FIELDS = {
    "id", "created_at", "finished_at", "status", "http_status", "dialect", "endpoint", "role", "task", "mode",
    "provider", "model", "request_bytes", "finish_reason", "tool_set", "error_type", "prompt_tokens",
    "completion_tokens", "latency_ms", "upstream_ms", "stream", "first_token_ms", "user_agent", "template_version",
    "models_tried", "consumer", "api_key_prefix", "attempts", "worker", "repeat_count", "content_stored",
    "content_hmac", "kind", "input_count", "input_chars", "dimensions", "budget_tokens",
}


def test_every_column_is_either_withheld_or_named_metadata():
    """A column added later must be put in CONTENT_FIELDS (then withheld) or here: it cannot leak by default."""
    columns = {field.name for field in Generation._meta.concrete_fields}
    unclassified = columns - set(Generation.WITHHELD_FIELDS) - METADATA_FIELDS
    assert not unclassified, f"classify {sorted(unclassified)}: content (Generation.CONTENT_FIELDS) or metadata"
    assert not set(Generation.WITHHELD_FIELDS) & METADATA_FIELDS
    assert set(Generation.CONTENT_FIELDS) <= set(Generation.WITHHELD_FIELDS)


def test_the_key_is_masked_and_a_derived_key_is_warned_about(client, staff_user, settings):
    client.force_login(staff_user)
    settings.CONTENT_HMAC_KEY = ""
    body = client.get("/api/v1/debug/settings").json()
    assert any("CONTENT_HMAC_KEY is not set" in warning for warning in body["warnings"])
    derived = content_hmac.digest("x")

    settings.CONTENT_HMAC_KEY = "a-dedicated-key-of-32-characters"
    response = client.get("/api/v1/debug/settings")
    body = response.json()
    assert not any("CONTENT_HMAC_KEY" in warning for warning in body["warnings"])
    [shown] = [row for row in body["settings"] if row["name"] == "CONTENT_HMAC_KEY"]
    assert shown["secret"] is True and "a-dedicated-key" not in response.content.decode()
    assert content_hmac.digest("x") != derived


def test_an_invalid_key_is_refused_at_start(gateway_env):
    from django.core.exceptions import ImproperlyConfigured

    with pytest.raises(ImproperlyConfigured, match="CONTENT_HMAC_KEY"):
        gateway_env({"CONTENT_HMAC_KEY": "short"})


def test_prune_audit_strip_content_dry_run_counts_and_changes_nothing(consumer):
    Generation.objects.create(consumer=consumer, status="succeeded", prompt=[{"role": "user", "content": CANARY}])
    out = StringIO()
    call_command("prune_audit", "--strip-content", "--consumer", "test-team", "--dry-run", stdout=out)
    assert "would strip the content of 1 generations" in out.getvalue()
    assert Generation.objects.get().content_stored is True


def test_a_refused_key_of_such_a_consumer_keeps_no_content(gateway, metadata_only, logs):
    from llm.models import ApiKey

    ApiKey.objects.filter(consumer=metadata_only).update(revoked_at=timezone.now())
    with gateway.client() as http:
        response = http.post("/v1/chat/completions", headers=END_USER_HEADER,
                             json={"model": MODEL, "messages": [{"role": "user", "content": CANARY}]})
    assert response.status_code == 401
    [row] = finished(1)
    assert row.consumer == metadata_only and row.content_stored is False and row.client_ip is None
    assert row.request is None and "error_message" in row.content_hmac
    assert_nowhere(every_stored_value(), "the database")
    assert_nowhere(log_text(logs), "the logs")


def test_a_refused_pending_insert_is_spooled_hashed(gateway, metadata_only, ollama, logs, audit_spool_dir, settings):
    """The table cannot be written at all: the refusal's whole row, request included, goes to the spool."""
    from tests.conftest import table_missing

    settings.AUDIT_SPOOL_REPLAY_SECONDS = 3600
    with table_missing("llm_generation"):
        with gateway.client() as http:
            response = http.post("/v1/chat/completions", headers=END_USER_HEADER,
                                 json={"model": MODEL, "messages": [{"role": "user", "content": CANARY}]})
        assert response.status_code == 503
        [path] = audit_spool_dir.glob("*.json")
        kept = json.loads(path.read_text())[0]["fields"]
    assert {"request", "end_user", "client_ip"} <= set(kept["content_hmac"]) and kept["request"] is None
    assert_nowhere(spool_text(audit_spool_dir), "the audit spool")
    assert_nowhere(log_text(logs), "the logs")
    assert audit_spool.replay().written == 1
    assert Generation.objects.get().content_stored is False
    assert_nowhere(every_stored_value(), "the database")


def test_a_field_added_to_the_content_fields_is_withheld_everywhere(gateway, metadata_only, ollama, monkeypatch,
                                                                     audit_spool_dir):
    """The hashing is generic over the list: a content column added later (embedding inputs) needs no other code."""
    monkeypatch.setattr(Generation, "WITHHELD_FIELDS", (*Generation.WITHHELD_FIELDS, "user_agent"))
    with httpx.Client(base_url=gateway.url, trust_env=False, timeout=10) as http:
        http.post("/v1/chat/completions", json={"model": MODEL, "messages": [{"role": "user", "content": "Hi"}]},
                  headers={"Authorization": f"Bearer {gateway.key}", "User-Agent": f"agent-{CANARY}"})
    [row] = finished(1)
    assert row.user_agent == "" and row.content_hmac["user_agent"] == content_hmac.digest(f"agent-{CANARY}")
    assert_nowhere(every_stored_value(), "the database")
