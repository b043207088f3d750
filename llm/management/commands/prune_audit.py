"""Delete old audit rows in batches, after marking dead pending rows abandoned and folding hours into the rollup."""

import re
from datetime import timedelta

from django.conf import settings
from django.core.management.base import BaseCommand, CommandError

from llm import retention

UNITS = {"d": "days", "h": "hours", "m": "minutes"}


def parse_age(text: str) -> timedelta:
    match = re.fullmatch(r"\s*(\d+)\s*([dhm]?)\s*", text)
    if not match or int(match[1]) <= 0:
        raise CommandError(f"--older-than {text!r}: expected a positive age such as 30d, 12h or 90m")
    return timedelta(**{UNITS[match[2] or "d"]: int(match[1])})


class Command(BaseCommand):
    help = ("Mark generations left pending by a dead process abandoned, fold finished hours into the usage "
            "rollup, then delete generations and connection checks older than AUDIT_RETENTION_DAYS "
            "(0: keep everything) or --older-than. Prompt template versions are never deleted.")

    def add_arguments(self, parser):
        parser.add_argument("--older-than", metavar="AGE",
                            help="e.g. 30d, 12h, 90m (a bare number is days); default: AUDIT_RETENTION_DAYS")
        parser.add_argument("--dry-run", action="store_true", help="count what would change; change nothing")
        parser.add_argument("--batch-size", type=int, default=retention.BATCH_SIZE,
                            help=f"rows per DELETE transaction (default {retention.BATCH_SIZE})")

    def handle(self, *args, older_than=None, dry_run=False, batch_size=retention.BATCH_SIZE, **options):
        if batch_size < 1:
            raise CommandError("--batch-size must be at least 1")
        if older_than is not None:
            age = parse_age(older_than)
        elif settings.AUDIT_RETENTION_DAYS:
            age = timedelta(days=settings.AUDIT_RETENTION_DAYS)
        else:
            age = None
        result = retention.prune(older_than=age, dry_run=dry_run, batch_size=batch_size)

        if age is None:
            scope = "AUDIT_RETENTION_DAYS=0: nothing deleted"
        else:
            before = f"created before {result.cutoff:%Y-%m-%d %H:%M} UTC"
            if dry_run:
                scope = f"would delete {result.generations} generations and {result.checks} connection checks {before}"
            else:
                scope = (f"deleted {result.generations} generations and {result.checks} connection checks {before} "
                         f"in {result.batches} batches")
                if result.tool_sets:
                    scope += f", and {result.tool_sets} tool sets no generation offers any more"
        if dry_run:
            line = f"Dry run: would mark {result.abandoned} pending generations abandoned; {scope}."
        else:
            replayed = f"Replayed {result.replayed} kept outcomes from the audit spool; " if result.replayed else ""
            line = (f"{replayed}Marked {result.abandoned} pending generations abandoned; folded {result.folded_hours} hours "
                    f"into the usage rollup; {scope} ({result.seconds:.1f} s).")
        self.stdout.write(line)
