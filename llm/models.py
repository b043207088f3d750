"""The audit log: one Generation row per attempt to generate, whatever its outcome."""

import uuid

from django.db import models
from django.utils import timezone


class Generation(models.Model):
    """One generation attempt: what was asked, what was sent upstream, what came back, and how long it took.

    Written as `pending` before the provider is called and completed afterwards, so a process killed
    mid-request leaves a `pending` row rather than nothing.
    """

    class Status(models.TextChoices):
        PENDING = "pending"
        SUCCEEDED = "succeeded"
        FAILED = "failed"

    # Lengths the columns truncate to; the request as received keeps the full values.
    SHORT = 200

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    created_at = models.DateTimeField(default=timezone.now, db_index=True)
    finished_at = models.DateTimeField(null=True, blank=True)
    status = models.CharField(max_length=16, choices=Status.choices, default=Status.PENDING, db_index=True)
    http_status = models.PositiveSmallIntegerField(null=True, blank=True)

    role = models.CharField(max_length=SHORT, blank=True, db_index=True)
    task = models.CharField(max_length=SHORT, blank=True, db_index=True)
    mode = models.CharField(max_length=8, blank=True, db_index=True)
    provider = models.CharField(max_length=16, blank=True, db_index=True)
    model = models.CharField(max_length=SHORT, blank=True, db_index=True)

    request = models.JSONField(null=True, blank=True, help_text="The request body as received, if it was JSON.")
    request_bytes = models.PositiveIntegerField(default=0)
    prompt = models.JSONField(null=True, blank=True, help_text="The chat messages sent to the provider.")
    output = models.JSONField(null=True, blank=True, help_text="An object in json mode, a string in text mode.")
    raw_output = models.TextField(blank=True, help_text="The provider's reply text when it could not be used.")

    error_type = models.CharField(max_length=32, blank=True, db_index=True)
    error_message = models.TextField(blank=True)

    prompt_tokens = models.PositiveIntegerField(null=True, blank=True)
    completion_tokens = models.PositiveIntegerField(null=True, blank=True)
    latency_ms = models.FloatField(null=True, blank=True, help_text="Total time in the gateway.")
    upstream_ms = models.FloatField(null=True, blank=True, help_text="Time spent waiting for the provider.")

    client_ip = models.GenericIPAddressField(null=True, blank=True)
    user_agent = models.CharField(max_length=512, blank=True)

    class Meta:
        ordering = ["-created_at"]
        indexes = [models.Index(fields=["status", "-created_at"], name="generation_status_created")]

    def __str__(self):
        return f"{self.role or '?'}/{self.task or '?'} {self.status} ({self.id})"

    def succeed(self, *, output, model: str, prompt_tokens, completion_tokens, upstream_ms: float, latency_ms: float):
        """Record a successful reply."""
        self.status = self.Status.SUCCEEDED
        self.http_status = 200
        self.output = output
        self.model = model[: self.SHORT]
        self.prompt_tokens = prompt_tokens
        self.completion_tokens = completion_tokens
        self.upstream_ms = upstream_ms
        self._finish(latency_ms)

    def fail(self, *, error_type: str, message: str, http_status: int, latency_ms: float,
             upstream_ms: float | None = None, raw_output: str = ""):
        """Record a failed attempt with the error the client was answered with."""
        self.status = self.Status.FAILED
        self.http_status = http_status
        self.error_type = error_type
        self.error_message = message
        self.upstream_ms = upstream_ms
        self.raw_output = raw_output
        self._finish(latency_ms)

    def _finish(self, latency_ms: float):
        self.latency_ms = latency_ms
        self.finished_at = timezone.now()
        if self._state.adding:
            self.save(force_insert=True)
        else:
            self.save()
