"""The OpenAPI description of the OpenAI dialect, written by hand: plain async Django views serve it, which
drf-spectacular cannot read, and its wire format is OpenAI's rather than the gateway's serializers.

The request schema is exactly as strict as llm.dialects.openai.parse (the fuzz run checks that what it forbids is
refused): parameters the gateway cannot honour appear only with the default values it accepts.
"""

from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import OpenApiParameter, OpenApiResponse, extend_schema
from rest_framework.views import APIView

from llm.authentication import ApiKeyAuthentication
from llm.request_rules import INT32, MAX_CONTEXT_TOKENS, MODEL_NAME_MAX_LENGTH, REASONING_EFFORT, THINK_LEVELS

MODEL_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._:/@+-]*$"


def _ref(name: str) -> dict:
    return {"$ref": f"#/components/schemas/{name}"}


def _nullable(schema: dict) -> dict:
    # OpenAPI 3.0: "nullable", not a null type.
    return {**schema, "nullable": True}


def _number(low, high, kind="number") -> dict:
    return _nullable({"type": kind, "minimum": low, "maximum": high})


_TEXT_PART = {"type": "object", "required": ["type", "text"],
              "properties": {"type": {"type": "string", "enum": ["text"]}, "text": {"type": "string"}}}
_IMAGE_PART = {"type": "object", "required": ["type", "image_url"],
               "properties": {"type": {"type": "string", "enum": ["image_url"]},
                              "image_url": {"anyOf": [
                                  {"type": "string"},
                                  {"type": "object", "required": ["url"], "additionalProperties": False,
                                   "properties": {"url": {"type": "string"}, "detail": {"type": "string"}}}]}},
               "description": "A data:image/...;base64, URL only: an http(s) URL is refused, never fetched."}
_TOOL_CALL = {"type": "object", "required": ["function"],
              "properties": {"id": {"type": "string"}, "type": {"type": "string", "enum": ["function"]},
                             "function": {"type": "object", "required": ["name", "arguments"],
                                          "properties": {"name": {"type": "string", "minLength": 1},
                                                         "arguments": {"type": "string",
                                                                       "description": "A JSON object, as a string."}}}}}
_EFFORTS = list(REASONING_EFFORT)
# Ollama's own options at the top level (num_ctx, top_k, ...): checked by the same rules as the Ollama dialect's.
_OLLAMA_OPTIONS = {
    "num_ctx": _number(1, MAX_CONTEXT_TOKENS, "integer"), "num_keep": _number(-1, MAX_CONTEXT_TOKENS, "integer"),
    "num_predict": _number(-2, MAX_CONTEXT_TOKENS, "integer"), "top_k": _number(0, 1000, "integer"),
    "min_p": _number(0, 1), "typical_p": _number(0, 1), "tfs_z": _number(0, 10),
    "repeat_last_n": _number(-1, MAX_CONTEXT_TOKENS, "integer"), "repeat_penalty": _number(0, 2),
    "penalize_newline": _nullable({"type": "boolean"}), "mirostat": _number(0, 2, "integer"),
    "mirostat_tau": _number(0, 10), "mirostat_eta": _number(0, 1),
}

COMPONENTS = {
    "ChatCompletionRequest": {
        "type": "object",
        "additionalProperties": False,
        "required": ["model", "messages"],
        "properties": {
            "model": {"type": "string", "minLength": 1, "maxLength": MODEL_NAME_MAX_LENGTH, "pattern": MODEL_PATTERN,
                      "description": "An Ollama model the consumer may use (GET /v1/models)."},
            "messages": {"type": "array", "minItems": 1, "items": _ref("ChatMessage")},
            "stream": _nullable({"type": "boolean"}),
            "stream_options": _nullable({"type": "object", "additionalProperties": False,
                                         "properties": {"include_usage": {"type": "boolean"}},
                                         "description": "Only with stream: true."}),
            "temperature": _number(0, 2),
            "top_p": _number(0, 1),
            "max_tokens": _number(-2, MAX_CONTEXT_TOKENS, "integer"),
            "max_completion_tokens": _number(-2, MAX_CONTEXT_TOKENS, "integer"),
            "stop": {"anyOf": [{"type": "string", "maxLength": 100, "nullable": True},
                               {"type": "array", "maxItems": 8, "items": {"type": "string", "maxLength": 100}}]},
            "seed": _number(-INT32 - 1, INT32, "integer"),
            "frequency_penalty": _number(-2, 2),
            "presence_penalty": _number(-2, 2),
            "response_format": {"anyOf": [
                {"type": "object", "required": ["type"], "nullable": True,
                 "properties": {"type": {"type": "string", "enum": ["text"]}}},
                {"type": "object", "required": ["type"],
                 "properties": {"type": {"type": "string", "enum": ["json_object"]}}},
                {"type": "object", "required": ["type", "json_schema"],
                 "properties": {"type": {"type": "string", "enum": ["json_schema"]},
                                "json_schema": {"type": "object", "required": ["schema"],
                                                "properties": {"name": {"type": "string"},
                                                               "schema": {"type": "object"},
                                                               "strict": _nullable({"type": "boolean"})}}}},
            ]},
            "user": _nullable({"type": "string", "description": "The end user; cut to 256 characters."}),
            "n": _nullable({"type": "integer", "enum": [1]}),
            "logprobs": _nullable({"type": "boolean", "enum": [False]}),
            "tools": _nullable({"type": "array", "items": {
                "type": "object", "required": ["type", "function"],
                "properties": {"type": {"type": "string", "enum": ["function"]},
                               "function": {"type": "object", "required": ["name"],
                                            "properties": {"name": {"type": "string", "minLength": 1},
                                                           "description": _nullable({"type": "string"}),
                                                           "parameters": _nullable({"type": "object"}),
                                                           "strict": _nullable({"type": "boolean"})}}}}}),
            "tool_choice": {"anyOf": [
                {"type": "string", "enum": ["none", "auto", "required"], "nullable": True},
                {"type": "object", "required": ["type", "function"],
                 "properties": {"type": {"type": "string", "enum": ["function"]},
                                "function": {"type": "object", "required": ["name"],
                                             "properties": {"name": {"type": "string"}}}}}],
                "description": "required sends the tools, but Ollama cannot force a call."},
            "parallel_tool_calls": _nullable({"type": "boolean"}),
            "reasoning_effort": _nullable({"type": "string", "enum": _EFFORTS,
                                           "description": "As Ollama's think: none false, minimal low, xhigh high."}),
            "reasoning": _nullable({"type": "object", "additionalProperties": False,
                                    "properties": {"effort": _nullable({"type": "string", "enum": _EFFORTS})}}),
            "think": {"anyOf": [{"type": "boolean", "nullable": True},
                                {"type": "string", "enum": list(THINK_LEVELS)}],
                      "description": "Ollama's own switch (Open WebUI sends it)."},
            "keep_alive": {"anyOf": [{"type": "number", "nullable": True}, {"type": "string", "maxLength": 64}],
                           "description": "Seconds or a duration like 5m, up to KEEP_ALIVE_MAX; never 0 or negative."},
            **_OLLAMA_OPTIONS,
        },
        "description": "OpenAI's chat completion request. Unsupported parameters (n > 1, logit_bias, "
                       "logprobs: true, audio, …) are refused with a 400 naming them; Ollama's non-load-time "
                       "options are accepted at the top level, its load-time ones (num_gpu, …) refused.",
    },
    "ChatMessage": {
        "type": "object",
        "additionalProperties": False,
        "required": ["role"],
        "properties": {
            "role": {"type": "string", "enum": ["system", "developer", "user", "assistant", "tool"]},
            "content": {"anyOf": [{"type": "string", "nullable": True},
                                  {"type": "array", "items": {"anyOf": [_TEXT_PART, _IMAGE_PART]}}],
                        "description": "Text, or text parts (and image parts, from a user); null only for an "
                                       "assistant or tool message."},
            "name": _nullable({"type": "string"}),
            "tool_calls": _nullable({"type": "array", "items": _TOOL_CALL,
                                     "description": "An assistant message's calls, replayed."}),
            "tool_call_id": _nullable({"type": "string", "description": "A tool message: the call it answers."}),
            "reasoning": _nullable({"type": "string"}),
            "reasoning_content": _nullable({"type": "string"}),
        },
    },
    "ChatCompletion": {
        "type": "object",
        "required": ["id", "object", "created", "model", "choices", "usage"],
        "properties": {
            "id": {"type": "string", "description": "chatcmpl-<the audit row's id>"},
            "object": {"type": "string", "enum": ["chat.completion"]},
            "created": {"type": "integer"},
            "model": {"type": "string"},
            "choices": {"type": "array", "items": {
                "type": "object", "required": ["index", "message", "finish_reason"],
                "properties": {"index": {"type": "integer"},
                               "message": {"type": "object", "required": ["role", "content"],
                                           "properties": {"role": {"type": "string"},
                                                          "content": {"type": "string", "nullable": True},
                                                          "tool_calls": {"type": "array", "items": _TOOL_CALL},
                                                          "reasoning": {"type": "string"},
                                                          "reasoning_content": {"type": "string"}}},
                               "finish_reason": {"type": "string", "enum": ["stop", "length", "tool_calls"]}}}},
            "usage": _ref("ChatCompletionUsage"),
        },
    },
    "ChatCompletionUsage": {
        "type": "object",
        "required": ["prompt_tokens", "completion_tokens", "total_tokens"],
        "properties": {name: {"type": "integer", "minimum": 0}
                       for name in ("prompt_tokens", "completion_tokens", "total_tokens")},
    },
    "OpenAIModel": {
        "type": "object",
        "required": ["id", "object", "created", "owned_by"],
        "properties": {"id": {"type": "string"}, "object": {"type": "string", "enum": ["model"]},
                       "created": {"type": "integer"}, "owned_by": {"type": "string"}},
    },
    "OpenAIModelList": {
        "type": "object",
        "required": ["object", "data"],
        "properties": {"object": {"type": "string", "enum": ["list"]},
                       "data": {"type": "array", "items": _ref("OpenAIModel")}},
    },
    "OpenAIError": {
        "type": "object",
        "required": ["error"],
        "properties": {"error": {
            "type": "object", "required": ["message", "type", "param", "code"],
            "properties": {"message": {"type": "string"},
                           "type": {"type": "string", "description": "invalid_request_error, "
                                                                     "authentication_error, permission_error, "
                                                                     "rate_limit_error, server_error"},
                           "param": {"type": "string", "nullable": True, "description": "The parameter at fault."},
                           "code": {"type": "string", "nullable": True,
                                    "description": "The gateway's error type: rate_limited, model_not_found, …"}}}},
    },
}


# One server-sent event: its data is a chat.completion.chunk (or the error object) as JSON, or [DONE] at the end.
SSE_EVENT = {"type": "object", "properties": {
    "event": {"type": "string"},
    "data": {"type": "string", "description": 'A chat.completion.chunk as JSON, `{"error": {…}}`, or [DONE].'}}}


def _error(description: str) -> OpenApiResponse:
    return OpenApiResponse(_ref("OpenAIError"), description=description)


OPENAI_ERRORS = {
    400: _error("The request is invalid or asks for what the gateway does not support; `param` names it. "
                "Sent with `x-should-retry: false`."),
    401: _error("No API key, or not a valid one."),
    403: _error("model_not_allowed (the consumer may not use this model) or raw_prompts_not_allowed (its keys "
                "may use prompt templates only)."),
    404: _error("model_not_found: the model is not on the Ollama server."),
    408: _error("request_timeout: the body did not arrive within REQUEST_BODY_TIMEOUT (30 s by default)."),
    413: _error("payload_too_large: the body is over CHAT_MAX_IMAGE_BODY_BYTES (20 MiB by default; refused before "
                "it is read), or over CHAT_MAX_BODY_BYTES (1 MiB) without its images."),
    415: _error("unsupported_media_type: the body must be application/json."),
    429: _error("rate_limited: the consumer's generations per minute are used up; or auth_throttled: this client "
                "address sent more than FAILED_KEYS_PER_MINUTE missing or wrong keys this minute, so no key is "
                "checked until it is over. `Retry-After` says for how long."),
    502: _error("upstream_error or invalid_output, after the gateway's own retries (`x-should-retry: false`)."),
    503: _error("upstream_unavailable, upstream_busy or audit_unavailable."),
    504: _error("upstream_timeout."),
}

# A listing counts no rate limit, but the keys it is sent with count against the address like any others.
THROTTLED = _error("auth_throttled: this client address sent more than FAILED_KEYS_PER_MINUTE missing or wrong keys "
                   "this minute, so no key is checked until it is over; `Retry-After` says for how long.")


def add_components(result, generator, request, public):
    """drf-spectacular postprocessing hook: the OpenAI dialect's schemas, referenced by the operations below."""
    result.setdefault("components", {}).setdefault("schemas", {}).update(COMPONENTS)
    return result


class ChatCompletionsOperation(APIView):
    """The OpenAPI description of POST /v1/chat/completions (served by llm.dialects.openai; never called)."""

    authentication_classes = [ApiKeyAuthentication]
    permission_classes = []

    @extend_schema(
        operation_id="openai_chat_completions",
        tags=["openai"],
        summary="Chat completion (OpenAI-compatible)",
        description="OpenAI's chat completions over the gateway's models: point an OpenAI client's base URL at "
                    "`/v1` and use a gateway API key. Audited, rate-limited and routed like a native generation "
                    "(one audit row whose id is in `id` and in X-Request-ID). With `stream: true` the answer is "
                    "`text/event-stream`: `chat.completion.chunk` events, then `data: [DONE]`; with "
                    "`stream_options.include_usage` a last chunk with empty `choices` and `usage`; an error after "
                    "the stream started is one `data: {\"error\": …}` event.",
        request={"application/json": _ref("ChatCompletionRequest")},
        responses={(200, "application/json"): _ref("ChatCompletion"),
                   (200, "text/event-stream"): SSE_EVENT, **OPENAI_ERRORS},
    )
    def post(self, request):
        raise NotImplementedError("served by llm.dialects.openai.chat_completions")


class ModelsOperation(APIView):
    authentication_classes = [ApiKeyAuthentication]
    permission_classes = []

    @extend_schema(operation_id="openai_models", tags=["openai"], summary="List models (OpenAI-compatible)",
                   description="The models the calling consumer may use. Not a generation: no audit row, no rate "
                               "limit.",
                   responses={200: _ref("OpenAIModelList"), 401: OPENAI_ERRORS[401], 429: THROTTLED,
                              502: OPENAI_ERRORS[502],
                              503: OPENAI_ERRORS[503], 504: OPENAI_ERRORS[504]})
    def get(self, request):
        raise NotImplementedError("served by llm.dialects.openai.models")


class ModelOperation(APIView):
    authentication_classes = [ApiKeyAuthentication]
    permission_classes = []

    @extend_schema(operation_id="openai_model", tags=["openai"], summary="Retrieve a model (OpenAI-compatible)",
                   parameters=[OpenApiParameter("name", OpenApiTypes.STR, OpenApiParameter.PATH,
                                                description="A model name, e.g. qwen2.5:7b.")],
                   responses={200: _ref("OpenAIModel"),
                              404: _error("Not a model the consumer may use, or not on the server."),
                              401: OPENAI_ERRORS[401], 429: THROTTLED, 502: OPENAI_ERRORS[502],
                              503: OPENAI_ERRORS[503], 504: OPENAI_ERRORS[504]})
    def get(self, request, name):
        raise NotImplementedError("served by llm.dialects.openai.model")
