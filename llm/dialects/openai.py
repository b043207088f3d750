"""The OpenAI dialect under /v1/: POST /v1/chat/completions (JSON or server-sent events), POST /v1/embeddings,
GET /v1/models[/{model}].

So that `OpenAI(base_url="http://gateway/v1", api_key=KEY)` works unchanged. This module only translates: OpenAI's
request into the NeutralRequest, the audit row (or the stream's events) into OpenAI's objects, and the gateway's
errors into `{"error": {"message", "type", "param", "code"}}` with the statuses the SDK maps to its own classes.
"""

from __future__ import annotations

import base64
import json
import struct
from datetime import datetime

from django.conf import settings
from django.http import HttpResponse, JsonResponse, StreamingHttpResponse
from django.views.decorators.csrf import csrf_exempt

from gateway_project.middleware import annotate_request_log
from llm import embeddings as embedding, listings, services
from llm.dialects import http
from llm.errors import GatewayError, InvalidRequest, annotate_error
from llm.images import RemoteImage, UnreadableImage, read_url
from llm.models import Generation, audit_calls
from llm.providers.base import EmbeddingRequest, Image, Message, TextDelta, ThinkingDelta, Tool, ToolCall, ToolCallsDelta
from llm.request_rules import (JSON, LOAD_TIME_MESSAGE, LOAD_TIME_OPTIONS, TEXT, NeutralRequest,
                               OllamaOptionsSerializer, invalid, keep_alive_problem, model_name_problem,
                               options_problems, output_schema_problem, think_from_effort, think_problem)

CHAT_ENDPOINT = "/v1/chat/completions"
EMBEDDINGS_ENDPOINT = "/v1/embeddings"
EMBEDDING_FIELDS = {"model", "input", "encoding_format", "dimensions", "user"}
ENCODING_FORMATS = ("float", "base64")

# Parameters the gateway maps onto Ollama's options: OpenAI's name -> Ollama's.
OPTIONS = {"temperature": "temperature", "top_p": "top_p", "seed": "seed", "stop": "stop",
           "frequency_penalty": "frequency_penalty", "presence_penalty": "presence_penalty",
           "max_completion_tokens": "num_predict", "max_tokens": "num_predict"}
# Ollama's own options, accepted at the top level where chat UIs put them (num_ctx, top_k, repeat_penalty, ...),
# under the rules of the Ollama dialect's `options`; load-time ones are refused there, by name, as the operator's.
OLLAMA_OPTIONS = frozenset(OllamaOptionsSerializer().fields) - set(OPTIONS)
SUPPORTED = {"model", "messages", "stream", "stream_options", "response_format", "user", "tools", "tool_choice",
             "parallel_tool_calls", "reasoning_effort", "reasoning", "think", "keep_alive", *OPTIONS,
             *OLLAMA_OPTIONS}
# Parameters the gateway cannot honour, accepted only at values that ask for nothing: LangChain and chat UIs send
# these defaults with every request. Any other value is refused by name, never dropped.
AT_DEFAULT = {
    "n": (1,), "logprobs": (False,), "top_logprobs": (0,), "logit_bias": ({},), "functions": ([],),
    "function_call": ("none", "auto"), "store": (False,), "metadata": ({},), "service_tier": ("auto", "default"),
    "modalities": (["text"],), "audio": (), "prediction": (), "web_search_options": (), "safety_identifier": (),
    "prompt_cache_key": (), "verbosity": (),
}
MESSAGE_ROLES = {"system": "system", "developer": "system", "user": "user", "assistant": "assistant",
                 "tool": "tool"}
MESSAGE_FIELDS = {"system": {"role", "content", "name"}, "developer": {"role", "content", "name"},
                  "user": {"role", "content", "name"},
                  "assistant": {"role", "content", "name", "tool_calls", "reasoning", "reasoning_content"},
                  "tool": {"role", "content", "name", "tool_call_id"}}
# Of an assistant message, empty values only: a conversation replayed by a client carries them.
MESSAGE_EMPTY_FIELDS = {"function_call", "audio", "refusal", "annotations"}
FINISH_REASONS = {"stop", "length"}
REMOTE_IMAGE = ("image URLs are refused: the gateway never fetches a URL, as that would make it a way into the "
                "network it stands in. Send the image inline as a data URL (data:image/png;base64,...).")

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
                              max_body_bytes=settings.CHAT_MAX_IMAGE_BODY_BYTES, images=images,
                              max_text_bytes=settings.CHAT_MAX_BODY_BYTES)
    try:
        result = await http.generate(request, caller=http.caller_of(request), door=door)
    except GatewayError as exc:
        return error_response(request, exc)
    if isinstance(result, services.Streaming):
        row = result.row
        annotate_request_log(request, provider=row.provider, model=row.model, stream=True)
        include_usage = _include_usage(row.request)
        return StreamingHttpResponse(_events(request, result, include_usage), content_type="text/event-stream",
                                     headers={"Server-Timing": http.server_timing(result.timing), **result.headers,
                                              "X-Accel-Buffering": "no", "Cache-Control": "no-cache"})
    annotate_request_log(request, provider=result.row.provider, model=result.row.model)
    return JsonResponse(_completion(result.row),
                        headers={"Server-Timing": http.server_timing(result.timing), **result.headers})


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


@csrf_exempt  # an API key authenticates, not a session cookie
async def embeddings(request):
    """POST /v1/embeddings: a vector per text of `input`, as floats or as base64 of little-endian float32s."""
    if request.method != "POST":
        return _method_not_allowed(request, "POST")
    door = services.FrontDoor(dialect=Generation.Dialect.OPENAI, endpoint=EMBEDDINGS_ENDPOINT,
                              parse=parse_embeddings, max_body_bytes=settings.CHAT_MAX_BODY_BYTES,
                              kind=Generation.Kind.EMBEDDING)
    try:
        result = await http.embed(request, caller=http.caller_of(request), door=door)
    except GatewayError as exc:
        return error_response(request, exc)
    row, reply = result.row, result.reply
    annotate_request_log(request, provider=row.provider, model=row.model)
    as_base64 = _encoding_format(row.request) == "base64"
    tokens = reply.prompt_tokens or 0

    def body() -> dict:
        data = [{"object": "embedding", "index": index,
                 "embedding": _base64_floats(vector) if as_base64 else vector}
                for index, vector in enumerate(reply.vectors)]
        return {"object": "list", "data": data, "model": row.request.get("model", reply.model),
                "usage": {"prompt_tokens": tokens, "total_tokens": tokens}}

    return await http.json_response(body, numbers=len(reply.vectors) * (reply.dimensions or 0),
                                    headers={"Server-Timing": http.server_timing(result.timing), **result.headers})


@csrf_exempt
async def not_found(request, rest: str = ""):
    return _error(request, 404, f"No OpenAI-compatible endpoint at {request.path}. The gateway serves "
                                "POST /v1/chat/completions, POST /v1/embeddings, GET /v1/models and "
                                "GET /v1/models/{model}.",
                  code="not_found")


# -- request ----------------------------------------------------------------------------------------------------------


def parse(data) -> NeutralRequest:
    """OpenAI's chat completion request as the NeutralRequest; InvalidRequest naming the parameter otherwise."""
    if not isinstance(data, dict):
        raise invalid("body", "The request body must be a JSON object.")
    _refuse_unsupported(data)
    model = _requested_model(data)
    stream = _optional(data, "stream", bool, False)
    stream_options = data.get("stream_options")
    if stream_options is not None:
        if not stream:
            raise invalid("stream_options", "stream_options is only allowed when stream is true.")
        if not isinstance(stream_options, dict) or set(stream_options) - {"include_usage"} or \
                not isinstance(stream_options.get("include_usage", False), bool):
            raise invalid("stream_options", 'stream_options must be {"include_usage": true or false}.')
    mode, schema = _response_format(data.get("response_format"))
    # The end user, cut rather than refused: it labels the audit row, and a chat UI does not choose its length.
    user = _optional(data, "user", str, "")[:256]
    _optional(data, "parallel_tool_calls", bool, True)  # every call the model makes is passed on either way
    keep_alive = data.get("keep_alive")
    if keep_alive is not None:
        problem = keep_alive_problem(keep_alive)
        if problem:
            raise invalid("keep_alive", f"keep_alive: {problem}")
    return NeutralRequest(messages=_messages(data.get("messages")), model=model, options=_options(data),
                          mode=mode, output_schema=schema, stream=stream, user=user, tools=_tools(data),
                          think=_think(data), keep_alive=keep_alive)


def _requested_model(data: dict) -> str:
    """The request's `model`, named as OpenAI's own errors name it; InvalidRequest otherwise."""
    model = data.get("model")
    if model is None:
        raise invalid("model", "you must provide a model parameter.")
    problem = model_name_problem(model)
    if problem:
        raise invalid("model", f"model: {problem}")
    return model


def parse_embeddings(data) -> EmbeddingRequest:
    """OpenAI's embeddings request as the EmbeddingRequest; InvalidRequest naming the parameter otherwise."""
    if not isinstance(data, dict):
        raise invalid("body", "The request body must be a JSON object.")
    unknown = [name for name in data if name not in EMBEDDING_FIELDS]
    if unknown:
        raise InvalidRequest(f"Unsupported parameters: unknown: {', '.join(unknown)} Remove them and try again.",
                             details={name: ["Not supported by this gateway."] for name in unknown})
    model = _requested_model(data)
    _encoding_format(data, strict=True)
    _optional(data, "user", str, "")
    given = data.get("input")
    if given == "":
        given = [""]  # as Ollama's own /v1 reads it: one empty text
    if isinstance(given, str):
        texts = [given]
    elif isinstance(given, list) and given and all(isinstance(text, str) for text in given):
        texts = given
    elif isinstance(given, list) and given and all(type(item) in (int, list) for item in given):
        # Ollama's embed endpoint takes text only: its own /v1 refuses token arrays ("invalid input type") too.
        raise invalid("input", "input as token arrays is not supported: Ollama embeds text only. Send a string or "
                               "an array of strings (with the OpenAI SDK's embeddings helpers in LangChain: "
                               "check_embedding_ctx_length=False).")
    else:
        raise invalid("input", "input must be a string or a non-empty array of strings.")
    return EmbeddingRequest(model=model, inputs=tuple(texts), dimensions=embedding.dimensions_of(data.get("dimensions")))


def _encoding_format(data, *, strict: bool = False) -> str:
    """float (the default) or base64, in any case, as Ollama's /v1 reads it."""
    value = data.get("encoding_format") if isinstance(data, dict) else None
    if value is None or value == "":
        return "float"
    if isinstance(value, str) and value.lower() in ENCODING_FORMATS:
        return value.lower()
    if strict:
        raise invalid("encoding_format", f"Invalid value for 'encoding_format' = {str(value)[:40]}. Supported "
                                         "values: ['float', 'base64'].")
    return "float"


def _base64_floats(vector: list[float]) -> str:
    """A vector as OpenAI's base64 encoding: its values as little-endian float32 bytes."""
    return base64.b64encode(struct.pack(f"<{len(vector)}f", *vector)).decode("ascii")


def images(data):
    """Where a chat completion request carries images: the `image_url` parts of its messages, read as URLs."""
    messages = data.get("messages") if isinstance(data, dict) else None
    for message in messages if isinstance(messages, list) else ():
        content = message.get("content") if isinstance(message, dict) else None
        for part in content if isinstance(content, list) else ():
            if not isinstance(part, dict) or part.get("type") != "image_url":
                continue
            holder = part.get("image_url")
            if isinstance(holder, dict) and "url" in holder:
                yield holder, "url", read_url
            elif isinstance(holder, str):
                yield part, "image_url", read_url


def _refuse_unsupported(data: dict) -> None:
    refused = []
    for name, value in data.items():
        if name in SUPPORTED:
            continue
        if name in AT_DEFAULT and (value is None or _is_one_of(value, AT_DEFAULT[name])):
            continue
        refused.append(name)
    if refused:
        load_time = [n for n in refused if n in LOAD_TIME_OPTIONS]
        unknown = [n for n in refused if n not in AT_DEFAULT and n not in LOAD_TIME_OPTIONS]
        unsupported = [n for n in refused if n in AT_DEFAULT]
        parts = []
        if unsupported:
            parts.append(f"not supported by this gateway: {', '.join(unsupported)} (only at their default values)")
        if load_time:
            parts.append(f"{', '.join(load_time)}: {LOAD_TIME_MESSAGE}")
        if unknown:
            parts.append(f"unknown: {', '.join(unknown)}")
        raise InvalidRequest(f"Unsupported parameters: {'; '.join(parts)} Remove them and try again.",
                             details={name: [LOAD_TIME_MESSAGE if name in LOAD_TIME_OPTIONS
                                             else "Not supported by this gateway."] for name in refused})


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


def _messages(messages) -> list[Message]:
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
                                            "developer, user, assistant or tool.")
        extra = [k for k in message if k not in MESSAGE_FIELDS[role]
                 and not (k in MESSAGE_EMPTY_FIELDS and _is_one_of(message[k], (None, "", [], {})))]
        if extra:
            raise invalid(f"{where}.{extra[0]}", f"{where}: not supported by this gateway: {', '.join(extra)}.")
        name = message.get("name")
        if name is not None and not isinstance(name, str):
            raise invalid(f"{where}.name", f"{where}.name must be a string.")
        text, pictures = _content(message.get("content"), where, role)
        calls = _replayed_calls(message.get("tool_calls"), where) if role == "assistant" else ()
        if role == "tool":
            chat.append(_tool_result(message, text, where, messages))
            continue
        chat.append(Message(role=MESSAGE_ROLES[role], content=text, images=pictures, tool_calls=calls,
                            thinking=_replayed_thinking(message, where) if role == "assistant" else ""))
    return chat


def _content(content, where: str, role: str) -> tuple[str, tuple[Image, ...]]:
    """The text of a message (its text parts joined) and its images."""
    if isinstance(content, str):
        return content, ()
    if content is None and role in ("assistant", "tool"):
        return "", ()
    if not isinstance(content, list):
        raise invalid(f"{where}.content", f"{where}.content must be a string or an array of content parts.")
    texts, pictures = [], []
    for index, part in enumerate(content):
        at = f"{where}.content[{index}]"
        kind = part.get("type") if isinstance(part, dict) else None
        if kind == "text" and isinstance(part.get("text"), str):
            texts.append(part["text"])
        elif kind == "image_url" and role == "user":
            pictures.append(_image(part, at))
        else:
            allowed = "text and image_url parts" if role == "user" else "text parts"
            raise invalid(at, f"{at}: only {allowed} are supported here"
                              + (f", not {str(kind)[:40]!r}." if kind else "."))
    return "\n".join(texts), tuple(pictures)


def _image(part: dict, where: str) -> Image:
    """An image part, already read where it stood (see images()); refused with why if it is not a usable one."""
    holder = part.get("image_url")
    value, at = (holder.get("url"), f"{where}.image_url.url") if isinstance(holder, dict) else (holder,
                                                                                               f"{where}.image_url")
    if isinstance(holder, dict) and set(holder) - {"url", "detail"}:
        raise invalid(f"{where}.image_url", f"{where}.image_url takes url and detail only.")
    if isinstance(value, Image):
        return value
    if isinstance(value, RemoteImage):
        raise invalid(at, f"{at}: {REMOTE_IMAGE}")
    if isinstance(value, UnreadableImage):
        raise invalid(at, f"{at} {value.problem}.")
    raise invalid(at, f"{at} must be a data URL (data:image/png;base64,...).")


def _replayed_calls(calls, where: str) -> tuple[ToolCall, ...]:
    """An assistant message's tool calls, as an agent replays them: their JSON-string arguments become objects."""
    if calls is None or calls == []:
        return ()
    if not isinstance(calls, list):
        raise invalid(f"{where}.tool_calls", f"{where}.tool_calls must be an array of tool calls.")
    replayed = []
    for index, call in enumerate(calls):
        at = f"{where}.tool_calls[{index}]"
        function = call.get("function") if isinstance(call, dict) else None
        if not isinstance(function, dict) or not isinstance(function.get("name"), str) or not function["name"]:
            raise invalid(at, f'{at} must be {{"id", "type": "function", "function": {{"name", "arguments"}}}}.')
        if call.get("type", "function") != "function":
            raise invalid(f"{at}.type", f"{at}.type must be function.")
        call_id = call.get("id")
        if call_id is not None and not isinstance(call_id, str):
            raise invalid(f"{at}.id", f"{at}.id must be a string.")
        arguments = function.get("arguments")
        try:
            parsed = json.loads(arguments) if isinstance(arguments, str) else None
        except (ValueError, RecursionError):
            parsed = None
        if not isinstance(parsed, dict):
            raise invalid(f"{at}.function.arguments",
                          f"{at}.function.arguments must be a JSON object, as a string (as the model sent it).")
        replayed.append(ToolCall(name=function["name"], arguments=parsed, id=call_id or ""))
    return tuple(replayed)


def _replayed_thinking(message: dict, where: str) -> str:
    """An assistant message's thinking, replayed as Ollama's /v1 sends it (`reasoning`) or as DeepSeek and LiteLLM
    do (`reasoning_content`)."""
    for name in ("reasoning", "reasoning_content"):
        value = message.get(name)
        if value is not None and not isinstance(value, str):
            raise invalid(f"{where}.{name}", f"{where}.{name} must be a string.")
    return message.get("reasoning") or message.get("reasoning_content") or ""


def _tool_result(message: dict, text: str, where: str, messages: list) -> Message:
    call_id = message.get("tool_call_id")
    if not isinstance(call_id, str) or not call_id:
        raise invalid(f"{where}.tool_call_id", f"{where}.tool_call_id is required: the id of the call it answers.")
    # Ollama's models want the tool's name beside its result: the message's own, else the call's with that id.
    name = message.get("name") or _called_name(messages, call_id)
    return Message(role="tool", content=text, tool_name=name, tool_call_id=call_id)


def _called_name(messages: list, call_id: str) -> str:
    for message in reversed(messages):  # the last call with that id wins, as in Ollama's /v1
        calls = message.get("tool_calls") if isinstance(message, dict) else None
        for call in calls if isinstance(calls, list) else ():
            if isinstance(call, dict) and call.get("id") == call_id and isinstance(call.get("function"), dict):
                name = call["function"].get("name")
                return name if isinstance(name, str) else ""
    return ""


def _tools(data: dict) -> tuple[Tool, ...]:
    """The tools offered, narrowed by tool_choice: none sends none, a named function only that one."""
    tools = data.get("tools")
    if tools is None or tools == []:
        offered = ()
    elif not isinstance(tools, list):
        raise invalid("tools", "tools must be an array of tools.")
    else:
        offered = tuple(_tool(tool, f"tools[{index}]") for index, tool in enumerate(tools))
    choice = data.get("tool_choice")
    if choice is None or choice in ("auto", "required"):
        # Ollama cannot force a call: "required" sends the tools, and the model decides (see the README).
        return offered
    if choice == "none":
        return ()
    if isinstance(choice, dict) and choice.get("type") == "function" and isinstance(choice.get("function"), dict):
        name = choice["function"].get("name")
        chosen = tuple(tool for tool in offered if tool.name == name)
        if not chosen:
            raise invalid("tool_choice", f"tool_choice names the function {str(name)[:80]!r}, which is not among "
                                         "the tools.")
        return chosen
    raise invalid("tool_choice", 'tool_choice must be "auto", "none", "required" or '
                                 '{"type": "function", "function": {"name": ...}}.')


def _tool(tool, where: str) -> Tool:
    if not isinstance(tool, dict) or tool.get("type") != "function":
        kind = tool.get("type") if isinstance(tool, dict) else None
        raise invalid(f"{where}.type", f"{where}.type must be function" + (f", not {str(kind)[:40]!r}." if kind
                                                                             else "."))
    function = tool.get("function")
    if not isinstance(function, dict) or not isinstance(function.get("name"), str) or not function["name"]:
        raise invalid(f"{where}.function", f"{where}.function must be an object with a name.")
    if function.get("description") is not None and not isinstance(function["description"], str):
        raise invalid(f"{where}.function.description", f"{where}.function.description must be a string.")
    if function.get("parameters") is not None and not isinstance(function["parameters"], dict):
        raise invalid(f"{where}.function.parameters", f"{where}.function.parameters must be a JSON Schema object.")
    # `strict` is OpenAI's own (constrained decoding), which Ollama has no way to honour: accepted and dropped.
    definition = {name: value for name, value in function.items() if name != "strict" and value is not None}
    return Tool(name=function["name"], definition={"type": "function", "function": definition})


def _think(data: dict) -> bool | str | None:
    """Ollama's think from reasoning_effort, the reasoning object, or Open WebUI's own top-level `think`."""
    asked = {}
    if data.get("reasoning_effort") is not None:
        asked["reasoning_effort"] = think_from_effort(data["reasoning_effort"], "reasoning_effort")
    reasoning = data.get("reasoning")
    if reasoning is not None:
        if not isinstance(reasoning, dict) or set(reasoning) - {"effort"}:
            raise invalid("reasoning", 'reasoning must be {"effort": ...}.')
        if reasoning.get("effort") is not None:
            asked["reasoning.effort"] = think_from_effort(reasoning["effort"], "reasoning.effort")
    if data.get("think") is not None:
        problem = think_problem(data["think"])
        if problem:
            raise invalid("think", f"think: {problem}")
        asked["think"] = data["think"]
    if len(set(map(repr, asked.values()))) > 1:
        raise invalid(next(iter(asked)), f"{' and '.join(asked)} ask for different thinking: send one of them.")
    return next(iter(asked.values()), None)


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
    for name in OLLAMA_OPTIONS:
        if data.get(name) is not None:
            if name in options and options[name] != data[name]:
                raise invalid(name, f"{name} and {named[name]} ask for different values: send one of them.")
            options[name], named[name] = data[name], name
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
    message = {"role": "assistant", "content": _text(row.output), "refusal": None}
    if row.tool_calls:
        message["tool_calls"] = [_wire_call(call, index) for index, call in enumerate(row.tool_calls)]
        message["content"] = message["content"] or None  # OpenAI's shape of a reply that only calls tools
    if row.thinking:
        message.update(_thinking(row.thinking))
    return {
        "id": _id(row), "object": "chat.completion", "created": _created(row), "model": row.model,
        "choices": [{"index": 0, "message": message, "logprobs": None,
                     "finish_reason": _finish_reason(row, bool(row.tool_calls))}],
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

    calls_sent = 0  # tool calls are numbered over the whole stream

    def render(event) -> bytes:
        nonlocal calls_sent
        if isinstance(event, TextDelta):
            return chunk({"content": event.text})
        if isinstance(event, ThinkingDelta):
            return chunk(_thinking(event.text))
        if isinstance(event, ToolCallsDelta):
            piece = chunk({"tool_calls": [_wire_call(call, calls_sent + offset)
                                          for offset, call in enumerate(audit_calls(event.calls))]})
            calls_sent += len(event.calls)
            return piece
        if event.error is not None:
            annotate_error(request, event.error)
            # The SDK raises APIError from an event whose data holds `error`: the stream's one error event.
            return _sse(_error_body(event.error.status, event.error.message, code=event.error.type))
        end = chunk({}, _finish_reason(event.row, calls_sent > 0))
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


def _wire_call(call: dict, index: int) -> dict:
    """A tool call in OpenAI's shape: arguments as a JSON string (compact, as Ollama's /v1 writes them)."""
    return {"index": index, "id": call["id"], "type": "function",
            "function": {"name": call["name"],
                         "arguments": json.dumps(call["arguments"], ensure_ascii=False, separators=(",", ":"))}}


def _thinking(text: str) -> dict:
    # Ollama's /v1 sends `reasoning` (which Open WebUI reads); DeepSeek and LiteLLM `reasoning_content`.
    return {"reasoning": text, "reasoning_content": text}


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


def _finish_reason(row: Generation, called_tools: bool) -> str:
    """OpenAI's finish reason. Ollama's done_reason stays "stop" when the model called tools: the gateway says
    "tool_calls" itself, as OpenAI's clients wait for it before running the calls."""
    reason = row.finish_reason if row.finish_reason in FINISH_REASONS else "stop"
    return "tool_calls" if called_tools and reason == "stop" else reason


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
    if code == "budget_exceeded":
        # OpenAI's own answer to a spent quota: the SDK raises RateLimitError, and x-should-retry stops its retries.
        code = kind = "insufficient_quota"
    else:
        kind = ERROR_TYPES.get(status, "server_error" if status >= 500 else "invalid_request_error")
    return {"error": {"message": message, "type": kind, "param": param, "code": code}}


def _method_not_allowed(request, allowed: str) -> JsonResponse:
    return _error(request, 405, f"Method {request.method} is not allowed; use {allowed}.", code="method_not_allowed",
                  headers={"Allow": allowed, "x-should-retry": "false"})
