"""The usage rollup: rollup_usage folds finished hours idempotently; percentiles come from histogram buckets."""

from datetime import datetime, timedelta, timezone as dt_timezone
from io import StringIO

import pytest
from django.core.management import call_command
from django.utils import timezone

from llm import usage
from llm.models import LATENCY_BOUNDS_MS, Consumer, Generation, UsageHour

pytestmark = pytest.mark.django_db


def rollup():
    out = StringIO()
    call_command("rollup_usage", stdout=out)
    return out.getvalue()


def make(created_at, *, latency=100.0, status="succeeded", consumer=None, model="qwen2.5:7b", tokens=(10, 5)):
    return Generation.objects.create(created_at=created_at, status=status, consumer=consumer, model=model,
                                     latency_ms=latency, prompt_tokens=tokens[0], completion_tokens=tokens[1])


def test_folds_finished_hours_once_and_again_changes_nothing():
    team = Consumer.objects.create(name="team")
    hour = usage.floor_hour(timezone.now()) - timedelta(hours=3)
    make(hour + timedelta(minutes=1), consumer=team, latency=80)
    make(hour + timedelta(minutes=59), consumer=team, latency=900, status="failed", tokens=(7, 0))
    make(hour + timedelta(minutes=5), model="llama3.2:3b")

    first = rollup()
    rows = {(r.consumer_id, r.model): r for r in UsageHour.objects.all()}
    assert "Folded" in first and first.count("\n") == 1
    assert len(rows) == 2
    mine = rows[(team.pk, "qwen2.5:7b")]
    assert (mine.hour, mine.requests, mine.succeeded, mine.failed) == (hour, 2, 1, 1)
    assert (mine.prompt_tokens, mine.completion_tokens, mine.latency_count, mine.latency_sum_ms) == (17, 5, 2, 980)
    assert sum(mine.latency_buckets) == 2 and len(mine.latency_buckets) == len(LATENCY_BOUNDS_MS) + 1

    def snapshot():
        return [(r.hour, r.consumer_id, r.model, r.requests, r.latency_buckets)
                for r in UsageHour.objects.order_by("model")]

    before = snapshot()
    assert rollup().startswith("Folded 0 hours")
    assert snapshot() == before
    # Recounting the same hours from the same rows gives the same rollup, not twice the counts.
    call_command("rollup_usage", "--rebuild-since", f"{hour:%Y-%m-%d}", stdout=StringIO())
    assert snapshot() == before


def test_the_current_hour_waits_until_no_request_in_it_can_still_finish(settings):
    settings.GENERATION_DEADLINE = 300
    now = timezone.now()
    make(now - timedelta(seconds=10))
    rollup()
    assert not UsageHour.objects.filter(hour=usage.floor_hour(now)).exists()
    assert usage.folded_until() <= now - timedelta(seconds=360)


def test_the_dashboard_adds_the_rows_not_folded_yet():
    now = timezone.now()
    make(now - timedelta(days=2))
    rollup()
    make(now - timedelta(seconds=5))  # after the last folded hour

    shown = usage.usage(now=now)
    assert shown.total_30d.requests == 2
    assert shown.total_24h.requests == 1
    assert shown.hours[-1][1].requests == 1


def test_filters_narrow_to_a_consumer_and_a_model():
    team, other = Consumer.objects.create(name="team"), Consumer.objects.create(name="other")
    now = timezone.now()
    make(now - timedelta(hours=5), consumer=team)
    make(now - timedelta(hours=5), consumer=other, model="llama3.2:3b")
    make(now - timedelta(minutes=1), consumer=team, model="llama3.2:3b")
    rollup()

    assert usage.usage(now=now).total_24h.requests == 3
    assert usage.usage(now=now, consumer_id=team.pk).total_24h.requests == 2
    assert usage.usage(now=now, model="llama3.2:3b").total_24h.requests == 2
    assert usage.usage(now=now, consumer_id=team.pk, model="llama3.2:3b").total_24h.requests == 1


def test_percentiles_are_read_from_the_buckets():
    buckets = [0] * (len(LATENCY_BOUNDS_MS) + 1)
    buckets[LATENCY_BOUNDS_MS.index(1000)] = 100  # 100 requests between 500 and 1000 ms
    assert usage.percentile(buckets, 0.5) == pytest.approx(750)
    assert usage.percentile(buckets, 0.95) == pytest.approx(975)

    buckets[-1] = 100  # and 100 slower than the last bound
    assert usage.percentile(buckets, 0.5) == pytest.approx(1000)
    assert usage.percentile(buckets, 0.95) == LATENCY_BOUNDS_MS[-1]  # "at least"
    assert usage.percentile([0] * len(buckets), 0.5) is None


def test_percentiles_across_hours_add_the_histograms_not_the_percentiles():
    hour = usage.floor_hour(timezone.now()) - timedelta(hours=4)
    for _ in range(9):
        make(hour + timedelta(minutes=1), latency=40)  # a busy, fast hour
    make(hour + timedelta(hours=1, minutes=1), latency=7000)  # a quiet, slow one
    rollup()

    day = usage.usage().total_24h
    assert day.p50 == pytest.approx(25 + 25 * 5 / 9)  # inside the 25–50 ms bucket: 9 of 10 requests are there
    assert 4000 < day.p95 <= 8000


def test_first_run_backfills_from_the_oldest_row():
    old = datetime(2025, 1, 1, 12, 30, tzinfo=dt_timezone.utc)
    make(old)
    out = rollup()
    assert UsageHour.objects.get().hour == datetime(2025, 1, 1, 12, tzinfo=dt_timezone.utc)
    assert int(out.split()[1]) > 24 * 300


def test_without_the_rollup_the_dashboard_counts_a_bounded_window_and_says_what_is_missing(client, staff_user):
    now = timezone.now()
    make(now - timedelta(days=3))  # only in a rollup that was never run
    make(now - timedelta(minutes=10))

    shown = usage.usage(now=now)
    assert shown.total_30d.requests == 1
    assert shown.missing == (None, now - usage.LIVE_WINDOW)

    client.force_login(staff_user)
    html = client.get("/admin/llm/generation/usage/").content.decode()
    assert "The usage rollup is empty" in html and "rollup_usage" in html

    rollup()
    shown = usage.usage(now=now)
    assert shown.total_30d.requests == 2 and shown.missing is None
    assert "The usage rollup" not in client.get("/admin/llm/generation/usage/").content.decode()
