"""The generation use case: validate, write the audit row, call the provider, record the outcome.

Async, with the database work in two steps run off the event loop (gateway_project.db_steps): `_begin` (key,
rate limit, validation, template, the pending row) before the provider is called and `_finish` (the outcome)
after. No database connection is held while the provider is waited for.

Every front door (the native API in llm.views, the OpenAI and Ollama dialects in llm.dialects) calls generate()
with its FrontDoor: its dialect and endpoint for the audit row, its body limit, and its parser from its wire
format to the NeutralRequest. The parser runs inside `_begin`, after authentication, so that a request it refuses
is audited with its consumer like any other.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from dataclasses import dataclass, field
from typing import Any, AsyncIterator, Callable
from uuid import UUID

from django.conf import settings
from django.db import DatabaseError

from gateway_project.db_steps import db_step
from gateway_project.redaction import mask_secrets
from llm import admission, api_keys, failed_keys, metrics, model_access, rate_limits
from llm.errors import (AuditUnavailable, AuthThrottled, ClientDisconnected, GatewayError, InvalidOutput,
                        InvalidRequest, NotAuthenticated, PayloadTooLarge, RawPromptsNotAllowed, RequestTimeout,
                        ShuttingDown, UnsupportedMediaType, UpstreamTimeout)
from llm.models import ApiKey, Consumer, Generation, PromptTemplateVersion
from llm.output_schema import read_output
from llm.prompts import MissingPlaceholders
from llm.providers import GenerationRequest, get_provider
from llm.request_rules import TEXT, NeutralRequest
from llm.routing import Route, candidate_models
from llm.selectors import current_version_for

logger = logging.getLogger("llm.services")

MAX_DEPTH = 32
MAX_REQUEST_BYTES = 2**31 - 1


@dataclass
class Caller:
    """Who asks: the key presented (or why what was presented is no key) and where the request came from.

    `api_key` is filled in once the key is verified, so that the front door can name the consumer.
    """

    presented_key: str | None
    refusal: NotAuthenticated | None = None
    client_ip: str | None = None
    user_agent: str = ""
    api_key: ApiKey | None = None


@dataclass(frozen=True)
class FrontDoor:
    """Where a generation request came in, as the use case needs to know it.

    `parse` turns the body's parsed JSON into the NeutralRequest, raising InvalidRequest (with per-field details)
    for what the dialect refuses. `described` are the top-level fields copied onto the row before validation, so
    that even a refused request shows what it asked for. `masks_secrets`: the body carries payload objects whose
    secret-named keys (REDACT_KEYS) are masked before anything sees them (the native API); a chat body carries
    text, where key names mean nothing (and OpenAI's own `max_tokens` would look like a secret).
    """

    dialect: str
    endpoint: str
    parse: Callable[[Any], NeutralRequest]
    max_body_bytes: int
    described: tuple[str, ...] = ("model",)
    masks_secrets: bool = False


@dataclass
class Timing:
    """Where a request's time went so far: for Server-Timing and the audit row."""

    started: float
    upstream_ms: float = 0.0
    # The provider's own nanosecond durations of the reply (Ollama's load_duration, eval_duration, ...), once known.
    provider_durations: dict = field(default_factory=dict)

    def total_ms(self) -> float:
        return _elapsed_ms(self.started)


@dataclass
class Delta:
    """A piece of the reply's text, as the provider produced it."""

    text: str


@dataclass
class Outcome:
    """The end of a stream: the completed audit row, and the error the stream ended with, if any."""

    row: Generation
    error: GatewayError | None = None


@dataclass
class Streaming:
    """A streamed generation whose first piece of text has arrived. Iterate `events()` to the end, always."""

    row: Generation
    timing: Timing
    _events: AsyncIterator = field(repr=False)

    def events(self) -> AsyncIterator[Delta | Outcome]:
        return self._events


async def generate(*, request_id: UUID, body: bytes, body_size: int, content_type: str, started: float,
                   caller: Caller, door: FrontDoor,
                   body_timed_out: bool = False) -> tuple[Generation, Timing] | Streaming:
    """Answer one generation request: the completed audit row, or a Streaming; else raise the GatewayError answered.

    `body_size` over the door's limit, or `body_timed_out` (the client did not send it within REQUEST_BODY_TIMEOUT),
    means the body was not read: once the key is checked, the attempt is refused with 413 or 408, and recorded.

    Whatever happens, the attempt leaves exactly one Generation row, completed, a client that went away included.
    If that row cannot be written, nothing is generated and AuditUnavailable is raised.
    """
    timing = Timing(started)
    counted = metrics.in_flight(dialect=door.dialect)
    counted.__enter__()
    begin = asyncio.ensure_future(db_step(
        _begin, request_id=request_id, body=body, body_size=body_size, body_timed_out=body_timed_out,
        content_type=content_type, started=started, caller=caller, door=door))
    try:
        try:
            begun = await asyncio.shield(begin)
        except AuthThrottled as exc:
            await _count_throttled(exc, started)
            raise
        except asyncio.CancelledError:
            # The client left while the step ran: it runs to its end all the same (a step dropped before it
            # started would leave no row at all), and the row it wrote is completed as the client's leaving.
            try:
                row = (await begin)[0]
            except AuthThrottled as exc:
                await _count_throttled(exc, started)
                raise asyncio.CancelledError from None
            except GatewayError:
                raise asyncio.CancelledError from None  # its row is complete: the refusal
            _release_consumer(row)
            await _finish_failure(row, Route([]), _cancelled(None), started)
            raise
    except BaseException:
        counted.__exit__()
        raise
    row, request, models, streamed = begun
    task = asyncio.current_task()
    admission.register(task)
    route = Route(models)
    provider = get_provider()
    handed_over = False
    try:
        try:
            async with Deadline(started):
                if streamed:
                    slot = admission.upstream_slot()
                    await slot.__aenter__()
                    try:
                        stream = await route.open_stream(provider, request)
                    except BaseException:
                        await slot.__aexit__(None, None, None)
                        raise
                    timing.upstream_ms = route.upstream_ms
                    events = _stream_events(row, route, request, stream, slot, timing, counted)
                    await anext(events)  # started: from here on its cleanup runs however it is left
                    handed_over = True
                    return Streaming(row, timing, events)
                async with admission.upstream_slot():
                    reply, output = await _ask(route, provider, request)
        except asyncio.CancelledError:
            failure = _cancelled(task)
            await _finish_failure(row, route, failure, started)
            if isinstance(failure, ClientDisconnected):
                raise
            raise failure from None
        except GatewayError as exc:
            await _finish_failure(row, route, exc, started, raw_output=getattr(exc, "raw_output", ""))
            raise
        except Exception as exc:
            logger.exception("provider failed unexpectedly", extra={"request_id": str(request_id)})
            failure = GatewayError(f"Unexpected gateway error: {exc.__class__.__name__}")
            await _finish_failure(row, route, failure, started)
            raise failure from None
        timing.upstream_ms = route.upstream_ms
        timing.provider_durations = reply.durations or {}
        row.models_tried = route.tried
        await _finish(row, row.succeed, output=_storable(output), model=reply.model,
                      prompt_tokens=reply.prompt_tokens, completion_tokens=reply.completion_tokens,
                      upstream_ms=_rounded(route.upstream_ms), latency_ms=_elapsed_ms(started),
                      attempts=route.attempts, finish_reason=reply.finish_reason)
        return row, timing
    finally:
        admission.unregister(task)
        if not handed_over:
            _release_consumer(row)
            counted.__exit__()


async def _count_throttled(exc: AuthThrottled, started: float) -> None:
    """A request refused before its key was read: counted in the one row of its address and minute."""
    await failed_keys.record(exc.row, exc, latency_ms=_elapsed_ms(started))


async def _ask(route: Route, provider, request: GenerationRequest):
    reply = await route.ask(provider, request)
    try:
        return reply, _read_output(route, reply, request)
    except InvalidOutput:
        # A model that answers prose instead of JSON, or JSON that misses the template's schema, usually
        # complies when asked again; once is enough. The model that answered is the one asked again.
        logger.info("json-mode reply unusable; asking once more", extra={"model": reply.model})
        reply = await route.ask(provider, request)
        try:
            return reply, _read_output(route, reply, request)
        except InvalidOutput as exc:
            exc.raw_output = reply.content
            raise


async def _stream_events(row: Generation, route: Route, request: GenerationRequest, stream, slot, timing: Timing,
                         counted):
    """Deltas as they arrive, then the Outcome; the row is completed however the stream ends.

    Yields None once first, when generate() starts it: a started async generator is closed (and its cleanup run)
    even if the response never iterates it, e.g. when the client leaves before the first byte.
    """
    started = timing.started
    task = asyncio.current_task()
    text: list[str] = []
    error: GatewayError | None = None
    leaving: BaseException | None = None  # the client went away: re-raised once the row is complete
    try:
        try:
            yield None
            # The task that drives the response: the one to end when the worker stops.
            task = asyncio.current_task()
            admission.register(task)
            if stream.first:
                text.append(stream.first)
                row.first_token_ms = _elapsed_ms(started)
                yield Delta(stream.first)
            async for piece in _pieces(stream, timing):
                if row.first_token_ms is None:
                    row.first_token_ms = _elapsed_ms(started)
                text.append(piece)
                yield Delta(piece)
        except GatewayError as exc:
            error = exc
        except asyncio.CancelledError as exc:
            error = _cancelled(task)
            if isinstance(error, ClientDisconnected):
                leaving = exc
        except GeneratorExit as exc:
            error, leaving = ClientDisconnected("The client closed the stream before it ended."), exc
        except Exception as exc:
            logger.exception("stream failed unexpectedly", extra={"request_id": str(row.id)})
            error = GatewayError(f"Unexpected gateway error: {exc.__class__.__name__}")
        reply = stream.reply
        output = None
        if error is None:
            try:
                output = _read_output(route, reply, request)
            except InvalidOutput as exc:
                error = exc
        row.models_tried = route.tried
        if error is None:
            timing.provider_durations = reply.durations or {}
            await _finish(row, row.succeed, output=_storable(output), model=reply.model,
                          prompt_tokens=reply.prompt_tokens, completion_tokens=reply.completion_tokens,
                          upstream_ms=_rounded(timing.upstream_ms), latency_ms=_elapsed_ms(started),
                          attempts=route.attempts, finish_reason=reply.finish_reason)
        else:
            # The client was sent 200 and the stream so far; the error is the row's (499 if it went away).
            await _finish(row, row.fail, error_type=error.type, message=_storable(error.staff_message),
                          http_status=error.status if leaving else 200, latency_ms=_elapsed_ms(started),
                          upstream_ms=_rounded(timing.upstream_ms), raw_output=_storable("".join(text)),
                          attempts=route.attempts, prompt_tokens=reply.prompt_tokens if reply else None,
                          # Without Ollama's final chunk, the pieces received are the best count there is.
                          completion_tokens=reply.completion_tokens if reply else stream.pieces_received)
    finally:
        await asyncio.shield(stream.aclose())
        await slot.__aexit__(None, None, None)
        admission.unregister(task)
        _release_consumer(row)
        counted.__exit__()
    if leaving is not None:
        raise leaving
    yield Outcome(row, error)


async def _pieces(stream, timing: Timing):
    """The stream's pieces after the first, the wait for each counted as upstream time and bound by the deadline."""
    pieces = aiter(stream)
    while True:
        waited = time.perf_counter()
        try:
            async with Deadline(timing.started):
                piece = await anext(pieces)
        except StopAsyncIteration:
            return
        finally:
            timing.upstream_ms += (time.perf_counter() - waited) * 1000
        yield piece


def _cancelled(task: asyncio.Task | None) -> GatewayError:
    """Why a generation was cancelled: its client went away, or the worker is ending it (then it carries on)."""
    if admission.ending():
        if task is not None and task.cancelling():
            task.uncancel()  # answered and recorded like any other failure
        return ShuttingDown("The gateway process stopped before the generation finished, so it was ended. "
                            "Try again: another process answers.")
    return ClientDisconnected("The client closed the connection before the answer was complete.")


class Deadline:
    """The generation's whole allowance, GENERATION_DEADLINE from the request's arrival: then UpstreamTimeout."""

    def __init__(self, started: float):
        remaining = settings.GENERATION_DEADLINE - (time.perf_counter() - started)
        self._timeout = asyncio.timeout(max(remaining, 0))

    async def __aenter__(self):
        await self._timeout.__aenter__()
        return self

    async def __aexit__(self, exc_type, exc, tb):
        try:
            return await self._timeout.__aexit__(exc_type, exc, tb)
        except TimeoutError:
            if not self._timeout.expired():
                raise
            raise UpstreamTimeout(
                f"The generation did not finish within {settings.GENERATION_DEADLINE:g}s (GENERATION_DEADLINE), "
                "retries and fallbacks included."
            ) from None


def _release_consumer(row: Generation) -> None:
    if row.consumer_id is not None:
        admission.release_consumer_slot(row.consumer_id)


async def _finish_failure(row: Generation, route: Route, exc: GatewayError, started: float, *,
                          raw_output: str = "") -> None:
    row.models_tried = route.tried
    await _finish(row, row.fail, error_type=exc.type, message=_storable(exc.staff_message), http_status=exc.status,
                  latency_ms=_elapsed_ms(started),
                  upstream_ms=_rounded(route.upstream_ms) if route.tried else None,
                  raw_output=_storable(raw_output), attempts=route.attempts)


async def _finish(row: Generation, transition, **fields) -> None:
    """Complete the row in a database step that runs to the end even if the request is cancelled meanwhile."""
    await asyncio.shield(db_step(_complete, row, transition, **fields))


def _begin(*, request_id: UUID, body: bytes, body_size: int, body_timed_out: bool, content_type: str,
           started: float, caller: Caller, door: FrontDoor):
    """The database step before the provider is called: admit, validate, and write the pending row.

    Returns (row, request, models, streamed); raises the GatewayError answered, with its row completed.
    """
    # A Content-Length is whatever the client wrote (99999999999): the column holds up to 2**31 - 1 everywhere.
    row = Generation(id=request_id, request_bytes=min(body_size, MAX_REQUEST_BYTES),
                     client_ip=caller.client_ip or None, user_agent=(caller.user_agent or "")[:512],
                     dialect=door.dialect, endpoint=door.endpoint[: Generation._meta.get_field("endpoint").max_length])
    slot_taken = False
    try:
        try:
            _authenticate(caller)
            known_key = caller.api_key or getattr(caller.refusal, "api_key", None)
            if known_key is not None:
                row.consumer, row.api_key_prefix = known_key.consumer, known_key.prefix
            _admit(caller.api_key, caller.refusal)
            if body_timed_out:
                raise RequestTimeout(f"The request body did not arrive within {settings.REQUEST_BODY_TIMEOUT:g}s "
                                     f"(REQUEST_BODY_TIMEOUT); {body_size} bytes came.")
            data = _parse(body, body_size, content_type, door.max_body_bytes)
            if door.masks_secrets:
                # Secrets are masked first: neither the audit log nor the model ever sees them.
                data = mask_secrets(data, settings.REDACT_KEYS)
            row.request = _storable(data)
            _describe(row, data, door.described)
            neutral = door.parse(data)
            problem = _unstorable(data)
            if problem:
                raise InvalidRequest(f"The request is invalid: {problem}.")
            request, models = _resolve(neutral, row, caller.api_key.consumer)
            streamed = neutral.stream
            admission.take_consumer_slot(caller.api_key.consumer)
            slot_taken = True
        except AuthThrottled as exc:
            exc.row = row  # not written here: generate() counts it in its address's row (llm.failed_keys)
            raise
        except GatewayError as exc:
            _record_failure(row, exc, started)
            raise
        except DatabaseError as exc:
            # Reading the prompt template is the first database query of a generation.
            logger.error("database not readable; generation refused", extra={"request_id": str(request_id),
                                                                              "error": str(exc)})
            refused = AuditUnavailable("The database (prompt templates) cannot be read, so nothing was generated. "
                                       "Try again later.")
            # If the database is down altogether, this raises AuditUnavailable itself: the row cannot be written.
            _record_failure(row, refused, started)
            raise refused from None

        row.provider = get_provider().name
        row.prompt = request.messages
        row.model = request.model[: Generation.SHORT]
        row.stream = streamed
        try:
            row.save(force_insert=True)
        except DatabaseError as exc:
            logger.error("audit row not written; generation refused", extra={"request_id": str(request_id),
                                                                              "error": str(exc)})
            metrics.audit_write_failed("insert")
            raise AuditUnavailable("The audit log cannot be written, so nothing was generated. Try again later.")
    except BaseException:
        if slot_taken:
            admission.release_consumer_slot(row.consumer_id)
        raise
    return row, request, models, streamed


def _authenticate(caller: Caller) -> None:
    """Verify the key presented: caller.api_key, or caller.refusal saying why not (AuditUnavailable if unreadable).

    AuthThrottled, before any key is read, for an address past FAILED_KEYS_PER_MINUTE refusals (llm.failed_keys).
    """
    try:
        caller.api_key = api_keys.check(caller.presented_key, refusal=caller.refusal, client_ip=caller.client_ip)
    except NotAuthenticated as refusal:
        caller.refusal = refusal


def _admit(api_key: ApiKey | None, refusal: NotAuthenticated | None) -> None:
    """Let an authenticated consumer within its rate limit in; the body of anyone else is not even parsed."""
    if refusal is not None:
        raise refusal
    if api_key is None:
        raise api_keys.missing_key()
    # Counted after authentication: unauthenticated traffic must not use up a consumer's allowance.
    rate_limits.count_request(api_key.consumer)


def _parse(body: bytes, body_size: int, content_type: str, limit: int):
    if body_size > limit:
        # Only a declared size is known: a chunked body was read no further than one chunk past the limit.
        raise PayloadTooLarge(f"The request body is over the limit of {limit} bytes ({limit / 1024:g} KiB).")
    if content_type and content_type.split(";")[0].strip().lower() not in ("application/json", ""):
        raise UnsupportedMediaType(f"Content-Type must be application/json, not {content_type[:100]!r}.")
    if not body.strip():
        raise InvalidRequest("The request body is empty; send a JSON object.")
    try:
        data = json.loads(body, parse_constant=_reject_constant, parse_float=_finite_float)
    except (ValueError, RecursionError) as exc:
        # ValueError covers JSONDecodeError, invalid UTF-8 and the constants rejected below.
        raise InvalidRequest(f"The request body is not valid JSON: {str(exc)[:200]}") from None
    # Checked without recursion, before anything walks the value recursively (masking, storing, validating):
    # a body nested hundreds of levels deep would otherwise exhaust Python's stack.
    if _nesting(data) > MAX_DEPTH:
        raise InvalidRequest(f"The request body is nested more than {MAX_DEPTH} levels deep.")
    return data


def _nesting(value) -> int:
    """How many levels of objects and arrays a parsed JSON value has, counted without recursion."""
    deepest, stack = 0, [(value, 0)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, dict):
            stack.extend((child, depth + 1) for child in item.values())
        elif isinstance(item, list):
            stack.extend((child, depth + 1) for child in item)
        else:
            continue
        deepest = max(deepest, depth + 1)
        if deepest > MAX_DEPTH:
            break
    return deepest


def _reject_constant(name: str):
    raise ValueError(f"{name} is not valid JSON")


def _finite_float(text: str) -> float:
    value = float(text)
    if value in (float("inf"), float("-inf")):
        raise ValueError(f"number {text[:40]} is out of range")
    return value


def _describe(row: Generation, data, columns: tuple[str, ...]) -> None:
    """Fill the audit columns from the raw request, as far as they can be read, before validation."""
    if not isinstance(data, dict):
        return
    for column in columns:
        value = data.get(column)
        if isinstance(value, str):
            # Each column's own length: PostgreSQL refuses a longer value (a 9-character mode) outright.
            setattr(row, column, _storable(value)[: Generation._meta.get_field(column).max_length])


def _resolve(neutral: NeutralRequest, row: Generation, consumer: Consumer) -> tuple[GenerationRequest, list[str]]:
    """The request to send and the models to try, within what the consumer may use; recorded on the row."""
    row.stream = neutral.stream
    row.end_user = _storable(neutral.user)[: Generation._meta.get_field("end_user").max_length]
    if neutral.templated:
        return _from_template(neutral, row, consumer)
    if consumer.templates_only:
        raise RawPromptsNotAllowed(
            f"Consumer {consumer.name!r} may use prompt templates only (POST /api/v1/llm/generate), "
            "not raw prompts.")
    # A raw chat has no template: role and task stay empty, and the client's model is the one it gets.
    row.role = row.task = ""
    row.mode = mode = neutral.mode or TEXT
    models = model_access.permitted(consumer, [neutral.model], chosen=True)
    return GenerationRequest(
        role="", task="", payload=None, mode=mode, model=models[0], messages=neutral.messages,
        options=dict(neutral.options), output_schema=neutral.output_schema if mode == "json" else None,
    ), models


def _from_template(neutral: NeutralRequest, row: Generation, consumer: Consumer):
    version = current_version_for(neutral.role, neutral.task)
    row.template_version = version
    mode = neutral.mode or version.mode
    row.mode = mode
    models = candidate_models(version, neutral.model, consumer)
    row.model = models[0][: Generation.SHORT]
    return GenerationRequest(
        role=neutral.role,
        task=neutral.task,
        payload=neutral.payload,
        mode=mode,
        model=models[0],
        # The request's own options override the template's defaults, one key at a time.
        options={**version.options, **neutral.options},
        messages=_render(version, neutral.payload, mode),
        output_schema=version.output_schema if mode == "json" else None,
    ), models


def _render(version: PromptTemplateVersion, payload: dict, mode: str) -> list[dict]:
    try:
        return version.render(payload, mode)
    except MissingPlaceholders as exc:
        template = version.template
        names = ", ".join(exc.names)
        raise InvalidRequest(
            f"The payload lacks {names}, which the {template.role}/{template.task} template needs. "
            f"Its payload fields: {', '.join(version.payload_fields)}.",
            details={"payload": {name: ["Required by the template."] for name in exc.names}},
        ) from None


def _read_output(route: Route, reply, request: GenerationRequest):
    """The reply as the client gets it; InvalidOutput (recorded against the call) if it is not usable."""
    try:
        return read_output(reply.content, request.mode, request.output_schema)
    except InvalidOutput as exc:
        route.reject(exc)
        raise


def _unstorable(value, path: str = "body") -> str | None:
    """Why a parsed request cannot be stored or sent faithfully (NUL, lone surrogate), or None.

    Its depth is already bounded: _parse refuses anything nested deeper than MAX_DEPTH.
    """
    if isinstance(value, str):
        if "\x00" in value:
            return f"{path} contains a NUL character"
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            return f"{path} contains an unpaired surrogate (\\ud800-\\udfff)"
    elif isinstance(value, dict):
        for key, item in value.items():
            problem = _unstorable(key, f"{path} key") or _unstorable(item, f"{path}.{key}")
            if problem:
                return problem
    elif isinstance(value, list):
        for index, item in enumerate(value):
            problem = _unstorable(item, f"{path}[{index}]")
            if problem:
                return problem
    return None


def _storable(value):
    """A copy that every database accepts: NUL becomes U+FFFD, an unpaired surrogate "?"."""
    if isinstance(value, str):
        if "\x00" in value:
            value = value.replace("\x00", "\ufffd")
        return value.encode("utf-8", "replace").decode("utf-8") if not value.isascii() else value
    if isinstance(value, dict):
        return {_storable(k): _storable(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_storable(v) for v in value]
    return value


def _record_failure(row: Generation, exc: GatewayError, started: float, *, upstream_ms: float | None = None,
                    raw_output: str = "", attempts: int = 0) -> None:
    _complete(row, row.fail, error_type=exc.type, message=_storable(exc.staff_message), http_status=exc.status,
              latency_ms=_elapsed_ms(started), upstream_ms=upstream_ms, raw_output=_storable(raw_output),
              attempts=attempts)


def _complete(row: Generation, transition, **fields) -> None:
    """Complete the row (inserting it if it is not written yet); see _finish for the async path."""
    inserting = row._state.adding
    try:
        transition(**fields)
    except DatabaseError as exc:
        logger.error("audit row not completed", extra={"request_id": str(row.id), "error": str(exc)})
        metrics.audit_write_failed("insert" if inserting else "update")
        if inserting:
            # Nothing of this attempt is on record: the client must not believe it was audited.
            raise AuditUnavailable("The audit log cannot be written. Try again later.") from None
        # The pending row exists; the reply is still the client's.
    finally:
        # Counted even when the row could not be saved: the metrics are what is left to alert on then.
        metrics.observe_generation(row, dialect=row.dialect)


def _elapsed_ms(started: float) -> float:
    return _rounded((time.perf_counter() - started) * 1000)


def _rounded(ms: float) -> float:
    return round(ms, 2)
