"""API consumers and their keys, and the audit log: one Generation row per attempt to generate."""

import uuid

from django.db import models
from django.utils import timezone


class Consumer(models.Model):
    """A team or service that calls the API with its own keys and its own rate limit."""

    name = models.CharField(max_length=100, unique=True)
    rate_limit_per_minute = models.PositiveIntegerField(
        null=True, blank=True,
        help_text="Generations per minute; empty: the global RATE_LIMIT_PER_MINUTE; 0: unlimited.")
    is_active = models.BooleanField(default=True, help_text="An inactive consumer's keys are all refused.")
    created_at = models.DateTimeField(default=timezone.now)

    # DRF's request.user for a request authenticated by one of this consumer's keys.
    is_authenticated = True

    class Meta:
        ordering = ["name"]

    def __str__(self):
        return self.name


class ApiKey(models.Model):
    """A consumer's API key. Only its SHA-256 is stored; the key itself is shown once, when it is created."""

    PREFIX_LENGTH = 8

    consumer = models.ForeignKey(Consumer, on_delete=models.CASCADE, related_name="api_keys")
    prefix = models.CharField(max_length=PREFIX_LENGTH, db_index=True, editable=False,
                              help_text="The key's first characters after gw_: enough to tell keys apart.")
    # A random 256-bit key needs no slow password hash: SHA-256 cannot be reversed or brute-forced for it,
    # and it is checked on every request.
    hash = models.CharField(max_length=64, unique=True, editable=False)
    created_at = models.DateTimeField(default=timezone.now, editable=False)
    expires_at = models.DateTimeField(null=True, blank=True, help_text="Refused from then on; empty: never.")
    revoked_at = models.DateTimeField(null=True, blank=True, editable=False)
    last_used_at = models.DateTimeField(null=True, blank=True, editable=False)

    class Meta:
        ordering = ["-created_at"]
        verbose_name = "API key"

    def __str__(self):
        return f"gw_{self.prefix}… ({self.consumer})"

    def refusal(self, now) -> str | None:
        """Why this key may not be used now, or None."""
        if self.revoked_at is not None:
            return "The API key has been revoked."
        if self.expires_at is not None and self.expires_at <= now:
            return "The API key has expired."
        if not self.consumer.is_active:
            return "The API key's consumer is disabled."
        return None


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
    # SET_NULL: deleting a consumer must not delete its history; api_key_prefix still tells whose it was.
    consumer = models.ForeignKey(Consumer, null=True, blank=True, on_delete=models.SET_NULL,
                                 related_name="generations")
    api_key_prefix = models.CharField(max_length=ApiKey.PREFIX_LENGTH, blank=True, db_index=True)
    attempts = models.PositiveSmallIntegerField(default=0, help_text="Calls made to the provider, retries included.")

    class Meta:
        ordering = ["-created_at"]
        indexes = [models.Index(fields=["status", "-created_at"], name="generation_status_created")]

    def __str__(self):
        return f"{self.role or '?'}/{self.task or '?'} {self.status} ({self.id})"

    def succeed(self, *, output, model: str, prompt_tokens, completion_tokens, upstream_ms: float, latency_ms: float,
                attempts: int = 1):
        """Record a successful reply."""
        self.status = self.Status.SUCCEEDED
        self.attempts = attempts
        self.http_status = 200
        self.output = output
        self.model = model[: self.SHORT]
        self.prompt_tokens = prompt_tokens
        self.completion_tokens = completion_tokens
        self.upstream_ms = upstream_ms
        self._finish(latency_ms)

    def fail(self, *, error_type: str, message: str, http_status: int, latency_ms: float,
             upstream_ms: float | None = None, raw_output: str = "", attempts: int = 0):
        """Record a failed attempt with the error the client was answered with."""
        self.status = self.Status.FAILED
        self.attempts = attempts
        self.http_status = http_status
        self.error_type = error_type
        self.error_message = message
        self.upstream_ms = upstream_ms
        self.raw_output = raw_output
        self._finish(latency_ms)

    # What completing a pending row changes. Saving only these keeps the request and prompt JSON, written
    # with the pending row, from being serialised and sent again (measured: ~0.3 ms per request).
    OUTCOME_FIELDS = ("status", "attempts", "http_status", "output", "model", "prompt_tokens", "completion_tokens",
                      "upstream_ms", "error_type", "error_message", "raw_output", "latency_ms", "finished_at")

    def _finish(self, latency_ms: float):
        self.latency_ms = latency_ms
        self.finished_at = timezone.now()
        if self._state.adding:
            self.save(force_insert=True)
        else:
            self.save(update_fields=self.OUTCOME_FIELDS)
