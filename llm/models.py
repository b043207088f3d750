"""Prompt templates with their immutable versions, API consumers and their keys, and the audit log.

The audit log holds one Generation row per attempt to generate.
"""

import hashlib
import json
import uuid
from contextlib import contextmanager

from django.conf import settings
from django.core.exceptions import ValidationError
from django.core.validators import RegexValidator
from django.db import models
from django.utils import timezone

from llm import prompts
from llm.content_hmac import digests as content_digests
from llm.output_schema import schema_problem
from llm.request_rules import OllamaOptionsSerializer

identifier = RegexValidator(r"^[a-z][a-z0-9_]*\Z", "Use lower-case letters, digits and _, starting with a letter.")


class PromptTemplate(models.Model):
    """What a (role, task) pair is: its versions hold the prompt text, model routing and output schema."""

    role = models.CharField(max_length=100, validators=[identifier], help_text="e.g. copywriter")
    task = models.CharField(max_length=100, validators=[identifier], help_text="e.g. sns")
    description = models.TextField(blank=True, help_text="What the task produces; shown to API consumers.")
    is_active = models.BooleanField(default=True, help_text="Inactive: requests for it are refused as unknown.")
    sample_payload = models.JSONField(
        default=dict, blank=True,
        help_text="An example payload: rendered in the admin preview and listed by GET /api/v1/llm/templates.")
    created_at = models.DateTimeField(default=timezone.now, editable=False)

    class Meta:
        ordering = ["role", "task"]
        constraints = [models.UniqueConstraint(fields=["role", "task"], name="prompt_template_role_task")]

    def __str__(self):
        return f"{self.role}/{self.task}"

    @property
    def current_version(self):
        """The newest version, the one generations use; None before the first is saved."""
        return self.versions.order_by("-number").first()


class PromptTemplateVersion(models.Model):
    """One immutable version of a template: exactly the text and settings that generations with it used.

    Never updated or deleted (audit rows point here with PROTECT); editing a template writes a new version.
    """

    class Mode(models.TextChoices):
        JSON = "json", "json"
        TEXT = "text", "text"

    template = models.ForeignKey(PromptTemplate, on_delete=models.PROTECT, related_name="versions")
    number = models.PositiveIntegerField()
    system_prompt = models.TextField(
        help_text="Placeholders like {brand} are filled too; the answer format instruction is appended.")
    user_template = models.TextField(
        help_text="Placeholders like {product} are filled from the payload; write {{ and }} for literal braces.")
    mode = models.CharField(max_length=8, choices=Mode.choices, default=Mode.JSON,
                            help_text="Used when a request names no mode.")
    model = models.CharField(max_length=200, blank=True,
                             help_text="Tried first; empty: the gateway's OLLAMA_DEFAULT_MODEL.")
    fallback_models = models.JSONField(default=list, blank=True,
                                       help_text="Tried in order when a model is missing or fails to run.")
    allowed_models = models.JSONField(default=list, blank=True,
                                      help_text="Further models a request may name (besides model and fallbacks).")
    options = models.JSONField(default=dict, blank=True,
                               help_text="Default Ollama options; a request's own options override them.")
    output_schema = models.JSONField(null=True, blank=True,
                                     help_text="JSON Schema (draft 2020-12) a json-mode reply must match.")
    created_at = models.DateTimeField(default=timezone.now, editable=False)
    created_by = models.CharField(max_length=150, blank=True, editable=False,
                                  help_text="Username of who saved it; kept as text so it outlives the account.")

    class Meta:
        ordering = ["template", "-number"]
        constraints = [models.UniqueConstraint(fields=["template", "number"], name="prompt_version_number")]

    def __str__(self):
        return f"{self.template} v{self.number}"

    def save(self, *args, **kwargs):
        if not self._state.adding:
            raise ValidationError("A prompt template version is immutable; save a new version instead.")
        super().save(*args, **kwargs)

    def delete(self, *args, **kwargs):
        raise ValidationError("A prompt template version is never deleted: generations point to it.")

    def clean(self):
        errors = {}
        for name in ("system_prompt", "user_template"):
            try:
                prompts.placeholders(getattr(self, name))
            except prompts.TemplateSyntaxError as exc:
                errors[name] = str(exc)
        for name in ("fallback_models", "allowed_models"):
            value = getattr(self, name)
            if not isinstance(value, list) or not all(isinstance(m, str) and m.strip() for m in value):
                errors[name] = "A list of model names, e.g. llama3.2:3b."
        if not isinstance(self.options, dict):
            errors["options"] = "A JSON object of Ollama options, e.g. {\"temperature\": 0.7}."
        else:
            # The limits a request's own options have: a template must not send what a client could not.
            options = OllamaOptionsSerializer(data=self.options)
            if not options.is_valid():
                errors["options"] = [f"{name}: {' '.join(str(m) for m in messages)}"
                                     for name, messages in options.errors.items()]
        if self.output_schema is not None:
            problem = schema_problem(self.output_schema)
            if problem:
                errors["output_schema"] = problem
        if errors:
            raise ValidationError(errors)

    @property
    def payload_fields(self) -> list[str]:
        """The payload fields this version's prompts need."""
        return prompts.payload_fields(self.system_prompt, self.user_template)

    def render(self, payload: dict, mode: str | None = None) -> list[dict]:
        """The chat messages for a payload; prompts.MissingPlaceholders names the fields it lacks."""
        mode = mode or self.mode
        return prompts.build_messages(system_prompt=self.system_prompt, user_template=self.user_template,
                                      payload=payload, mode=mode, output_schema=self.output_schema)

    def model_chain(self) -> list[str]:
        """The models tried, in order, for a request that names none."""
        chain = [self.model or settings.OLLAMA_DEFAULT_MODEL, *self.fallback_models]
        return list(dict.fromkeys(chain))

    def allowed_model_names(self) -> list[str]:
        """The models a request may name."""
        return list(dict.fromkeys([*self.model_chain(), *self.allowed_models]))

    def content(self) -> dict:
        """The fields that make up a version, to compare with an edit or to copy into the next one."""
        return {name: getattr(self, name) for name in VERSION_CONTENT}


VERSION_CONTENT = ("system_prompt", "user_template", "mode", "model", "fallback_models", "allowed_models",
                   "options", "output_schema")


class Consumer(models.Model):
    """A team or service that calls the API with its own keys and its own rate limit."""

    name = models.CharField(max_length=100, unique=True)
    rate_limit_per_minute = models.PositiveIntegerField(
        null=True, blank=True,
        help_text="Generations per minute; empty: the global RATE_LIMIT_PER_MINUTE; 0: unlimited.")
    max_concurrent = models.PositiveIntegerField(
        null=True, blank=True,
        help_text="Generations this consumer may have in flight at once: across every gateway process when the "
                  "cache is Redis, else per process; empty: the global DEFAULT_MAX_CONCURRENT; 0: no cap.")
    tokens_per_day = models.PositiveBigIntegerField(
        null=True, blank=True, verbose_name="tokens per day",
        help_text="Token budget per calendar day (UTC): prompt plus completion, thinking included, over every "
                  "endpoint; empty: no limit; 0: everything refused.")
    tokens_per_month = models.PositiveBigIntegerField(
        null=True, blank=True, verbose_name="tokens per month",
        help_text="Token budget per calendar month (UTC), counted the same way; empty: no limit; 0: everything "
                  "refused.")
    is_active = models.BooleanField(default=True, help_text="An inactive consumer's keys are all refused.")
    allowed_models = models.JSONField(
        default=list, blank=True,
        help_text="The only models this consumer may use, in every dialect; empty: every model Ollama has.")
    templates_only = models.BooleanField(
        default=False,
        help_text="Barred from raw prompts: its keys may use the native template API only, not the OpenAI- or "
                  "Ollama-compatible chat endpoints.")
    # db_default too: a process still running the previous release inserts consumers without this column.
    metadata_only = models.BooleanField(
        default=False, db_default=False, verbose_name="metadata only",
        help_text="Its generations' content is not stored: prompts, outputs, tool calls and definitions, embedding "
                  "inputs, end user, client IP and error messages are kept as an HMAC-SHA-256 and a length (CONTENT_HMAC_KEY). "
                  "Applies to new rows; prune_audit --strip-content --consumer NAME strips older ones.")
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


class ToolSet(models.Model):
    """A distinct set of tool definitions, stored once: the rows that offered it keep its SHA-256.

    A chat UI sends the same tools (Open WebUI: 36 of them, 25 KB) with every message; storing them per row would
    make the tools most of the audit log.
    """

    sha256 = models.CharField(max_length=64, primary_key=True, editable=False,
                              help_text="SHA-256 of the definitions as canonical JSON (sorted keys, no spaces).")
    definitions = models.JSONField(help_text="The tools as sent to Ollama, in the order offered.")
    count = models.PositiveIntegerField(default=0)
    created_at = models.DateTimeField(default=timezone.now, editable=False)

    class Meta:
        verbose_name = "tool set"

    def __str__(self):
        names = [d.get("function", {}).get("name", "?") for d in self.definitions if isinstance(d, dict)]
        shown = ", ".join(names[:5]) + (f" and {len(names) - 5} more" if len(names) > 5 else "")
        return f"{self.count} tools ({shown})"

    @staticmethod
    def digest(definitions: list) -> str:
        canonical = json.dumps(definitions, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
        return hashlib.sha256(canonical.encode("utf-8", "replace")).hexdigest()

    @classmethod
    def keep(cls, definitions: list) -> "ToolSet":
        """The stored set for these definitions, written the first time it is seen."""
        tool_set, _ = cls.objects.get_or_create(
            sha256=cls.digest(definitions), defaults={"definitions": definitions, "count": len(definitions)})
        return tool_set


def audit_calls(calls) -> list[dict] | None:
    """Tool calls as the audit log keeps them: id, name and arguments; None for none."""
    if not calls:
        return None
    return [{"id": call.id, "name": call.name, "arguments": call.arguments} for call in calls]


def audit_prompt(messages, completion=None):
    """What was sent to the provider, as the audit log keeps it: each image replaced by its SHA-256, size and
    detected type, tool calls and results named."""
    if completion is not None:
        sent = {"prompt": completion.prompt}
        for name in ("system", "suffix"):
            if getattr(completion, name):
                sent[name] = getattr(completion, name)
        if completion.raw:
            sent["raw"] = True
        if completion.images:
            sent["images"] = [image.audit() for image in completion.images]
        return sent
    kept = []
    for message in messages:
        entry = {"role": message.role, "content": message.content}
        if message.thinking:
            entry["thinking"] = message.thinking
        if message.images:
            entry["images"] = [image.audit() for image in message.images]
        if message.tool_calls:
            entry["tool_calls"] = audit_calls(message.tool_calls)
        if message.tool_name:
            entry["tool_name"] = message.tool_name
        if message.tool_call_id:
            entry["tool_call_id"] = message.tool_call_id
        kept.append(entry)
    return kept


class Generation(models.Model):
    """One generation attempt: what was asked, what was sent upstream, what came back, and how long it took.

    Written as `pending` before the provider is called and completed afterwards, so a process killed
    mid-request leaves a `pending` row rather than nothing: gunicorn's master marks it failed (`worker_lost`) as
    soon as the worker is gone, and `prune_audit` marks what is still pending much later `abandoned`.
    """

    class Dialect(models.TextChoices):
        NATIVE = "native"
        OPENAI = "openai"
        OLLAMA = "ollama"

    class Kind(models.TextChoices):
        GENERATION = "generation"
        EMBEDDING = "embedding"

    class Status(models.TextChoices):
        PENDING = "pending"
        SUCCEEDED = "succeeded"
        FAILED = "failed"
        # Still pending long after any request could have finished: the process serving it died.
        ABANDONED = "abandoned"

    # Lengths the columns truncate to; the request as received keeps the full values.
    SHORT = 200

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    created_at = models.DateTimeField(default=timezone.now)
    finished_at = models.DateTimeField(null=True, blank=True)
    status = models.CharField(max_length=16, choices=Status.choices, default=Status.PENDING)
    http_status = models.PositiveSmallIntegerField(null=True, blank=True)

    # db_default too: a process still running the previous release inserts rows without this column.
    kind = models.CharField(max_length=16, choices=Kind.choices, default=Kind.GENERATION,
                            db_default=Kind.GENERATION,
                            help_text="generation (chat, completion, template) or embedding (vectors, never stored).")
    dialect = models.CharField(max_length=8, choices=Dialect.choices, default=Dialect.NATIVE,
                               help_text="The front door the request came through.")
    endpoint = models.CharField(max_length=64, blank=True, help_text="The path it was sent to.")
    role = models.CharField(max_length=SHORT, blank=True, db_index=True,
                            help_text="Empty for a raw chat (no template), through a compatible endpoint.")
    task = models.CharField(max_length=SHORT, blank=True, db_index=True)
    mode = models.CharField(max_length=8, blank=True)
    provider = models.CharField(max_length=16, blank=True)
    model = models.CharField(max_length=SHORT, blank=True)

    request = models.JSONField(null=True, blank=True, help_text="The request body as received, if it was JSON.")
    request_bytes = models.PositiveIntegerField(default=0)
    prompt = models.JSONField(null=True, blank=True, help_text="The chat messages sent to the provider.")
    output = models.JSONField(null=True, blank=True, help_text="An object in json mode, a string in text mode.")
    raw_output = models.TextField(blank=True, help_text="The provider's reply text when it could not be used.")
    finish_reason = models.CharField(max_length=16, blank=True,
                                     help_text="Why the model stopped, as Ollama says: stop, length, ...")
    end_user = models.CharField(
        max_length=256, blank=True,
        help_text="The end user behind the consumer's key: OpenAI's `user`, else the first END_USER_HEADERS "
                  "header present; cut to 256 characters.")
    thinking = models.TextField(blank=True, help_text="The model's thinking (reasoning models), apart from the "
                                                      "output; its tokens count in completion_tokens.")
    tool_calls = models.JSONField(null=True, blank=True,
                                  help_text='The tools the model called: [{"id", "name", "arguments"}].')
    # The hash is the key: the row keeps it, the definitions are stored once per distinct set.
    tool_set = models.ForeignKey(ToolSet, null=True, blank=True, on_delete=models.PROTECT, related_name="+",
                                 db_index=False, verbose_name="tools offered")

    # Embeddings: what was asked, never the vectors. The texts are kept up to EMBEDDING_STORED_INPUT_CHARS per row.
    inputs = models.JSONField(
        null=True, blank=True,
        help_text="Embeddings: the input texts, each cut so that together they hold at most "
                  "EMBEDDING_STORED_INPUT_CHARS characters; the vectors are never stored.")
    input_count = models.PositiveIntegerField(null=True, blank=True, help_text="Embeddings: the number of inputs.")
    input_chars = models.PositiveIntegerField(null=True, blank=True,
                                              help_text="Embeddings: the inputs' total size, in characters.")
    dimensions = models.PositiveIntegerField(null=True, blank=True,
                                             help_text="Embeddings: the length of the vectors returned.")

    error_type = models.CharField(max_length=32, blank=True)
    error_message = models.TextField(blank=True)

    prompt_tokens = models.PositiveIntegerField(null=True, blank=True)
    completion_tokens = models.PositiveIntegerField(null=True, blank=True)
    budget_tokens = models.PositiveIntegerField(
        null=True, blank=True,
        help_text="What the generation counted against its consumer's token budget: its prompt and completion "
                  "tokens, with the gateway's estimate where Ollama reported none (a cached prompt, an abandoned "
                  "stream). Empty: no budget applied; the tokens reported count then.")
    latency_ms = models.FloatField(null=True, blank=True, help_text="Total time in the gateway.")
    upstream_ms = models.FloatField(null=True, blank=True, help_text="Time spent waiting for the provider.")
    stream = models.BooleanField(default=False, help_text="Answered as a stream of deltas.")
    first_token_ms = models.FloatField(
        null=True, blank=True, help_text="Streams: from the request's arrival to the first delta sent.")

    client_ip = models.GenericIPAddressField(null=True, blank=True)
    user_agent = models.CharField(max_length=512, blank=True)
    # PROTECT: the trace from an audit row to the exact prompt text that produced it must survive.
    template_version = models.ForeignKey(PromptTemplateVersion, null=True, blank=True, on_delete=models.PROTECT,
                                         related_name="generations")
    models_tried = models.JSONField(
        default=list, blank=True,
        help_text='Each call in order: {"model": ..., "outcome": "succeeded" or the error}.')
    # SET_NULL: deleting a consumer must not delete its history; api_key_prefix still tells whose it was.
    consumer = models.ForeignKey(Consumer, null=True, blank=True, on_delete=models.SET_NULL,
                                 related_name="generations", db_index=False)
    api_key_prefix = models.CharField(max_length=ApiKey.PREFIX_LENGTH, blank=True, db_index=True)
    attempts = models.PositiveSmallIntegerField(default=0, help_text="Calls made to the provider, retries included.")
    worker = models.CharField(
        max_length=100, blank=True,
        help_text="The gateway process that ran it (host:pid:token): gunicorn's master marks its pending rows "
                  "worker_lost when that process dies.")
    # db_default too: a process still running the previous release inserts rows without this column.
    repeat_count = models.PositiveIntegerField(
        default=1, db_default=1,
        help_text="Requests this row stands for: 1, except for the refusals of a client address past "
                  "FAILED_KEYS_PER_MINUTE, counted in one row per address and minute.")
    content_stored = models.BooleanField(
        default=True, db_default=True,
        help_text="False: its consumer was metadata only (or prune_audit --strip-content ran): the content "
                  "fields are empty and content_hmac holds their HMACs and lengths.")
    content_hmac = models.JSONField(
        null=True, blank=True, verbose_name="content HMACs",
        help_text='For a row whose content is not stored: {"field": {"hmac_sha256": ..., "length": ...}} for each '
                  "content field that held something.")

    class Meta:
        ordering = ["-created_at"]
        # The admin lists newest first, filtered by one of these columns, a page at a time: an index that
        # starts with the filtered column and goes on with the ordering lets it read just the page's rows
        # (and lets each filter's choices be read by skipping through the index, see llm.admin).
        # The id ends each one because the admin breaks created_at ties by primary key.
        indexes = [
            models.Index(fields=["created_at", "id"], name="gen_created"),
            *(models.Index(fields=[column, "created_at", "id"], name=f"gen_{column}_created")
              for column in ("status", "dialect", "consumer", "provider", "mode", "model", "error_type", "kind")),
            # The admin's exact-match search by end user (the people behind a chat UI's shared key).
            models.Index(fields=["end_user", "created_at", "id"], name="gen_end_user_created"),
            # A consumer's tokens in a budget window (llm.budgets): summed from the index alone.
            models.Index(fields=["consumer", "created_at", "budget_tokens", "prompt_tokens", "completion_tokens"],
                         name="gen_consumer_tokens"),
            # Which tool sets are still offered by a row (prune_audit); most rows offer none.
            models.Index(fields=["tool_set"], name="gen_tool_set", condition=models.Q(tool_set__isnull=False)),
        ]

    def __str__(self):
        return f"{self.role or '?'}/{self.task or '?'} {self.status} ({self.id})"

    # Every column that holds content a consumer sent or a model produced (messages, tool definitions, arguments
    # and results, thinking, images' descriptions, embedding inputs, end user), beside ToolSet.definitions. A
    # metadata-only consumer's rows keep an HMAC and a length of exactly these (WITHHELD_FIELDS): keep this list
    # complete.
    CONTENT_FIELDS = ("request", "prompt", "output", "raw_output", "thinking", "tool_calls", "inputs", "end_user")
    # What a metadata-only row withholds besides: who sent it from where, and error messages, which may quote a
    # refused value or Ollama's answer. Every other column is metadata (tests/llm/test_metadata_only.py).
    WITHHELD_FIELDS = (*CONTENT_FIELDS, "client_ip", "error_message")

    def save(self, *args, **kwargs):
        """Save; a row whose content is not stored is written as it is kept (see stored_form)."""
        if self.content_stored:
            return super().save(*args, **kwargs)
        update_fields = kwargs.get("update_fields")
        withheld = self.WITHHELD_FIELDS
        if update_fields is not None:
            # The outcome's update hashes just the outcome's fields: the request's HMACs were written with the row.
            withheld = [name for name in withheld if name in update_fields]
            kwargs["update_fields"] = (*update_fields, "content_hmac")
        with self.stored_form(withheld):
            return super().save(*args, **kwargs)

    @contextmanager
    def stored_form(self, withheld=None):
        """Within it, the row as the database, the spool and the logs may have it: for a metadata-only row, the
        withheld fields empty and content_hmac their HMACs and lengths; afterwards the content is back in memory,
        for the reply to the client. A row whose content is stored is left as it is."""
        if self.content_stored:
            yield self
            return
        kept = {name: getattr(self, name) for name in (self.WITHHELD_FIELDS if withheld is None else withheld)}
        self.content_hmac = {**(self.content_hmac or {}), **content_digests(kept)} or None
        for name in kept:
            setattr(self, name, None if self._meta.get_field(name).null else "")
        try:
            yield self
        finally:
            for name, value in kept.items():
                setattr(self, name, value)

    def succeed(self, *, output, model: str, prompt_tokens, completion_tokens, upstream_ms: float, latency_ms: float,
                attempts: int = 1, finish_reason: str = "", thinking: str = "", tool_calls: list | None = None,
                save: bool = True):
        """Record a successful reply (save=False: only set the fields; the caller writes them)."""
        self.status = self.Status.SUCCEEDED
        self.thinking = thinking
        self.tool_calls = tool_calls
        self.finish_reason = (finish_reason or "")[:16]
        self.attempts = attempts
        self.http_status = 200
        self.output = output
        self.model = model[: self.SHORT]
        self.prompt_tokens = prompt_tokens
        self.completion_tokens = completion_tokens
        self.upstream_ms = upstream_ms
        self._finish(latency_ms, save)

    def fail(self, *, error_type: str, message: str, http_status: int, latency_ms: float,
             upstream_ms: float | None = None, raw_output: str = "", attempts: int = 0,
             prompt_tokens: int | None = None, completion_tokens: int | None = None, thinking: str = "",
             tool_calls: list | None = None, save: bool = True):
        """Record a failed attempt with the error the client was answered with (streams: what was sent)."""
        self.status = self.Status.FAILED
        self.thinking = thinking
        self.tool_calls = tool_calls
        self.prompt_tokens = prompt_tokens
        self.completion_tokens = completion_tokens
        self.attempts = attempts
        self.http_status = http_status
        self.error_type = error_type
        self.error_message = message
        self.upstream_ms = upstream_ms
        self.raw_output = raw_output
        self._finish(latency_ms, save)

    # What completing a pending row changes. Saving only these keeps the request and prompt JSON, written
    # with the pending row, from being serialised and sent again (measured: ~0.3 ms per request).
    OUTCOME_FIELDS = ("status", "attempts", "http_status", "output", "model", "models_tried", "prompt_tokens",
                      "completion_tokens", "upstream_ms", "error_type", "error_message", "raw_output", "latency_ms",
                      "first_token_ms", "finish_reason", "finished_at", "thinking", "tool_calls", "dimensions",
                      "budget_tokens")

    def _finish(self, latency_ms: float, save: bool):
        self.latency_ms = latency_ms
        self.finished_at = timezone.now()
        if save:
            self.save_outcome()

    def save_outcome(self):
        """Write the outcome: the whole row if it was never written, else the outcome's fields of the pending one."""
        if self._state.adding:
            self.save(force_insert=True)
        else:
            self.save(update_fields=self.OUTCOME_FIELDS)


# Every model's columns that hold content (see Generation.CONTENT_FIELDS), by model label.
CONTENT_FIELDS = {"llm.Generation": Generation.CONTENT_FIELDS, "llm.ToolSet": ("definitions",)}


# Upper bounds (ms) of the latency histogram the usage rollup keeps; a last bucket holds everything slower.
# Percentiles cannot be averaged across hours, but bucket counts can be added, and a percentile read from the
# sum is off by at most one bucket's width (about a third of the value with these bounds).
LATENCY_BOUNDS_MS = (25, 50, 100, 250, 500, 1000, 2000, 4000, 8000, 15000, 30000, 60000, 120000)
# One column per bucket, not a JSON list, so that the database adds up a month of hours by itself.
LATENCY_BUCKET_FIELDS = (*(f"latency_le_{bound}ms" for bound in LATENCY_BOUNDS_MS),
                         f"latency_over_{LATENCY_BOUNDS_MS[-1]}ms")


class UsageHour(models.Model):
    """What one consumer asked of one model in one hour: counts, tokens and a latency histogram.

    Written only by `rollup_usage` (and `prune_audit`, which runs it first), from finished Generation rows;
    it outlives them, so the usage dashboard still shows hours whose rows retention has deleted.
    """

    hour = models.DateTimeField(help_text="Start of the hour (UTC) the generations were created in.")
    # SET_NULL, as for generations: a deleted consumer's usage still counts in the totals.
    consumer = models.ForeignKey(Consumer, null=True, blank=True, on_delete=models.SET_NULL, related_name="+")
    model = models.CharField(max_length=Generation.SHORT, blank=True)
    requests = models.PositiveIntegerField(default=0)
    succeeded = models.PositiveIntegerField(default=0)
    failed = models.PositiveIntegerField(default=0)
    abandoned = models.PositiveIntegerField(default=0)
    prompt_tokens = models.PositiveBigIntegerField(default=0)
    completion_tokens = models.PositiveBigIntegerField(default=0)
    latency_count = models.PositiveIntegerField(default=0, help_text="Requests with a latency (finished ones).")
    latency_sum_ms = models.FloatField(default=0)
    # The histogram: requests per latency bucket (LATENCY_BUCKET_FIELDS).
    latency_le_25ms = models.PositiveIntegerField(default=0)
    latency_le_50ms = models.PositiveIntegerField(default=0)
    latency_le_100ms = models.PositiveIntegerField(default=0)
    latency_le_250ms = models.PositiveIntegerField(default=0)
    latency_le_500ms = models.PositiveIntegerField(default=0)
    latency_le_1000ms = models.PositiveIntegerField(default=0)
    latency_le_2000ms = models.PositiveIntegerField(default=0)
    latency_le_4000ms = models.PositiveIntegerField(default=0)
    latency_le_8000ms = models.PositiveIntegerField(default=0)
    latency_le_15000ms = models.PositiveIntegerField(default=0)
    latency_le_30000ms = models.PositiveIntegerField(default=0)
    latency_le_60000ms = models.PositiveIntegerField(default=0)
    latency_le_120000ms = models.PositiveIntegerField(default=0)
    latency_over_120000ms = models.PositiveIntegerField(default=0)

    class Meta:
        indexes = [models.Index(fields=["hour"], name="usage_hour")]

    def __str__(self):
        return f"{self.hour:%Y-%m-%d %H:00} {self.consumer_id or '-'} {self.model or '-'}: {self.requests}"

    @property
    def latency_buckets(self) -> list[int]:
        return [getattr(self, name) for name in LATENCY_BUCKET_FIELDS]


class UsageRollupState(models.Model):
    """The one row saying how far the rollup has got, and from when on the raw rows are complete."""

    folded_until = models.DateTimeField(
        null=True, help_text="Every generation created before this is counted in UsageHour; nothing after it.")
    pruned_before = models.DateTimeField(
        null=True, help_text="prune_audit deleted generations created before this: hours before it cannot be rebuilt.")
