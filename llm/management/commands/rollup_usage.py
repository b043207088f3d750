"""Fold finished hours of the audit log into the usage rollup the dashboard reads: run it every minute."""

from datetime import datetime, timezone as dt_timezone

from django.core.management.base import BaseCommand, CommandError
from django.utils import timezone

from llm import retention, usage


class Command(BaseCommand):
    help = ("Count every hour whose generations can no longer change (it ended more than GENERATION_DEADLINE + "
            f"{retention.DEADLINE_MARGIN.seconds} s ago) into the usage rollup, marking rows left pending by a "
            "dead process abandoned first. Idempotent: run it from cron every minute.")

    def add_arguments(self, parser):
        parser.add_argument("--rebuild-since", metavar="YYYY-MM-DD",
                            help="recount the hours from this UTC day on (hours whose rows were pruned are kept)")

    def handle(self, *args, rebuild_since=None, **options):
        now = timezone.now()
        abandoned = retention.abandon_stale(now=now)
        if rebuild_since:
            try:
                since = datetime.strptime(rebuild_since, "%Y-%m-%d").replace(tzinfo=dt_timezone.utc)
            except ValueError:
                raise CommandError(f"--rebuild-since {rebuild_since!r}: expected a date such as 2026-01-31") from None
            hours = usage.rebuild(since=since, until=now - retention.longest_request())
        else:
            hours = retention.fold_finished(now=now)
        until = usage.folded_until()
        shown = f"{until:%Y-%m-%d %H:%M} UTC" if until else "nothing yet"
        self.stdout.write(f"Folded {hours} hours into the usage rollup (complete until {shown}); "
                          f"marked {abandoned} pending generations abandoned.")
