"""manage.py content_hmac TEXT: the HMAC a metadata-only row keeps for that text, to check whether it was sent."""

import json as json_module
import sys

from django.core.management.base import BaseCommand, CommandError

from llm import content_hmac


class Command(BaseCommand):
    help = ("Print the HMAC-SHA-256 and length that a metadata-only consumer's rows keep for a known value, to compare "
            "with a row's content_hmac. A text (an end user, an output, a client IP) is hashed as it is; with --json, "
            "the value is read as JSON (messages, tool calls, a request body) and hashed as canonical JSON.")

    def add_arguments(self, parser):
        parser.add_argument("value", nargs="?", help="the text; '-' or none: read it from standard input")
        parser.add_argument("--json", action="store_true", help="the value is JSON (e.g. the messages sent)")

    def handle(self, *args, value=None, json=False, **options):
        text = sys.stdin.read() if value in (None, "-") else value
        if json:
            try:
                parsed = _loads(text)
            except ValueError as exc:
                raise CommandError(f"--json: not JSON ({exc})") from None
        else:
            parsed = text
        digest = content_hmac.digest(parsed)
        self.stdout.write(f"hmac_sha256 {digest['hmac_sha256']} length {digest['length']}")


def _loads(text: str):
    return json_module.loads(text)
