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
                            help=f"rows per DELETE (or --strip-content UPDATE) transaction "
                                 f"(default {retention.BATCH_SIZE})")
        parser.add_argument("--strip-content", action="store_true",
                            help="only this: replace the content of --consumer's rows by HMACs and lengths, as a "
                                 "metadata-only consumer's rows keep it; the rows stay. Nothing is deleted")
        parser.add_argument("--consumer", metavar="NAME", help="the consumer whose rows --strip-content strips")

    def handle(self, *args, older_than=None, dry_run=False, batch_size=retention.BATCH_SIZE, strip_content=False,
               consumer=None, **options):
        if batch_size < 1:
            raise CommandError("--batch-size must be at least 1")
        if strip_content or consumer is not None:
            self._strip_content(consumer, batch_size, dry_run=dry_run, older_than=older_than)
            return
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

    def _strip_content(self, name, batch_size: int, *, dry_run: bool, older_than) -> None:
        from llm.models import Consumer, Generation

        if name is None:
            raise CommandError("--strip-content needs --consumer NAME: the consumer whose rows are stripped")
        if older_than is not None:
            raise CommandError("--strip-content strips every row of the consumer that holds content; "
                               "--older-than does not apply")
        try:
            consumer = Consumer.objects.get(name=name)
        except Consumer.DoesNotExist:
            raise CommandError(f"--consumer: there is no consumer named {name!r}") from None
        if dry_run:
            count = Generation.objects.filter(consumer=consumer, content_stored=True).count()
            self.stdout.write(f"Dry run: would strip the content of {count} generations of consumer {name!r}.")
            return
        result = retention.strip_content(consumer=consumer, batch_size=batch_size)
        line = (f"Stripped the content of {result.generations} generations of consumer {name!r} in "
                f"{result.batches} batches; HMACs and lengths kept in its place")
        if result.tool_sets:
            line += f"; deleted {result.tool_sets} tool sets no generation offers any more"
        line += f" ({result.seconds:.1f} s)."
        if result.skipped_pending:
            line += (f" {result.skipped_pending} pending generations were left: run it again once they have "
                     "finished.")
        if not consumer.metadata_only:
            line += " The consumer is not metadata only: its new generations still store their content."
        self.stdout.write(line)
