"""manage.py create_api_key NAME: issue an API key for a consumer (created if new); the key is the last line."""

import argparse
from datetime import timedelta

from django.core.management.base import BaseCommand, CommandError
from django.db import transaction
from django.utils import timezone

from llm import admission, api_keys
from llm.models import Consumer
from llm.request_rules import model_name_problem


DEFAULT = "default"


def _cap(value: str):
    """--max-concurrent: a whole number, 0 or more, or 'default'."""
    if value.strip().lower() == DEFAULT:
        return DEFAULT
    try:
        number = int(value)
    except ValueError:
        number = -1
    if number < 0:
        raise argparse.ArgumentTypeError("must be 0 (no cap), a positive number, or 'default'")
    return number


NO_LIMIT = ("", "none")


def _budget(value: str):
    """--tokens-per-day / --tokens-per-month: a whole number, 0 or more, or 'none' (no limit)."""
    if value.strip().lower() in NO_LIMIT:
        return NO_LIMIT[1]
    try:
        number = int(value)
    except ValueError:
        number = -1
    if number < 0:
        raise argparse.ArgumentTypeError("must be 0 (everything refused), a positive number, or 'none' (no limit)")
    return number


class Command(BaseCommand):
    help = "Issue an API key for the named consumer, creating the consumer if needed. The key is printed once."

    def add_arguments(self, parser):
        parser.add_argument("name", help="the consumer: a team or service, e.g. marketing-site")
        parser.add_argument("--expires-in-days", type=int, metavar="DAYS",
                            help="refuse the key after this many days (default: never)")
        parser.add_argument("--rate-limit", type=int, metavar="PER_MINUTE",
                            help="set the consumer's own generations per minute (0: unlimited)")
        parser.add_argument("--max-concurrent", type=_cap, metavar="N",
                            help="generations the consumer may have in flight at once, across processes with "
                                 "Redis, else per gateway process "
                                 "(0: no cap; 'default': DEFAULT_MAX_CONCURRENT, as for a new consumer)")
        parser.add_argument("--tokens-per-day", type=_budget, metavar="N",
                            help="the consumer's token budget per UTC day, prompt plus completion (0: everything "
                                 "refused; 'none': no limit)")
        parser.add_argument("--tokens-per-month", type=_budget, metavar="N",
                            help="its token budget per UTC month (0: everything refused; 'none': no limit)")
        parser.add_argument("--models", metavar="A,B",
                            help="limit the consumer to these models (comma-separated; '' lifts the limit)")
        parser.add_argument("--templates-only", action="store_true",
                            help="bar the consumer from raw prompts: native template API only, no OpenAI- or "
                                 "Ollama-compatible chat")
        parser.add_argument("--no-content", action="store_true",
                            help="metadata only: the consumer's new generations keep an HMAC and a length in place "
                                 "of their content (prompts, outputs, tool calls, end user, client IP)")

    def handle(self, *args, name, expires_in_days, rate_limit, max_concurrent=None, models=None,
               templates_only=False, no_content=False, tokens_per_day=None, tokens_per_month=None, **options):
        name = name.strip()
        if not name or len(name) > Consumer._meta.get_field("name").max_length:
            raise CommandError("NAME must be 1 to 100 characters.")
        if expires_in_days is not None and expires_in_days < 1:
            raise CommandError("--expires-in-days must be at least 1.")
        if rate_limit is not None and rate_limit < 0:
            raise CommandError("--rate-limit must be 0 (unlimited) or more.")
        if models is not None:
            for model in (m.strip() for m in models.split(",") if m.strip()):
                problem = model_name_problem(model)
                if problem:
                    raise CommandError(f"--models: {model!r}: {problem}")
        expires_at = timezone.now() + timedelta(days=expires_in_days) if expires_in_days else None
        with transaction.atomic():
            consumer, created = Consumer.objects.get_or_create(name=name)
            if rate_limit is not None:
                consumer.rate_limit_per_minute = rate_limit
                consumer.save(update_fields=["rate_limit_per_minute"])
            if max_concurrent is not None:
                consumer.max_concurrent = None if max_concurrent == DEFAULT else max_concurrent
                consumer.save(update_fields=["max_concurrent"])
            for field, value in (("tokens_per_day", tokens_per_day), ("tokens_per_month", tokens_per_month)):
                if value is not None:
                    setattr(consumer, field, None if value == NO_LIMIT[1] else value)
                    consumer.save(update_fields=[field])
            if models is not None:
                consumer.allowed_models = list(dict.fromkeys(m.strip() for m in models.split(",") if m.strip()))
                consumer.save(update_fields=["allowed_models"])
            if templates_only:
                consumer.templates_only = True
                consumer.save(update_fields=["templates_only"])
            if no_content:
                consumer.metadata_only = True
                consumer.save(update_fields=["metadata_only"])
            key, raw = api_keys.issue_key(consumer, expires_at=expires_at)
        if not consumer.is_active:
            self.stderr.write(f"Warning: consumer {name!r} is disabled; its keys are refused until it is enabled.")
        self.stdout.write(f"{'Created consumer' if created else 'Consumer'} {name!r}; "
                          f"new API key gw_{key.prefix}… "
                          + (f"expires {expires_at:%Y-%m-%d %H:%M} UTC." if expires_at else "does not expire."))
        cap, named = admission.concurrency_cap(consumer)
        if cap:
            where = "across every gateway process" if admission.caps_shared() else "per gateway process"
            self.stdout.write(f"At most {cap} generations in flight at once, {where} ({named}).")
        else:
            self.stdout.write(f"No cap on generations in flight at once ({named}=0).")
        for budget, window in ((consumer.tokens_per_day, "UTC day"), (consumer.tokens_per_month, "UTC month")):
            if budget is not None:
                self.stdout.write(f"Token budget: {budget} tokens per {window}, prompt plus completion.")
        if consumer.allowed_models:
            self.stdout.write(f"Models it may use: {', '.join(consumer.allowed_models)}.")
        if consumer.templates_only:
            self.stdout.write("Prompt templates only: no raw prompts through the OpenAI or Ollama endpoints.")
        if consumer.metadata_only:
            self.stdout.write("Metadata only: its generations' content is not stored, only an HMAC and a length "
                              "(prune_audit --strip-content --consumer NAME strips rows written before).")
        self.stdout.write("Store it now: it is not shown again. Send it as 'Authorization: Bearer <key>'.")
        self.stdout.write(raw)
