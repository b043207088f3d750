"""Outcomes the database cannot take are kept (files, then memory, both bounded) and replayed by row id.

The database is made to refuse for real (tests.conftest.table_missing) or at the one write a test is about; the
cut of a real PostgreSQL server under load is tests/llm/test_database_outage.py.
"""

import fcntl
import json
import os
import time
from datetime import timedelta

import pytest
from django.core.management import call_command
from django.db import OperationalError
from django.utils import timezone

from llm import audit_spool
from llm.models import Consumer, Generation
from tests.conftest import SNS_REPLY, assert_error, table_missing, wait_for
from tests.llm.test_metrics import Delta

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture
def completion_refused(monkeypatch):
    """The database refuses the outcome of a row whose pending INSERT went through, as in a cut mid-request."""
    original = Generation.save_outcome

    def save_outcome(self):
        if not self._state.adding:
            raise OperationalError("server closed the connection unexpectedly")
        return original(self)

    monkeypatch.setattr(Generation, "save_outcome", save_outcome)
    return monkeypatch


def spooled(folder) -> list[dict]:
    return [json.loads(path.read_text())[0] for path in sorted(folder.glob("*.json"))]


def test_an_outcome_the_database_refuses_is_answered_kept_and_replayed(generate, valid_request, ollama,
                                                                        completion_refused, audit_spool_dir):
    ollama.reply = SNS_REPLY
    delta = Delta()

    response = generate(valid_request)

    assert response.status_code == 200  # the client's answer does not wait for the database
    body = response.json()
    assert Generation.objects.get().status == "pending"
    (kept,) = spooled(audit_spool_dir)
    # A plain serialisation of the row's fields, readable without the gateway.
    assert kept["model"] == "llm.generation" and kept["pk"] == body["id"]
    assert kept["fields"]["status"] == "succeeded" and kept["fields"]["output"] == body["output"]
    assert oct(os.stat(audit_spool_dir / next(os.walk(audit_spool_dir))[2][0]).st_mode & 0o777) in ("0o600",)
    assert delta("llm_gateway_audit_spooled_total", store="file") == 1

    completion_refused.undo()
    result = audit_spool.replay()

    assert (result.written, result.rejected, result.waiting) == (1, 0, 0)
    row = Generation.objects.get()
    assert (str(row.id), row.status, row.output) == (body["id"], "succeeded", body["output"])
    assert row.prompt_tokens == body["usage"]["prompt_tokens"] and row.completion_tokens
    assert row.prompt  # written with the pending row, kept by the replay
    assert not list(audit_spool_dir.glob("*.json"))
    assert delta("llm_gateway_audit_replayed_total", result="written") == 1


def test_a_refused_pending_insert_ends_as_one_completed_row_however_often_it_is_replayed(
        generate, valid_request, ollama, audit_spool_dir):
    with table_missing("llm_generation"):
        response = generate(valid_request)

    error = assert_error(response, 503, "audit_unavailable")
    # Nothing was generated; nothing is claimed about the record, which the replay writes.
    assert "nothing was generated" in error["message"] and "not recorded" not in error["message"]
    assert ollama.requests == []
    (path,) = audit_spool_dir.glob("*.json")
    copy = path.read_bytes()

    assert audit_spool.replay().written == 1
    path.write_bytes(copy)  # as if a process died after writing the row and before deleting its file
    assert audit_spool.replay().written == 1

    row = Generation.objects.get()
    assert (str(row.id), row.status, row.error_type, row.http_status) == (error["request_id"], "failed",
                                                                          "audit_unavailable", 503)
    assert row.consumer.name == "test-team" and row.finished_at is not None


def test_the_row_of_a_key_that_could_not_be_looked_up_keeps_its_prefix(generate, valid_request, api_key):
    with table_missing("llm_apikey"):
        response = generate(valid_request)

    assert_error(response, 503, "audit_unavailable")
    row = Generation.objects.get()
    assert row.api_key_prefix == api_key.split("_")[1] and row.consumer is None


def test_a_key_of_another_shape_leaves_no_prefix(generate, valid_request):
    with table_missing("llm_apikey"):
        assert_error(generate(valid_request, key="gw_NOTHEX!!_secret"), 503, "audit_unavailable")

    assert Generation.objects.get().api_key_prefix == ""


def test_without_a_writable_directory_outcomes_are_kept_in_memory(generate, valid_request, ollama, settings,
                                                                   completion_refused, tmp_path):
    ollama.reply = SNS_REPLY
    (tmp_path / "a-file").write_text("")
    settings.AUDIT_SPOOL_DIR = str(tmp_path / "a-file" / "spool")  # cannot be created
    delta = Delta()

    body = generate(valid_request).json()

    assert delta("llm_gateway_audit_spooled_total", store="memory") == 1
    assert audit_spool.waiting()
    completion_refused.undo()
    assert audit_spool.replay().written == 1
    assert Generation.objects.get().output == body["output"]
    assert not audit_spool.waiting()


def test_past_both_bounds_an_outcome_is_lost_counted_and_logged(generate, valid_request, ollama, settings,
                                                                completion_refused, caplog):
    ollama.reply = SNS_REPLY
    settings.AUDIT_SPOOL_MAX_BYTES = 100  # no row fits in the directory
    settings.AUDIT_SPOOL_MEMORY_BYTES = 100  # nor in memory
    delta = Delta()

    assert generate(valid_request).status_code == 200  # the pending row is on record; the reply is the client's

    assert delta("llm_gateway_audit_spool_lost_total") == 1
    assert any(r.levelname == "ERROR" and "audit outcome lost" in r.getMessage() for r in caplog.records)
    assert any("audit spool directory full" in r.getMessage() for r in caplog.records)
    assert Generation.objects.get().status == "pending"  # prune_audit's to mark, later


def test_a_refusal_that_cannot_be_kept_either_is_503(generate, valid_request, settings):
    settings.AUDIT_SPOOL_MAX_BYTES = 100
    settings.AUDIT_SPOOL_MEMORY_BYTES = 100
    with table_missing("llm_generation"):
        # Not 400: nothing of this attempt is on record, and the client must not believe it is.
        assert_error(generate({"role": 1}), 503, "audit_unavailable")


def test_memory_moves_to_files_when_the_database_is_still_down(settings, audit_spool_dir, tmp_path):
    row = Generation(status="failed", error_type="upstream_error")
    settings.AUDIT_SPOOL_DIR = str(tmp_path / "missing-parent-is-a-file" / "x")
    (tmp_path / "missing-parent-is-a-file").write_text("")
    assert audit_spool.keep(row)
    settings.AUDIT_SPOOL_DIR = str(audit_spool_dir)

    with table_missing("llm_generation"):
        result = audit_spool.replay()

    assert result.written == 0 and result.waiting == 1 and "llm_generation" in result.error
    assert [kept["pk"] for kept in spooled(audit_spool_dir)] == [str(row.pk)]  # a file outlives the process
    assert audit_spool.replay().written == 1
    assert Generation.objects.get().pk == row.pk


def test_one_process_at_a_time_replays_the_directory(audit_spool_dir):
    audit_spool.keep(Generation(status="failed", error_type="upstream_error"))
    holder = os.open(audit_spool_dir / audit_spool.LOCK_NAME, os.O_RDWR | os.O_CREAT)
    fcntl.flock(holder, fcntl.LOCK_EX)
    try:
        result = audit_spool.replay()
    finally:
        os.close(holder)

    assert result.written == 0 and "another process" in result.error
    assert Generation.objects.count() == 0
    assert audit_spool.replay().written == 1


def test_rows_the_database_can_never_take_are_set_aside_not_retried(audit_spool_dir, consumer):
    gone = Consumer.objects.create(name="deleted-meanwhile")
    orphan = Generation(status="failed", error_type="upstream_error", consumer=gone)
    audit_spool.keep(orphan)
    gone.delete()
    (audit_spool_dir / "00000000000000000001-damaged.json").write_text("[{\"model\": \"llm.generation\", ")

    result = audit_spool.replay()

    assert (result.written, result.rejected) == (1, 1)
    # As deleting a consumer does to its rows: the row stays, without its consumer.
    assert Generation.objects.get(pk=orphan.pk).consumer_id is None
    assert [p.name for p in (audit_spool_dir / "rejected").iterdir()] == ["00000000000000000001-damaged.json"]
    assert not list(audit_spool_dir.glob("*.json"))


def test_when_nothing_waits_a_look_is_one_stat(audit_spool_dir, monkeypatch):
    audit_spool.keep(Generation(status="failed", error_type="upstream_error"))
    assert audit_spool.waiting()
    assert audit_spool.replay().written == 1
    settled = time.time() - 5
    os.utime(audit_spool_dir, (settled, settled))
    audit_spool.replay()  # finds it empty, and settled
    looks = []
    monkeypatch.setattr(audit_spool.os, "scandir", lambda *a: looks.append(a) or pytest.fail("listed"))
    stat = os.stat
    monkeypatch.setattr(audit_spool.os, "stat", lambda *a, **k: looks.append(a) or stat(*a, **k))

    assert not audit_spool.waiting()
    assert len(looks) == 1

    monkeypatch.undo()
    audit_spool.keep(Generation(status="failed", error_type="upstream_error"))
    assert audit_spool.waiting()


def test_prune_audit_replays_before_it_abandons(audit_spool_dir, settings):
    long_ago = timezone.now() - timedelta(hours=2)
    row = Generation.objects.create(created_at=long_ago)
    row.succeed(output="kept while the database was down", model="qwen2.5:7b", prompt_tokens=3,
                completion_tokens=5, upstream_ms=10, latency_ms=12, save=False)
    audit_spool.keep(row)

    call_command("prune_audit", "--older-than", "30d", stdout=open(os.devnull, "w"))

    row.refresh_from_db()
    assert (row.status, row.output, row.completion_tokens) == ("succeeded", "kept while the database was down", 5)


def test_the_server_replays_periodically(gateway, settings, audit_spool_dir):
    settings.AUDIT_SPOOL_REPLAY_SECONDS = 0.1
    row = Generation(status="failed", error_type="upstream_error")
    audit_spool.keep(row)

    with gateway.client() as client:
        assert client.get("/healthz").status_code == 200  # the first request starts the replay

    assert wait_for(lambda: Generation.objects.filter(pk=row.pk).exists(), timeout=5)
    assert wait_for(lambda: not list(audit_spool_dir.glob("*.json")), timeout=5)


def test_before_exit_memory_goes_to_the_directory_or_is_counted_lost(settings, audit_spool_dir, tmp_path):
    (tmp_path / "a-file").write_text("")
    settings.AUDIT_SPOOL_DIR = str(tmp_path / "a-file" / "spool")
    first, second = Generation(status="failed", error_type="x"), Generation(status="failed", error_type="y")
    audit_spool.keep(first)
    settings.AUDIT_SPOOL_DIR = str(audit_spool_dir)
    with table_missing("llm_generation"):
        audit_spool.before_exit()  # the database is down: into the directory, which takes it now
    assert [kept["pk"] for kept in spooled(audit_spool_dir)] == [str(first.pk)]

    settings.AUDIT_SPOOL_DIR = str(tmp_path / "a-file" / "spool")
    audit_spool.keep(second)
    delta = Delta()
    with table_missing("llm_generation"):
        audit_spool.before_exit()
    assert delta("llm_gateway_audit_spool_lost_total") == 1
    assert not audit_spool.waiting()
