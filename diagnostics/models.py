"""The history of connection checks: one row per run, whoever ran it and from where."""

from django.conf import settings
from django.db import models
from django.utils import timezone


class ConnectionCheck(models.Model):
    """One run of the Ollama connection check: who, when, against what, the outcome and the full report."""

    class Origin(models.TextChoices):
        ADMIN = "admin"
        API = "api"
        COMMAND = "command"

    created_at = models.DateTimeField(default=timezone.now, db_index=True)
    user = models.ForeignKey(settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL,
                             related_name="+")
    # Kept apart from `user` so the history still says who ran a check after the account is deleted.
    username = models.CharField(max_length=150, blank=True)
    origin = models.CharField(max_length=16, choices=Origin.choices)
    target_url = models.CharField(max_length=500, help_text="The Ollama base URL checked, password masked.")
    source = models.CharField(max_length=16, blank=True, help_text="Where that URL came from.")
    model = models.CharField(max_length=200, blank=True)
    generation = models.BooleanField(default=False, help_text="Whether a test generation was asked for.")
    ok = models.BooleanField()
    cause = models.CharField(max_length=32, blank=True, db_index=True)
    cause_message = models.TextField(blank=True)
    elapsed_ms = models.FloatField()
    timings = models.JSONField(default=dict, help_text="Milliseconds per step.")
    report = models.JSONField(help_text="The full report, as `check_ollama --json` prints it.")

    class Meta:
        ordering = ["-created_at", "-id"]

    def __str__(self):
        outcome = "OK" if self.ok else self.cause
        return f"{self.target_url} {outcome} ({self.created_at:%Y-%m-%d %H:%M:%S})"
