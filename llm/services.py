"""The generation use case: validate, write the audit row, call the provider, record the outcome."""

from __future__ import annotations

import json
import logging
import time
from uuid import UUID

from django.conf import settings
from django.db import DatabaseError

from gateway_project.redaction import mask_secrets
from llm import api_keys, metrics, rate_limits
from llm.errors import (AuditUnavailable, GatewayError, InvalidOutput, InvalidRequest, NotAuthenticated,
                        PayloadTooLarge, UnsupportedMediaType)
from llm.models import ApiKey, Generation, PromptTemplateVersion
from llm.output_schema import read_output
from llm.prompts import MissingPlaceholders
from llm.providers import GenerationRequest, get_provider
from llm.routing import Route, candidate_models
from llm.selectors import current_version_for
from llm.serializers import GenerateRequestSerializer

logger = logging.getLogger("llm.services")

MAX_DEPTH = 32


@metrics.in_flight()
def generate(*, request_id: UUID, body: bytes, body_size: int, content_type: str, started: float,
             api_key: ApiKey | None, refusal: NotAuthenticated | None = None, client_ip: str | None = None,
             user_agent: str = "") -> Generation:
    """Answer one generation request; return the completed audit row or raise the GatewayError answered.

    `api_key` is the caller's verified key; `refusal` why the key presented was refused. Whatever happens, the
    attempt leaves exactly one Generation row. If that row cannot be written, nothing is generated and
    AuditUnavailable is raised.
    """
    row = Generation(id=request_id, request_bytes=body_size, client_ip=client_ip or None,
                     user_agent=(user_agent or "")[:512])
    known_key = api_key or getattr(refusal, "api_key", None)
    if known_key is not None:
        row.consumer, row.api_key_prefix = known_key.consumer, known_key.prefix
    try:
        _admit(api_key, refusal)
        # Secrets are masked first: neither the audit log nor the model ever sees them.
        data = mask_secrets(_parse(body, body_size, content_type), settings.REDACT_KEYS)
        row.request = _storable(data)
        _describe(row, data)
        request, models = _validate(data, row)
    except GatewayError as exc:
        _record_failure(row, exc, started)
        raise
    except DatabaseError as exc:
        # Reading the prompt template is the first database query of a generation.
        logger.error("database not readable; generation refused", extra={"request_id": str(request_id),
                                                                          "error": str(exc)})
        refused = AuditUnavailable("The database (prompt templates) cannot be read, so nothing was generated. "
                                   "Try again later.")
        # If the database is down altogether, this raises AuditUnavailable itself: the row cannot be written either.
        _record_failure(row, refused, started)
        raise refused from None

    provider = get_provider()
    row.provider = provider.name
    row.prompt = request.messages
    row.model = request.model[: Generation.SHORT]
    try:
        row.save(force_insert=True)
    except DatabaseError as exc:
        logger.error("audit row not written; generation refused", extra={"request_id": str(request_id),
                                                                          "error": str(exc)})
        metrics.audit_write_failed("insert")
        raise AuditUnavailable("The audit log cannot be written, so nothing was generated. Try again later.")

    route = Route(models)
    reply = None
    try:
        reply = route.ask(provider, request)
        try:
            output = _read_output(route, reply, request)
        except InvalidOutput:
            # A model that answers prose instead of JSON, or JSON that misses the template's schema, usually
            # complies when asked again; once is enough. The model that answered is the one asked again.
            logger.info("json-mode reply unusable; asking once more", extra={"request_id": str(request_id)})
            reply = route.ask(provider, request)
            output = _read_output(route, reply, request)
    except GatewayError as exc:
        row.models_tried = route.tried
        _record_failure(row, exc, started, upstream_ms=_rounded(route.upstream_ms) if route.tried else None,
                        raw_output=reply.content if reply else "", attempts=route.attempts)
        raise
    except Exception as exc:
        logger.exception("provider failed unexpectedly", extra={"request_id": str(request_id)})
        row.models_tried = route.tried
        _record_failure(row, GatewayError(f"Unexpected gateway error: {exc.__class__.__name__}"), started,
                        attempts=route.attempts)
        raise
    row.models_tried = route.tried
    _complete(row, row.succeed, output=_storable(output), model=reply.model, prompt_tokens=reply.prompt_tokens,
              completion_tokens=reply.completion_tokens, upstream_ms=_rounded(route.upstream_ms),
              latency_ms=_elapsed_ms(started), attempts=route.attempts)
    return row


def _admit(api_key: ApiKey | None, refusal: NotAuthenticated | None) -> None:
    """Let an authenticated consumer within its rate limit in; the body of anyone else is not even parsed."""
    if refusal is not None:
        raise refusal
    if api_key is None:
        raise api_keys.missing_key()
    # Counted after authentication: unauthenticated traffic must not use up a consumer's allowance.
    rate_limits.count_request(api_key.consumer)


def _parse(body: bytes, body_size: int, content_type: str):
    limit = settings.GENERATE_MAX_BODY_BYTES
    if body_size > limit:
        raise PayloadTooLarge(f"The request body is {body_size} bytes; the limit is {limit} bytes (64 KiB).")
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


def _describe(row: Generation, data) -> None:
    """Fill the audit columns from the raw request, as far as they can be read, before validation."""
    if not isinstance(data, dict):
        return
    for column in ("role", "task", "mode", "model"):
        value = data.get(column)
        if isinstance(value, str):
            # Each column's own length: PostgreSQL refuses a longer value (a 9-character mode) outright.
            setattr(row, column, _storable(value)[: Generation._meta.get_field(column).max_length])


def _validate(data, row: Generation) -> tuple[GenerationRequest, list[str]]:
    """The request to send and the models to try; the template version used is recorded on the row."""
    serializer = GenerateRequestSerializer(data=data)
    if not serializer.is_valid():
        raise InvalidRequest("The request is invalid; see details.", details=serializer.errors)
    problem = _unstorable(data)
    if problem:
        raise InvalidRequest(f"The request is invalid: {problem}.")
    fields = serializer.validated_data
    version = current_version_for(fields["role"], fields["task"])
    row.template_version = version
    mode = fields.get("mode") or version.mode
    row.mode = mode
    models = candidate_models(version, fields.get("model"))
    row.model = models[0][: Generation.SHORT]
    return GenerationRequest(
        role=fields["role"],
        task=fields["task"],
        payload=fields["payload"],
        mode=mode,
        model=models[0],
        # The request's own options override the template's defaults, one key at a time.
        options={**version.options, **(fields.get("options") or {})},
        messages=_render(version, fields["payload"], mode),
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
    _complete(row, row.fail, error_type=exc.type, message=exc.message, http_status=exc.status,
              latency_ms=_elapsed_ms(started), upstream_ms=upstream_ms, raw_output=_storable(raw_output),
              attempts=attempts)


def _complete(row: Generation, transition, **fields) -> None:
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
        metrics.observe_generation(row)


def _elapsed_ms(started: float) -> float:
    return _rounded((time.perf_counter() - started) * 1000)


def _rounded(ms: float) -> float:
    return round(ms, 2)
