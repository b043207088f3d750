"""The embeddings use case: texts in, one vector per text out, through the same admission and audit as generation.

A second, small use case beside generation (llm.services), made of the same steps: the database step before the
provider is called (key, rate limit — one call counts one —, model access, the consumer's `max_concurrent` slot,
the pending row), the upstream slot, the deadline, and the outcome written after; exactly one row per attempt,
completed whatever ends it. Its row is a Generation row of kind `embedding`: model, number of inputs and their
total size, tokens, dimensions, latency and outcome. The vectors are never stored; the texts are kept up to
EMBEDDING_STORED_INPUT_CHARS per row.

The front doors (llm.dialects.ollama: /api/embed and /api/embeddings; llm.dialects.openai: /v1/embeddings) parse
their wire format into an EmbeddingRequest and render the Embedded answer; the bounds every door shares are
checked here.
"""

from __future__ import annotations

import asyncio
import math
from dataclasses import dataclass, field
from uuid import UUID

from django.conf import settings

from llm import admission, budgets, metrics, model_access
from llm.errors import InvalidRequest, RawPromptsNotAllowed
from llm.models import Generation
from llm.providers import get_provider
from llm.providers.base import EmbeddingReply, EmbeddingRequest
from llm.request_rules import invalid
from llm.routing import Route
from llm.services import (Caller, Deadline, FrontDoor, Timing, _describe, _storable, _unstorable, admit,
                          budget_headers, ended, record, release_consumer)


@dataclass
class Embedded:
    """Embeddings answered: the completed audit row, where the time went, and the vectors (never stored)."""

    row: Generation
    timing: Timing
    reply: EmbeddingReply
    headers: dict = field(default_factory=dict)  # X-Budget-*, after this call's count


async def embed(*, request_id: UUID, body: bytes, body_size: int, content_type: str, started: float,
                caller: Caller, door: FrontDoor, body_timed_out: bool = False) -> Embedded:
    """Answer one embeddings request with Embedded; else raise the GatewayError answered.

    `door.parse` turns the parsed body into an EmbeddingRequest. Whatever happens the attempt leaves exactly one
    Generation row (kind embedding), completed, as for a generation (see services.generate).
    """
    timing = Timing(started)
    counted = metrics.in_flight(dialect=door.dialect)
    counted.__enter__()
    try:
        row, (request, models) = await admit(
            request_id=request_id, body=body, body_size=body_size, body_timed_out=body_timed_out,
            content_type=content_type, started=started, caller=caller, door=door, prepare=_prepare)
    except BaseException:
        counted.__exit__()
        raise
    task = asyncio.current_task()
    admission.register(task)
    route = Route(models)
    try:
        try:
            async with Deadline(started):
                async with admission.upstream_slot():
                    reply = await route.embed(get_provider(), request)
            timing.upstream_ms = route.upstream_ms
            timing.provider_durations = reply.durations or {}
            row.models_tried = route.tried
            row.dimensions = reply.dimensions
            row.succeed(output=None, model=reply.model, prompt_tokens=reply.prompt_tokens, completion_tokens=None,
                        upstream_ms=round(route.upstream_ms, 2), latency_ms=timing.total_ms(),
                        attempts=route.attempts, save=False)
        except (asyncio.CancelledError, Exception) as exc:
            raise await ended(row, route, exc, started, task) from None
        await record(row)
        return Embedded(row, timing, reply, headers=budget_headers(row))
    finally:
        admission.unregister(task)
        await release_consumer(row)
        counted.__exit__()


def _prepare(row: Generation, data, door: FrontDoor, caller: Caller, body_size: int):
    """The embeddings' part of the step before the provider: the row described (its texts bounded), the body
    parsed by the door, the shared bounds checked, the model allowed. Returns (request, models)."""
    row.mode = ""
    consumer = caller.api_key.consumer
    row.end_user = _storable(caller.end_user)[: Generation._meta.get_field("end_user").max_length]
    field = _input_field(data)
    if isinstance(data, dict):
        texts = data.get(field)
        row.inputs, row.input_count, row.input_chars = _kept(texts)
        # The row's copy of the request keeps the rest of the body; the texts, bounded, are in `inputs`.
        stored = dict(data)
        if field in stored:
            stored[field] = {"count": row.input_count, "chars": row.input_chars}
        row.request = _storable(stored)
        if isinstance(data.get("user"), str):  # OpenAI's `user` wins over a header's end user
            row.end_user = _storable(data["user"])[: Generation._meta.get_field("end_user").max_length]
    else:
        # Not an object (refused by the door): only its type is kept, as it might be texts of any length.
        row.request = {"body": f"(a JSON {type(data).__name__}, not an object)"}
    _describe(row, data, door.described)
    request: EmbeddingRequest = door.parse(data)
    problem = _unstorable(data)
    if problem:
        raise InvalidRequest(f"The request is invalid: {problem}.")
    _check_bounds(request, "prompt" if request.legacy else "input")
    if consumer.templates_only:
        raise RawPromptsNotAllowed(
            f"Consumer {consumer.name!r} may use prompt templates only (POST /api/v1/llm/generate), not "
            "embeddings.")
    models = model_access.permitted(consumer, [request.model], chosen=True)
    row.model = request.model[: Generation.SHORT]
    row.stream = False
    # Last: its input is reserved against the consumer's token budgets (an embedding produces no completion).
    row._budget = budgets.admit(consumer=consumer, options=None,
                                estimate=max(1, math.ceil(body_size / budgets.BYTES_PER_TOKEN)))
    return request, models


def _input_field(data) -> str:
    return "prompt" if isinstance(data, dict) and "input" not in data and "prompt" in data else "input"


def _kept(texts) -> tuple[list | None, int | None, int | None]:
    """The texts as the row keeps them (cut to EMBEDDING_STORED_INPUT_CHARS together), their count and their total
    size in characters; an item that is no text (a token array) is counted, not kept."""
    if isinstance(texts, str):
        texts = [texts]
    if not isinstance(texts, list):
        return None, None, None
    budget = settings.EMBEDDING_STORED_INPUT_CHARS
    kept, total = [], 0
    for text in texts:
        if not isinstance(text, str):
            continue
        total += len(text)
        if budget > 0:
            kept.append(_storable(text[:budget]))
            budget -= min(len(text), budget)
    return kept, len(texts), total


def _check_bounds(request: EmbeddingRequest, field: str) -> None:
    """The bounds every door shares: how many texts, how much text, how long the vectors."""
    limit = settings.EMBEDDING_MAX_INPUTS
    if len(request.inputs) > limit:
        raise invalid(field, f"{field} holds {len(request.inputs)} texts; at most {limit} may be embedded in one "
                             "request (EMBEDDING_MAX_INPUTS). Send them in smaller batches.")
    size, limit = sum(len(text) for text in request.inputs), settings.EMBEDDING_MAX_INPUT_CHARS
    if size > limit:
        raise invalid(field, f"{field} holds {size} characters; at most {limit} may be embedded in one request "
                             "(EMBEDDING_MAX_INPUT_CHARS). Send them in smaller batches.")
    limit = settings.EMBEDDING_MAX_DIMENSIONS
    if request.dimensions is not None and not 0 < request.dimensions <= limit:
        raise invalid("dimensions", f"dimensions must be a whole number from 1 to {limit} "
                                    "(EMBEDDING_MAX_DIMENSIONS).")


def dimensions_of(value) -> int | None:
    """A client's `dimensions`: None for null and 0 (the model's own length, as Ollama reads them), else the number;
    InvalidRequest if it is no whole number. Its range is checked with the other bounds (_check_bounds)."""
    if value is None or (type(value) is int and value == 0):
        return None
    if type(value) is not int:
        raise invalid("dimensions", f"dimensions must be a whole number from 1 to "
                                    f"{settings.EMBEDDING_MAX_DIMENSIONS} (EMBEDDING_MAX_DIMENSIONS).")
    return value
