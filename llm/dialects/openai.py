"""The OpenAI dialect under /v1/: POST /v1/chat/completions (JSON or server-sent events), GET /v1/models[/{model}].

So that `OpenAI(base_url="http://gateway/v1", api_key=KEY)` works unchanged. This module only translates: OpenAI's
request into the NeutralRequest, the audit row (or the stream's events) into OpenAI's objects, and the gateway's
errors into `{"error": {"message", "type", "param", "code"}}` with the statuses the SDK maps to its own classes.
"""

from __future__ import annotations

import json
from datetime import datetime

from django.conf import settings
from django.http import HttpResponse, JsonResponse, StreamingHttpResponse
from django.views.decorators.csrf import csrf_exempt

from gateway_project.middleware import annotate_request_log
from llm import listings, services
from llm.dialects import http
from llm.errors import GatewayError, InvalidRequest, annotate_error
from llm.models import Generation
from llm.request_rules import (JSON, TEXT, NeutralRequest, invalid, model_name_problem, options_problems,
                               output_schema_problem)

CHAT_ENDPOINT = "/v1/chat/completions"

# Parameters the gateway maps onto Ollama's options: OpenAI's name -> Ollama's.
OPTIONS = {"temperature": "temperature", "top_p": "top_p", "seed": "seed", "stop": "stop",
           "frequency_penalty": "frequency_penalty", "presence_penalty": "presence_penalty",
           "max_completion_tokens": "num_predict", "max_tokens": "num_predict"}
SUPPORTED = {"model", "messages", "stream", "stream_options", "response_format", "user", *OPTIONS}
# Parameters the gateway cannot honour, accepted only at values that ask for nothing: LangChain and chat UIs send
# these defaults with every request. Any other value is refused by name, never dropped.
AT_DEFAULT = {
    "n": (1,), "logprobs": (False,), "top_logprobs": (0,), "logit_bias": ({},), "tools": ([],),
    "tool_choice": ("none", "auto"), "functions": ([],), "function_call": ("none", "auto"), "store": (False,),
    "metadata": ({},), "service_tier": ("auto", "default"), "modalities": (["text"],), "audio": (),
    "prediction": (), "reasoning_effort": (), "web_search_options": (), "safety_identifier": (),
    "prompt_cache_key": (), "verbosity": (),
}
# Accepted true or false: it asks for nothing without tools (which are refused).
ANY_BOOLEAN = {"parallel_tool_calls"}
MESSAGE_ROLES = {"system": "system", "developer": "system", "user": "user", "assistant": "assistant"}
MESSAGE_FIELDS = {"role", "content", "name"}
# Of an assistant message, empty values only: a conversation replayed by a client carries them.
MESSAGE_EMPTY_FIELDS = {"tool_calls", "function_call", "audio", "refusal", "annotations"}
FINISH_REASONS = {"stop", "length"}

# The gateway's error types -> OpenAI's `type`; the gateway's own type goes in `code`.
ERROR_TYPES = {400: "invalid_request_error", 401: "authentication_error", 403: "permission_error",
               404: "invalid_request_error", 413: "invalid_request_error", 415: "invalid_request_error",
               429: "rate_limit_error", 501: "invalid_request_error"}
# Worth the SDK's own retry: the gateway did not try (yet), and another moment or process may answer.
RETRY_MAY_HELP = {"rate_limited", "auth_throttled", "upstream_busy", "shutting_down", "audit_unavailable",
                  "request_timeout"}


@csrf_exempt  # an API key authenticates, not a session cookie
async def chat_completions(request):
    if request.method != "POST":
        return _method_not_allowed(request, "POST")
    door = services.FrontDoor(dialect=Generation.Dialect.OPENAI, endpoint=CHAT_ENDPOINT, parse=parse,
                              max_body_bytes=settings.CHAT_MAX_BODY_BYTES)
    try:
        result = await http.generate(request, caller=http.caller_of(request), door=door)
    except GatewayError as exc:
        return error_response(request, exc)
    if isinstance(result, services.Streaming):
        row = result.row
        annotate_request_log(request, provider=row.provider, model=row.model, stream=True)
        include_usage = _include_usage(row.request)
        return StreamingHttpResponse(_events(request, result, include_usage), content_type="text/event-stream",
                                     headers={"Server-Timing": http.server_timing(result.timing),
                                              "X-Accel-Buffering": "no", "Cache-Control": "no-cache"})
    row, timing = result
    annotate_request_log(request, provider=row.provider, model=row.model)
    return JsonResponse(_completion(row), headers={"Server-Timing": http.server_timing(timing)})


@csrf_exempt  # answered 405, not the CSRF failure page
async def models(request):
    """GET /v1/models: the models the calling consumer may use."""
    entries = await _listed(request)
    if isinstance(entries, HttpResponse):
        return entries
    return JsonResponse({"object": "list", "data": [_model(entry) for entry in entries]})


@csrf_exempt  # answered 405, not the CSRF failure page
async def model(request, name: str):
    """GET /v1/models/{model}: one of them; 404 for a model the consumer may not use, as for one that is missing."""
    entries = await _listed(request)
    if isinstance(entries, HttpResponse):
        return entries
    for entry in entries:
        if name in (entry.get("name"), entry.get("model")):
            return JsonResponse(_model(entry))
    return _error(request, 404, f"The model {name!r} does not exist or you do not have access to it.",
                  code="model_not_found", param="model")


async def _listed(request) -> list[dict] | HttpResponse:
    """The models the caller may use, or the error response (405, 401) that answers the request instead."""
    if request.method != "GET":
        return _method_not_allowed(request, "GET")
    caller = http.caller_of(request)
    try:
        return await listings.models(caller)
    except GatewayError as exc:
        return error_response(request, exc)
    finally:
        http.annotate_consumer(request, caller)


@csrf_exempt
async def embeddings(request):
    return error_response(request, http.not_served(
        request, "Embeddings are not available through the gateway yet: only chat completions and model listings "
                 "are."))


@csrf_exempt
async def not_found(request, rest: str = ""):
    return _error(request, 404, f"No OpenAI-compatible endpoint at {request.path}. The gateway serves "
                                "POST /v1/chat/completions, GET /v1/models and GET /v1/models/{model}.",
                  code="not_found")


# -- request ----------------------------------------------------------------------------------------------------------


def parse(data) -> NeutralRequest:
    """OpenAI's chat completion request as the NeutralRequest; InvalidRequest naming the parameter otherwise."""
    if not isinstance(data, dict):
        raise invalid("body", "The request body must be a JSON object.")
    _refuse_unsupported(data)
    model = data.get("model")
    if model is None:
        raise invalid("model", "you must provide a model parameter.")
    problem = model_name_problem(model)
    if problem:
        raise invalid("model", f"model: {problem}")
    stream = _optional(data, "stream", bool, False)
    stream_options = data.get("stream_options")
    if stream_options is not None:
        if not stream:
            raise invalid("stream_options", "stream_options is only allowed when stream is true.")
        if not isinstance(stream_options, dict) or set(stream_options) - {"include_usage"} or \
                not isinstance(stream_options.get("include_usage", False), bool):
            raise invalid("stream_options", 'stream_options must be {"include_usage": true or false}.')
    mode, schema = _response_format(data.get("response_format"))
    user = _optional(data, "user", str, "")
    if len(user) > 256:
        raise invalid("user", "user must be at most 256 characters.")
    return NeutralRequest(messages=_messages(data.get("messages")), model=model, options=_options(data),
                          mode=mode, output_schema=schema, stream=stream, user=user)


def _refuse_unsupported(data: dict) -> None:
    refused = []
    for name, value in data.items():
        if name in SUPPORTED or (name in ANY_BOOLEAN and (value is None or isinstance(value, bool))):
            continue
        if name in AT_DEFAULT and (value is None or _is_one_of(value, AT_DEFAULT[name])):
            continue
        refused.append(name)
    if refused:
        unknown = [n for n in refused if n not in AT_DEFAULT and n not in ANY_BOOLEAN]
        unsupported = [n for n in refused if n in AT_DEFAULT or n in ANY_BOOLEAN]
        parts = []
        if unsupported:
            parts.append(f"not supported by this gateway: {', '.join(unsupported)} (only at their default values)")
        if unknown:
            parts.append(f"unknown: {', '.join(unknown)}")
        raise InvalidRequest(f"Unsupported parameters: {'; '.join(parts)}. Remove them and try again.",
                             details={name: ["Not supported by this gateway."] for name in refused})


def _is_one_of(value, defaults: tuple) -> bool:
    # Compared with their types: true is not n=1, and 0 is not logprobs=false.
    return any(type(value) is type(default) and value == default for default in defaults)



def _optional(data: dict, name: str, kind: type, default):
    value = data.get(name)
    if value is None:
        return default
    if not isinstance(value, kind) or (kind is not bool and isinstance(value, bool)):
        raise invalid(name, f"{name} must be a {kind.__name__.replace('str', 'string').replace('bool', 'boolean')}.")
    return value


def _messages(messages) -> list[dict]:
    if not isinstance(messages, list) or not messages:
        raise invalid("messages", "messages must be a non-empty array of messages.")
    chat = []
    for index, message in enumerate(messages):
        where = f"messages[{index}]"
        if not isinstance(message, dict):
            raise invalid(where, f"{where} must be an object with role and content.")
        role = message.get("role")
        if role not in MESSAGE_ROLES:
            raise invalid(f"{where}.role", f"{where}.role {str(role)[:40]!r} is not supported: use system, "
                                            "developer, user or assistant (tools are not supported).")
        extra = [k for k in message if k not in MESSAGE_FIELDS
                 and not (k in MESSAGE_EMPTY_FIELDS and _is_one_of(message[k], (None, "", [], {})))]
        if extra:
            raise invalid(f"{where}.{extra[0]}", f"{where}: not supported by this gateway: {', '.join(extra)}.")
        if message.get("name") is not None and not isinstance(message["name"], str):
            raise invalid(f"{where}.name", f"{where}.name must be a string.")
        chat.append({"role": MESSAGE_ROLES[role], "content": _content(message.get("content"), where, role)})
    return chat


def _content(content, where: str, role: str) -> str:
    if isinstance(content, str):
        return content
    if content is None and role == "assistant":
        return ""
    if not isinstance(content, list):
        raise invalid(f"{where}.content", f"{where}.content must be a string or an array of text parts.")
    texts = []
    for index, part in enumerate(content):
        if not isinstance(part, dict) or part.get("type") != "text" or not isinstance(part.get("text"), str):
            kind = part.get("type") if isinstance(part, dict) else None
            raise invalid(f"{where}.content[{index}]",
                           f"{where}.content[{index}]: only text parts are supported"
                           + (f", not {str(kind)[:40]!r}." if kind else "."))
        texts.append(part["text"])
    return "\n".join(texts)


def _options(data: dict) -> dict:
    options, named = {}, {}
    for name, option in OPTIONS.items():
        value = data.get(name)
        if value is None:
            continue
        if option in options and options[option] != value:
            raise invalid(name, "Send max_completion_tokens or max_tokens, not both with different values.")
        if name == "stop" and isinstance(value, str):
            value = [value]
        options[option], named[option] = value, name
    problems = options_problems(options)
    if problems:
        option, messages = next(iter(problems.items()))
        name = named.get(option, option)
        raise InvalidRequest(f"Invalid value for {name}: {' '.join(messages)}",
                             details={named.get(o, o): m for o, m in problems.items()})
    return options


def _response_format(value) -> tuple[str, dict | None]:
    if value is None:
        return TEXT, None
    kind = value.get("type") if isinstance(value, dict) else None
    if kind == "text":
        return TEXT, None
    if kind == "json_object":
        return JSON, None
    if kind == "json_schema":
        spec = value.get("json_schema")
        schema = spec.get("schema") if isinstance(spec, dict) else None
        problem = output_schema_problem(schema)
        if problem:
            raise invalid("response_format", f"response_format.json_schema.schema: {problem}")
        return JSON, schema
    raise invalid("response_format", "response_format.type must be text, json_object or json_schema.")


def _include_usage(body) -> bool:
    options = body.get("stream_options") if isinstance(body, dict) else None
    return bool(isinstance(options, dict) and options.get("include_usage"))


# -- response ---------------------------------------------------------------------------------------------------------


def _completion(row: Generation) -> dict:
    return {
        "id": _id(row), "object": "chat.completion", "created": _created(row), "model": row.model,
        "choices": [{"index": 0, "message": {"role": "assistant", "content": _text(row.output), "refusal": None},
                     "logprobs": None, "finish_reason": _finish_reason(row)}],
        "usage": _usage(row), "system_fingerprint": None,
    }


async def _events(request, streaming: services.Streaming, include_usage: bool):
    row = streaming.row
    base = {"id": _id(row), "object": "chat.completion.chunk", "created": _created(row), "model": row.model,
            "system_fingerprint": None}
    if include_usage:
        base["usage"] = None

    def chunk(delta: dict, finish_reason=None) -> bytes:
        return _sse({**base, "choices": [{"index": 0, "delta": delta, "logprobs": None,
                                          "finish_reason": finish_reason}]})

    def render(event) -> bytes:
        if isinstance(event, services.Delta):
            return chunk({"content": event.text})
        if event.error is not None:
            annotate_error(request, event.error)
            # The SDK raises APIError from an event whose data holds `error`: the stream's one error event.
            return _sse(_error_body(event.error.status, event.error.message, code=event.error.type))
        end = chunk({}, _finish_reason(event.row))
        if include_usage:
            end += _sse({**base, "choices": [], "usage": _usage(event.row)})
        return end + b"data: [DONE]\n\n"

    body = streaming.body(render)
    try:
        yield chunk({"role": "assistant", "content": ""})
        async for piece in body:
            yield piece
    finally:
        await body.aclose()  # closed with this one, so that its row is completed now, not when it is collected


def _sse(obj) -> bytes:
    return b"data: " + json.dumps(obj, ensure_ascii=False, separators=(",", ":")).encode() + b"\n\n"


def _id(row: Generation) -> str:
    return f"chatcmpl-{row.id}"


def _created(row: Generation) -> int:
    return int(row.created_at.timestamp())


def _text(output) -> str:
    if isinstance(output, str):
        return output
    return json.dumps(output, ensure_ascii=False) if output is not None else ""


def _finish_reason(row: Generation) -> str:
    return row.finish_reason if row.finish_reason in FINISH_REASONS else "stop"


def _usage(row: Generation) -> dict:
    # Integers on the wire, as the SDK's types demand; an unknown count stays null in the audit row.
    prompt, completion = row.prompt_tokens or 0, row.completion_tokens or 0
    return {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion}


def _model(entry: dict) -> dict:
    created = 0
    modified = entry.get("modified_at")
    if isinstance(modified, str):
        try:
            created = int(datetime.fromisoformat(modified.replace("Z", "+00:00")).timestamp())
        except ValueError:
            created = 0
    return {"id": entry.get("name") or entry.get("model"), "object": "model", "created": created,
            "owned_by": "ollama"}


# -- errors -----------------------------------------------------------------------------------------------------------


def error_response(request, exc: GatewayError) -> JsonResponse:
    param = next(iter(exc.details), None) if isinstance(exc.details, dict) and exc.type == "invalid_request" \
        else None
    if exc.type == "model_not_allowed":
        param = "model"
    headers = dict(exc.headers)
    if exc.type not in RETRY_MAY_HELP:
        # The gateway already retried upstream, or the request itself is wrong: the SDK's retries would only
        # multiply the gateway's.
        headers["x-should-retry"] = "false"
    annotate_error(request, exc)
    return _error(request, exc.status, exc.message, code=exc.type, param=param, headers=headers)


def _error(request, status: int, message: str, *, code: str, param: str | None = None,
           headers: dict | None = None) -> JsonResponse:
    annotate_request_log(request, error_type=code)
    return JsonResponse(_error_body(status, message, code=code, param=param), status=status, headers=headers)


def _error_body(status: int, message: str, *, code: str, param: str | None = None) -> dict:
    kind = ERROR_TYPES.get(status, "server_error" if status >= 500 else "invalid_request_error")
    return {"error": {"message": message, "type": kind, "param": param, "code": code}}


def _method_not_allowed(request, allowed: str) -> JsonResponse:
    return _error(request, 405, f"Method {request.method} is not allowed; use {allowed}.", code="method_not_allowed",
                  headers={"Allow": allowed, "x-should-retry": "false"})
