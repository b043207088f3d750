"""prune_audit: dead pending rows become abandoned, old rows go in batches after the rollup counted them."""

from datetime import timedelta

import pytest
from django.core.management import CommandError, call_command
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.utils import timezone

from diagnostics.models import ConnectionCheck
from llm import retention, usage
from llm.models import Generation, PromptTemplateVersion, UsageHour

pytestmark = pytest.mark.django_db


def make(age: timedelta, status="succeeded", **fields):
    return Generation.objects.create(created_at=timezone.now() - age, status=status, model="qwen2.5:7b",
                                     latency_ms=120.0 if status != "pending" else None, **fields)


def check(age: timedelta):
    return ConnectionCheck.objects.create(created_at=timezone.now() - age, origin="command", target_url="http://x",
                                          ok=True, elapsed_ms=1.0, report={})


def prune(*args):
    from io import StringIO

    out = StringIO()
    call_command("prune_audit", *args, stdout=out)
    return out.getvalue()


def test_deletes_generations_and_checks_older_than_the_age_given(make_template):
    version = make_template()
    old = [make(timedelta(days=40), template_version=version) for _ in range(3)]
    recent = make(timedelta(days=5), template_version=version)
    check(timedelta(days=40)), check(timedelta(days=1))

    out = prune("--older-than", "30d")

    assert list(Generation.objects.all()) == [recent]
    assert ConnectionCheck.objects.count() == 1
    assert out.startswith("Marked 0 pending generations abandoned; folded ")
    assert "deleted 3 generations and 1 connection checks created before" in out
    assert out.count("\n") == 1
    # The versions those rows used are never deleted.
    assert PromptTemplateVersion.objects.filter(pk=version.pk).exists()
    assert all(not Generation.objects.filter(pk=row.pk).exists() for row in old)


def test_dry_run_counts_and_changes_nothing():
    make(timedelta(days=40)), make(timedelta(days=40)), make(timedelta(days=1))
    stale = make(timedelta(hours=2), status="pending")
    check(timedelta(days=40))

    out = prune("--older-than", "30d", "--dry-run")

    assert out == ("Dry run: would mark 1 pending generations abandoned; would delete 2 generations and 1 "
                   f"connection checks created before {(timezone.now() - timedelta(days=30)):%Y-%m-%d} "
                   f"{out.split(' UTC')[0][-5:]} UTC.\n")
    assert Generation.objects.count() == 4 and ConnectionCheck.objects.count() == 1
    stale.refresh_from_db()
    assert stale.status == "pending"
    assert not UsageHour.objects.exists()


def test_retention_setting_is_the_default_and_zero_keeps_everything(settings):
    make(timedelta(days=100)), make(timedelta(days=10))
    settings.AUDIT_RETENTION_DAYS = 0
    assert "AUDIT_RETENTION_DAYS=0: nothing deleted" in prune()
    assert Generation.objects.count() == 2

    settings.AUDIT_RETENTION_DAYS = 90
    assert "deleted 1 generations" in prune()
    assert Generation.objects.count() == 1


def test_deletes_in_batches_each_a_bounded_statement():
    for _ in range(5):
        make(timedelta(days=40))

    with CaptureQueriesContext(connection) as queries:
        out = prune("--older-than", "30d", "--batch-size", "2")

    assert "deleted 5 generations and 0 connection checks" in out and "in 3 batches" in out
    deletes = [q["sql"] for q in queries if q["sql"].startswith('DELETE FROM "llm_generation"')]
    assert len(deletes) == 4  # 2 + 2 + 1, then one that finds nothing
    assert all("LIMIT 2" in sql for sql in deletes)


def test_pending_rows_older_than_the_longest_request_become_abandoned(settings):
    settings.GENERATION_DEADLINE = 300
    dead = make(timedelta(seconds=300 + 61), status="pending")
    in_flight = make(timedelta(seconds=300 + 30), status="pending")  # within the deadline's margin
    done = make(timedelta(hours=1))

    out = prune("--older-than", "30d")

    assert out.startswith("Marked 1 pending generations abandoned;")
    dead.refresh_from_db(), in_flight.refresh_from_db(), done.refresh_from_db()
    assert dead.status == "abandoned" and dead.error_type == "abandoned" and "process" in dead.error_message
    assert in_flight.status == "pending" and done.status == "succeeded"
    # Abandoned rows are kept until they age out like any other: never deleted unseen.
    assert Generation.objects.filter(status="abandoned").count() == 1


def test_a_row_completed_meanwhile_keeps_its_outcome():
    row = make(timedelta(hours=1), status="pending")
    original = Generation.objects.filter

    def complete_first(*args, **kwargs):
        if "pk__in" in kwargs:  # between the SELECT of stale ids and their UPDATE
            Generation.objects.filter(pk=row.pk).update(status="succeeded")
        return original(*args, **kwargs)

    Generation.objects.filter = complete_first
    try:
        assert retention.abandon_stale(now=timezone.now()) == 0
    finally:
        Generation.objects.filter = original
    row.refresh_from_db()
    assert row.status == "succeeded"


def test_rows_are_counted_in_the_rollup_before_they_go_and_the_counts_stay():
    for _ in range(3):
        make(timedelta(days=40))
    make(timedelta(days=40), status="failed", error_type="upstream_error")

    prune("--older-than", "30d")

    assert not Generation.objects.exists()
    counted = UsageHour.objects.get()
    assert (counted.requests, counted.succeeded, counted.failed) == (4, 3, 1)
    # And the dashboard still shows them (over 60 days, as if it looked back that far).
    shown = usage.usage(days=60)
    assert shown.total_30d.requests == 4


def test_rows_not_counted_yet_are_never_deleted():
    recent = make(timedelta(minutes=2))  # inside the hour rollup_usage has not closed

    prune("--older-than", "1m")

    assert Generation.objects.filter(pk=recent.pk).exists()


def test_a_rebuild_never_recounts_hours_that_were_pruned():
    make(timedelta(days=40)), make(timedelta(days=40))
    prune("--older-than", "30d")
    before = list(UsageHour.objects.values_list("hour", "requests"))

    call_command("rollup_usage", "--rebuild-since", "2000-01-01", stdout=open("/dev/null", "w"))

    assert list(UsageHour.objects.values_list("hour", "requests")) == before


@pytest.mark.parametrize("age", ["0d", "thirty", "-3d", "5w"])
def test_bad_ages_are_refused(age):
    with pytest.raises(CommandError, match="expected a positive age"):
        prune(f"--older-than={age}")
