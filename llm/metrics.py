"""Prometheus metrics of the generation use case, derived from the audit row so that both always agree.

Under gunicorn, PROMETHEUS_MULTIPROC_DIR is set by gunicorn.conf.py before this library is first imported:
every worker then writes its values to files there and a scrape of any worker sums them all. Without it (tests,
manage.py, runserver) the values live in this process alone.

No label takes a value a client chose: models are only those a prompt template names, OLLAMA_DEFAULT_MODEL, or
the one that answered (else "other"); consumers are database rows; error types are the gateway's own.
Nothing here may break a generation: a failure is logged and the request goes on.
"""

from __future__ import annotations

import functools
import inspect
import logging
import os

from django.conf import settings
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, disable_created_metrics
from prometheus_client.exposition import choose_encoder
from prometheus_client.multiprocess import MultiProcessCollector

logger = logging.getLogger("llm.metrics")

MULTIPROC_DIR = os.environ.get("PROMETHEUS_MULTIPROC_DIR")
if MULTIPROC_DIR:
    # A missing directory would make every metric below fail at import, and the gateway with it.
    os.makedirs(MULTIPROC_DIR, exist_ok=True)

# The *_created series exist in single-process mode only; without them both modes export the same series.
disable_created_metrics()
# Our own registry: /metrics shows the gateway's families only, the same ones in both modes.
REGISTRY = CollectorRegistry(auto_describe=True)

NATIVE = "native"
OTHER_MODEL = "other"
NO_MODEL = "none"
ANONYMOUS = "anonymous"
NO_ERROR = "none"

# A generation waits on a model: seconds to minutes. The overhead is the gateway's own work: milliseconds.
LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 20, 30, 60, 120, 300)
OVERHEAD_BUCKETS = (0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5)
FIRST_TOKEN_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 20, 30, 60, 120)

REQUESTS = Counter(
    "llm_gateway_requests_total", "Generation requests answered, by outcome and error type (embeddings: "
    "llm_gateway_embedding_requests_total).",
    ["outcome", "error_type", "model", "consumer", "dialect"], registry=REGISTRY)
REQUEST_DURATION = Histogram(
    "llm_gateway_request_duration_seconds", "Total time of a generation request in the gateway.",
    ["outcome", "model", "dialect"], buckets=LATENCY_BUCKETS, registry=REGISTRY)
UPSTREAM_DURATION = Histogram(
    "llm_gateway_upstream_duration_seconds",
    "Time a generation spent waiting for the provider, retries and fallbacks included.",
    ["model", "dialect"], buckets=LATENCY_BUCKETS, registry=REGISTRY)
OVERHEAD = Histogram(
    "llm_gateway_overhead_seconds",
    "The gateway's own time in a generation that called the provider: total minus upstream.",
    ["dialect"], buckets=OVERHEAD_BUCKETS, registry=REGISTRY)
FIRST_TOKEN = Histogram(
    "llm_gateway_time_to_first_token_seconds",
    "From a request's arrival to its first token sent; without streaming, the whole reply is the first token.",
    ["model", "dialect", "stream"], buckets=FIRST_TOKEN_BUCKETS, registry=REGISTRY)
TOKENS = Counter(
    "llm_gateway_tokens_total", "Tokens the provider reported, by type (prompt or completion).",
    ["type", "model", "consumer", "dialect"], registry=REGISTRY)
RETRIES = Counter(
    "llm_gateway_upstream_retries_total", "Calls to the provider repeated after a failure that may pass.",
    registry=REGISTRY)
FALLBACKS = Counter(
    "llm_gateway_model_fallbacks_total", "Times a generation moved on from a model to its next fallback.",
    ["model"], registry=REGISTRY)
RATE_LIMITED = Counter(
    "llm_gateway_rate_limited_total", "Generation requests refused by the consumer's rate limit.",
    ["consumer", "dialect"], registry=REGISTRY)
AUDIT_WRITE_FAILURES = Counter(
    "llm_gateway_audit_write_failures_total",
    "Audit rows that could not be written: insert (nothing generated) or update (the outcome not recorded).",
    ["stage"], registry=REGISTRY)
AUDIT_SPOOLED = Counter(
    "llm_gateway_audit_spooled_total",
    "Audit outcomes the database could not take, kept to be replayed: in a spool file or in memory.",
    ["store"], registry=REGISTRY)
AUDIT_SPOOL_LOST = Counter(
    "llm_gateway_audit_spool_lost_total",
    "Audit outcomes the database could not take and that could not be kept either (spool directory and memory "
    "full or unwritable): lost.", registry=REGISTRY)
AUDIT_REPLAYED = Counter(
    "llm_gateway_audit_replayed_total",
    "Kept audit outcomes replayed: written to the database, or rejected by it (set aside in the spool's "
    "rejected/ directory).", ["result"], registry=REGISTRY)
EMBEDDING_REQUESTS = Counter(
    "llm_gateway_embedding_requests_total", "Embeddings requests answered, by outcome and error type.",
    ["outcome", "error_type", "model", "consumer", "dialect"], registry=REGISTRY)
EMBEDDING_INPUTS = Counter(
    "llm_gateway_embedding_inputs_total", "Texts embedded (one vector each), of requests that succeeded.",
    ["model", "consumer", "dialect"], registry=REGISTRY)
EMBEDDING_DURATION = Histogram(
    "llm_gateway_embedding_duration_seconds", "Total time of an embeddings request in the gateway.",
    ["outcome", "model", "dialect"], buckets=LATENCY_BUCKETS, registry=REGISTRY)
# livesum: a dead worker's requests are no longer in flight (gunicorn.conf.py's child_exit forgets them).
IN_FLIGHT = Gauge(
    "llm_gateway_requests_in_flight", "Generation requests being answered now.",
    ["dialect"], multiprocess_mode="livesum", registry=REGISTRY)

# Set when /metrics is scraped, from the budgets' counts (llm.budgets): one number, not a series per consumer.
BUDGET_WARNINGS = Gauge(
    "llm_gateway_budget_consumers_over_warning",
    "Active consumers that have used 80 % or more of a token budget (day or month) in its current window.",
    multiprocess_mode="mostrecent", registry=REGISTRY)

FAMILIES = (REQUESTS, REQUEST_DURATION, UPSTREAM_DURATION, OVERHEAD, FIRST_TOKEN, TOKENS, RETRIES, FALLBACKS,
            RATE_LIMITED, AUDIT_WRITE_FAILURES, AUDIT_SPOOLED, AUDIT_SPOOL_LOST, AUDIT_REPLAYED, IN_FLIGHT,
            EMBEDDING_REQUESTS, EMBEDDING_INPUTS, EMBEDDING_DURATION, BUDGET_WARNINGS)


def _never_raises(function):
    @functools.wraps(function)
    def guarded(*args, **kwargs):
        try:
            return function(*args, **kwargs)
        except Exception:  # noqa: BLE001 - a broken metric must not cost a client its generation
            logger.exception("metrics not recorded", extra={"hook": function.__name__})

    return guarded


@_never_raises
def observe_generation(row, *, dialect: str = NATIVE) -> None:
    """Count one completed audit row (succeeded or failed): call it once per row, when its outcome is set."""
    outcome = row.status
    if outcome not in ("succeeded", "failed"):
        logger.warning("metrics: a generation observed before its outcome was set", extra={"status": outcome})
        return
    model, consumer = model_label(row), consumer_label(row)
    if getattr(row, "kind", "generation") == "embedding":
        _observe_embedding(row, outcome, model, consumer, dialect)
        return
    REQUESTS.labels(outcome, (row.error_type or NO_ERROR)[:32], model, consumer, dialect).inc()
    if row.latency_ms is not None:
        REQUEST_DURATION.labels(outcome, model, dialect).observe(row.latency_ms / 1000)
    if row.upstream_ms is not None:
        UPSTREAM_DURATION.labels(model, dialect).observe(row.upstream_ms / 1000)
        if row.latency_ms is not None:
            OVERHEAD.labels(dialect).observe(max(0.0, row.latency_ms - row.upstream_ms) / 1000)
    first_token_ms = row.first_token_ms
    if first_token_ms is None and outcome == "succeeded" and not row.stream:
        first_token_ms = row.latency_ms
    if first_token_ms is not None:
        FIRST_TOKEN.labels(model, dialect, "true" if row.stream else "false").observe(first_token_ms / 1000)
    for kind, count in (("prompt", row.prompt_tokens), ("completion", row.completion_tokens)):
        if count:
            TOKENS.labels(kind, model, consumer, dialect).inc(count)
    tried = row.models_tried or []
    # One entry per call to the provider; attempts counts its HTTP calls, so the difference is its own retries.
    retries = (row.attempts or 0) - len(tried)
    if retries > 0:
        RETRIES.inc(retries)
    # A repeated model (json mode's second ask) is no fallback; a change of model is.
    for previous, current in zip(tried, tried[1:]):
        if previous.get("model") != current.get("model"):
            FALLBACKS.labels(_known_model(previous.get("model"), row)).inc()
    if row.error_type == "rate_limited":
        RATE_LIMITED.labels(consumer, dialect).inc()


def _observe_embedding(row, outcome: str, model: str, consumer: str, dialect: str) -> None:
    """An embeddings row: its own families (a generation's first-token and completion counts mean nothing here);
    its prompt tokens, retries and rate-limit refusals count with the generations'."""
    EMBEDDING_REQUESTS.labels(outcome, (row.error_type or NO_ERROR)[:32], model, consumer, dialect).inc()
    if row.latency_ms is not None:
        EMBEDDING_DURATION.labels(outcome, model, dialect).observe(row.latency_ms / 1000)
    if outcome == "succeeded" and row.input_count:
        EMBEDDING_INPUTS.labels(model, consumer, dialect).inc(row.input_count)
    if row.prompt_tokens:
        TOKENS.labels("prompt", model, consumer, dialect).inc(row.prompt_tokens)
    retries = (row.attempts or 0) - len(row.models_tried or [])
    if retries > 0:
        RETRIES.inc(retries)
    if row.error_type == "rate_limited":
        RATE_LIMITED.labels(consumer, dialect).inc()


@_never_raises
def audit_write_failed(stage: str) -> None:
    """Count an audit row that could not be written: stage "insert" or "update"."""
    AUDIT_WRITE_FAILURES.labels(stage).inc()


@_never_raises
def audit_spooled(store: str) -> None:
    AUDIT_SPOOLED.labels(store).inc()


@_never_raises
def audit_spool_lost() -> None:
    AUDIT_SPOOL_LOST.inc()


@_never_raises
def audit_replayed(result: str) -> None:
    AUDIT_REPLAYED.labels(result).inc()


class in_flight:  # noqa: N801 - used like a function: `with in_flight():` or `@in_flight()`
    """Count a generation in flight while the block runs; a context manager (sync and async) or a decorator."""

    def __init__(self, *, dialect: str = NATIVE):
        self.dialect = dialect

    @_never_raises
    def __enter__(self):
        IN_FLIGHT.labels(self.dialect).inc()

    @_never_raises
    def __exit__(self, *exc_info):
        IN_FLIGHT.labels(self.dialect).dec()

    async def __aenter__(self):
        self.__enter__()

    async def __aexit__(self, *exc_info):
        self.__exit__(*exc_info)

    def __call__(self, function):
        if inspect.iscoroutinefunction(function):
            @functools.wraps(function)
            async def counted_async(*args, **kwargs):
                async with self:
                    return await function(*args, **kwargs)

            return counted_async

        @functools.wraps(function)
        def counted(*args, **kwargs):
            with self:
                return function(*args, **kwargs)

        return counted


def model_label(row) -> str:
    """The row's model, if it is one that exists; "other" for a name a client made up, "none" if none was named."""
    if not row.model:
        return NO_MODEL
    if row.status == "succeeded":
        return row.model  # the model that answered
    return _known_model(row.model, row)


def _known_model(name: str | None, row) -> str:
    if not name:
        return NO_MODEL
    if name == settings.OLLAMA_DEFAULT_MODEL:
        return name
    # Only a version already loaded on the row: this may run in async code, where a query is not allowed.
    version_field = row._meta.get_field("template_version")
    if version_field.is_cached(row) and row.template_version is not None:
        if name in row.template_version.allowed_model_names():
            return name
    return OTHER_MODEL


def consumer_label(row) -> str:
    if row.consumer_id is None:
        return ANONYMOUS
    consumer_field = row._meta.get_field("consumer")
    if consumer_field.is_cached(row) and row.consumer is not None:
        return row.consumer.name
    return f"id:{row.consumer_id}"


class _Families:
    """Every worker's values summed from PROMETHEUS_MULTIPROC_DIR, plus each family not yet observed anywhere.

    The library leaves out, in multiprocess mode, a family without values; listing it still (as single-process
    mode does) tells a scraper that the gateway exports it.
    """

    def collect(self):
        seen = set()
        for family in MultiProcessCollector(None, MULTIPROC_DIR).collect():
            seen.add(family.name)
            yield family
        for metric in FAMILIES:
            for family in metric.describe():
                if family.name not in seen:
                    yield family


@_never_raises
def count_budget_warnings() -> None:
    """Count the consumers past their budgets' warning now (a query per budgeted consumer): before a scrape."""
    from llm import budgets

    BUDGET_WARNINGS.set(budgets.consumers_past_warning())


def exposition(accept: str | None) -> tuple[bytes, str]:
    """The metrics in the format the scraper asks for (Prometheus text by default) and its content type."""
    encode, content_type = choose_encoder(accept or "")
    return encode(_Families() if MULTIPROC_DIR else REGISTRY), content_type
