"""The Ollama dialect at Ollama's own paths: POST /api/chat and /api/generate (NDJSON streams by default, as in
Ollama), POST /api/embed and the older /api/embeddings, GET /api/tags, POST /api/show, GET /api/version, GET /api/ps, and GET / ("Ollama is running").

So that `OLLAMA_HOST=http://gateway:8000` and the `ollama` clients work unchanged, with the key as a bearer token or
as the password of HTTP Basic auth. This module only translates: Ollama's request into the NeutralRequest, the
audit row (or the stream's events) into Ollama's replies, and the gateway's errors into `{"error": "..."}`.
Model management is refused outright: a consumer must never delete or replace the server's models.
"""

from __future__ import annotations

import json

from django.conf import settings
from django.http import HttpResponse, JsonResponse, StreamingHttpResponse
from django.utils import timezone
from django.views.decorators.csrf import csrf_exempt

from gateway_project.middleware import annotate_request_log
from llm import embeddings as embedding, listings, services
from llm.dialects import http
from llm.errors import GatewayError, InvalidRequest, ModelManagementRefused, PayloadTooLarge, annotate_error
from llm.images import UnreadableImage, read_base64
from llm.models import Generation
from llm.providers.base import Completion, EmbeddingRequest, Image, Message, TextDelta, ThinkingDelta, Tool, ToolCall, ToolCallsDelta
from llm.request_rules import (JSON, TEXT, NeutralRequest, invalid, keep_alive_problem, model_name_problem,
                               options_problems, output_schema_problem, think_from_effort, think_problem,
                               without_nulls)

NDJSON = "application/x-ndjson"
COMMON_FIELDS = {"model", "format", "options", "stream", "think", "keep_alive"}
CHAT_FIELDS = COMMON_FIELDS | {"messages", "tools"}
GENERATE_FIELDS = COMMON_FIELDS | {"prompt", "system", "suffix", "raw", "images"}
# Fields that bypass the prompt as the gateway records it (template, context: a deprecated encoding of an
# earlier conversation), or that ask for what it cannot carry (logprobs): refused. The values that ask for
# nothing, which the `ollama` clients send with every call, pass.
REFUSED = {"template": ("",), "context": ([],), "logprobs": (False,), "top_logprobs": (0,)}
ROLES = ("system", "user", "assistant", "tool")
MESSAGE_FIELDS = {"role", "content", "thinking", "images", "tool_calls", "tool_name", "tool_call_id"}
EMBED_FIELDS = {"model", "input", "truncate", "dimensions", "options", "keep_alive"}
EMBEDDINGS_FIELDS = {"model", "prompt", "options", "keep_alive"}


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
                              max_body_bytes=settings.CHAT_MAX_IMAGE_BODY_BYTES, images=images,
                              max_text_bytes=settings.CHAT_MAX_BODY_BYTES, any_content_type=True)
    try:
        result = await http.generate(request, caller=http.caller_of(request, basic=True), door=door)
    except GatewayError as exc:
        return error_response(request, exc)
    as_chat = endpoint == "/api/chat"
    if isinstance(result, services.Streaming):
        row = result.row
        annotate_request_log(request, provider=row.provider, model=row.model, stream=True)
        return StreamingHttpResponse(result.body(_lines(request, result, as_chat)), content_type=NDJSON,
                                     headers={"Server-Timing": http.server_timing(result.timing), **result.headers,
                                              "X-Accel-Buffering": "no", "Cache-Control": "no-cache"})
    row, reply = result.row, result.reply
    annotate_request_log(request, provider=row.provider, model=row.model)
    whole = _piece(row, _text(row.output), as_chat, thinking=reply.thinking, calls=_raw_calls(reply.tool_calls))
    return JsonResponse({**whole, **_final(row, result.timing)},
                        headers={"Server-Timing": http.server_timing(result.timing), **result.headers})


@csrf_exempt
async def root(request):
    """GET / and HEAD /: what Ollama answers there, with no key: clients probe it to find a server."""
    if request.method not in ("GET", "HEAD"):
        return _method_not_allowed(request, "GET")
    return HttpResponse("Ollama is running", content_type="text/plain; charset=utf-8")


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
async def embed(request):
    """POST /api/embed: a vector per text of `input` (a string or a list), in one call to Ollama."""
    return await _embedding(request, "/api/embed", parse_embed)


@csrf_exempt
async def embeddings(request):
    """POST /api/embeddings, Ollama's older form: `prompt` in, `embedding` out."""
    return await _embedding(request, "/api/embeddings", parse_embeddings)


async def _embedding(request, endpoint: str, parse):
    if request.method != "POST":
        return _method_not_allowed(request, "POST")
    door = services.FrontDoor(dialect=Generation.Dialect.OLLAMA, endpoint=endpoint, parse=parse,
                              max_body_bytes=settings.CHAT_MAX_BODY_BYTES, any_content_type=True,
                              kind=Generation.Kind.EMBEDDING)
    try:
        result = await http.embed(request, caller=http.caller_of(request, basic=True), door=door)
    except GatewayError as exc:
        return error_response(request, exc)
    row, reply = result.row, result.reply
    annotate_request_log(request, provider=row.provider, model=row.model)
    headers = {"Server-Timing": http.server_timing(result.timing), **result.headers}
    numbers = len(reply.vectors) * (reply.dimensions or 0)
    if endpoint == "/api/embeddings":
        return await http.json_response({"embedding": reply.vectors[0]}, numbers=numbers, headers=headers)
    body = {"model": reply.model, "embeddings": reply.vectors,
            "total_duration": int((row.latency_ms or 0) * 1e6)}
    # Ollama leaves out what is zero (omitempty).
    load = (reply.durations or {}).get("load_duration")
    if load:
        body["load_duration"] = load
    if reply.prompt_tokens:
        body["prompt_eval_count"] = reply.prompt_tokens
    return await http.json_response(body, numbers=numbers, headers=headers)


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
    return _neutral(data, messages=[_message(m, i) for i, m in enumerate(messages)], tools=_tools(data))


def parse_generate(data) -> NeutralRequest:
    """Ollama's /api/generate request: a prompt completion, sent to Ollama's /api/generate as it came."""
    _check_fields(data, GENERATE_FIELDS)
    prompt = data.get("prompt")
    if not isinstance(prompt, str) or not prompt:
        # An empty prompt is Ollama's "load the model" request, which acts on the server: not a consumer's to make.
        raise invalid("prompt", "prompt is required (a non-empty string)")
    texts = {}
    for name in ("system", "suffix"):
        value = data.get(name)
        if value is not None and not isinstance(value, str):
            raise invalid(name, f"{name} must be a string")
        texts[name] = value or ""
    raw = data.get("raw")
    if raw is not None and not isinstance(raw, bool):
        raise invalid("raw", "raw must be true or false")
    completion = Completion(prompt=prompt, raw=bool(raw), images=_images(data.get("images"), "images"), **texts)
    return _neutral(data, completion=completion)


def parse_embed(data) -> EmbeddingRequest:
    """Ollama's /api/embed request as the EmbeddingRequest; InvalidRequest naming the field otherwise."""
    _check_fields(data, EMBED_FIELDS)
    given = data.get("input")
    if isinstance(given, str):
        texts = [given] if given else []
    elif isinstance(given, list):
        bad = next((i for i, text in enumerate(given) if not isinstance(text, str)), None)
        if bad is not None:
            raise invalid(f"input[{bad}]", f"input[{bad}] must be a string: input is a string or an array of strings")
        texts = given
    elif given is None:
        texts = []
    else:
        raise invalid("input", "input must be a string or an array of strings")
    if not texts:
        # Ollama's answer to an empty input is to load the model, which acts on the server: not a consumer's to ask.
        raise invalid("input", "input is required (a non-empty string or array of strings)")
    truncate = data.get("truncate")
    if truncate is not None and not isinstance(truncate, bool):
        raise invalid("truncate", "truncate must be true or false")
    return EmbeddingRequest(model=_model(data), inputs=tuple(texts), truncate=truncate,
                            dimensions=embedding.dimensions_of(data.get("dimensions")), options=_embed_options(data),
                            keep_alive=_keep_alive(data))


def parse_embeddings(data) -> EmbeddingRequest:
    """Ollama's older /api/embeddings request: one `prompt`."""
    _check_fields(data, EMBEDDINGS_FIELDS)
    prompt = data.get("prompt")
    if not isinstance(prompt, str) or not prompt:
        # As for /api/embed: an empty prompt only loads the model.
        raise invalid("prompt", "prompt is required (a non-empty string)")
    return EmbeddingRequest(model=_model(data), inputs=(prompt,), options=_embed_options(data),
                            keep_alive=_keep_alive(data), legacy=True)


def _model(data: dict) -> str:
    model = data.get("model")
    problem = model_name_problem(model)
    if problem:
        raise invalid("model", f"model is required: {problem}" if model in (None, "") else f"model: {problem}")
    return model


def _embed_options(data: dict) -> dict:
    options = data.get("options") or {}
    if not isinstance(options, dict):
        raise invalid("options", "options must be an object")
    options = without_nulls(options)
    problems = options_problems(options)
    if problems:
        shown = "; ".join(f"{name}: {' '.join(messages)}" for name, messages in problems.items())
        raise InvalidRequest(f"invalid options: {shown}", details={"options": problems})
    return options


def _keep_alive(data: dict):
    keep_alive = data.get("keep_alive")
    if keep_alive is not None:
        problem = keep_alive_problem(keep_alive)
        if problem:
            raise invalid("keep_alive", f"keep_alive: {problem}")
    return keep_alive


def images(data):
    """Where an Ollama request carries images: `images` of each message (/api/chat) or of the request
    (/api/generate), base64 each."""
    if not isinstance(data, dict):
        return
    holders = [data] + [m for m in data.get("messages") or () if isinstance(m, dict)] \
        if isinstance(data.get("messages", []), list) else [data]
    for holder in holders:
        found = holder.get("images")
        for index in range(len(found) if isinstance(found, list) else 0):
            yield found, index, read_base64


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


def _message(message, index: int) -> Message:
    where = f"messages[{index}]"
    if not isinstance(message, dict):
        raise invalid(where, f"{where} must be an object with role and content")
    role, content = message.get("role"), message.get("content") or ""
    if role not in ROLES:
        raise invalid(f"{where}.role", f"{where}.role must be system, user, assistant or tool")
    extra = [k for k in message if k not in MESSAGE_FIELDS]
    if extra:
        raise invalid(f"{where}.{extra[0]}", f"{where}: not supported by this gateway: {', '.join(extra)}")
    if not isinstance(content, str):
        raise invalid(f"{where}.content", f"{where}.content must be a string")
    texts = {}
    for name in ("thinking", "tool_name", "tool_call_id"):
        value = message.get(name)
        if value is not None and not isinstance(value, str):
            raise invalid(f"{where}.{name}", f"{where}.{name} must be a string")
        texts[name] = value or ""
    return Message(role=role, content=content, images=_images(message.get("images"), f"{where}.images"),
                   tool_calls=_replayed_calls(message.get("tool_calls"), where), **texts)


def _images(found, where: str) -> tuple[Image, ...]:
    """A list of images, already read where they stood (see images()); refused with why if one is not usable."""
    if found is None:
        return ()
    if not isinstance(found, list):
        raise invalid(where, f"{where} must be an array of base64-encoded images")
    for index, image in enumerate(found):
        if isinstance(image, UnreadableImage):
            raise invalid(f"{where}[{index}]", f"{where}[{index}] {image.problem}")
        if not isinstance(image, Image):
            raise invalid(f"{where}[{index}]", f"{where}[{index}] must be a base64-encoded image")
    return tuple(found)


def _replayed_calls(calls, where: str) -> tuple[ToolCall, ...]:
    """An assistant message's tool calls as an Ollama client replays them: each kept as sent (id, index)."""
    if calls is None:
        return ()
    if not isinstance(calls, list):
        raise invalid(f"{where}.tool_calls", f"{where}.tool_calls must be an array")
    replayed = []
    for index, call in enumerate(calls):
        at = f"{where}.tool_calls[{index}]"
        function = call.get("function") if isinstance(call, dict) else None
        if not isinstance(function, dict) or not isinstance(function.get("name"), str):
            raise invalid(at, f'{at} must be {{"function": {{"name", "arguments"}}}}')
        arguments = function.get("arguments", {})
        if not isinstance(arguments, dict):
            raise invalid(f"{at}.function.arguments", f"{at}.function.arguments must be an object")
        call_id = call.get("id")
        if call_id is not None and not isinstance(call_id, str):
            raise invalid(f"{at}.id", f"{at}.id must be a string")
        replayed.append(ToolCall(name=function["name"], arguments=arguments, id=call_id or "", raw=call))
    return tuple(replayed)


def _tools(data: dict) -> tuple[Tool, ...]:
    tools = data.get("tools")
    if tools is None:
        return ()
    if not isinstance(tools, list):
        raise invalid("tools", "tools must be an array")
    offered = []
    for index, tool in enumerate(tools):
        where = f"tools[{index}]"
        function = tool.get("function") if isinstance(tool, dict) else None
        if not isinstance(function, dict) or not isinstance(function.get("name"), str) or not function["name"]:
            raise invalid(where, f'{where} must be {{"type": "function", "function": {{"name", ...}}}}')
        if tool.get("type", "function") != "function":
            raise invalid(f"{where}.type", f"{where}.type must be function")
        offered.append(Tool(name=function["name"], definition=tool))  # passed on as sent
    return tuple(offered)


def _neutral(data: dict, *, messages: list[Message] | None = None, tools: tuple[Tool, ...] = (),
             completion: Completion | None = None) -> NeutralRequest:
    model = _model(data)
    stream = data.get("stream")
    if stream is None:
        stream = True  # Ollama streams unless told not to
    elif not isinstance(stream, bool):
        raise invalid("stream", "stream must be true or false")
    options = data.get("options") or {}
    if not isinstance(options, dict):
        raise invalid("options", "options must be an object")
    options = without_nulls(options)
    # Open WebUI's reasoning switch for an Ollama connection: OpenAI's effort, inside the options.
    effort = options.pop("reasoning_effort", None)
    think = data.get("think")
    if think is not None:
        problem = think_problem(think)
        if problem:
            raise invalid("think", f"think: {problem}")
    if effort is not None:
        from_effort = think_from_effort(effort, "options.reasoning_effort")
        if think is not None and think != from_effort:
            raise invalid("think", "think and options.reasoning_effort ask for different thinking: send one")
        think = from_effort
    problems = options_problems(options)
    if problems:
        shown = "; ".join(f"{name}: {' '.join(messages)}" for name, messages in problems.items())
        raise InvalidRequest(f"invalid options: {shown}", details={"options": problems})
    keep_alive = data.get("keep_alive")
    if keep_alive is not None:
        problem = keep_alive_problem(keep_alive)
        if problem:
            raise invalid("keep_alive", f"keep_alive: {problem}")
    mode, schema = _format(data.get("format"))
    return NeutralRequest(messages=messages, model=model, options=options, mode=mode, output_schema=schema,
                          stream=stream, tools=tools, think=think, keep_alive=keep_alive, completion=completion)


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


def _lines(request, streaming: services.Streaming, as_chat: bool):
    """The stream's NDJSON lines as Ollama writes them: a piece per delta, then the final one (or the error)."""
    row = streaming.row

    def render(event) -> bytes:
        if isinstance(event, TextDelta):
            return _line({**_piece(row, event.text, as_chat), "done": False})
        if isinstance(event, ThinkingDelta):
            return _line({**_piece(row, "", as_chat, thinking=event.text), "done": False})
        if isinstance(event, ToolCallsDelta):
            # The chunk's calls together, byte for byte as Ollama sent them: never split, never held back.
            return _line({**_piece(row, "", as_chat, calls=_raw_calls(event.calls)), "done": False})
        if event.error is not None:
            annotate_error(request, event.error)
            # The `ollama` clients raise ResponseError from a line holding `error`: the stream's last line.
            return _line({"error": event.error.message})
        return _line({**_piece(event.row, "", as_chat), **_final(event.row, streaming.timing)})

    return render


def _piece(row: Generation, text: str, as_chat: bool, *, thinking: str = "", calls: list | None = None) -> dict:
    body = {"model": row.model, "created_at": timezone.now().isoformat().replace("+00:00", "Z")}
    if as_chat:
        message = {"role": "assistant", "content": text}
        if thinking:
            message["thinking"] = thinking
        if calls:
            message["tool_calls"] = calls
        body["message"] = message
    else:
        body["response"] = text
        if thinking:
            body["thinking"] = thinking
        if calls:
            body["tool_calls"] = calls
    return body


def _raw_calls(calls) -> list[dict]:
    """Tool calls as Ollama sent them (the mock's, which have no raw form, in Ollama's shape)."""
    return [call.raw if call.raw is not None else
            {**({"id": call.id} if call.id else {}), "function": {"name": call.name, "arguments": call.arguments}}
            for call in calls]


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
