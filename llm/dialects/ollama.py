"""The Ollama dialect at Ollama's own paths: POST /api/chat and /api/generate (NDJSON streams by default, as in
Ollama), GET /api/tags, POST /api/show, GET /api/version, GET /api/ps.

So that `OLLAMA_HOST=http://gateway:8000` and the `ollama` clients work unchanged, with the key as a bearer token or
as the password of HTTP Basic auth. This module only translates: Ollama's request into the NeutralRequest, the
audit row (or the stream's events) into Ollama's replies, and the gateway's errors into `{"error": "..."}`.
Model management is refused outright: a consumer must never delete or replace the server's models.
"""

from __future__ import annotations

import json

from django.conf import settings
from django.http import JsonResponse, StreamingHttpResponse
from django.utils import timezone
from django.views.decorators.csrf import csrf_exempt

from gateway_project.middleware import annotate_request_log
from llm import listings, services
from llm.dialects import http
from llm.errors import GatewayError, InvalidRequest, ModelManagementRefused, PayloadTooLarge, annotate_error
from llm.models import Generation
from llm.request_rules import (JSON, ROLES, TEXT, NeutralRequest, invalid, model_name_problem, options_problems,
                               output_schema_problem)

NDJSON = "application/x-ndjson"
COMMON_FIELDS = {"model", "format", "options", "stream"}
CHAT_FIELDS = COMMON_FIELDS | {"messages"}
GENERATE_FIELDS = COMMON_FIELDS | {"prompt", "system"}
# Fields that act on the server for everyone (keep_alive holds a model in memory) or bypass the prompt as the
# gateway builds and records it (raw, template, context), or that it cannot carry yet: refused until an issue adds
# them. The values that ask for nothing, which the `ollama` clients send with every call, pass.
REFUSED = {"keep_alive": (), "raw": (False,), "template": ("",), "context": ([],), "tools": ([],),
           "images": ([],), "think": (False,), "suffix": ("",), "logprobs": (False,), "top_logprobs": (0,)}
MESSAGE_FIELDS = {"role", "content"}
MESSAGE_EMPTY_FIELDS = {"images", "tool_calls", "thinking", "tool_name"}


@csrf_exempt  # an API key authenticates, not a session cookie
async def chat(request):
    return await _generation(request, "/api/chat", parse_chat)


@csrf_exempt
async def generate(request):
    return await _generation(request, "/api/generate", parse_generate)


async def _generation(request, endpoint: str, parse):
    if request.method != "POST":
        return _method_not_allowed(request, "POST")
    door = services.FrontDoor(dialect=Generation.Dialect.OLLAMA, endpoint=endpoint, parse=parse,
                              max_body_bytes=settings.CHAT_MAX_BODY_BYTES)
    try:
        result = await http.generate(request, caller=http.caller_of(request, basic=True), door=door)
    except GatewayError as exc:
        return error_response(request, exc)
    as_chat = endpoint == "/api/chat"
    if isinstance(result, services.Streaming):
        row = result.row
        annotate_request_log(request, provider=row.provider, model=row.model, stream=True)
        return StreamingHttpResponse(_lines(request, result, as_chat), content_type=NDJSON,
                                     headers={"Server-Timing": http.server_timing(result.timing),
                                              "X-Accel-Buffering": "no", "Cache-Control": "no-cache"})
    row, timing = result
    annotate_request_log(request, provider=row.provider, model=row.model)
    return JsonResponse({**_piece(row, _text(row.output), as_chat), **_final(row, timing)},
                        headers={"Server-Timing": http.server_timing(timing)})


@csrf_exempt
async def tags(request):
    """GET /api/tags: the models the consumer may use."""
    return await _listing(request, "GET", lambda caller: _models(listings.models(caller)))


@csrf_exempt
async def show(request):
    """POST /api/show: a model the consumer may use; 404 for any other, as for a model that is missing."""
    if request.method != "POST":
        return _method_not_allowed(request, "POST")
    body, size, _ = http.read_body(request, settings.API_MAX_BODY_BYTES)
    return await _listing(request, "POST", lambda caller: listings.show(caller, lambda: _model_to_show(body, size)))


@csrf_exempt
async def ps(request):
    """GET /api/ps: the running models the consumer may use."""
    return await _listing(request, "GET", lambda caller: _models(listings.running(caller)))


@csrf_exempt
async def version(request):
    return await _listing(request, "GET", lambda caller: _version(listings.version(caller)))


async def _models(entries) -> dict:
    return {"models": await entries}


async def _version(number) -> dict:
    return {"version": await number}


async def _listing(request, method: str, answer):
    if request.method not in (method, "HEAD" if method == "GET" else method):
        return _method_not_allowed(request, method)
    caller = http.caller_of(request, basic=True)
    try:
        body = await answer(caller)
    except GatewayError as exc:
        return error_response(request, exc)
    finally:
        http.annotate_consumer(request, caller)
    return JsonResponse(body)


@csrf_exempt
async def model_management(request, digest: str = ""):
    """/api/pull, /api/push, /api/create, /api/copy, /api/delete and blobs: never, whoever asks."""
    return error_response(request, ModelManagementRefused(
        f"{request.path} is refused: models are managed on the Ollama server by its operator, never through the "
        "gateway. Use the models that GET /api/tags lists."))


@csrf_exempt
async def embeddings(request):
    return error_response(request, http.not_served(
        request, "Embeddings are not available through the gateway yet: only /api/chat, /api/generate and the model "
                 "listings are."))


# -- request ----------------------------------------------------------------------------------------------------------


def _model_to_show(body: bytes, size: int) -> str:
    """The model /api/show asks for (`model`, or the older `name`); PayloadTooLarge or InvalidRequest otherwise.

    The body is bounded, and only its top level is read: however deep it nests within the bound, nothing walks it.
    """
    limit = settings.API_MAX_BODY_BYTES
    if size > limit:
        raise PayloadTooLarge(f"request body is {size} bytes; the limit is {limit} bytes")
    try:
        data = json.loads(body or b"{}")
    except (ValueError, RecursionError):
        # ValueError covers invalid UTF-8; RecursionError, arrays or objects nested thousands of levels deep.
        raise InvalidRequest("the request body is not valid JSON (or is nested too deeply)") from None
    if not isinstance(data, dict):
        raise invalid("body", "the request body must be a JSON object")
    name = data.get("model") or data.get("name")
    if name in (None, ""):
        raise invalid("model", "model is required")
    # A model name is ASCII (which also keeps out a lone surrogate, which no database or HTTP body can carry).
    problem = model_name_problem(name)
    if problem:
        raise invalid("model", f"model: {problem}")
    return name



def parse_chat(data) -> NeutralRequest:
    """Ollama's /api/chat request as the NeutralRequest; InvalidRequest naming the field otherwise."""
    _check_fields(data, CHAT_FIELDS)
    messages = data.get("messages")
    if not isinstance(messages, list) or not messages:
        raise invalid("messages", "messages must be a non-empty array")
    return _neutral(data, [_message(m, i) for i, m in enumerate(messages)])


def parse_generate(data) -> NeutralRequest:
    """Ollama's /api/generate request (prompt and system) as a chat of one or two messages."""
    _check_fields(data, GENERATE_FIELDS)
    prompt, system = data.get("prompt"), data.get("system")
    if not isinstance(prompt, str) or not prompt:
        # An empty prompt is Ollama's "load the model" request, which acts on the server: not a consumer's to make.
        raise invalid("prompt", "prompt is required (a non-empty string)")
    if system is not None and not isinstance(system, str):
        raise invalid("system", "system must be a string")
    messages = ([{"role": "system", "content": system}] if system else []) + [{"role": "user", "content": prompt}]
    return _neutral(data, messages)


def _check_fields(data, allowed: set[str]) -> None:
    if not isinstance(data, dict):
        raise invalid("body", "the request body must be a JSON object")
    refused = [name for name, value in data.items() if name in REFUSED and value is not None
               and not any(type(value) is type(default) and value == default for default in REFUSED[name])]
    if refused:
        raise InvalidRequest(f"not supported by this gateway: {', '.join(refused)}",
                             details={name: ["Not supported by this gateway."] for name in refused})
    unknown = [name for name in data if name not in allowed and name not in REFUSED]
    if unknown:
        raise InvalidRequest(f"unknown fields: {', '.join(unknown)}",
                             details={name: ["Unknown field."] for name in unknown})


def _message(message, index: int) -> dict:
    where = f"messages[{index}]"
    if not isinstance(message, dict):
        raise invalid(where, f"{where} must be an object with role and content")
    role, content = message.get("role"), message.get("content", "")
    if role not in ROLES:
        raise invalid(f"{where}.role", f"{where}.role must be system, user or assistant (tools are not supported)")
    if not isinstance(content, str):
        raise invalid(f"{where}.content", f"{where}.content must be a string")
    extra = [k for k in message if k not in MESSAGE_FIELDS and not (k in MESSAGE_EMPTY_FIELDS and not message[k])]
    if extra:
        raise invalid(f"{where}.{extra[0]}", f"{where}: not supported by this gateway: {', '.join(extra)}")
    return {"role": role, "content": content}


def _neutral(data: dict, messages: list[dict]) -> NeutralRequest:
    model = data.get("model")
    problem = model_name_problem(model)
    if problem:
        raise invalid("model", f"model is required: {problem}" if model in (None, "") else f"model: {problem}")
    stream = data.get("stream")
    if stream is None:
        stream = True  # Ollama streams unless told not to
    elif not isinstance(stream, bool):
        raise invalid("stream", "stream must be true or false")
    options = data.get("options") or {}
    if not isinstance(options, dict):
        raise invalid("options", "options must be an object")
    problems = options_problems(options)
    if problems:
        shown = "; ".join(f"{name}: {' '.join(messages)}" for name, messages in problems.items())
        raise InvalidRequest(f"invalid options: {shown}", details={"options": problems})
    mode, schema = _format(data.get("format"))
    return NeutralRequest(messages=messages, model=model, options=options, mode=mode, output_schema=schema,
                          stream=stream)


def _format(value) -> tuple[str, dict | None]:
    if value in (None, ""):
        return TEXT, None
    if value == "json":
        return JSON, None
    if isinstance(value, dict):
        problem = output_schema_problem(value)
        if problem:
            raise invalid("format", f"format: {problem}")
        return JSON, value
    raise invalid("format", 'format must be "json" or a JSON schema object')


# -- response ---------------------------------------------------------------------------------------------------------


async def _lines(request, streaming: services.Streaming, as_chat: bool):
    row = streaming.row
    async for event in streaming.events():
        if isinstance(event, services.Delta):
            yield _line({**_piece(row, event.text, as_chat), "done": False})
            continue
        if event.error is not None:
            annotate_error(request, event.error)
            # The `ollama` clients raise ResponseError from a line holding `error`: the stream's last line.
            yield _line({"error": event.error.message})
            return
        yield _line({**_piece(event.row, "", as_chat), **_final(event.row, streaming.timing)})


def _piece(row: Generation, text: str, as_chat: bool) -> dict:
    body = {"model": row.model, "created_at": timezone.now().isoformat().replace("+00:00", "Z")}
    if as_chat:
        body["message"] = {"role": "assistant", "content": text}
    else:
        body["response"] = text
    return body


def _final(row: Generation, timing: services.Timing) -> dict:
    """The last object: done, why, and Ollama's counts and nanosecond durations (the gateway's total)."""
    measured = timing.provider_durations
    final = {"done": True, "done_reason": row.finish_reason or "stop",
             "total_duration": int((row.latency_ms or 0) * 1e6),
             "load_duration": measured.get("load_duration", 0)}
    if row.prompt_tokens is not None:
        final["prompt_eval_count"] = row.prompt_tokens
    final["prompt_eval_duration"] = measured.get("prompt_eval_duration", 0)
    if row.completion_tokens is not None:
        final["eval_count"] = row.completion_tokens
    final["eval_duration"] = measured.get("eval_duration", int((row.upstream_ms or 0) * 1e6))
    return final


def _text(output) -> str:
    if isinstance(output, str):
        return output
    return json.dumps(output, ensure_ascii=False) if output is not None else ""


def _line(obj) -> bytes:
    return json.dumps(obj, ensure_ascii=False, separators=(",", ":")).encode() + b"\n"


# -- errors -----------------------------------------------------------------------------------------------------------


def error_response(request, exc: GatewayError) -> JsonResponse:
    annotate_error(request, exc)
    return _error(request, exc.status, exc.message, exc.type, headers=exc.headers)


def _error(request, status: int, message: str, type_: str, *, headers: dict | None = None) -> JsonResponse:
    annotate_request_log(request, error_type=type_)
    return JsonResponse({"error": message}, status=status, headers=headers)


def _method_not_allowed(request, allowed: str) -> JsonResponse:
    return _error(request, 405, f"method {request.method} not allowed; use {allowed}", "method_not_allowed",
                  headers={"Allow": allowed})
