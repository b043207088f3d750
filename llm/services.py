"""The generation use case: validate, write the audit row, call the provider, record the outcome.

Async, with the database work in two steps run off the event loop (gateway_project.db_steps): `_begin` (key,
rate limit, validation, template, the pending row) before the provider is called and `_record` (the outcome)
after. No database connection is held while the provider is waited for. An outcome the database cannot take is
kept in the audit spool and replayed later (llm.audit_spool).

Every front door (the native API in llm.views, the OpenAI and Ollama dialects in llm.dialects) calls generate()
with its FrontDoor: its dialect and endpoint for the audit row, its body limit, and its parser from its wire
format to the NeutralRequest. The parser runs inside `_begin`, after authentication, so that a request it refuses
is audited with its consumer like any other.

The embeddings use case (llm.embeddings) is built from the same steps: admit() with its own `prepare`, the
upstream slot and the Deadline, ended() and record(); so "when is a row audited" has one answer for both.
"""

from __future__ import annotations

import asyncio
import fnmatch
import json
import logging
import secrets
import time
from dataclasses import dataclass, field, replace
from typing import Any, AsyncIterator, Callable, Iterable
from uuid import UUID

from django.conf import settings
from django.db import DatabaseError

from gateway_project import process_name
from gateway_project.db_steps import db_step
from gateway_project.redaction import mask_secrets
from llm import (admission, api_keys, audit_spool, budgets, content_hmac, failed_keys, large_bodies, metrics,
                 model_access,
                 rate_limits)
from llm.errors import (AuditUnavailable, AuthThrottled, ClientDisconnected, GatewayError, InvalidOutput,
                        InvalidRequest, NotAuthenticated, OriginNotAllowed, PayloadTooLarge, RawPromptsNotAllowed,
                        RequestTimeout, ShuttingDown, UnsupportedMediaType, UpstreamTimeout)
from llm.images import RemoteImage, UnreadableImage
from llm.models import ApiKey, Consumer, Generation, PromptTemplateVersion, ToolSet, audit_calls, audit_prompt
from llm.output_schema import checked_output
from llm.prompts import MissingPlaceholders
from llm.providers import GenerationRequest, get_provider
from llm.providers.base import Image, Message, ProviderReply, TextDelta, ThinkingDelta, ToolCall, ToolCallsDelta
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
    end_user: str = ""  # named by a header (END_USER_HEADERS): a chat UI's user behind the consumer's shared key
    origin: str = ""  # the browser origin the request came from, if a browser sent it


@dataclass(frozen=True)
class FrontDoor:
    """Where a generation request came in, as the use case needs to know it.

    `parse` turns the body's parsed JSON into the NeutralRequest, raising InvalidRequest (with per-field details)
    for what the dialect refuses. `described` are the top-level fields copied onto the row before validation, so
    that even a refused request shows what it asked for. `masks_secrets`: the body carries payload objects whose
    secret-named keys (REDACT_KEYS) are masked before anything sees them (the native API); a chat body carries
    text, where key names mean nothing (and OpenAI's own `max_tokens` would look like a secret).

    `images` finds the images in a parsed body: (container, key, reader) for each. Each is read once, and replaced
    where it stands by what reading it gave (llm.images), before `parse` and before anything is stored: the
    audit log never holds image bytes. A body with images may be up to `max_body_bytes`; without them it must fit
    `max_text_bytes`. `any_content_type`: the body is JSON whatever its Content-Type says (Ollama's own rule);
    such a door refuses browser origins outside OLLAMA_DIALECT_ORIGINS, as a form post could reach it cross-site.
    """

    dialect: str
    endpoint: str
    parse: Callable[[Any], NeutralRequest]
    max_body_bytes: int
    described: tuple[str, ...] = ("model",)
    masks_secrets: bool = False
    images: Callable[[Any], Iterable[tuple[Any, Any, Callable]]] | None = None
    max_text_bytes: int | None = None
    any_content_type: bool = False
    kind: str = Generation.Kind.GENERATION  # the use case behind the door: its rows' kind from the first


@dataclass
class Timing:
    """Where a request's time went so far: for Server-Timing and the audit row."""

    started: float
    upstream_ms: float = 0.0
    # The provider's own nanosecond durations of the reply (Ollama's load_duration, eval_duration, ...), once known.
    provider_durations: dict = field(default_factory=dict)

    def total_ms(self) -> float:
        return _elapsed_ms(self.started)


# What a stream yields before its Outcome: the provider's typed deltas.
Delta = TextDelta | ThinkingDelta | ToolCallsDelta


@dataclass
class Answer:
    """A generation answered whole: the completed audit row, where the time went, and the reply itself (whose
    tool calls keep the fields Ollama sent, for the Ollama dialect to give back unchanged)."""

    row: Generation
    timing: Timing
    reply: ProviderReply
    headers: dict = field(default_factory=dict)  # X-Budget-*, after this generation's count


@dataclass
class Outcome:
    """The end of a stream: the completed audit row, and the error the stream ended with, if any."""

    row: Generation
    error: GatewayError | None = None


@dataclass
class Streaming:
    """A streamed generation whose first delta has arrived. Send `body(render)` to the end, always."""

    row: Generation
    timing: Timing
    _events: AsyncIterator | None = field(default=None, repr=False)
    render: Callable[[Delta | Outcome], bytes] | None = field(default=None, repr=False)
    headers: dict = field(default_factory=dict)  # X-Budget-*, as at admission

    def body(self, render: Callable[[Delta | Outcome], bytes]) -> AsyncIterator[bytes]:
        """The response body: each Delta, then the Outcome, as `render` writes it in the front door's format.

        Whatever ends the stream, its last piece is the Outcome, an error one if need be: a `render` that raises
        ends the stream with the error rendered instead, and the row records it with the text sent until then.
        """
        self.render = render
        return self._events


async def generate(*, request_id: UUID, body: bytes, body_size: int, content_type: str, started: float,
                   caller: Caller, door: FrontDoor,
                   body_timed_out: bool = False) -> Answer | Streaming:
    """Answer one generation request: an Answer, or a Streaming; else raise the GatewayError answered.

    `body_size` over the door's limit, or `body_timed_out` (the client did not send it within REQUEST_BODY_TIMEOUT),
    means the body was not read: once the key is checked, the attempt is refused with 413 or 408, and recorded.

    Whatever happens, the attempt leaves exactly one Generation row, completed, a client that went away included;
    an error of the gateway's own is answered as `internal_error` and recorded so. If the pending row cannot be
    written, nothing is generated and AuditUnavailable is raised. An outcome the database cannot take is kept in
    the audit spool and replayed (llm.audit_spool).
    """
    timing = Timing(started)
    counted = metrics.in_flight(dialect=door.dialect)
    counted.__enter__()
    try:
        row, (request, models, streamed) = await admit(
            request_id=request_id, body=body, body_size=body_size, body_timed_out=body_timed_out,
            content_type=content_type, started=started, caller=caller, door=door, prepare=_prepare_generation)
    except BaseException:
        counted.__exit__()
        raise
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
                    streaming = Streaming(row, timing, headers=budget_headers(row))
                    streaming._events = _stream_events(streaming, route, request, stream, slot, counted)
                    await anext(streaming._events)  # started: from here on its cleanup runs however it is left
                    handed_over = True
                    return streaming
                async with admission.upstream_slot():
                    reply, output = await _ask(route, provider, request)
                timing.upstream_ms = route.upstream_ms
                timing.provider_durations = reply.durations or {}
                row.models_tried = route.tried
                row.succeed(output=_storable(output), model=reply.model, prompt_tokens=reply.prompt_tokens,
                            completion_tokens=reply.completion_tokens, upstream_ms=_rounded(route.upstream_ms),
                            latency_ms=_elapsed_ms(started), attempts=route.attempts,
                            finish_reason=reply.finish_reason, thinking=_storable(reply.thinking),
                            tool_calls=_storable(audit_calls(reply.tool_calls)), save=False)
        except (asyncio.CancelledError, Exception) as exc:
            raise await ended(row, route, exc, started, task) from None
        await record(row)
        return Answer(row, timing, reply, headers=budget_headers(row))
    finally:
        admission.unregister(task)
        if not handed_over:
            await release_consumer(row)
            counted.__exit__()


async def admit(*, request_id: UUID, body: bytes, body_size: int, body_timed_out: bool, content_type: str,
                started: float, caller: Caller, door: FrontDoor, prepare) -> tuple[Generation, Any]:
    """Run the database step before the provider is called (_begin): the pending row and what `prepare` made of
    the body; else raise the GatewayError answered, its row completed. One step for every use case."""
    begin = asyncio.ensure_future(db_step(
        _begin, request_id=request_id, body=body, body_size=body_size, body_timed_out=body_timed_out,
        content_type=content_type, started=started, caller=caller, door=door, prepare=prepare))
    try:
        admitted = await asyncio.shield(begin)
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
        await release_consumer(row)
        await _finish_failure(row, Route([]), _cancelled(None), started)
        raise
    row = admitted[0]
    # A metadata-only row's content stays out of what this task logs (the provider's excerpts of Ollama's errors too).
    content_hmac.withhold_here(not row.content_stored)
    if not row._local_slot and row.consumer is not None:
        # The consumer's cap across processes (admission.caps_shared()): taken on the event loop, once the row is
        # written, so that a refusal here completes it like any failure.
        try:
            row._lease = await admission.take_shared_consumer_slot(row.consumer)
        except (asyncio.CancelledError, Exception) as exc:
            raise await ended(row, Route([]), exc, started, asyncio.current_task()) from None
    return admitted


async def ended(row: Generation, route: Route, exc: BaseException, started: float,
                task: asyncio.Task | None) -> BaseException:
    """Complete the row of an attempt that the provider call (or the gateway around it) ended with `exc`; returns
    what to raise: the GatewayError answered, or the cancellation of a client that went away."""
    if isinstance(exc, asyncio.CancelledError):
        failure = _cancelled(task)
        await _finish_failure(row, route, failure, started)
        if isinstance(failure, ClientDisconnected):
            return exc
        failure.headers.update(budget_headers(row))
        return failure
    if isinstance(exc, GatewayError):
        await _finish_failure(row, route, exc, started, raw_output=getattr(exc, "raw_output", ""))
        exc.headers = {**budget_headers(row), **exc.headers}
        return exc
    failure = _unexpected(exc, row, f"{row.kind} failed unexpectedly")
    await _finish_failure(row, route, failure, started)
    failure.headers.update(budget_headers(row))
    return failure


async def _count_throttled(exc: AuthThrottled, started: float) -> None:
    """A request refused before its key was read: counted in the one row of its address and minute."""
    await failed_keys.record(exc.row, exc, latency_ms=_elapsed_ms(started))


async def _ask(route: Route, provider, request: GenerationRequest):
    reply = _with_call_ids(await route.ask(provider, request))
    try:
        return reply, await _read_output(route, reply, request)
    except InvalidOutput:
        # A model that answers prose instead of JSON, or JSON that misses the template's schema, usually
        # complies when asked again; once is enough. The model that answered is the one asked again.
        logger.info("json-mode reply unusable; asking once more", extra={"model": reply.model})
        reply = _with_call_ids(await route.ask(provider, request))
        try:
            return reply, await _read_output(route, reply, request)
        except InvalidOutput as exc:
            exc.raw_output = reply.content
            raise


async def _stream_events(streaming: Streaming, route: Route, request: GenerationRequest, stream, slot, counted):
    """The response body's pieces as they arrive, then the Outcome's; the row is completed however it ends.

    Yields None once first, when generate() starts it: a started async generator is closed (and its cleanup run)
    even if the response never iterates it, e.g. when the client leaves before the first byte.
    """
    row, timing = streaming.row, streaming.timing
    started = timing.started
    task = asyncio.current_task()
    sent = _Sent()  # what was rendered for the client: the row's if the stream fails
    output = error = None
    leaving: BaseException | None = None  # the client went away: re-raised once the row is complete
    last = b""
    try:
        try:
            yield None
            content_hmac.withhold_here(not row.content_stored)  # in the task that drives the response, too
            # The task that drives the response: the one to end when the worker stops.
            task = asyncio.current_task()
            admission.register(task)
            render = streaming.render
            async for delta in _deltas(stream, timing):
                if row.first_token_ms is None:
                    row.first_token_ms = _elapsed_ms(started)
                if isinstance(delta, ToolCallsDelta):
                    # Named before it is passed on: the client and the audit row see the same ids.
                    delta = ToolCallsDelta(_named(delta.calls))
                piece = render(delta)
                sent.add(delta)
                yield piece
            output = await _read_output(route, sent.reply(stream.reply), request)
        except GatewayError as exc:
            error = exc
        except asyncio.CancelledError as exc:
            error = _cancelled(task)
            if isinstance(error, ClientDisconnected):
                leaving = exc
        except GeneratorExit as exc:
            error, leaving = ClientDisconnected("The client closed the stream before it ended."), exc
        except Exception as exc:
            error = _unexpected(exc, row, "stream failed unexpectedly")
        try:
            last = _settle_stream(streaming, route, stream, output, error, sent, rendered=leaving is None)
        except Exception as exc:
            failure = _unexpected(exc, row, "stream's outcome not settled")
            _fail(row, failure, started, http_status=200, **sent.recorded())
        await record(row)
    finally:
        if row.status == Generation.Status.PENDING:
            # Only reached past an error that escaped the code above (or cancelled the write): still one row.
            _fail(row, GatewayError("The stream ended unexpectedly."), started, http_status=200,
                  **sent.recorded())
            await record(row)
        await asyncio.shield(stream.aclose())
        await slot.__aexit__(None, None, None)
        admission.unregister(task)
        await release_consumer(row)
        counted.__exit__()
    if leaving is not None:
        raise leaving
    if last:
        yield last


def _settle_stream(streaming: Streaming, route: Route, stream, output, error: GatewayError | None, sent: _Sent,
                   *, rendered: bool) -> bytes:
    """Set the stream's outcome on its row (written by the caller) and render the last piece the client gets.

    A success whose last piece cannot be rendered becomes an internal error, as the client then sees it.
    """
    row, timing = streaming.row, streaming.timing
    reply = stream.reply
    row.models_tried = route.tried
    if error is None:
        reply = sent.reply(reply)
        timing.provider_durations = reply.durations or {}
        row.succeed(output=_storable(output), model=reply.model, prompt_tokens=reply.prompt_tokens,
                    completion_tokens=reply.completion_tokens, upstream_ms=_rounded(timing.upstream_ms),
                    latency_ms=_elapsed_ms(timing.started), attempts=route.attempts,
                    finish_reason=reply.finish_reason, thinking=_storable(reply.thinking),
                    tool_calls=_storable(audit_calls(reply.tool_calls)), save=False)
        try:
            return streaming.render(Outcome(row))
        except Exception as exc:
            error = _unexpected(exc, row, "stream's last piece not rendered")
    # The client was sent 200 and the stream so far; the error is the row's (499 if it went away).
    _fail(row, error, timing.started, http_status=200 if rendered else error.status,
          upstream_ms=_rounded(timing.upstream_ms), attempts=route.attempts,
          prompt_tokens=reply.prompt_tokens if reply else None,
          # Without Ollama's final chunk, the deltas received are the best count there is.
          completion_tokens=reply.completion_tokens if reply else stream.deltas_received, **sent.recorded())
    if not rendered:
        return b""
    try:
        return streaming.render(Outcome(row, error))
    except Exception as exc:
        # Nothing else to tell the client with: the row and the log keep what happened.
        _unexpected(exc, row, "stream's error line not rendered")
        return b""


@dataclass
class _Sent:
    """What a stream has rendered for its client so far: text, thinking and tool calls (named as sent)."""

    text: list[str] = field(default_factory=list)
    thinking: list[str] = field(default_factory=list)
    calls: list[ToolCall] = field(default_factory=list)

    def add(self, delta: Delta) -> None:
        if isinstance(delta, TextDelta):
            self.text.append(delta.text)
        elif isinstance(delta, ThinkingDelta):
            self.thinking.append(delta.text)
        else:
            self.calls.extend(delta.calls)

    def reply(self, reply: ProviderReply) -> ProviderReply:
        """The provider's whole reply with its tool calls as the client got them (ids minted included)."""
        return replace(reply, tool_calls=tuple(self.calls))

    def recorded(self) -> dict:
        """The row's fields for a stream that failed: what the client was sent."""
        return {"raw_output": "".join(self.text), "thinking": _storable("".join(self.thinking)),
                "tool_calls": _storable(audit_calls(self.calls))}


async def _deltas(stream, timing: Timing):
    """The stream's deltas, its first included; the wait for each after the first counted as upstream time and
    bound by the deadline."""
    if stream.first is not None:
        yield stream.first
    deltas = aiter(stream)
    while True:
        waited = time.perf_counter()
        try:
            async with Deadline(timing.started):
                delta = await anext(deltas)
        except StopAsyncIteration:
            return
        finally:
            timing.upstream_ms += (time.perf_counter() - waited) * 1000
        yield delta


def _named(calls: tuple[ToolCall, ...]) -> tuple[ToolCall, ...]:
    """Tool calls each with an id: Ollama's when it sent one, else one minted here (call_…, unique per row: a
    client matches its tool results to calls by id). The raw call, as Ollama sent it, is left as it was."""
    return tuple(call if call.id else replace(call, id=f"call_{secrets.token_hex(12)}") for call in calls)


def _with_call_ids(reply: ProviderReply) -> ProviderReply:
    return replace(reply, tool_calls=_named(reply.tool_calls)) if reply.tool_calls else reply


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


def budget_headers(row: Generation) -> dict:
    """X-Budget-Remaining-Tokens and X-Budget-Window when a budget applies: after the row's count once settled."""
    reservation = getattr(row, "_budget", None)
    if reservation is None:
        return {}
    return reservation.headers(charged=row.budget_tokens if reservation.settled else None)


async def release_consumer(row: Generation) -> None:
    """Give back the consumer's slot the attempt held: this process's count, or its lease shared by all."""
    lease = getattr(row, "_lease", None)
    if lease is not None:
        row._lease = None
        # Shielded: a cancellation meanwhile must not leave the slot taken until the lease expires.
        await asyncio.shield(lease.release())
    elif getattr(row, "_local_slot", False):
        row._local_slot = False
        admission.release_consumer_slot(row.consumer_id)


async def _finish_failure(row: Generation, route: Route, exc: GatewayError, started: float, *,
                          raw_output: str = "") -> None:
    row.models_tried = route.tried
    _fail(row, exc, started, upstream_ms=_rounded(route.upstream_ms) if route.tried else None,
          raw_output=raw_output, attempts=route.attempts)
    await record(row)


async def record(row: Generation) -> None:
    """Write the row's outcome in a database step that runs to the end even if the request is cancelled meanwhile."""
    await asyncio.shield(db_step(_write_outcome, row))


def _unexpected(exc: BaseException, row: Generation, what: str) -> GatewayError:
    """An error of the gateway's own code, logged (bounded: see gateway_project.log_format) and answered as 500.

    A metadata-only row's is logged without the exception's message, which may quote the content."""
    extra = {"request_id": str(row.id), "error_class": exc.__class__.__name__}
    if row.content_stored:
        logger.error(what, exc_info=exc, extra=extra)
    else:
        logger.error(what, extra={**extra, "traceback": content_hmac.frames_only(exc)})
    return GatewayError(f"Unexpected gateway error ({exc.__class__.__name__}); it is logged with this request's id.")


def _begin(*, request_id: UUID, body: bytes, body_size: int, body_timed_out: bool, content_type: str,
           started: float, caller: Caller, door: FrontDoor, prepare):
    """The database step before the provider is called: admit, validate, and write the pending row.

    `prepare(row, data, door, caller, body_size)` is the use case's own part: it reads the parsed body into the
    request it sends, filling the row's columns. Returns (row, what prepare returned); raises the GatewayError
    answered, with its row completed.
    """
    # A Content-Length is whatever the client wrote (99999999999): the column holds up to 2**31 - 1 everywhere.
    row = Generation(id=request_id, request_bytes=min(body_size, MAX_REQUEST_BYTES),
                     client_ip=caller.client_ip or None, user_agent=(caller.user_agent or "")[:512],
                     dialect=door.dialect, endpoint=door.endpoint[: Generation._meta.get_field("endpoint").max_length],
                     kind=door.kind,
                     worker=process_name.current())
    slot_taken = False
    rate_key = None
    try:
        try:
            _authenticate(caller)
            known_key = caller.api_key or getattr(caller.refusal, "api_key", None)
            if known_key is not None:
                row.consumer, row.api_key_prefix = known_key.consumer, known_key.prefix
                # A metadata-only consumer's row is written, spooled and logged without content (Generation.save).
                row.content_stored = not known_key.consumer.metadata_only
            rate_key = _admit(caller.api_key, caller.refusal)
            if door.any_content_type:
                # After the key: a refused key is throttled and counted like any other (llm.failed_keys).
                _check_origin(caller.origin)
            if body_timed_out:
                raise RequestTimeout(f"The request body did not arrive within {settings.REQUEST_BODY_TIMEOUT:g}s "
                                     f"(REQUEST_BODY_TIMEOUT); {body_size} bytes came.")
            # Only images may make a body larger than the chat limit: such a body is parsed with its long base64
            # strings cut out, so that no step holds the event loop (llm.large_bodies).
            large = door.images is not None and door.max_text_bytes is not None and body_size > door.max_text_bytes
            data = _parse(body, body_size, content_type, door.max_body_bytes, any_type=door.any_content_type,
                          text_limit=door.max_text_bytes if large else None)
            # `prepare` ends with the budget's reservation (row._budget), once the request is known.
            prepared = prepare(row, data, door, caller, body_size)
            if not admission.caps_shared():
                # Shared through Redis instead, the cap's lease is taken on the event loop (admit()).
                admission.take_consumer_slot(caller.api_key.consumer)
                slot_taken = True
        except AuthThrottled as exc:
            exc.row = row  # not written here: generate() counts it in its address's row (llm.failed_keys)
            raise
        except GatewayError as exc:
            if isinstance(exc, budgets.BudgetExceeded):
                rate_limits.forgive(rate_key)  # a spent budget does not use up the rate limit too
            if isinstance(exc, AuditUnavailable) and caller.api_key is None and not row.api_key_prefix:
                # The key could not be looked up: its prefix still tells whose attempt this was.
                row.api_key_prefix = api_keys.presented_prefix(caller.presented_key)
            _record_failure(row, exc, started)
            raise
        except DatabaseError as exc:
            # Reading the prompt template is the first database query of a generation.
            logger.error("database not readable; generation refused", extra={"request_id": str(request_id),
                                                                              "error": _described(exc)})
            refused = AuditUnavailable("The database (prompt templates) cannot be read, so nothing was generated. "
                                       "Try again later.")
            # If the database is down altogether, the row is kept in the audit spool (or, if even that fails,
            # this raises AuditUnavailable itself).
            _record_failure(row, refused, started)
            raise refused from None
        except Exception as exc:
            failure = _unexpected(exc, row, "generation request failed unexpectedly")
            _record_failure(row, failure, started)
            raise failure from None

        row.provider = get_provider().name
        try:
            row.save(force_insert=True)
        except DatabaseError as exc:
            logger.error("audit row not written; generation refused", extra={"request_id": str(request_id),
                                                                              "error": _described(exc)})
            refused = AuditUnavailable("The gateway's database cannot be written, so nothing was generated. "
                                       "Try again later.")
            # The refusal is this attempt's row: kept in the audit spool if the database still refuses it.
            _record_failure(row, refused, started)
            raise refused from None
    except BaseException:
        if slot_taken:
            admission.release_consumer_slot(row.consumer_id)
        budgets.settle(getattr(row, "_budget", None), 0)
        raise
    row._local_slot = slot_taken
    return row, prepared


def _prepare_generation(row: Generation, data, door: FrontDoor, caller: Caller, body_size: int):
    """A generation's part of the step before the provider: images read, secrets masked, the body parsed into the
    request and the models to try. Returns (request, models, streamed)."""
    if door.images is not None:
        _read_images(data, door, body_size)
    if door.masks_secrets:
        # Secrets are masked first: neither the audit log nor the model ever sees them.
        data = mask_secrets(data, settings.REDACT_KEYS)
    row.request = _storable(data)
    _describe(row, data, door.described)
    neutral = door.parse(data)
    problem = _unstorable(data)
    if problem:
        raise InvalidRequest(f"The request is invalid: {problem}.")
    request, models = _resolve(neutral, row, caller)
    if request.tools and row.content_stored:
        # A metadata-only row keeps no tool definitions: its request's HMAC covers them.
        _keep_tool_set(row, request)
    row.prompt = _storable(audit_prompt(request.messages, request.completion))
    row.model = request.model[: Generation.SHORT]
    row.stream = neutral.stream
    # Last, once the request is known: what it may cost is reserved (settled when the outcome is written).
    row._budget = budgets.admit(consumer=caller.api_key.consumer, options=request.options,
                                estimate=budgets.prompt_estimate(request, body_size))
    return request, models, neutral.stream


def _authenticate(caller: Caller) -> None:
    """Verify the key presented: caller.api_key, or caller.refusal saying why not (AuditUnavailable if unreadable).

    AuthThrottled, before any key is read, for an address past FAILED_KEYS_PER_MINUTE refusals (llm.failed_keys).
    """
    try:
        caller.api_key = api_keys.check(caller.presented_key, refusal=caller.refusal, client_ip=caller.client_ip)
    except NotAuthenticated as refusal:
        caller.refusal = refusal


def _admit(api_key: ApiKey | None, refusal: NotAuthenticated | None) -> str | None:
    """Let an authenticated consumer within its rate limit in; the body of anyone else is not even parsed.

    Returns the rate limit's counter key (rate_limits.forgive), None if nothing was counted.
    """
    if refusal is not None:
        raise refusal
    if api_key is None:
        raise api_keys.missing_key()
    # Counted after authentication: unauthenticated traffic must not use up a consumer's allowance.
    return rate_limits.count_request(api_key.consumer)


def _check_origin(origin: str) -> None:
    """A browser's request from an origin outside OLLAMA_DIALECT_ORIGINS is refused: the dialect reads any body
    as JSON, so a page elsewhere could make a visitor's browser send one (with remembered Basic credentials)."""
    if not origin:
        return
    allowed = settings.OLLAMA_DIALECT_ORIGINS
    if any(pattern == "*" or fnmatch.fnmatchcase(origin.lower(), pattern.lower()) for pattern in allowed):
        return
    raise OriginNotAllowed(
        f"Requests from the browser origin {origin[:200]!r} are refused: it is not in the gateway's "
        "OLLAMA_DIALECT_ORIGINS. Ask the operator to add it, or call the gateway from a server.")


def _parse(body: bytes, body_size: int, content_type: str, limit: int, *, any_type: bool = False,
           text_limit: int | None = None):
    if body_size > limit:
        # Only a declared size is known: a chunked body was read no further than one chunk past the limit.
        raise PayloadTooLarge(f"The request body is over the limit of {limit} bytes ({limit / 1024:g} KiB).")
    if any_type:
        pass  # JSON whatever the Content-Type, as Ollama reads it (curl -d sends a form type)
    elif content_type and content_type.split(";")[0].strip().lower() not in ("application/json", ""):
        raise UnsupportedMediaType(f"Content-Type must be application/json, not {content_type[:100]!r}.")
    if not body.strip():
        raise InvalidRequest("The request body is empty; send a JSON object.")
    try:
        if text_limit is not None:
            data = large_bodies.loads(body, _json_loads, text_limit)
        else:
            data = _json_loads(body)
    except large_bodies.TextTooLarge as exc:
        raise _text_too_large(exc.size, text_limit) from None
    except (ValueError, RecursionError) as exc:
        # ValueError covers JSONDecodeError, invalid UTF-8 and the constants rejected below.
        raise InvalidRequest(f"The request body is not valid JSON: {str(exc)[:200]}") from None
    # Checked without recursion, before anything walks the value recursively (masking, storing, validating):
    # a body nested hundreds of levels deep would otherwise exhaust Python's stack.
    if _nesting(data) > MAX_DEPTH:
        raise InvalidRequest(f"The request body is nested more than {MAX_DEPTH} levels deep.")
    return data


def _read_images(data, door: FrontDoor, body_size: int) -> None:
    """Read each image of the body once, and put what reading gave in its place (see FrontDoor.images).

    The body without its images must fit the chat limit: only images earn the larger one.
    """
    found = list(door.images(data))
    carried = sum(len(container[key]) for container, key, _ in found
                  if isinstance(container[key], (str, large_bodies.Base64Text)))
    if door.max_text_bytes is not None and body_size - carried > door.max_text_bytes:
        raise _text_too_large(body_size - carried, door.max_text_bytes)
    for container, key, read in found:
        container[key] = read(container[key])
    large_bodies.restore(data)  # a long base64 string where no image goes is text like any other


def _text_too_large(size: int, limit: int) -> PayloadTooLarge:
    return PayloadTooLarge(f"The request body holds at least {size} bytes besides its images; the limit is {limit} "
                           f"bytes ({limit / 1024:g} KiB, CHAT_MAX_BODY_BYTES). Only images may make a body larger.")


def _keep_tool_set(row: Generation, request: GenerationRequest) -> None:
    """The tools offered, stored once per distinct set: the row keeps the set's SHA-256, and its copy of the
    request a reference instead of the definitions (a chat UI sends the same 25 KB of tools with every message)."""
    tool_set = ToolSet.keep([tool.definition for tool in request.tools])
    row.tool_set_id = tool_set.sha256
    if isinstance(row.request, dict) and isinstance(row.request.get("tools"), list):
        row.request = {**row.request, "tools": {"tool_set": tool_set.sha256, "count": len(request.tools)}}


def _json_loads(body: bytes):
    return json.loads(body, parse_constant=_reject_constant, parse_float=_finite_float)


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
    """Fill the audit columns from the raw request, as far as they can be read, before validation.

    Not for a metadata-only row: what a refused body says is content; validation fills in what it accepts."""
    if not isinstance(data, dict) or not row.content_stored:
        return
    for column in columns:
        value = data.get(column)
        if isinstance(value, str):
            # Each column's own length: PostgreSQL refuses a longer value (a 9-character mode) outright.
            setattr(row, column, _storable(value)[: Generation._meta.get_field(column).max_length])


def _resolve(neutral: NeutralRequest, row: Generation, caller: Caller) -> tuple[GenerationRequest, list[str]]:
    """The request to send and the models to try, within what the consumer may use; recorded on the row."""
    consumer = caller.api_key.consumer
    row.stream = neutral.stream
    # The body's end user (OpenAI's `user`) wins over a header's.
    row.end_user = _storable(neutral.user or caller.end_user)[: Generation._meta.get_field("end_user").max_length]
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
        role="", task="", payload=None, mode=mode, model=models[0], messages=list(neutral.messages or ()),
        options=dict(neutral.options), output_schema=neutral.output_schema if mode == "json" else None,
        tools=neutral.tools, think=neutral.think, keep_alive=neutral.keep_alive, completion=neutral.completion,
    ), models


def _from_template(neutral: NeutralRequest, row: Generation, consumer: Consumer):
    version = current_version_for(neutral.role, neutral.task)
    row.template_version = version
    row.role, row.task = version.template.role, version.template.task
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


def _render(version: PromptTemplateVersion, payload: dict, mode: str) -> list[Message]:
    try:
        return [Message(role=m["role"], content=m["content"]) for m in version.render(payload, mode)]
    except MissingPlaceholders as exc:
        template = version.template
        names = ", ".join(exc.names)
        raise InvalidRequest(
            f"The payload lacks {names}, which the {template.role}/{template.task} template needs. "
            f"Its payload fields: {', '.join(version.payload_fields)}.",
            details={"payload": {name: ["Required by the template."] for name in exc.names}},
        ) from None


async def _read_output(route: Route, reply, request: GenerationRequest):
    """The reply's content as the client gets it; InvalidOutput (recorded against the call) if it is not usable.

    The json-mode (or schema) check reads the content only, never the thinking; a reply that calls tools is no
    answer yet, so its content is kept as text, unchecked.
    """
    if reply.tool_calls:
        return reply.content
    try:
        return await checked_output(reply.content, request.mode, request.output_schema)
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
    """A copy that every database accepts: NUL becomes U+FFFD, an unpaired surrogate "?"; an image (read or not)
    becomes what the audit log keeps of it, never its bytes."""
    if isinstance(value, (Image, UnreadableImage, RemoteImage)):
        return _storable(value.audit())
    if isinstance(value, str):
        if "\x00" in value:
            value = value.replace("\x00", "\ufffd")
        return value.encode("utf-8", "replace").decode("utf-8") if not value.isascii() else value
    if isinstance(value, dict):
        return {_storable(k): _storable(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_storable(v) for v in value]
    return value


def _record_failure(row: Generation, exc: GatewayError, started: float) -> None:
    """Complete a row refused before the provider was called (in a database step)."""
    _fail(row, exc, started)
    _write_outcome(row)


def _fail(row: Generation, exc: GatewayError, started: float, *, http_status: int | None = None,
          raw_output: str = "", **fields) -> None:
    # The staff's message: the client's, plus what the client must not see (the server's address, its answer).
    row.fail(error_type=exc.type, message=_storable(exc.staff_message),
             http_status=exc.status if http_status is None else http_status,
             latency_ms=_elapsed_ms(started), raw_output=_storable(raw_output), save=False, **fields)


def _write_outcome(row: Generation) -> None:
    """Write the completed row; if the database cannot take it, keep it in the audit spool to be replayed.

    Raises AuditUnavailable only when nothing of the attempt is on record or kept: the client must not then
    believe it was audited.
    """
    inserting = row._state.adding
    reservation = getattr(row, "_budget", None)
    if reservation is not None and not reservation.settled:
        # What the attempt counts against its budget, kept on the row: the totals are rebuilt from these.
        row.budget_tokens = budgets.charged(row, reservation.prompt_estimate)
    try:
        try:
            row.save_outcome()
        except DatabaseError:
            raise
        except Exception as exc:
            # A value that no column takes: the outcome without the content, rather than no outcome.
            failure = _unexpected(exc, row, "audit row not storable")
            row.output, row.raw_output = None, ""
            row.status, row.error_type, row.error_message = Generation.Status.FAILED, failure.type, failure.message
            row.save_outcome()
    except DatabaseError as exc:
        metrics.audit_write_failed("insert" if inserting else "update")
        kept = audit_spool.keep(row)
        logger.warning("audit row not written: kept for replay" if kept else "audit row not written",
                       extra={"request_id": str(row.id), "error": _described(exc)})
        if not kept and inserting:
            raise AuditUnavailable("The gateway's database cannot be written, so nothing was generated. "
                                   "Try again later.") from None
        # The pending row exists (or the outcome is kept): the reply is still the client's.
    finally:
        if reservation is not None:
            budgets.settle(reservation, row.budget_tokens or 0)
        # Counted even when the row could not be saved: the metrics are what is left to alert on then.
        metrics.observe_generation(row, dialect=row.dialect)


def _described(exc: DatabaseError) -> str:
    """A database error for the log: its class and first line (PostgreSQL's next ones quote the statement's values,
    the prompt among them)."""
    return f"{exc.__class__.__name__}: {(str(exc).splitlines() or [''])[0][:300]}"


def _elapsed_ms(started: float) -> float:
    return _rounded((time.perf_counter() - started) * 1000)


def _rounded(ms: float) -> float:
    return round(ms, 2)
