"""A fake Ollama server on a real loopback socket: Ollama's wire protocol, its capability rules, its scheduler, faults.

Used by the pytest fixtures and by the benchmarks (as a process of its own). Standard library only: one asyncio event
loop with a small HTTP/1.1 parser, so a single thread holds thousands of connections. Shapes, status codes and error
strings follow ollama/ollama v0.33.0-rc2 (commit fb30760996871fa9460115c753afd2c60d4ab0f7): docs/api.md, api/types.go,
server/routes.go, server/sched.go, openai/openai.go and middleware/openai.go. Compact Go-style JSON, NDJSON streams
(SSE under /v1) sent with chunked transfer encoding, errors as {"error": "..."} (OpenAI's error object under /v1),
and an error in mid-stream as one more line.

    python tests/fake_ollama.py --port 11434                              # serve in the foreground
    python tests/fake_ollama.py --port 0 --delay 2 --chunks 20 --chunk-delay 0.05
    python tests/fake_ollama.py --port 0 --num-parallel 4 --delay 1 --load-delay 2 --model qwen3:8b --model m=embedding

Endpoints: GET /, /api/version, /api/tags, /api/ps (and HEAD); POST /api/show, /api/chat, /api/generate, /api/embed,
/api/embeddings; POST /v1/chat/completions, /v1/completions, /v1/embeddings; GET /v1/models, /v1/models/{model}. The
/v1 routes translate to and from the same handlers as the native ones, as Ollama's middleware does.

The model is deterministic, so a test can compare an answer through the gateway with the fake's own answer:
- Capabilities come from MODEL_CATALOGUE (a tools+thinking qwen3:8b and gpt-oss:20b, vision llava:7b and gemma3:4b, an
  insert-capable qwen2.5-coder:1.5b, embedding-only nomic-embed-text and all-minilm, the default qwen2.5:7b and
  llama3.2:1b with tools), overridden per instance by `specs`; any other installed name is a plain "completion"
  model. Asking for a capability a model lacks gives Ollama's own error and status.
- Content: `reply` if set, else "Echo: <last user message>", or {"echo", "model"} JSON when `format` is "json" or a
  schema, or "Fill: <prompt> ... <suffix>" for /api/generate with a suffix. A vision model appends
  " [N images: png 68 bytes, ...]"; images on any other model fail as llama-server fails them.
- Thinking: a model with "thinking" thinks when `think` is true, a level, or absent (Ollama turns absent into true);
  its thinking is "Thinking (think=<value>) about: <question>", streamed before the content.
- Tools: when tools are offered and the last message is the user's, the model calls the first tool (`tool_mode`
  "first"), every tool ("all") or none ("none"); "[all tools]", "[no tools]" or "[tool:NAME]" in that message
  decide for one request. Arguments are built from each tool's parameter schema (strings get the user's text);
  `tool_script` (a list of {"name", "arguments"} or a callable taking the request body) replaces that choice. Ids are
  "call_" + 8 characters, derived from the conversation, and function.index counts the calls of one reply. When the
  last messages are tool results the model answers "Tool results: <tool_name>: <content>; ...".
  `tool_calls_per_chunk` (1) groups calls in stream chunks; 0 sends them all on the final chunk (llama-server's path).
- Embeddings: unit-length float32 vectors, `embedding_length` long, seeded from the SHA-256 of the model and the text
  (the model's own vector, rotated and sign-flipped by the text's hash, with 6 significant digits: cheap to write as
  Go does, so embedding costs a benchmark next to nothing), cut to `dimensions` and normalised again as Ollama does;
  inputs longer than the context are truncated, or refused with "truncate": false; /api/embeddings gives the vector
  before normalisation, as float64. Tokens are counted as words everywhere.

The scheduler, as server/sched.go runs it (every limit is off by default):
- A request for a model that is not loaded pays `load_delay` seconds (reported as load_duration) and loads it; one
  load at a time; a different options.num_ctx reloads it. keep_alive (Go durations, seconds, negative for ever, 0 to
  unload once idle; 5m by default) sets when an idle model expires; /api/ps lists the loaded ones.
- `num_parallel` generations run at once per model (OLLAMA_NUM_PARALLEL; ModelSpec.num_parallel overrides it), the
  others wait in line; beyond `max_queue` waiting requests the answer is 503 "server busy, please try again.  maximum
  pending requests exceeded". `max_loaded_models` (OLLAMA_MAX_LOADED_MODELS) unloads the least recently used idle
  model to make room, waiting for one to go idle when none is.
- For tests: preload(), unload(), loaded_models(), running, running_total, peak_running, peak_running_total,
  requests_per_model, loads_per_model, waiting, images, wait_for_running(). stop() kills the server (every connection dropped, even
  mid-stream or mid-load, and the loaded models forgotten); start() or restart() brings it back on the same port.

options.num_predict cuts a chat reply (/api/chat and the /v1 chat) at that many tokens with done_reason "length"
(thinking first, then the content word by word), as Ollama stops at its limit.

Deliberately not mimicked: num_predict does not cut /api/generate replies; logprobs, templates, context shifting and cloud models
are ignored; tool call ids and /v1 ids are derived from the request, not random, so answers compare; the 503 counts
every waiting request (Ollama's queue bound applies to requests waiting to be scheduled); eviction picks the least
recently used idle model (Ollama sorts by keep_alive, then name); the default version, the "model not found" wording
and a 400 "model is required" on /api/generate stay those of 0.5.x, which the suite was written against (`version`,
`not_found_message`); Go's type errors for nested fields are close to Go's, not always word for word.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import binascii
import functools
import hashlib
import json
import math
import re
import socket
import struct
import threading
import time
import traceback
from array import array
from collections import Counter, deque
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from decimal import Decimal
from email.utils import formatdate
from http import HTTPStatus
from typing import Any, Callable, Iterable, Mapping
from urllib.parse import unquote, urlsplit

OLLAMA_COMMIT = "fb30760996871fa9460115c753afd2c60d4ab0f7"  # v0.33.0-rc2, the source these shapes follow
DEFAULT_MODELS = ("qwen2.5:7b", "llama3.2:1b")
RUNNER_CRASH = "llama runner process has terminated: exit status 2"
SERVER_BUSY = "server busy, please try again.  maximum pending requests exceeded"
# llama-server's refusals, which Ollama passes on as their raw JSON body.
NO_VISION = ('{"error":{"code":500,"message":"image input is not supported - hint: if this is unexpected, '
             'you may need to provide the mmproj","type":"server_error"}}')
BAD_IMAGE = '{"error":{"code":500,"message":"Failed to load image or audio file","type":"server_error"}}'
HANG_LIMIT = 60.0  # a forgotten hang must not hold a connection for ever
STALL_SECONDS = 10.0
LOAD_DELAY = 5.0
KEEP_ALIVE = 300.0  # Ollama keeps a model loaded 5 minutes after its last use
DEFAULT_NUM_CTX = 4096
FOREVER = timedelta(microseconds=(2**63 - 1) // 1000)  # Go's time.Now().Add(math.MaxInt64)
MAX_STREAM_CHUNKS = 32
BACKLOG = 4096  # the benchmark opens hundreds of connections at once
MAX_HEAD = 64 * 1024
MAX_BODY = 64 * 1024 * 1024
THINK_LEVELS = ("high", "medium", "low", "max")
IMAGE_TOKENS = 256  # what one image adds to prompt_eval_count
GENERATION_PATHS = frozenset({"/api/chat", "/api/generate", "/v1/chat/completions", "/v1/completions"})
INFERENCE_PATHS = GENERATION_PATHS | {"/api/embed", "/api/embeddings", "/v1/embeddings"}
JSON_TYPE = "application/json; charset=utf-8"  # what gin's c.JSON sends
PLAIN_JSON_TYPE = "application/json"  # what Ollama's OpenAI writers and json.Encoder replies send
NDJSON_TYPE = "application/x-ndjson"
SSE_TYPE = "text/event-stream"
TEXT_TYPE = "text/plain; charset=utf-8"
HTML_TYPE = "text/html; charset=utf-8"

# Fault kind -> the keyword parameters it accepts. "Chunks" are the NDJSON lines (SSE events under /v1) of a stream.
#   slow           wait `delay` s (default 1) before answering; `chunk_delay` s between NDJSON lines
#   hang           read the request, never answer (until stop(), the client leaves, or `limit` s, default 60)
#   status         `status` (500) with Ollama's {"error": `message`} (a runner crash by default)
#   malformed      200 application/json whose body (`body`, default "<html>oops") is not JSON
#   cut_off        Content-Length or chunked stream promised, then the socket closes mid-body: a stream after
#                  `after` chunks, or by default after half of them and half a line
#   not_ollama     some other web server: HTML 404 for /api/..., HTML 200 on /
#   reset          read the request, then close with RST and send nothing
#   stream_error   a stream sends `after` chunks (1), then the line {"error": `message`} and ends; a reply that
#                  is not streamed is a 500 with that error, as Ollama's non-streaming handlers answer
#   stall          after `after` chunks (1) send nothing for `seconds` (10), then `then`: "continue" or "close";
#                  a reply that is not streamed stalls between its headers and its body
#   load           a slow model load: `delay` s (5) before anything is sent, reported as load_duration
#   cached_prompt  the reply leaves out prompt_eval_count, as Ollama does when the whole prompt was cached
FAULT_PARAMS: dict[str, frozenset[str]] = {
    "slow": frozenset({"delay", "chunk_delay"}),
    "hang": frozenset({"limit"}),
    "status": frozenset({"status", "message"}),
    "malformed": frozenset({"body"}),
    "cut_off": frozenset({"after"}),
    "not_ollama": frozenset(),
    "reset": frozenset(),
    "stream_error": frozenset({"after", "message"}),
    "stall": frozenset({"after", "seconds", "then"}),
    "load": frozenset({"delay"}),
    "cached_prompt": frozenset(),
}

# Path -> methods; mirrors the routes Ollama registers (the fake's GET routes also answer HEAD).
ROUTES = {
    "/": {"GET", "HEAD"},
    "/api/version": {"GET", "HEAD"},
    "/api/tags": {"GET", "HEAD"},
    "/api/ps": {"GET", "HEAD"},
    "/api/show": {"POST"},
    "/api/chat": {"POST"},
    "/api/generate": {"POST"},
    "/api/embed": {"POST"},
    "/api/embeddings": {"POST"},
    "/v1/chat/completions": {"POST"},
    "/v1/completions": {"POST"},
    "/v1/embeddings": {"POST"},
    "/v1/models": {"GET"},
    "/v1/models/{model}": {"GET"},
}


@dataclass(frozen=True)
class ModelSpec:
    """What the fake knows of an installed model: what it can do and how big it is."""

    capabilities: tuple[str, ...] = ("completion",)
    family: str = ""  # "" -> derived from the name
    context_length: int = 32768  # the trained maximum, in model_info; a load uses min(num_ctx or 4096, this)
    embedding_length: int = 768  # the size of its vectors
    num_parallel: int | None = None  # overrides FakeOllama.num_parallel for this model


MODEL_CATALOGUE: dict[str, ModelSpec] = {
    "qwen2.5:7b": ModelSpec(("completion", "tools"), "qwen2", 32768, 3584),
    "llama3.2:1b": ModelSpec(("completion", "tools"), "llama", 131072, 2048),
    "qwen3:8b": ModelSpec(("completion", "tools", "thinking"), "qwen3", 40960, 4096),
    "deepseek-r1:7b": ModelSpec(("completion", "thinking"), "qwen2", 131072, 3584),
    "gpt-oss:20b": ModelSpec(("completion", "tools", "thinking"), "gptoss", 131072, 2880),
    "llava:7b": ModelSpec(("completion", "vision"), "llama", 32768, 4096),
    "gemma3:4b": ModelSpec(("completion", "vision"), "gemma3", 131072, 2560),
    "qwen2.5-coder:1.5b": ModelSpec(("completion", "tools", "insert"), "qwen2", 32768, 1536),
    "phi:2.7b": ModelSpec(("completion",), "phi2", 2048, 2560),
    "nomic-embed-text:latest": ModelSpec(("embedding",), "nomic-bert", 2048, 768),
    "all-minilm:latest": ModelSpec(("embedding",), "bert", 512, 384),
}


@dataclass(frozen=True)
class RecordedRequest:
    """One request as the fake received it. Header names are lower-cased."""

    method: str
    path: str
    headers: dict[str, str]
    json: Any
    raw: bytes
    query: str = ""
    peer: tuple[str, int] | None = None


@dataclass
class _Fault:
    kind: str
    paths: frozenset[str] | None
    remaining: int | None
    params: dict[str, Any]


@dataclass
class _Reply:
    status: int
    content_type: str
    body: bytes = b""
    lines: list[bytes] | None = None  # set for a stream: NDJSON lines or SSE events
    headers: dict[str, str] = field(default_factory=dict)
    error_line: Callable[[str], bytes] | None = None  # what an error mid-stream looks like in this dialect


@dataclass
class _Exchange:
    """One request on its way through the fake."""

    conn: _Connection
    request: RecordedRequest
    started: float
    kind: str | None = None  # the fault it drew
    params: dict[str, Any] = field(default_factory=dict)
    releases: list[Callable[[], None]] = field(default_factory=list)  # run as the reply's last bytes go out

    def release(self) -> None:
        while self.releases:
            self.releases.pop()()


@dataclass
class _Outcome:
    """What a native handler decided, before it is written in a dialect."""

    status: int = 200
    error: str | None = None
    frames: list[dict[str, Any]] = field(default_factory=list)  # a stream's frames, or the one whole reply
    stream: bool = False
    embed: dict[str, Any] | None = None  # an embedding answer: model, vectors, durations, tokens


@dataclass
class _Runner:
    """A loaded model, as the scheduler sees it."""

    name: str
    num_ctx: int
    keep_alive: float | None  # seconds; None: for ever
    size: int
    running: int = 0
    expires: float | None = None  # time.time() at which it unloads, once idle; None: never
    shown_expiry: datetime | None = None  # /api/ps's expires_at; Go's zero time until it first went idle
    last_used: float = 0.0
    waiters: deque = field(default_factory=deque)  # futures of requests waiting for one of its slots


class _Gone(Exception):
    """The client closed the connection, or stop() dropped it."""


class _Busy(Exception):
    """The queue is full."""


class _BadRequest(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


_UNSET = object()


def free_port_refused(host: str = "127.0.0.1") -> str:
    """A URL on which nothing listens, for "connection refused" tests."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        port = sock.getsockname()[1]
    return f"http://{host}:{port}"


# -- Go's encodings ------------------------------------------------------------------------------------------------

def _dumps(obj: Any) -> bytes:
    # Go's encoding/json writes compact UTF-8 and escapes <, > and & inside strings.
    text = json.dumps(obj, separators=(",", ":"), ensure_ascii=False)
    return text.replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026").encode()


def _go_number(digits: str, value: float) -> str:
    """The shortest digits of a float in Go's encoding/json layout: plain from 1e-6 to 1e21, else 1e-7 style."""
    if "e" not in digits and "E" not in digits:
        return digits[:-2] if digits.endswith(".0") else digits
    number = Decimal(digits).normalize()
    if 1e-6 <= abs(value) < 1e21:
        return format(number, "f")
    sign, figures, exponent = number.as_tuple()
    mantissa = str(figures[0]) + ("." + "".join(map(str, figures[1:])) if len(figures) > 1 else "")
    power = exponent + len(figures) - 1
    return f"{'-' if sign else ''}{mantissa}e{'-' if power < 0 else '+'}{abs(power):02d}".replace("e-0", "e-")


def _go_float64(value: float) -> str:
    """A float64 as Go's encoding/json writes it."""
    return "0" if value == 0 else _go_number(repr(value), value)


def _short_float32s(values: list[float]) -> list[str]:
    # A decimal of 6 significant digits (FLT_DIG) is the shortest form of the float32 nearest to it, so these digits
    # are exactly what Go writes for the float32s a vector holds, at the cost of one %-format each.
    digits = ["%.6g" % value for value in values]
    return [text if "e" not in text else _go_number(text, float(text)) for text in digits]


_B64_ALPHABET = frozenset(b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/")
_B64_PLAIN = re.compile(r"(?:[A-Za-z0-9+/]{4})*(?:[A-Za-z0-9+/]{2}==|[A-Za-z0-9+/]{3}=)?")


def _go_b64decode(text: str) -> bytes:
    """base64.StdEncoding.DecodeString: padding required, CR and LF skipped; ValueError with Go's message."""
    if _B64_PLAIN.fullmatch(text):
        return binascii.a2b_base64(text)
    src, si = text.encode(), 0
    while si < len(src):  # Go's decodeQuantum, for the offset its error names
        j = 0
        while j < 4:
            if si == len(src):
                if j == 0:
                    break
                raise ValueError(f"illegal base64 data at input byte {si - j}")
            char = src[si]
            si += 1
            if char in _B64_ALPHABET:
                j += 1
                continue
            if char in (10, 13):
                continue
            if char != ord("=") or j < 2:
                raise ValueError(f"illegal base64 data at input byte {si - 1}")
            if j == 2:
                while si < len(src) and src[si] in (10, 13):
                    si += 1
                if si == len(src):
                    raise ValueError(f"illegal base64 data at input byte {len(src)}")
                if src[si] != ord("="):
                    raise ValueError(f"illegal base64 data at input byte {si - 1}")
                si += 1
            while si < len(src) and src[si] in (10, 13):
                si += 1
            if si < len(src):
                raise ValueError(f"illegal base64 data at input byte {si}")
            break
    return binascii.a2b_base64(text.replace("\r", "").replace("\n", ""))


_DURATION_UNITS = {"ns": 1e-9, "us": 1e-6, "µs": 1e-6, "μs": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0}


def _go_duration(text: str) -> float:
    """time.ParseDuration in seconds; ValueError with Go's message."""
    quoted = json.dumps(text, ensure_ascii=False)
    rest, sign = text, 1.0
    if rest[:1] in ("-", "+"):
        sign, rest = (-1.0 if rest[0] == "-" else 1.0), rest[1:]
    if rest == "0":
        return 0.0
    if not rest:
        raise ValueError(f"time: invalid duration {quoted}")
    total = 0.0
    while rest:
        number = re.match(r"(\d*)(\.\d*)?", rest)
        whole, fraction = number.group(1), number.group(2) or ""
        if not whole and fraction in ("", "."):
            raise ValueError(f"time: invalid duration {quoted}")
        rest = rest[number.end():]
        unit = re.match(r"[^\d.]*", rest).group(0)
        if not unit:
            raise ValueError(f"time: missing unit in duration {quoted}")
        if unit not in _DURATION_UNITS:
            raise ValueError(f"time: unknown unit {json.dumps(unit, ensure_ascii=False)} in duration {quoted}")
        total += float((whole or "0") + (fraction if fraction != "." else "")) * _DURATION_UNITS[unit]
        rest = rest[len(unit):]
    return sign * total


def _keep_alive(value: Any) -> Any:
    """api.Duration: seconds, None for ever (any negative), _UNSET when absent; ValueError with Go's message."""
    if value is None:
        return _UNSET
    if isinstance(value, bool) or not isinstance(value, (int, float, str)):
        kind = {bool: "bool", list: "[]interface {}", dict: "map[string]interface {}"}[type(value)]
        raise ValueError(f"Unsupported type: '{kind}'")
    seconds = float(value) if not isinstance(value, str) else _go_duration(value)
    return None if seconds < 0 else seconds


def _think(value: Any) -> Any:
    """api.ThinkValue: None when absent, a bool or a level; ValueError with Go's message."""
    if value is None or isinstance(value, bool):
        return value
    if isinstance(value, str):
        if value in THINK_LEVELS:
            return value
        raise ValueError(f'invalid think value: {json.dumps(value)} (must be "high", "medium", "low", "max", true, or '
                         f'false)')
    raise ValueError('think must be a boolean or string ("high", "medium", "low", "max", true, or false)')


def _json_kind(value: Any) -> str:
    if isinstance(value, bool):
        return "bool"
    if isinstance(value, (int, float)):
        return "number"
    return {str: "string", list: "array", dict: "object"}.get(type(value), "null")


def _unmarshal_error(kind: str, struct_name: str, path: str, go_type: str) -> str:
    if not path:
        return f"json: cannot unmarshal {kind} into Go value of type {go_type}"
    return f"json: cannot unmarshal {kind} into Go struct field {struct_name}.{path} of type {go_type}"


def _check_image(value: Any, struct_name: str, path: str, sink: list) -> str | None:
    if not isinstance(value, str):
        return _unmarshal_error(_json_kind(value), struct_name, path, "api.ImageData")
    try:
        sink.append(_go_b64decode(value))
    except ValueError as exc:
        return str(exc)
    return None


def _check_custom(parse: Callable[[Any], Any]) -> Callable[[Any, str, str, list], str | None]:
    def check(value: Any, struct_name: str, path: str, sink: list) -> str | None:
        try:
            parse(value)
        except ValueError as exc:
            return str(exc)
        return None
    return check


def _check_arguments(value: Any, struct_name: str, path: str, sink: list) -> str | None:
    if isinstance(value, dict):
        return None
    return _unmarshal_error(_json_kind(value), "", "", "map[string]interface {}")


# The Go types of the request fields the fake reads, for gin's "json: cannot unmarshal ..." errors. A node is a Go
# scalar ("string", "bool", "int", "float32", "float64"), "any", "map" (map[string]interface {}), a check function (a
# custom UnmarshalJSON), ("list", Go type, element) or ("struct", Go type, struct name or None for the outer one,
# fields).
_TOOL = ("struct", "api.Tool", "Tool", {
    "type": "string",
    "function": ("struct", "api.ToolFunction", "ToolFunction", {
        "name": "string", "description": "string",
        "parameters": ("struct", "api.ToolFunctionParameters", "ToolFunctionParameters", {
            "type": "string", "required": ("list", "[]string", "string"), "properties": "map"}),
    }),
})
_TOOL_CALL = ("struct", "api.ToolCall", "ToolCall", {
    "id": "string",
    "function": ("struct", "api.ToolCallFunction", "ToolCallFunction", {
        "index": "int", "name": "string", "arguments": _check_arguments}),
})
_MESSAGE = ("struct", "api.Message", None, {  # Message has its own UnmarshalJSON: errors name the outer struct
    "role": "string", "content": "string", "thinking": "string",
    "images": ("list", "[]api.ImageData", _check_image),
    "tool_calls": ("list", "[]api.ToolCall", _TOOL_CALL),
    "tool_name": "string", "tool_call_id": "string",
})
_CHECK_KEEP_ALIVE = _check_custom(_keep_alive)
_CHECK_THINK = _check_custom(_think)
CHAT_REQUEST = ("struct", "api.ChatRequest", "ChatRequest", {
    "model": "string", "messages": ("list", "[]api.Message", _MESSAGE), "stream": "bool", "format": "any",
    "keep_alive": _CHECK_KEEP_ALIVE, "tools": ("list", "api.Tools", _TOOL), "options": "map", "think": _CHECK_THINK,
    "truncate": "bool", "shift": "bool", "logprobs": "bool", "top_logprobs": "int",
})
GENERATE_REQUEST = ("struct", "api.GenerateRequest", "GenerateRequest", {
    "model": "string", "prompt": "string", "suffix": "string", "system": "string", "template": "string",
    "context": ("list", "[]int", "int"), "stream": "bool", "raw": "bool", "format": "any",
    "keep_alive": _CHECK_KEEP_ALIVE, "images": ("list", "[]api.ImageData", _check_image), "options": "map",
    "think": _CHECK_THINK, "truncate": "bool", "shift": "bool", "logprobs": "bool", "top_logprobs": "int",
})
EMBED_REQUEST = ("struct", "api.EmbedRequest", "EmbedRequest", {
    "model": "string", "input": "any", "keep_alive": _CHECK_KEEP_ALIVE, "truncate": "bool", "dimensions": "int",
    "options": "map",
})
EMBEDDING_REQUEST = ("struct", "api.EmbeddingRequest", "EmbeddingRequest", {
    "model": "string", "prompt": "string", "keep_alive": _CHECK_KEEP_ALIVE, "options": "map",
})
_STREAM_OPTIONS = ("struct", "openai.StreamOptions", "StreamOptions", {"include_usage": "bool"})
OPENAI_CHAT_REQUEST = ("struct", "openai.ChatCompletionRequest", "ChatCompletionRequest", {
    "model": "string",
    "messages": ("list", "[]openai.Message", ("struct", "openai.Message", "Message", {
        "role": "string", "content": "any", "reasoning": "string", "name": "string", "tool_call_id": "string",
        "tool_calls": ("list", "[]openai.ToolCall", ("struct", "openai.ToolCall", "ToolCall", {
            "id": "string", "index": "int", "type": "string",
            "function": ("struct", "struct { Name string \"json:\\\"name\\\"\"; Arguments string "
                                   "\"json:\\\"arguments\\\"\" }", "", {"name": "string", "arguments": "string"}),
        })),
    })),
    "stream": "bool", "stream_options": _STREAM_OPTIONS, "max_tokens": "int", "seed": "int", "stop": "any",
    "temperature": "float64", "frequency_penalty": "float64", "presence_penalty": "float64", "top_p": "float64",
    "response_format": ("struct", "openai.ResponseFormat", "ResponseFormat", {
        "type": "string", "json_schema": ("struct", "openai.JsonSchema", "JsonSchema", {"schema": "any"})}),
    "tools": ("list", "[]api.Tool", _TOOL),
    "reasoning": ("struct", "openai.Reasoning", "Reasoning", {"effort": "string"}),
    "reasoning_effort": "string", "logprobs": "bool", "top_logprobs": "int",
})
OPENAI_COMPLETION_REQUEST = ("struct", "openai.CompletionRequest", "CompletionRequest", {
    "model": "string", "prompt": "string", "frequency_penalty": "float32", "max_tokens": "int",
    "presence_penalty": "float32", "seed": "int", "stop": "any", "stream": "bool", "stream_options": _STREAM_OPTIONS,
    "temperature": "float32", "top_p": "float32", "suffix": "string", "logprobs": "int",
})
OPENAI_EMBED_REQUEST = ("struct", "openai.EmbedRequest", "EmbedRequest", {
    "input": "any", "model": "string", "dimensions": "int", "encoding_format": "string",
})


def _type_problem(value: Any, node: Any, struct_name: str = "", path: str = "", sink: list | None = None) -> str | None:
    """The first field whose JSON type does not fit its Go type, in Go's words; None when all fit."""
    if value is None:  # null leaves a Go field at its zero value
        return None
    if callable(node):
        return node(value, struct_name, path, sink if sink is not None else [])
    if node == "any":
        return None
    kind = _json_kind(value)
    if isinstance(node, str):
        fits = {"string": kind == "string", "bool": kind == "bool", "map": kind == "object",
                "int": isinstance(value, int) and not isinstance(value, bool),
                "float32": kind == "number", "float64": kind == "number"}[node]
        if fits:
            return None
        shown = f"number {value!r}" if node == "int" and kind == "number" else kind
        return _unmarshal_error(shown, struct_name, path, "map[string]interface {}" if node == "map" else node)
    if node[0] == "list":
        _, go_type, element = node
        if kind != "array":
            return _unmarshal_error(kind, struct_name, path, go_type)
        for item in value:
            if problem := _type_problem(item, element, struct_name, path, sink):
                return problem
        return None
    _, go_type, name, fields = node
    if kind != "object":
        return _unmarshal_error(kind, struct_name, path, go_type)
    here = struct_name if name is None else name
    for key, item in value.items():
        if key in fields and (problem := _type_problem(item, fields[key], here, f"{path}.{key}" if path else key,
                                                       sink)):
            return problem
    return None


# api.Options: what each option must be (Options.FromMap); unknown options are ignored, null ones left unset.
_OPTION_TYPES = {
    "num_keep": "integer", "seed": "integer", "num_predict": "integer", "top_k": "integer", "top_p": "float32",
    "min_p": "float32", "typical_p": "float32", "repeat_last_n": "integer", "temperature": "float32",
    "repeat_penalty": "float32", "presence_penalty": "float32", "frequency_penalty": "float32", "stop": "array",
    "num_ctx": "integer", "num_batch": "integer", "num_gpu": "integer", "main_gpu": "integer", "use_mmap": "boolean",
    "num_thread": "integer", "draft_num_predict": "integer",
}


def _options_problem(options: Any) -> str | None:
    for key, value in (options or {}).items():
        wanted = _OPTION_TYPES.get(key)
        if wanted is None or value is None:
            continue
        number = isinstance(value, (int, float)) and not isinstance(value, bool)
        if wanted in ("integer", "float32") and not number or wanted == "boolean" and not isinstance(value, bool):
            return f"option {json.dumps(key)} must be of type {wanted}"
        if wanted == "array":
            if not isinstance(value, list):
                return f"option {json.dumps(key)} must be of type array"
            if not all(isinstance(item, str) for item in value):
                return f"option {json.dumps(key)} must be of an array of strings"
    return None


# -- small helpers -------------------------------------------------------------------------------------------------

def _json_reply(status: int, obj: Any) -> _Reply:
    return _Reply(status, JSON_TYPE, _dumps(obj))


def _error(status: int, message: str) -> _Reply:
    return _json_reply(status, {"error": message})


def _iso(moment: datetime) -> str:
    return moment.isoformat(timespec="microseconds").replace("+00:00", "Z")


def _now() -> str:
    return _iso(datetime.now(timezone.utc))


def _unix(stamp: str) -> int:
    return int(datetime.fromisoformat(stamp).timestamp())


_date_cache: tuple[int, str] = (0, "")


def _http_date() -> str:
    # formatdate costs more than the rest of a small reply; the header has one-second resolution anyway.
    global _date_cache
    now = int(time.time())
    if _date_cache[0] != now:
        _date_cache = (now, formatdate(now, usegmt=True))
    return _date_cache[1]


def _reason(status: int) -> str:
    try:
        return HTTPStatus(status).phrase
    except ValueError:  # a test may ask for any status code
        return ""


def _canonical(name: str) -> str:
    # Ollama reads "llama3.2" as "llama3.2:latest" and compares names case-insensitively.
    name = name.strip().lower()
    return name if ":" in name.rsplit("/", 1)[-1] else name + ":latest"


def _full_name(name: str) -> str:
    """model.Name.String(): host, namespace, model and tag, as in "registry.ollama.ai/library/qwen3:8b"."""
    tagged = name if ":" in name.rsplit("/", 1)[-1] else name + ":latest"
    parts = tagged.split("/")
    if len(parts) == 1:
        parts = ["registry.ollama.ai", "library", *parts]
    elif len(parts) == 2:
        parts = ["registry.ollama.ai", *parts]
    return "/".join(parts)


def _namespace(name: str) -> str:
    parts = name.split("/")
    return parts[-2] if len(parts) > 1 else "library"


def _words(text: Any) -> int:
    return len(str(text).split())


def _chunks(content: str, count: int | None = None) -> list[str]:
    """Split content into stream pieces that join back to exactly the content: `count` of them, or one a word."""
    if count is not None:
        size = len(content)
        return [content[i * size // count : (i + 1) * size // count] for i in range(count)]
    pieces = re.findall(r"\s*\S+|\s+\Z", content) or [content]
    step = -(-len(pieces) // MAX_STREAM_CHUNKS)
    return ["".join(pieces[i : i + step]) for i in range(0, len(pieces), step)]


def _image_kind(data: bytes) -> str | None:
    """The image formats llama-server reads (WebP after Ollama converts it), by their magic bytes."""
    if data.startswith(b"\x89PNG\r\n\x1a\n"):
        return "png"
    if data.startswith(b"\xff\xd8\xff"):
        return "jpeg"
    if data[:6] in (b"GIF87a", b"GIF89a"):
        return "gif"
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "webp"
    if data[:2] == b"BM":
        return "bmp"
    return None


def _model_entry(name: str, spec: ModelSpec) -> dict[str, Any]:
    base, _, tag = name.partition(":")
    size = re.search(r"(\d+(?:\.\d+)?)b", tag)
    billions = float(size.group(1)) if size else 7.0
    family = spec.family or re.sub(r"[\d.]+$", "", base.rsplit("/", 1)[-1]) or base
    return {
        "name": name,
        "model": name,
        "modified_at": "2025-01-20T10:00:00.123456789Z",
        "size": int(billions * 620_000_000),
        "digest": hashlib.sha256(name.encode()).hexdigest(),
        "details": {
            "parent_model": "",
            "format": "gguf",
            "family": family,
            "families": [family],
            "parameter_size": f"{size.group(1) if size else '7'}B",
            "quantization_level": "Q4_K_M",
        },
    }


def _parse_body(raw: bytes, go_type: str) -> tuple[dict, None] | tuple[None, str]:
    """Decode a request body the way gin's ShouldBindJSON reports problems; (body, None) or (None, message)."""
    if not raw.strip():
        return None, "missing request body"
    text = raw.decode("utf-8", "replace")
    try:
        body = json.loads(text)
    except ValueError as exc:
        pos = getattr(exc, "pos", 0)
        if pos >= len(text.rstrip()):
            return None, "unexpected EOF"
        return None, f"invalid character '{text[pos]}' looking for beginning of value"
    if body is None:  # Go decodes null into a zero struct without complaint
        return {}, None
    if not isinstance(body, dict):
        return None, _unmarshal_error(_json_kind(body), "", "", go_type)
    return body, None


def _stats(prompt_count: int, eval_count: int, started: float, *, load_ns: int | None,
           cached: bool) -> dict[str, int]:
    # Invented but plausible timings (~80 tokens/s) so clients can compute rates; a real load (load_delay or the
    # `load` fault) was waited for, so it is already in the time spent.
    prompt_eval, evaluation = prompt_count * 250_000, eval_count * 12_500_000
    spent = int((time.monotonic() - started) * 1e9)
    invented_load = 2_345_678 if load_ns is None else 0
    stats = {
        "total_duration": invented_load + prompt_eval + evaluation + spent,
        "load_duration": invented_load if load_ns is None else load_ns,
        "prompt_eval_count": prompt_count,
        "prompt_eval_duration": prompt_eval,
        "eval_count": eval_count,
        "eval_duration": evaluation,
    }
    if cached:  # omitempty on a zero count; the little time spent checking the cache still shows
        del stats["prompt_eval_count"]
        stats["prompt_eval_duration"] = 120_000
    return stats


def _not_ollama(path: str) -> _Reply:
    headers = {"Server": "nginx/1.24.0"}
    if path == "/":
        return _Reply(200, HTML_TYPE, b"<html><body><h1>Welcome to nginx!</h1></body></html>", headers=headers)
    return _Reply(404, HTML_TYPE, b"<html><body>Not Found</body></html>", headers=headers)


def _truncate_stream(lines: list[bytes]) -> list[bytes]:
    keep = max(1, len(lines) // 2)
    if keep < len(lines):  # end on half a line, as a dying server would
        return lines[:keep] + [lines[keep][: len(lines[keep]) // 2]]
    return lines[:keep]


def _chunk(line: bytes) -> bytes:
    return b"%x\r\n%s\r\n" % (len(line), line)


def _ndjson_error(message: str) -> bytes:
    return _dumps({"error": message}) + b"\n"


def _fail(status: int, message: str) -> _Outcome:
    return _Outcome(status, message)


# -- the deterministic model ---------------------------------------------------------------------------------------

def _example(schema: Any, text: str, depth: int = 0) -> Any:
    """A value that fits a JSON schema, as a model filling in tool arguments would give it."""
    if not isinstance(schema, dict) or depth > 5:
        return text
    for key in ("default", "const"):
        if key in schema:
            return schema[key]
    if isinstance(schema.get("enum"), list) and schema["enum"]:
        return schema["enum"][0]
    for key in ("anyOf", "oneOf"):
        if isinstance(schema.get(key), list) and schema[key]:
            return _example(schema[key][0], text, depth + 1)
    kind = schema.get("type")
    if isinstance(kind, list):
        kind = next((k for k in kind if k != "null"), "null")
    if kind is None and isinstance(schema.get("properties"), dict):
        kind = "object"
    if kind == "integer":
        return schema.get("minimum", 1) if isinstance(schema.get("minimum"), int) else 1
    if kind == "number":
        return 1.5
    if kind == "boolean":
        return True
    if kind == "null":
        return None
    if kind == "array":
        return [_example(schema["items"], text, depth + 1)] if isinstance(schema.get("items"), dict) else []
    if kind == "object":
        properties = schema.get("properties") if isinstance(schema.get("properties"), dict) else {}
        required = [k for k in schema.get("required") or [] if k in properties]
        return {name: _example(properties[name], text, depth + 1) for name in (required or properties)}
    return text


def _call_id(seed: str, index: int) -> str:
    # server/routes.go toolCallId(): "call_" and 8 of [a-z0-9], random there, derived from the conversation here.
    digest = hashlib.sha256(f"{seed}\0{index}".encode()).digest()
    return "call_" + "".join("abcdefghijklmnopqrstuvwxyz0123456789"[b % 36] for b in digest[:8])


def _hash_stream(seed: bytes, size: int) -> bytes:
    return b"".join(hashlib.sha256(seed + block.to_bytes(4, "big")).digest() for block in range(-(-size // 32)))


@functools.lru_cache(maxsize=64)
def _model_vector(model: str, size: int) -> tuple[list[float], list[str], list[float], list[str]]:
    """A model's base vector, normalised: its float32 values and Go digits, and both negated."""
    words = struct.unpack(f">{size}I", _hash_stream(_canonical(model).encode(), 4 * size)[: 4 * size])
    raw = array("f", [word / 2**31 - 1.0 for word in words]).tolist()
    digits = _short_float32s(_normalize(raw))
    values = array("f", map(float, digits)).tolist()
    negated = [text[1:] if text.startswith("-") else "-" + text for text in digits]
    return values, digits, [-v for v in values], negated


def _text_permutation(model: str, text: str, size: int) -> tuple[int, int]:
    """A rotation and sign flips, from the SHA-256 of model and text, that turn the model's vector into the text's."""
    seed = hashlib.sha256(f"{_canonical(model)}\0{text}".encode()).digest()
    return int.from_bytes(seed[:4], "big") % size, int.from_bytes(_hash_stream(seed, -(-size // 8)), "little")


def _raw_vector(model: str, text: str, size: int) -> list[float]:
    """The runner's vector for a text, before Ollama normalises it (as /api/embeddings returns it): float32 values."""
    words = struct.unpack(f">{size}I", _hash_stream(_canonical(model).encode(), 4 * size)[: 4 * size])
    raw = array("f", [word / 2**31 - 1.0 for word in words]).tolist()
    shift, signs = _text_permutation(model, text, size)
    return [raw[(i + shift) % size] if signs >> i & 1 else -raw[(i + shift) % size] for i in range(size)]


def _normalize(vector: list[float]) -> list[float]:
    norm = 1.0 / max(math.sqrt(math.fsum(v * v for v in vector)), 1e-12)
    return [v * norm for v in vector]


@functools.lru_cache(maxsize=4096)
def _embedding(model: str, text: str, size: int, dimensions: int) -> tuple[tuple[float, ...], str]:
    """Ollama's /api/embed vector for a text (float32 values) and its JSON as Go writes []float32.

    The model's normalised vector, rotated and sign-flipped by the text's hash: unit length, deterministic, and cheap
    enough that the fake embeds "instantly" in a benchmark (no float formatting per text)."""
    values, digits, negative_values, negative_digits = _model_vector(model, size)
    shift, signs = _text_permutation(model, text, size)
    order = [(i + shift) % size for i in range(size)]
    flips = [signs >> i & 1 for i in range(size)]
    vector = [values[j] if keep else negative_values[j] for j, keep in zip(order, flips)]
    if not 0 < dimensions < size:
        texts = [digits[j] if keep else negative_digits[j] for j, keep in zip(order, flips)]
        return tuple(vector), "[" + ",".join(texts) + "]"
    texts = _short_float32s(_normalize(vector[:dimensions]))
    return tuple(array("f", map(float, texts)).tolist()), "[" + ",".join(texts) + "]"


@dataclass
class _Generation:
    """What the model says: thinking, then content or tool calls."""

    content: str
    thinking: str
    tool_calls: list[dict[str, Any]]
    prompt_count: int
    eval_count: int
    done_reason: str = "stop"


# -- the OpenAI layer (openai/openai.go, middleware/openai.go) -------------------------------------------------------

def _openai_error_body(status: int, message: str) -> dict[str, Any]:
    kind = {400: "invalid_request_error", 404: "not_found_error"}.get(status, "api_error")
    return {"error": {"message": message, "type": kind, "param": None, "code": None}}


def _openai_abort(status: int, message: str) -> _Reply:
    """A middleware's own refusal: gin's c.AbortWithStatusJSON."""
    return _json_reply(status, _openai_error_body(status, message))


def _openai_error(status: int, message: str) -> _Reply:
    """A handler's error rewritten by BaseWriter.writeError (json.Encoder: a trailing newline)."""
    return _Reply(status, PLAIN_JSON_TYPE, _dumps(_openai_error_body(status, message)) + b"\n")


def _sse(obj: Any) -> bytes:
    return b"data: " + _dumps(obj) + b"\n\n"


def _go_type_name(value: Any) -> str:
    if value is None:
        return "<nil>"
    return {bool: "bool", int: "float64", float: "float64", dict: "map[string]interface {}"}.get(type(value), "string")


def _decode_image_url(url: str) -> str:
    """openai.decodeImageURL: a data URL's base64, checked; ValueError with Ollama's message."""
    if url.startswith(("http://", "https://")):
        raise ValueError("image URLs are not currently supported, please use base64 encoded data instead")
    if url.startswith("data:;base64,"):
        data = url[len("data:;base64,"):]
    else:
        prefix = next((f"data:image/{t};base64," for t in ("jpeg", "jpg", "png", "webp")
                       if url.startswith(f"data:image/{t};base64,")), None)
        if prefix is None:
            raise ValueError("invalid image input")
        data = url[len(prefix):]
    try:
        _go_b64decode(data)
    except ValueError:
        raise ValueError("invalid image input") from None
    return data


def _native_tool_calls(calls: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """openai.FromCompletionToolCall: JSON-string arguments become objects; ValueError when they are not JSON."""
    native = []
    for call in calls:
        function = call.get("function") or {}
        try:
            arguments = json.loads(function.get("arguments") or "")
        except ValueError:
            raise ValueError("invalid tool call arguments") from None
        if arguments is not None and not isinstance(arguments, dict):
            raise ValueError("invalid tool call arguments")
        entry: dict[str, Any] = {"id": call["id"]} if call.get("id") else {}
        entry["function"] = {"index": 0, "name": function.get("name") or "", "arguments": arguments or {}}
        native.append(entry)
    return native


def _think_from_effort(effort: str) -> Any:
    if effort == "":
        return None
    if effort == "none":
        return False
    if effort == "minimal":
        return "low"
    if effort in ("low", "medium", "high", "max"):
        return effort
    if effort in ("xhigh", "ultra"):
        return "max"
    raise ValueError(f'invalid reasoning value: {json.dumps(effort)} (must be "minimal", "low", "medium", "high", '
                     f'"xhigh", "ultra", "max", or "none")')


def _openai_chat_to_native(request: dict[str, Any]) -> dict[str, Any]:
    """openai.FromChatRequest: the api.ChatRequest Ollama's /v1 hands its chat handler; ValueError as it refuses."""
    given = request.get("messages") or []
    messages: list[dict[str, Any]] = []
    for message in given:
        message = message or {}
        role = message.get("role") or ""
        reasoning = message.get("reasoning") or ""
        tool_name = ""
        if role.lower() == "tool":
            tool_name = message.get("name") or ""
            if not tool_name and message.get("tool_call_id"):
                tool_name = next((call.get("function", {}).get("name") or ""
                                  for earlier in reversed(given) for call in earlier.get("tool_calls") or []
                                  if call.get("id") == message["tool_call_id"]), "")
        content = message.get("content")
        extra = {"thinking": reasoning, "tool_name": tool_name, "tool_call_id": message.get("tool_call_id") or ""}
        if isinstance(content, str):
            calls = _native_tool_calls(message.get("tool_calls") or [])
            messages.append(_message(role, content, tool_calls=calls, **extra))
        elif isinstance(content, list):
            for part in content:
                if not isinstance(part, dict):
                    raise ValueError("invalid message format")
                if part.get("type") == "text":
                    if not isinstance(part.get("text"), str):
                        raise ValueError("invalid message format")
                    messages.append({"role": role, "content": part["text"]})
                elif part.get("type") == "image_url":
                    image = part.get("image_url")
                    url = image.get("url") if isinstance(image, dict) else image
                    if not isinstance(url, str):
                        raise ValueError("invalid message format")
                    messages.append({"role": role, "content": "", "images": [_decode_image_url(url)]})
                elif part.get("type") == "input_audio":
                    audio = part.get("input_audio")
                    if not isinstance(audio, dict):
                        raise ValueError("invalid input_audio format")
                    if not isinstance(audio.get("data"), str):
                        raise ValueError("invalid input_audio format: missing data")
                    try:
                        _go_b64decode(audio["data"])
                    except ValueError as exc:
                        raise ValueError(f"invalid input_audio base64 data: {exc}") from None
                    messages.append({"role": role, "content": "", "images": [audio["data"]]})
                else:
                    raise ValueError("invalid message format")
            if messages and message.get("tool_calls"):
                last = messages[-1]
                last.update(_message(role, last.get("content", ""),
                                     tool_calls=_native_tool_calls(message["tool_calls"]), **extra))
        else:
            if message.get("tool_calls") is None:  # content is only optional when tool calls are present
                raise ValueError(f"invalid message content type: {_go_type_name(content)}")
            messages.append(_message(role, "", tool_calls=_native_tool_calls(message["tool_calls"]),
                                     thinking=reasoning, tool_call_id=message.get("tool_call_id") or ""))
    options: dict[str, Any] = {}
    stop = request.get("stop")
    if isinstance(stop, str):
        options["stop"] = [stop]
    elif isinstance(stop, list):
        options["stop"] = [s for s in stop if isinstance(s, str)]
    if request.get("max_tokens") is not None:
        options["num_predict"] = request["max_tokens"]
    options["temperature"] = request["temperature"] if request.get("temperature") is not None else 1.0
    for key in ("seed", "frequency_penalty", "presence_penalty"):
        if request.get(key) is not None:
            options[key] = request[key]
    options["top_p"] = request["top_p"] if request.get("top_p") is not None else 1.0
    native: dict[str, Any] = {"model": request.get("model") or "", "messages": messages}
    response_format = request.get("response_format") or {}
    kind = str(response_format.get("type") or "").strip().lower()
    if kind == "json_object":
        native["format"] = "json"
    elif kind == "json_schema" and response_format.get("json_schema") is not None:
        if response_format["json_schema"].get("schema") is not None:
            native["format"] = response_format["json_schema"]["schema"]
    native["options"] = options
    native["stream"] = bool(request.get("stream"))
    if request.get("tools"):
        native["tools"] = request["tools"]
    reasoning = request.get("reasoning")
    effort = (reasoning or {}).get("effort") or "" if reasoning is not None else request.get("reasoning_effort") or ""
    think = _think_from_effort(effort)
    if think is not None:
        native["think"] = think
    return native


def _message(role: str, content: str, **fields: Any) -> dict[str, Any]:
    """An api.Message as Go writes it: empty fields left out."""
    message = {"role": role, "content": content}
    for key in ("thinking", "images", "tool_calls", "tool_name", "tool_call_id"):
        if fields.get(key):
            message[key] = fields[key]
    return message


def _openai_tool_calls(calls: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """openai.ToToolCalls: arguments as a JSON string, the index from function.index."""
    return [{"id": call.get("id", ""), "index": call["function"].get("index", 0), "type": "function",
             "function": {"name": call["function"]["name"],
                          "arguments": _dumps(call["function"].get("arguments") or {}).decode()}}
            for call in calls]


def _usage(frame: dict[str, Any]) -> dict[str, int]:
    prompt, completion = frame.get("prompt_eval_count", 0), frame.get("eval_count", 0)
    return {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion}


def _openai_chat_chunks(rid: str, frame: dict[str, Any], created: int, include_role: bool) -> list[dict[str, Any]]:
    """openai.ToStreamChunks: one chunk, or a reasoning chunk and a content/tool-call chunk when a frame has both."""
    message = frame["message"]
    calls = _openai_tool_calls(message.get("tool_calls") or [])

    def chunk(delta: dict[str, Any]) -> dict[str, Any]:
        return {"id": rid, "object": "chat.completion.chunk", "created": created, "model": frame["model"],
                "system_fingerprint": "fp_ollama", "choices": [{"index": 0, "delta": delta, "finish_reason": None}]}

    def delta(role: bool, content: bool, reasoning: bool, tools: bool) -> dict[str, Any]:
        out: dict[str, Any] = {"role": "assistant"} if role else {}
        if content:
            out["content"] = message.get("content", "")
        if reasoning and message.get("thinking"):
            out["reasoning"] = message["thinking"]
        if tools and calls:
            out["tool_calls"] = calls
        return out

    if message.get("thinking") and (message.get("content") or calls):
        return [chunk(delta(include_role, False, True, False)), chunk(delta(False, True, False, True))]
    return [chunk(delta(include_role, True, True, True))]


def _openai_chat_stream(rid: str, frames: list[dict[str, Any]], include_usage: bool) -> list[bytes]:
    """middleware.ChatWriter over a stream of api.ChatResponse frames: SSE events, finish chunk, usage, [DONE]."""
    events: list[bytes] = []
    created = _unix(frames[0]["created_at"])
    first_sent = tool_call_sent = False
    for frame in frames:
        message = frame["message"]
        trailer = frame["done"] and first_sent and not (
            message.get("content") or message.get("thinking") or message.get("tool_calls"))
        if not trailer:
            for chunk in _openai_chat_chunks(rid, frame, created, not first_sent):
                tool_call_sent = tool_call_sent or bool(chunk["choices"][0]["delta"].get("tool_calls"))
                events.append(_sse(chunk))
            first_sent = True
        if frame["done"]:
            reason = frame.get("done_reason") or "stop"
            if reason == "stop" and tool_call_sent:
                reason = "tool_calls"
            finish = {"id": rid, "object": "chat.completion.chunk", "created": created, "model": frame["model"],
                      "system_fingerprint": "fp_ollama",
                      "choices": [{"index": 0, "delta": {}, "finish_reason": reason}]}
            events.append(_sse(finish))
            if include_usage:
                events.append(_sse({**finish, "choices": [], "usage": _usage(frame)}))
            events.append(b"data: [DONE]\n\n")
    return events


def _openai_chat_completion(rid: str, whole: dict[str, Any]) -> dict[str, Any]:
    """openai.ToChatCompletion."""
    message = whole["message"]
    calls = _openai_tool_calls(message.get("tool_calls") or [])
    out: dict[str, Any] = {"role": message["role"], "content": message["content"]}
    if message.get("thinking"):
        out["reasoning"] = message["thinking"]
    if calls:
        out["tool_calls"] = calls
    reason = whole.get("done_reason") or ""
    if reason == "stop" and calls:
        reason = "tool_calls"
    return {"id": rid, "object": "chat.completion", "created": _unix(whole["created_at"]), "model": whole["model"],
            "system_fingerprint": "fp_ollama",
            "choices": [{"index": 0, "message": out, "finish_reason": reason or None}], "usage": _usage(whole)}


def _openai_completion_to_native(request: dict[str, Any]) -> dict[str, Any]:
    """openai.FromCompleteRequest: the api.GenerateRequest behind /v1/completions; ValueError as it refuses."""
    options: dict[str, Any] = {}
    stop = request.get("stop")
    if isinstance(stop, str):
        options["stop"] = [stop]
    elif isinstance(stop, list):
        for item in stop:
            if not isinstance(item, str):
                raise ValueError(f"invalid type for 'stop' field: {_go_type_name(item)}")
        options["stop"] = stop
    if request.get("max_tokens") is not None:
        options["num_predict"] = request["max_tokens"]
    options["temperature"] = request["temperature"] if request.get("temperature") is not None else 1.0
    if request.get("seed") is not None:
        options["seed"] = request["seed"]
    options["frequency_penalty"] = request.get("frequency_penalty") or 0
    options["presence_penalty"] = request.get("presence_penalty") or 0
    options["top_p"] = request.get("top_p") or 1.0
    native = {"model": request.get("model") or "", "prompt": request.get("prompt") or "", "options": options,
              "stream": bool(request.get("stream"))}
    if request.get("suffix"):
        native["suffix"] = request["suffix"]
    return native


def _openai_completion_chunk(rid: str, frame: dict[str, Any]) -> dict[str, Any]:
    return {"id": rid, "object": "text_completion", "created": int(time.time()),
            "choices": [{"text": frame.get("response", ""), "index": 0,
                         "finish_reason": frame.get("done_reason") or None}],
            "model": frame["model"], "system_fingerprint": "fp_ollama"}


def _openai_id(prefix: str, raw: bytes) -> str:
    # middleware: fmt.Sprintf("chatcmpl-%d", rand.Intn(999)); derived from the request here.
    return f"{prefix}-{int.from_bytes(hashlib.sha256(raw).digest()[:4], 'big') % 999}"


class FakeOllama:
    """An Ollama look-alike on a real socket: start it, aim a client at .url, inspect .requests.

    delay, chunks and chunk_delay (also attributes, read per request) shape every generation (/api/chat,
    /api/generate and their /v1 forms) like a busy model: `delay` seconds before the first byte, holding one of the
    model's slots (also before a status, malformed or not_ollama fault's reply), `chunks` content lines per stream
    (default one a word, at most 32), `chunk_delay` seconds between lines. Fault delays come on top. The module
    docstring lists the model's behaviour and the scheduler's knobs.
    """

    # Ollama 0.5.x wording for chat and generate, and still the wording of /api/embed and /api/embeddings.
    not_found_message = 'model "{name}" not found, try pulling it first'

    def __init__(
        self,
        host: str = "127.0.0.1",
        port: int = 0,
        models: Iterable[str] = DEFAULT_MODELS,
        version: str = "0.5.7",
        *,
        reply: str | None = None,
        delay: float = 0.0,
        chunks: int | None = None,
        chunk_delay: float = 0.0,
        specs: Mapping[str, ModelSpec | Iterable[str]] | None = None,
        num_parallel: int | None = None,
        max_queue: int | None = None,
        max_loaded_models: int | None = None,
        load_delay: float = 0.0,
        tool_mode: str = "first",
        tool_calls_per_chunk: int = 1,
    ) -> None:
        if delay < 0 or chunk_delay < 0 or load_delay < 0 or (chunks is not None and chunks < 1):
            raise ValueError("delay, chunk_delay and load_delay must be >= 0, chunks >= 1 or None")
        if any(limit is not None and limit < 1 for limit in (num_parallel, max_loaded_models)) or (
                max_queue is not None and max_queue < 0):
            raise ValueError("num_parallel and max_loaded_models must be >= 1, max_queue >= 0, or None")
        if tool_mode not in ("first", "all", "none") or tool_calls_per_chunk < 0:
            raise ValueError("tool_mode must be 'first', 'all' or 'none'; tool_calls_per_chunk >= 0")
        self.host = host
        self.models: list[str] = list(models)
        self.version = version
        self.reply = reply
        self.delay = delay
        self.chunks = chunks
        self.chunk_delay = chunk_delay
        self.specs: dict[str, ModelSpec] = dict(MODEL_CATALOGUE)
        for name, spec in (specs or {}).items():
            self.specs[_canonical(name)] = spec if isinstance(spec, ModelSpec) else ModelSpec(tuple(spec))
        self.num_parallel = num_parallel
        self.max_queue = max_queue
        self.max_loaded_models = max_loaded_models
        self.load_delay = load_delay
        self.tool_mode = tool_mode
        self.tool_script: list[dict[str, Any]] | Callable[[dict[str, Any]], list[dict[str, Any]]] | None = None
        self.tool_calls_per_chunk = tool_calls_per_chunk
        self._port = port
        self._initial_models = list(self.models)
        self._initial_specs = dict(self.specs)
        self._initial_settings = (reply, delay, chunks, chunk_delay, num_parallel, max_queue, max_loaded_models,
                                  load_delay, tool_mode, tool_calls_per_chunk)
        self._lock = threading.Lock()
        self._arrived = threading.Condition(self._lock)
        self._requests: list[RecordedRequest] = []
        self._cancelled: list[RecordedRequest] = []
        self._faults: list[_Fault] = []
        self._images: list[dict[str, Any]] = []
        # What tests observe, under _lock: requests holding a slot now and at most, per model and in all.
        self._running: Counter[str] = Counter()
        self._running_total = 0
        self._peak: Counter[str] = Counter()
        self._peak_total = 0
        self._per_model: Counter[str] = Counter()
        self._loads: Counter[str] = Counter()
        self._waiting = 0
        # Touched only in the loop's thread (or, before start(), in the caller's).
        self._runners: dict[str, _Runner] = {}
        self._state_waiters: list[asyncio.Future] = []
        self._load_lock: asyncio.Lock | None = None
        self._connections: set[_Connection] = set()
        self._tasks: set[asyncio.Task] = set()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._server: asyncio.AbstractServer | None = None
        self._thread: threading.Thread | None = None

    @property
    def port(self) -> int:
        return self._port

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}"

    def start(self) -> FakeOllama:
        """Bind and serve from an event loop in a daemon thread. A restart after stop() reuses the same port."""
        if self._loop is not None:
            return self
        sock = socket.socket(socket.AF_INET6 if ":" in self.host else socket.AF_INET, socket.SOCK_STREAM)
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # a restart meets TIME_WAIT
            sock.bind((self.host, self._port))
            sock.setblocking(False)
        except OSError:
            sock.close()
            raise
        self._port = sock.getsockname()[1]
        loop = asyncio.new_event_loop()
        thread = threading.Thread(target=_run_loop, args=(loop,), name=f"fake-ollama-{self._port}", daemon=True)
        thread.start()
        self._load_lock = asyncio.Lock()
        self._state_waiters = []
        serving = loop.create_server(lambda: _Connection(self, loop), sock=sock, backlog=BACKLOG)
        try:
            self._server = asyncio.run_coroutine_threadsafe(serving, loop).result(timeout=10)
        except BaseException:
            sock.close()
            loop.call_soon_threadsafe(loop.stop)
            raise
        self._loop, self._thread = loop, thread
        return self

    def stop(self) -> None:
        """Kill the server: drop every open connection, mid-stream or mid-load included (not counted as cancelled),
        and forget the loaded models, as a restarted Ollama would."""
        loop, self._loop = self._loop, None
        if loop is None:
            return
        try:
            asyncio.run_coroutine_threadsafe(self._shutdown(), loop).result(timeout=5)
        finally:
            loop.call_soon_threadsafe(loop.stop)
            if self._thread is not None:
                self._thread.join(timeout=2)
            self._server = self._thread = None

    def restart(self, down: float = 0.0) -> FakeOllama:
        """stop(), stay down `down` seconds, start() again on the same port."""
        self.stop()
        time.sleep(down)
        return self.start()

    def __enter__(self) -> FakeOllama:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    # -- what tests read --

    @property
    def requests(self) -> list[RecordedRequest]:
        """A snapshot of the requests received so far, oldest first."""
        with self._lock:
            return list(self._requests)

    @property
    def cancelled(self) -> list[RecordedRequest]:
        """Requests whose client hung up before their reply was complete, in the order they were given up."""
        with self._lock:
            return list(self._cancelled)

    @property
    def images(self) -> list[dict[str, Any]]:
        """Every image a generation received: path, model, size, type ("png", ... or None) and sha256."""
        with self._lock:
            return list(self._images)

    @property
    def running(self) -> dict[str, int]:
        """Requests holding one of a model's slots now (generations and embeddings), per installed model name."""
        with self._lock:
            return {name: count for name, count in self._running.items() if count}

    @property
    def running_total(self) -> int:
        with self._lock:
            return self._running_total

    @property
    def peak_running(self) -> dict[str, int]:
        """The most requests that ever held one model's slots at once, per model."""
        with self._lock:
            return dict(self._peak)

    @property
    def peak_running_total(self) -> int:
        """The most requests that ever held slots at once, all models together."""
        with self._lock:
            return self._peak_total

    @property
    def requests_per_model(self) -> dict[str, int]:
        """Inference requests (chat, generate, embed, their /v1 forms) that passed validation, per model."""
        with self._lock:
            return dict(self._per_model)

    @property
    def loads_per_model(self) -> dict[str, int]:
        """Loads that requests caused (and waited for), per model; preload() is not counted."""
        with self._lock:
            return dict(self._loads)

    @property
    def waiting(self) -> int:
        """Requests waiting now for a load or a slot (what max_queue bounds)."""
        with self._lock:
            return self._waiting

    def wait_for_requests(self, count: int, timeout: float = 2.0) -> bool:
        """Block until at least count requests have arrived; False on timeout."""
        with self._arrived:
            return self._arrived.wait_for(lambda: len(self._requests) >= count, timeout)

    def wait_for_cancelled(self, count: int, timeout: float = 2.0) -> bool:
        """Block until at least count requests were given up by their clients; False on timeout."""
        with self._arrived:
            return self._arrived.wait_for(lambda: len(self._cancelled) >= count, timeout)

    def wait_for_running(self, count: int, model: str | None = None, timeout: float = 2.0) -> bool:
        """Block until at least count requests hold a slot (of `model`, or of any model); False on timeout."""
        name = None if model is None else (self._find_model(model) or model)
        with self._arrived:
            return self._arrived.wait_for(
                lambda: (self._running_total if name is None else self._running[name]) >= count, timeout)

    def spec_of(self, name: str) -> ModelSpec:
        """The ModelSpec the fake uses for a model name: from specs (names compared as Ollama does), else plain."""
        wanted = _canonical(name)
        return next((spec for key, spec in list(self.specs.items()) if _canonical(key) == wanted), ModelSpec())

    def loaded_models(self) -> dict[str, dict[str, Any]]:
        """The loaded models: name -> num_ctx, keep_alive (s, None for ever), running and expires (time.time())."""
        def snapshot() -> dict[str, dict[str, Any]]:
            self._sweep()
            return {r.name: {"num_ctx": r.num_ctx, "keep_alive": r.keep_alive, "running": r.running,
                             "expires": r.expires} for r in self._runners.values()}
        return self._in_loop(snapshot)

    def preload(self, *models: str, keep_alive: float | None = KEEP_ALIVE, num_ctx: int | None = None) -> None:
        """Load installed models at once, with no load delay (keep_alive None: for ever)."""
        def load() -> None:
            for model in models:
                found = self._find_model(model)
                if found is None:
                    raise ValueError(f"{model!r} is not installed")
                key = _canonical(found)
                while self.max_loaded_models is not None and key not in self._runners and \
                        len(self._live_runners()) >= self.max_loaded_models:
                    victim = self._eviction_victim(key)
                    if victim is None:
                        raise RuntimeError("every loaded model is busy; none can be unloaded")
                    self._drop(victim)
                runner = self._new_runner(found, num_ctx, keep_alive)
                self._runners[key] = runner
                self._went_idle(runner)
        self._in_loop(load)

    def unload(self, *models: str) -> None:
        """Unload models (all when none are named) as keep_alive 0 does: at once, or when their requests end."""
        def unload() -> None:
            for key in [_canonical(m) for m in models] or list(self._runners):
                self._expire(key)
        self._in_loop(unload)

    def fault(
        self,
        kind: str,
        *,
        paths: str | Iterable[str] | None = None,
        times: int | None = None,
        **params: Any,
    ) -> None:
        """Make the next `times` requests (None: all) to `paths` (None: any) misbehave.

        The newest matching fault wins. FAULT_PARAMS lists the kinds and their parameters.
        """
        if kind not in FAULT_PARAMS:
            raise ValueError(f"unknown fault {kind!r}; choose from {sorted(FAULT_PARAMS)}")
        unknown = set(params) - FAULT_PARAMS[kind]
        if unknown:
            raise TypeError(f"fault {kind!r} takes no parameter(s) {sorted(unknown)}")
        if params.get("then", "continue") not in ("continue", "close"):
            raise ValueError("then must be 'continue' or 'close'")
        if times is not None and times < 1:
            raise ValueError("times must be a positive number or None")
        if isinstance(paths, str):
            paths = [paths]
        with self._lock:
            self._faults.append(_Fault(kind, None if paths is None else frozenset(paths), times, params))

    def clear_faults(self) -> None:
        with self._lock:
            self._faults.clear()

    def clear(self) -> None:
        """Forget recorded and cancelled requests, faults, images, loaded models and the running counts' peaks."""
        with self._lock:
            self._requests.clear()
            self._cancelled.clear()
            self._faults.clear()
            self._images.clear()
            self._peak = Counter({name: count for name, count in self._running.items() if count})
            self._peak_total = self._running_total
            self._per_model.clear()
            self._loads.clear()
        self._in_loop(self._runners.clear)

    def reset(self) -> None:
        """clear(), and also restore .models, .specs and every setting given to the constructor."""
        self.clear()
        (self.reply, self.delay, self.chunks, self.chunk_delay, self.num_parallel, self.max_queue,
         self.max_loaded_models, self.load_delay, self.tool_mode, self.tool_calls_per_chunk) = self._initial_settings
        self.tool_script = None
        self.models[:] = self._initial_models
        self.specs = dict(self._initial_specs)

    # -- called in the loop's thread --

    def _in_loop(self, fn: Callable[[], Any]) -> Any:
        loop = self._loop
        if loop is None or threading.current_thread() is self._thread:
            return fn()

        async def call() -> Any:
            return fn()
        return asyncio.run_coroutine_threadsafe(call(), loop).result(timeout=5)

    async def _shutdown(self) -> None:
        if self._server is not None:
            self._server.close()
        for conn in list(self._connections):
            conn.drop()
        # Handlers see their connection gone at once; one stuck anyway must not outlive the loop.
        if self._tasks:
            _, pending = await asyncio.wait(set(self._tasks), timeout=1)
            for task in pending:
                task.cancel()
            if pending:
                await asyncio.wait(pending, timeout=1)
        self._runners.clear()  # the process died with its models
        with self._lock:
            self._running.clear()
            self._running_total = 0
            self._waiting = 0

    def _record(self, request: RecordedRequest) -> None:
        with self._arrived:
            self._requests.append(request)
            self._arrived.notify_all()

    def _record_cancelled(self, request: RecordedRequest) -> None:
        with self._arrived:
            self._cancelled.append(request)
            self._arrived.notify_all()

    def _take_fault(self, path: str) -> _Fault | None:
        with self._lock:
            for fault in reversed(self._faults):
                if fault.paths is None or path in fault.paths:
                    if fault.remaining is not None:
                        fault.remaining -= 1
                        if fault.remaining == 0:
                            self._faults.remove(fault)
                    return fault
        return None

    def _find_model(self, name: str) -> str | None:
        wanted = _canonical(name)
        return next((m for m in list(self.models) if _canonical(m) == wanted), None)

    # -- the scheduler (server/sched.go) --

    def _new_runner(self, name: str, num_ctx: int | None, keep_alive: Any) -> _Runner:
        spec = self.spec_of(name)
        context = min(num_ctx or DEFAULT_NUM_CTX, spec.context_length)
        if "vision" in spec.capabilities:
            context = max(context, 2048)  # multimodal models need at least 2048
        size = _model_entry(name, spec)["size"]
        return _Runner(name, max(context, 4), KEEP_ALIVE if keep_alive is _UNSET else keep_alive, size,
                       last_used=time.monotonic())

    def _notify_state(self) -> None:
        waiters, self._state_waiters = self._state_waiters, []
        for waiter in waiters:
            if not waiter.done():
                waiter.set_result(None)

    async def _state_change(self, conn: _Connection) -> None:
        waiter = asyncio.get_running_loop().create_future()
        self._state_waiters.append(waiter)
        await asyncio.wait((waiter, conn.gone), return_when=asyncio.FIRST_COMPLETED)
        if conn.gone.done():
            raise _Gone

    def _sweep(self) -> None:
        now = time.time()
        for key, runner in list(self._runners.items()):
            if runner.running == 0 and runner.expires is not None and runner.expires <= now:
                self._drop(key)

    def _live_runners(self) -> dict[str, _Runner]:
        self._sweep()
        return self._runners

    def _drop(self, key: str) -> None:
        if self._runners.pop(key, None) is not None:
            self._notify_state()

    def _expire(self, key: str) -> None:
        """keep_alive 0: unload now, or as soon as its last request ends."""
        runner = self._live_runners().get(key)
        if runner is not None:
            runner.keep_alive = 0.0
            if runner.running == 0:
                self._drop(key)

    def _usable(self, key: str, num_ctx: int | None) -> _Runner | None:
        runner = self._live_runners().get(key)
        if runner is None or num_ctx is None:
            return runner
        return runner if self._new_runner(runner.name, num_ctx, None).num_ctx == runner.num_ctx else None

    def _eviction_victim(self, key: str) -> str | None:
        idle = [(r.last_used, k) for k, r in self._live_runners().items() if k != key and r.running == 0]
        return min(idle)[1] if idle else None

    def _slot_limit(self, runner: _Runner) -> int | None:
        return self.spec_of(runner.name).num_parallel or self.num_parallel

    def _slot_free(self, runner: _Runner) -> bool:
        limit = self._slot_limit(runner)
        return limit is None or (runner.running < limit and not runner.waiters)

    def _start(self, runner: _Runner) -> None:
        runner.running += 1
        runner.expires = None
        with self._arrived:
            self._running[runner.name] += 1
            self._running_total += 1
            self._peak[runner.name] = max(self._peak[runner.name], self._running[runner.name])
            self._peak_total = max(self._peak_total, self._running_total)
            self._arrived.notify_all()

    def _release(self, runner: _Runner) -> None:
        while runner.waiters:  # hand the slot to the first in line: a newcomer must not take it in between
            waiter = runner.waiters.popleft()
            if not waiter.done():
                waiter.set_result(None)
                return
        runner.running -= 1
        runner.last_used = time.monotonic()
        with self._arrived:
            self._running[runner.name] -= 1
            self._running_total -= 1
            self._arrived.notify_all()
        if runner.running == 0:
            self._went_idle(runner)

    def _went_idle(self, runner: _Runner) -> None:
        key = _canonical(runner.name)
        if runner.keep_alive == 0:
            if self._runners.get(key) is runner:
                self._drop(key)
            return
        now = datetime.now(timezone.utc)
        if runner.keep_alive is None:
            runner.expires, runner.shown_expiry = None, now + FOREVER
        else:
            runner.expires = time.time() + runner.keep_alive
            runner.shown_expiry = now + timedelta(seconds=runner.keep_alive)
        self._notify_state()

    async def _take_slot(self, conn: _Connection, runner: _Runner) -> None:
        if self._slot_free(runner):
            return self._start(runner)
        waiter = asyncio.get_running_loop().create_future()
        runner.waiters.append(waiter)
        try:
            await asyncio.wait((waiter, conn.gone), return_when=asyncio.FIRST_COMPLETED)
        finally:
            if not waiter.done():
                waiter.cancel()
                if waiter in runner.waiters:
                    runner.waiters.remove(waiter)
        if waiter.cancelled():
            raise _Gone
        # The releasing request passed its slot on: the running count did not change.

    async def _until(self, conn: _Connection, awaitable: Any) -> Any:
        task = asyncio.ensure_future(awaitable)
        try:
            await asyncio.wait((task, conn.gone), return_when=asyncio.FIRST_COMPLETED)
        except asyncio.CancelledError:
            task.cancel()
            raise
        if task.done():
            return task.result()
        task.cancel()
        raise _Gone

    async def _load(self, conn: _Connection, key: str, model: str, num_ctx: int | None, keep_alive: Any) -> _Runner:
        """One load at a time: unload what must go (a runner with another num_ctx, the LRU idle model), then load."""
        await self._until(conn, self._load_lock.acquire())
        try:
            while True:
                runner = self._usable(key, num_ctx)
                if runner is not None:  # loaded by the request ahead of this one
                    return runner
                old = self._live_runners().get(key)
                if old is not None:  # loaded with another context length: reload once its requests ended
                    if old.running:
                        await self._state_change(conn)
                        continue
                    self._drop(key)
                if self.max_loaded_models is not None and len(self._live_runners()) >= self.max_loaded_models:
                    victim = self._eviction_victim(key)
                    if victim is None:
                        await self._state_change(conn)
                        continue
                    self._drop(victim)
                    continue
                break
            await conn.pause(self.load_delay)
            runner = self._new_runner(model, num_ctx, keep_alive)
            self._runners[key] = runner
            with self._lock:
                self._loads[model] += 1
            self._notify_state()
            return runner
        finally:
            self._load_lock.release()

    async def _schedule(self, ex: _Exchange, model: str, options: dict[str, Any] | None, keep_alive: Any, *,
                        slot: bool) -> int | None:
        """Get the model's runner, loading it if need be, then hold one of its slots until the reply is sent (or, for
        a bare load, just touch it). Returns the load_duration to report, None when no load was paid."""
        conn = ex.conn
        with self._lock:
            self._per_model[model] += 1
        fault_ns = 0
        if ex.kind == "load":
            seconds = ex.params.get("delay", LOAD_DELAY)
            await conn.pause(seconds)
            fault_ns = int(seconds * 1e9)
        started = time.monotonic()
        key = _canonical(model)
        num_ctx = (options or {}).get("num_ctx")
        num_ctx = int(num_ctx) if isinstance(num_ctx, (int, float)) and num_ctx > 0 else None
        runner = self._usable(key, num_ctx)
        must_wait = runner is None or (slot and not self._slot_free(runner))
        if must_wait:
            with self._lock:
                if self.max_queue is not None and self._waiting >= self.max_queue:
                    raise _Busy
                self._waiting += 1
        loaded = runner is None
        try:
            if runner is None:
                runner = await self._load(conn, key, model, num_ctx, keep_alive)
            elif keep_alive is not _UNSET:
                runner.keep_alive = keep_alive
            ready = time.monotonic()
            if slot:
                await self._take_slot(conn, runner)
                ex.releases.append(lambda: self._release(runner))
            elif runner.running == 0:
                runner.last_used = time.monotonic()
                self._went_idle(runner)
        finally:
            if must_wait:
                with self._lock:
                    self._waiting -= 1
        paid = loaded and self.load_delay > 0
        if not fault_ns and not paid:
            return None
        return fault_ns + (int((ready - started) * 1e9) if paid else 0)

    # -- answering --

    async def _answer(self, conn: _Connection, request: RecordedRequest) -> None:
        ex = _Exchange(conn, request, time.monotonic())
        self._record(request)
        conn.current = request
        fault = self._take_fault(request.path)
        if fault:
            ex.kind, ex.params = fault.kind, fault.params
        if ex.kind == "reset":
            return conn.reset()
        if ex.kind == "hang":
            await conn.pause(ex.params.get("limit", HANG_LIMIT))
            return conn.close()
        try:
            reply = await self._reply(ex)
            if reply.lines is None:
                await self._send_whole(ex, reply)
            else:
                await self._send_stream(ex, reply)
        finally:
            ex.release()

    async def _reply(self, ex: _Exchange) -> _Reply:
        request, kind, params = ex.request, ex.kind, ex.params
        route = self._route_of(request.path)
        if route is None:
            return _Reply(404, TEXT_TYPE, b"404 page not found")
        if request.method not in ROUTES[route]:
            return _Reply(405, TEXT_TYPE, b"405 method not allowed")
        if kind in ("status", "malformed", "not_ollama"):
            if request.path in GENERATION_PATHS:
                await ex.conn.pause(self.delay)
            if kind == "status":
                status, message = params.get("status", 500), params.get("message", RUNNER_CRASH)
                return _openai_error(status, message) if route.startswith("/v1/") else _error(status, message)
            if kind == "malformed":
                body = params.get("body", b"<html>oops")
                return _Reply(200, JSON_TYPE, body.encode() if isinstance(body, str) else body)
            return _not_ollama(request.path)
        if kind == "slow":  # a slow server, before it even reads the request: valid or not
            await ex.conn.pause(params.get("delay", 1.0))
        if kind == "load" and route not in INFERENCE_PATHS:
            await ex.conn.pause(params.get("delay", LOAD_DELAY))
        handler = {
            "/": self._root, "/api/version": self._version, "/api/tags": self._tags, "/api/ps": self._ps,
            "/api/show": self._show, "/api/chat": self._api_chat, "/api/generate": self._api_generate,
            "/api/embed": self._api_embed, "/api/embeddings": self._api_embeddings,
            "/v1/chat/completions": self._v1_chat, "/v1/completions": self._v1_completions,
            "/v1/embeddings": self._v1_embeddings, "/v1/models": self._v1_models, "/v1/models/{model}": self._v1_model,
        }[route]
        return await handler(ex)

    @staticmethod
    def _route_of(path: str) -> str | None:
        if path.startswith("/v1/models/") and path.count("/") == 3 and len(path) > len("/v1/models/"):
            return "/v1/models/{model}"
        return path if path in ROUTES else None

    async def _generating(self, ex: _Exchange) -> None:
        """The time a busy model takes before its first token, holding its slot."""
        await ex.conn.pause(self.delay)

    async def _send_whole(self, ex: _Exchange, reply: _Reply) -> None:
        conn, method, kind, params = ex.conn, ex.request.method, ex.kind, ex.params
        if kind == "stream_error" and reply.status == 200:
            error = _openai_error if reply.content_type == PLAIN_JSON_TYPE else _error
            reply = error(500, params.get("message", RUNNER_CRASH))
        head = conn.head(reply, length=len(reply.body))
        body = b"" if method == "HEAD" else reply.body
        if kind == "cut_off":
            await conn.send(head + body[: len(body) // 2])
            return conn.close()
        if kind == "stall":
            await conn.send(head)
            await conn.pause(params.get("seconds", STALL_SECONDS))
            if params.get("then") == "close":
                return conn.close()
            head = b""
        ex.release()  # the generation is over before its client reads the end of it, as in Ollama
        await conn.send(head + body)
        conn.complete()

    async def _send_stream(self, ex: _Exchange, reply: _Reply) -> None:
        conn, kind, params = ex.conn, ex.kind, ex.params
        lines = reply.lines or []
        chunk_delay = params.get("chunk_delay", self.chunk_delay) if kind == "slow" else self.chunk_delay
        stall_at = None
        if kind == "cut_off":
            after = params.get("after")
            lines = _truncate_stream(lines) if after is None else lines[:after]
        elif kind == "stream_error":
            error = (reply.error_line or _ndjson_error)(params.get("message", RUNNER_CRASH))
            lines = lines[: min(params.get("after", 1), len(lines) - 1)] + [error]
        elif kind == "stall":
            stall_at = min(params.get("after", 1), len(lines))
        # Bytes go out in one write unless a pause comes between them.
        out = [conn.head(reply)]
        for i in range(len(lines) + 1):
            if i == stall_at:
                await conn.send(b"".join(out))
                out = []
                await conn.pause(params.get("seconds", STALL_SECONDS))
                if params.get("then") == "close":
                    return conn.close()
            elif 0 < i < len(lines) and chunk_delay:
                await conn.send(b"".join(out))
                out = []
                await conn.pause(chunk_delay)
            if i < len(lines):
                out.append(_chunk(lines[i]))
        if kind == "cut_off":
            await conn.send(b"".join(out))
            return conn.close()
        out.append(b"0\r\n\r\n")
        ex.release()
        await conn.send(b"".join(out))
        conn.complete()

    # -- the listings --

    async def _root(self, ex: _Exchange) -> _Reply:
        return _Reply(200, TEXT_TYPE, b"Ollama is running")

    async def _version(self, ex: _Exchange) -> _Reply:
        return _json_reply(200, {"version": self.version})

    def _tag_entries(self) -> list[dict[str, Any]]:
        entries = []
        for name in list(self.models):
            spec = self.spec_of(name)
            entries.append({**_model_entry(name, spec), "capabilities": list(spec.capabilities)})
        return entries

    async def _tags(self, ex: _Exchange) -> _Reply:
        return _json_reply(200, {"models": self._tag_entries()})

    async def _ps(self, ex: _Exchange) -> _Reply:
        installed = {_canonical(m) for m in self.models}
        running = []
        for runner in list(self._live_runners().values()):
            if _canonical(runner.name) not in installed:
                continue
            entry = _model_entry(runner.name, self.spec_of(runner.name))
            del entry["modified_at"]
            expiry = runner.shown_expiry
            entry["expires_at"] = "0001-01-01T00:00:00Z" if expiry is None else _iso(expiry)
            entry["size_vram"] = entry["size"]  # all on the GPU
            entry["context_length"] = runner.num_ctx
            running.append((expiry or datetime.min.replace(tzinfo=timezone.utc), entry))
        running.sort(key=lambda pair: pair[0], reverse=True)  # longest time left first, as PsHandler sorts
        return _json_reply(200, {"models": [entry for _, entry in running]})

    def _show_body(self, name: str) -> tuple[int, dict[str, Any]]:
        found = self._find_model(name)
        if found is None:
            return 404, {"error": f"model '{name}' not found"}
        spec = self.spec_of(found)
        entry = _model_entry(found, spec)
        family = entry["details"]["family"]
        return 200, {
            "modelfile": f'# Modelfile generated by "ollama show"\nFROM {found}\n',
            "parameters": 'stop                           "<|im_end|>"',
            "template": "{{ .Prompt }}",
            "details": entry["details"],
            "model_info": {"general.architecture": family, "general.parameter_count": entry["size"] * 2,
                           f"{family}.context_length": spec.context_length,
                           f"{family}.embedding_length": spec.embedding_length},
            "capabilities": list(spec.capabilities),
            "modified_at": "2025-01-20T10:00:00.123456789Z",
        }

    async def _show(self, ex: _Exchange) -> _Reply:
        body, problem = _parse_body(ex.request.raw, "api.ShowRequest")
        if problem:
            return _error(400, problem)
        name = body.get("model") or body.get("name")
        if not isinstance(name, str) or not name:
            return _error(400, "model is required")
        return _json_reply(*self._show_body(name))

    # -- chat and generate (server/routes.go ChatHandler, GenerateHandler) --

    def _thinking(self, found: str, asked: str, think: Any) -> tuple[Any, str | None]:
        """Ollama's thinking rules: a thinking model thinks unless told false; any other refuses to be asked."""
        spec = self.spec_of(found)
        if "thinking" in spec.capabilities:
            think = True if think is None else think
            if think == "max" and spec.family in ("gptoss", "gpt-oss"):
                think = "high"  # harmony knows low, medium and high only
            return think, None
        if think is not None and think is not False:
            return think, f"{json.dumps(asked, ensure_ascii=False)} does not support thinking"
        return think, None

    def _record_images(self, path: str, model: str, images: list[bytes]) -> list[tuple[str | None, int]]:
        seen = [(_image_kind(data), len(data)) for data in images]
        with self._lock:
            self._images.extend({"path": path, "model": model, "size": size, "type": kind,
                                 "sha256": hashlib.sha256(data).hexdigest()}
                                for (kind, size), data in zip(seen, images))
        return seen

    def _compose(self, *, model: str, spec: ModelSpec, topic: str, answer: str | None, think: Any, fmt: Any,
                 images: list[tuple[str | None, int]], suffix: str = "") -> tuple[str, str]:
        """The model's thinking and content for a question (or tool results), deterministic."""
        if self.reply is not None:
            content = self.reply
        elif suffix:
            content = f"Fill: {topic[:200]} ... {suffix[:200]}"
        elif fmt == "json" or isinstance(fmt, dict):
            shape = {"echo": topic[:200], "model": model}
            if images:
                shape["images"] = len(images)
            content = json.dumps(shape)
        else:
            content = answer if answer is not None else f"Echo: {topic[:200]}"
            if images:
                content += f" [{len(images)} image{'s' if len(images) != 1 else ''}: " + ", ".join(
                    f"{kind} {size} bytes" for kind, size in images) + "]"
        thinking = ""
        if think is not None and think is not False:
            label = "true" if think is True else think
            thinking = f"Thinking (think={label}) about: {topic[:200]}"
        return thinking, content

    def _tool_calls(self, body: dict[str, Any], found: str, messages: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """The calls the model makes: when tools are offered and the user spoke last."""
        tools = [t.get("function") for t in body.get("tools") or [] if isinstance(t, dict)]
        tools = [f for f in tools if isinstance(f, dict)]
        if not tools or not messages or (messages[-1].get("role") or "").lower() != "user":
            return []
        text = messages[-1].get("content") or ""
        script = self.tool_script
        if script is not None:
            calls = script(body) if callable(script) else list(script)
        else:
            mode = self.tool_mode
            named = re.search(r"\[tool:([^\]]+)\]", text)
            if "[no tools]" in text:
                mode = "none"
            elif "[all tools]" in text:
                mode = "all"
            if named:
                chosen = [f for f in tools if f.get("name") == named.group(1).strip()]
            else:
                chosen = {"first": tools[:1], "all": tools, "none": []}[mode]
            calls = [{"name": f.get("name") or "", "arguments": _example(
                {"type": "object", **(f.get("parameters") or {})}, text[:100])} for f in chosen]
        seed = _dumps([_canonical(found), messages]).decode()
        return [{"id": _call_id(seed, i),
                 "function": {"index": i, "name": call["name"], "arguments": call.get("arguments") or {}}}
                for i, call in enumerate(calls)]

    def _eval_count(self, content: str, thinking: str, tool_calls: list[dict[str, Any]]) -> int:
        def measure(text: str) -> int:
            return len(_chunks(text, self.chunks)) if self.chunks else _words(text)
        count = measure(content) if content or not (thinking or tool_calls) else 0
        count += measure(thinking) if thinking else 0
        count += _words(_dumps(tool_calls).decode().replace(",", " ")) if tool_calls else 0
        return max(1, count)

    def _check_media(self, spec: ModelSpec, images: list[tuple[str | None, int]]) -> _Outcome | None:
        if images and "vision" not in spec.capabilities:
            return _fail(500, NO_VISION)
        if any(kind is None for kind, _ in images):
            return _fail(500, BAD_IMAGE)
        return None

    async def _chat(self, ex: _Exchange, body: dict[str, Any]) -> _Outcome:
        images: list[bytes] = []
        if problem := _type_problem(body, CHAT_REQUEST, sink=images):
            return _fail(400, problem)
        if not 0 <= (body.get("top_logprobs") or 0) <= 20:
            return _fail(400, "top_logprobs must be between 0 and 20")
        model = body.get("model") or ""
        if not model.strip():
            return _fail(400, "model is required")
        found = self._find_model(model)
        if found is None:
            return _fail(404, self.not_found_message.format(name=model))
        messages = [{**(m or {}), "role": ((m or {}).get("role") or "").lower()} for m in body.get("messages") or []]
        keep_alive = _keep_alive(body.get("keep_alive"))
        if not messages and keep_alive == 0:
            self._expire(_canonical(found))
            return _Outcome(frames=[{"model": model, "created_at": _now(), "message": {"role": "assistant",
                            "content": ""}, "done": True, "done_reason": "unload"}])
        spec = self.spec_of(found)
        think, problem = self._thinking(found, model, _think(body.get("think")))
        if problem:
            return _fail(400, problem)
        if "completion" not in spec.capabilities:
            return _fail(400, f"{json.dumps(model, ensure_ascii=False)} does not support chat")
        if body.get("tools") and "tools" not in spec.capabilities:
            return _fail(400, f"{_full_name(found)} does not support tools")
        if problem := _options_problem(body.get("options")):
            return _fail(500, problem)
        try:
            load_ns = await self._schedule(ex, found, body.get("options"), keep_alive, slot=bool(messages))
        except _Busy:
            return _fail(503, SERVER_BUSY)
        if not messages:  # a bare load, never streamed
            return _Outcome(frames=[{"model": model, "created_at": _now(), "message": {"role": "assistant",
                            "content": ""}, "done": True, "done_reason": "load"}])
        seen = self._record_images(ex.request.path, found, images)
        if failed := self._check_media(spec, seen):
            return failed
        await self._generating(ex)

        tool_calls = self._tool_calls(body, found, messages)
        results = []
        for message in reversed(messages):
            if message["role"] != "tool":
                break
            results.insert(0, f"{message.get('tool_name') or 'tool'}: {str(message.get('content') or '')[:200]}")
        if results:
            topic = answer = "Tool results: " + "; ".join(results)
        else:
            user = next((m for m in reversed(messages) if m["role"] == "user"), {})
            topic, answer = str(user.get("content") or ""), None
        thinking, content = self._compose(model=model, spec=spec, topic=topic, answer=answer, think=think,
                                          fmt=body.get("format"), images=seen)
        if tool_calls:
            content = ""
        prompt_count = sum(_words(m.get("content") or "") for m in messages) + IMAGE_TOKENS * len(images)
        if body.get("tools"):
            prompt_count += _words(_dumps(body["tools"]).decode().replace(",", " "))
        gen = _Generation(content, thinking, tool_calls, max(1, prompt_count),
                          self._eval_count(content, thinking, tool_calls))
        limit = (body.get("options") or {}).get("num_predict")
        if isinstance(limit, int) and not isinstance(limit, bool) and 0 < limit < gen.eval_count and not tool_calls:
            # Ollama stops at num_predict tokens: here a token is a word, the thinking's first.
            thought = re.findall(r"\s*\S+", thinking)[:limit]
            said = re.findall(r"\s*\S+", content)[: limit - len(thought)]
            gen = _Generation("".join(said), "".join(thought), [], gen.prompt_count, limit, "length")
        return self._chat_outcome(ex, model, gen, load_ns, stream=body.get("stream") is not False)

    def _chat_outcome(self, ex: _Exchange, model: str, gen: _Generation, load_ns: int | None, *,
                      stream: bool) -> _Outcome:
        def frame(done: bool, **message: Any) -> dict[str, Any]:
            return {"model": model, "created_at": _now(),
                    "message": _message("assistant", message.pop("content", ""), **message), "done": done}

        stats = _stats(gen.prompt_count, gen.eval_count, ex.started, load_ns=load_ns, cached=ex.kind == "cached_prompt")
        if not stream:
            whole = frame(True, content=gen.content, thinking=gen.thinking, tool_calls=gen.tool_calls)
            return _Outcome(frames=[{**whole, "done_reason": gen.done_reason, **stats}])
        frames = [frame(False, thinking=piece) for piece in (_chunks(gen.thinking, self.chunks) if gen.thinking
                                                             else [])]
        per_chunk = self.tool_calls_per_chunk
        if per_chunk:
            frames += [frame(False, tool_calls=gen.tool_calls[i : i + per_chunk])
                       for i in range(0, len(gen.tool_calls), per_chunk)]
        if gen.content or not (gen.thinking or gen.tool_calls):
            frames += [frame(False, content=piece) for piece in _chunks(gen.content, self.chunks)]
        final = frame(True, tool_calls=[] if per_chunk else gen.tool_calls)
        return _Outcome(frames=[*frames, {**final, "done_reason": gen.done_reason, **stats}], stream=True)

    async def _generate(self, ex: _Exchange, body: dict[str, Any]) -> _Outcome:
        images: list[bytes] = []
        if problem := _type_problem(body, GENERATE_REQUEST, sink=images):
            return _fail(400, problem)
        if not 0 <= (body.get("top_logprobs") or 0) <= 20:
            return _fail(400, "top_logprobs must be between 0 and 20")
        model = body.get("model") or ""
        if not model.strip():
            return _fail(400, "model is required")
        found = self._find_model(model)
        if found is None:
            return _fail(404, self.not_found_message.format(name=model))
        prompt, suffix = body.get("prompt") or "", body.get("suffix") or ""
        keep_alive = _keep_alive(body.get("keep_alive"))
        if not prompt and keep_alive == 0:
            self._expire(_canonical(found))
            return _Outcome(frames=[{"model": model, "created_at": _now(), "response": "", "done": True,
                                     "done_reason": "unload"}])
        spec = self.spec_of(found)
        if body.get("raw") and (body.get("template") or body.get("system") or body.get("context")):
            return _fail(400, "raw mode does not support template, system, or context")
        think, problem = self._thinking(found, model, _think(body.get("think")))
        if problem:
            return _fail(400, problem)
        if "completion" not in spec.capabilities:
            return _fail(400, f"{json.dumps(model, ensure_ascii=False)} does not support generate")
        if suffix and "insert" not in spec.capabilities:
            return _fail(400, f"{_full_name(found)} does not support insert")
        if problem := _options_problem(body.get("options")):
            return _fail(500, problem)
        try:
            load_ns = await self._schedule(ex, found, body.get("options"), keep_alive, slot=bool(prompt))
        except _Busy:
            return _fail(503, SERVER_BUSY)
        if not prompt:
            return _Outcome(frames=[{"model": model, "created_at": _now(), "response": "", "done": True,
                                     "done_reason": "load"}])
        seen = self._record_images(ex.request.path, found, images)
        if failed := self._check_media(spec, seen):
            return failed
        await self._generating(ex)

        thinking, content = self._compose(model=model, spec=spec, topic=prompt, answer=None, think=think,
                                          fmt=body.get("format"), images=seen, suffix=suffix)
        prompt_count = max(1, _words(body.get("system") or "") + _words(prompt) + _words(suffix)
                           + IMAGE_TOKENS * len(images))
        eval_count = self._eval_count(content, thinking, [])
        stats = _stats(prompt_count, eval_count, ex.started, load_ns=load_ns, cached=ex.kind == "cached_prompt")

        def frame(response: str, thinking: str, done: bool) -> dict[str, Any]:
            out = {"model": model, "created_at": _now(), "response": response}
            if thinking:
                out["thinking"] = thinking
            out["done"] = done
            return out

        stream = body.get("stream") is not False
        final = frame("" if stream else content, "" if stream else thinking, True)
        final["done_reason"] = "stop"
        if not body.get("raw"):
            final["context"] = list(range(1, prompt_count + eval_count + 1))
        final.update(stats)
        if not stream:
            return _Outcome(frames=[final])
        frames = [frame("", piece, False) for piece in (_chunks(thinking, self.chunks) if thinking else [])]
        frames += [frame(piece, "", False) for piece in _chunks(content, self.chunks)]
        return _Outcome(frames=[*frames, final], stream=True)

    @staticmethod
    def _native(outcome: _Outcome) -> _Reply:
        if outcome.error is not None:
            return _error(outcome.status, outcome.error)
        if outcome.stream:
            return _Reply(200, NDJSON_TYPE, lines=[_dumps(frame) + b"\n" for frame in outcome.frames])
        return _json_reply(200, outcome.frames[0])

    async def _api_chat(self, ex: _Exchange) -> _Reply:
        body, problem = _parse_body(ex.request.raw, "api.ChatRequest")
        return _error(400, problem) if problem else self._native(await self._chat(ex, body))

    async def _api_generate(self, ex: _Exchange) -> _Reply:
        body, problem = _parse_body(ex.request.raw, "api.GenerateRequest")
        return _error(400, problem) if problem else self._native(await self._generate(ex, body))

    # -- embeddings (EmbedHandler, EmbeddingsHandler) --

    async def _embed(self, ex: _Exchange, body: dict[str, Any]) -> _Outcome:
        if problem := _type_problem(body, EMBED_REQUEST):
            return _fail(400, problem)
        model = body.get("model") or ""
        if not model.strip():
            return _fail(404, f"model '{model}' not found")
        given = body.get("input")
        if isinstance(given, str):
            texts = [given] if given else []
        elif isinstance(given, list):
            if not all(isinstance(item, str) for item in given):
                return _fail(400, "invalid input type")
            texts = list(given)
        elif given is None:
            texts = []
        else:
            return _fail(400, "invalid input type")
        found = self._find_model(model)
        if found is None:
            return _fail(404, self.not_found_message.format(name=model))
        if problem := _options_problem(body.get("options")):
            return _fail(500, problem)
        keep_alive = _keep_alive(body.get("keep_alive"))
        try:
            load_ns = await self._schedule(ex, found, body.get("options"), keep_alive, slot=bool(texts))
        except _Busy:
            return _fail(503, SERVER_BUSY)
        if not texts:
            return _Outcome(embed={"model": model, "vectors": [], "texts": []})
        spec = self.spec_of(found)
        num_ctx = (body.get("options") or {}).get("num_ctx")
        limit = min(int(num_ctx) if isinstance(num_ctx, (int, float)) and num_ctx > 0 else DEFAULT_NUM_CTX,
                    spec.context_length)
        vectors, tokens = [], 0
        for text in texts:
            words = text.split()
            if len(words) > limit:
                if body.get("truncate") is False:
                    return _fail(400, "the input length exceeds the context length")
                text, words = " ".join(words[:limit]), words[:limit]
            tokens += len(words)
            vectors.append(_embedding(found, text, spec.embedding_length, body.get("dimensions") or 0))
        spent = int((time.monotonic() - ex.started) * 1e9)
        load = load_ns if load_ns is not None else 1_234_567
        return _Outcome(embed={"model": model, "vectors": vectors, "total_duration": spent + load,
                               "load_duration": load, "prompt_eval_count": tokens})

    async def _api_embed(self, ex: _Exchange) -> _Reply:
        body, problem = _parse_body(ex.request.raw, "api.EmbedRequest")
        if problem:
            return _error(400, problem)
        outcome = await self._embed(ex, body)
        if outcome.error is not None:
            return _error(outcome.status, outcome.error)
        answer = outcome.embed
        text = b'{"model":' + _dumps(answer["model"]) + b',"embeddings":['
        text += ",".join(vector_json for _, vector_json in answer["vectors"]).encode() + b"]"
        for key in ("total_duration", "load_duration", "prompt_eval_count"):
            if answer.get(key):  # omitempty
                text += b',"%s":%d' % (key.encode(), answer[key])
        return _Reply(200, JSON_TYPE, text + b"}")

    async def _api_embeddings(self, ex: _Exchange) -> _Reply:
        body, problem = _parse_body(ex.request.raw, "api.EmbeddingRequest")
        if problem:
            return _error(400, problem)
        if problem := _type_problem(body, EMBEDDING_REQUEST):
            return _error(400, problem)
        model = body.get("model") or ""
        if not model.strip():
            return _error(400, "model is required")
        found = self._find_model(model)
        if found is None:
            return _error(404, self.not_found_message.format(name=model))
        if problem := _options_problem(body.get("options")):
            return _error(500, problem)
        prompt = body.get("prompt") or ""
        try:
            await self._schedule(ex, found, body.get("options"), _keep_alive(body.get("keep_alive")),
                                 slot=bool(prompt))
        except _Busy:
            return _error(503, SERVER_BUSY)
        if not prompt:
            return _json_reply(200, {"embedding": []})
        # The legacy endpoint hands back the runner's vector as float64, not normalised.
        vector = _raw_vector(found, prompt, self.spec_of(found).embedding_length)
        return _Reply(200, JSON_TYPE, b'{"embedding":[' + ",".join(map(_go_float64, vector)).encode() + b"]}")

    # -- the OpenAI layer: the same handlers, translated --

    async def _v1_chat(self, ex: _Exchange) -> _Reply:
        request, problem = _parse_body(ex.request.raw, "openai.ChatCompletionRequest")
        if problem:
            return _openai_abort(400, "EOF" if problem == "missing request body" else problem)
        if problem := _type_problem(request, OPENAI_CHAT_REQUEST):
            return _openai_abort(400, problem)
        if not request.get("messages"):
            return _openai_abort(400, "[] is too short - 'messages'")
        try:
            native = _openai_chat_to_native(request)
        except ValueError as exc:
            return _openai_abort(400, str(exc))
        outcome = await self._chat(ex, native)
        if outcome.error is not None:
            return _openai_error(outcome.status, outcome.error)
        rid = _openai_id("chatcmpl", ex.request.raw)
        if not native["stream"] or not outcome.stream:
            return _Reply(200, PLAIN_JSON_TYPE, _dumps(_openai_chat_completion(rid, outcome.frames[0])) + b"\n")
        include_usage = bool((request.get("stream_options") or {}).get("include_usage"))
        created = _unix(outcome.frames[0]["created_at"])

        def error_line(message: str) -> bytes:
            # Ollama's ChatWriter reads the error line as an empty chat response: an empty chunk, then the end.
            return _sse({"id": rid, "object": "chat.completion.chunk", "created": created,
                         "model": native["model"], "system_fingerprint": "fp_ollama",
                         "choices": [{"index": 0, "delta": {"content": ""}, "finish_reason": None}]})

        return _Reply(200, SSE_TYPE, lines=_openai_chat_stream(rid, outcome.frames, include_usage),
                      error_line=error_line)

    async def _v1_completions(self, ex: _Exchange) -> _Reply:
        request, problem = _parse_body(ex.request.raw, "openai.CompletionRequest")
        if problem:
            return _openai_abort(400, "EOF" if problem == "missing request body" else problem)
        if problem := _type_problem(request, OPENAI_COMPLETION_REQUEST):
            return _openai_abort(400, problem)
        try:
            native = _openai_completion_to_native(request)
        except ValueError as exc:
            return _openai_abort(400, str(exc))
        outcome = await self._generate(ex, native)
        if outcome.error is not None:
            return _openai_error(outcome.status, outcome.error)
        rid = _openai_id("cmpl", ex.request.raw)
        if not native["stream"] or not outcome.stream:
            whole = outcome.frames[0]
            body = {"id": rid, "object": "text_completion", "created": _unix(whole["created_at"]),
                    "model": whole["model"], "system_fingerprint": "fp_ollama",
                    "choices": [{"text": whole["response"], "index": 0,
                                 "finish_reason": whole.get("done_reason") or None}], "usage": _usage(whole)}
            return _Reply(200, PLAIN_JSON_TYPE, _dumps(body) + b"\n")
        include_usage = bool((request.get("stream_options") or {}).get("include_usage"))
        events = []
        for frame in outcome.frames:
            chunk = _openai_completion_chunk(rid, frame)
            if include_usage:
                chunk["usage"] = {"prompt_tokens": 0, "completion_tokens": 0, "total_tokens": 0}
            events.append(_sse(chunk))
            if frame["done"]:
                if include_usage:
                    events.append(_sse({**chunk, "choices": [], "usage": _usage(frame)}))
                events.append(b"data: [DONE]\n\n")
        return _Reply(200, SSE_TYPE, lines=events, error_line=lambda message: _sse(_openai_completion_chunk(
            rid, {"model": native["model"]})))

    async def _v1_embeddings(self, ex: _Exchange) -> _Reply:
        request, problem = _parse_body(ex.request.raw, "openai.EmbedRequest")
        if problem:
            return _openai_abort(400, "EOF" if problem == "missing request body" else problem)
        if problem := _type_problem(request, OPENAI_EMBED_REQUEST):
            return _openai_abort(400, problem)
        encoding = request.get("encoding_format") or ""
        if encoding and encoding.lower() not in ("float", "base64"):
            return _openai_abort(400, f"Invalid value for 'encoding_format' = {encoding}. Supported values: "
                                      f"['float', 'base64'].")
        given = request.get("input")
        if given == "":
            given = [""]
        if given is None or given == []:
            return _openai_abort(400, "invalid input")
        native = {"model": request.get("model") or "", "input": given}
        if request.get("dimensions"):
            native["dimensions"] = request["dimensions"]
        outcome = await self._embed(ex, native)
        if outcome.error is not None:
            return _openai_error(outcome.status, outcome.error)
        answer = outcome.embed
        data = []
        for index, (vector, vector_json) in enumerate(answer["vectors"]):
            if encoding.lower() == "base64":
                embedding = _dumps(base64.b64encode(struct.pack(f"<{len(vector)}f", *vector)).decode())
            else:
                embedding = vector_json.encode()
            data.append(b'{"object":"embedding","embedding":' + embedding + b',"index":%d}' % index)
        tokens = answer.get("prompt_eval_count", 0)
        body = (b'{"object":"list","data":' + (b"[" + b",".join(data) + b"]" if data else b"null")
                + b',"model":' + _dumps(request.get("model") or "")
                + b',"usage":{"prompt_tokens":%d,"total_tokens":%d}}\n' % (tokens, tokens))
        return _Reply(200, PLAIN_JSON_TYPE, body)

    async def _v1_models(self, ex: _Exchange) -> _Reply:
        data = [{"id": entry["model"], "object": "model", "created": _unix(entry["modified_at"][:26] + "Z"),
                 "owned_by": _namespace(entry["model"])} for entry in self._tag_entries()]
        return _Reply(200, PLAIN_JSON_TYPE, _dumps({"object": "list", "data": data or None}) + b"\n")

    async def _v1_model(self, ex: _Exchange) -> _Reply:
        name = unquote(ex.request.path[len("/v1/models/"):])
        status, body = self._show_body(name)
        if status != 200:
            return _openai_error(status, body["error"])
        return _Reply(200, PLAIN_JSON_TYPE, _dumps({"id": name, "object": "model",
                                                    "created": _unix(body["modified_at"][:26] + "Z"),
                                                    "owned_by": _namespace(name)}) + b"\n")


def _run_loop(loop: asyncio.AbstractEventLoop) -> None:
    asyncio.set_event_loop(loop)
    try:
        loop.run_forever()
    finally:
        loop.close()


class _Connection(asyncio.Protocol):
    """One client connection: HTTP/1.1 with keep-alive, and an eye on the client hanging up at any time."""

    def __init__(self, fake: FakeOllama, loop: asyncio.AbstractEventLoop) -> None:
        self.fake = fake
        self.loop = loop
        self.buffer = bytearray()
        self.transport: asyncio.Transport | None = None
        self.task: asyncio.Task | None = None
        self.gone = loop.create_future()  # done once the client hung up or the connection was dropped
        self.current: RecordedRequest | None = None  # received, its reply not yet complete
        self.keep_alive = True
        self._more: asyncio.Future | None = None
        self._writable: asyncio.Future | None = None
        self.peer: tuple[str, int] | None = None

    # -- asyncio.Protocol --

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        peer = transport.get_extra_info("peername")
        self.peer = tuple(peer[:2]) if peer else None
        self.fake._connections.add(self)
        self.task = self.loop.create_task(self.serve())
        self.fake._tasks.add(self.task)
        self.task.add_done_callback(self.fake._tasks.discard)

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        self._wake("_more")

    def eof_received(self) -> bool:
        # Go's server, too, cancels a request when a background read sees EOF; no half-open connections.
        self._lost()
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        self.fake._connections.discard(self)
        self._lost()

    def pause_writing(self) -> None:
        self._writable = self.loop.create_future()

    def resume_writing(self) -> None:
        self._wake("_writable")

    def _wake(self, name: str) -> None:
        waiter = getattr(self, name)
        setattr(self, name, None)
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def _lost(self) -> None:
        if self.gone.done():
            return
        self.gone.set_result(None)
        if self.current is not None:  # the client left before the reply was complete
            self.fake._record_cancelled(self.current)
            self.current = None
        self._wake("_more")
        self._wake("_writable")

    # -- used by the handler --

    async def pause(self, seconds: float) -> None:
        """Sleep, but raise _Gone as soon as the client hangs up."""
        if not self.gone.done() and seconds > 0:
            await asyncio.wait((self.gone,), timeout=seconds)
        if self.gone.done():
            raise _Gone

    async def send(self, data: bytes) -> None:
        if self.gone.done() or self.transport.is_closing():
            raise _Gone
        if data:
            self.transport.write(data)
        if self._writable is not None:
            await self._writable
            if self.gone.done():
                raise _Gone

    def complete(self) -> None:
        self.current = None

    def close(self) -> None:
        """Close from our side (after what was written): not a cancellation."""
        self.current = None
        self.transport.close()

    def reset(self) -> None:
        # Linger 0 makes close() send RST rather than FIN: the client sees a reset, not an EOF.
        self.current = None
        self.transport.get_extra_info("socket").setsockopt(socket.SOL_SOCKET, socket.SO_LINGER,
                                                           struct.pack("ii", 1, 0))
        self.transport.abort()

    def drop(self) -> None:
        self.current = None
        self.transport.abort()

    def head(self, reply: _Reply, length: int | None = None) -> bytes:
        # Ollama (Go) sends no Server header; leave it out so "who answered" checks are honest.
        lines = [f"HTTP/1.1 {reply.status} {_reason(reply.status)}", f"Content-Type: {reply.content_type}",
                 f"Date: {_http_date()}"]
        lines += [f"{name}: {value}" for name, value in reply.headers.items()]
        lines.append("Transfer-Encoding: chunked" if length is None else f"Content-Length: {length}")
        if not self.keep_alive:
            lines.append("Connection: close")
        return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")

    # -- HTTP/1.1 --

    async def _fill(self) -> None:
        if self.gone.done():
            raise _Gone
        self._more = self.loop.create_future()
        await self._more

    async def read_until(self, separator: bytes, limit: int) -> bytes:
        start = 0
        while (end := self.buffer.find(separator, start)) < 0:
            if len(self.buffer) > limit:
                raise _BadRequest(431, "request header too large")
            start = max(0, len(self.buffer) - len(separator) + 1)
            await self._fill()
        data = bytes(self.buffer[:end])
        del self.buffer[: end + len(separator)]
        return data

    async def read_exactly(self, size: int) -> bytes:
        while len(self.buffer) < size:
            await self._fill()
        data = bytes(self.buffer[:size])
        del self.buffer[:size]
        return data

    async def read_request(self) -> RecordedRequest:
        head = (await self.read_until(b"\r\n\r\n", MAX_HEAD)).lstrip(b"\r\n")  # stray CRLFs may precede
        request_line, *header_lines = head.decode("latin-1").split("\r\n")
        parts = request_line.split(" ")
        if len(parts) != 3 or not parts[2].startswith("HTTP/1."):
            raise _BadRequest(400, "malformed request line")
        method, target, version = parts
        headers: dict[str, str] = {}
        for line in header_lines:
            name, colon, value = line.partition(":")
            if not colon or not name.strip():
                raise _BadRequest(400, "malformed header line")
            key, value = name.strip().lower(), value.strip()
            headers[key] = f"{headers[key]}, {value}" if key in headers else value
        tokens = headers.get("connection", "").lower()
        self.keep_alive = "close" not in tokens and version == "HTTP/1.1"
        if headers.get("expect", "").lower() == "100-continue":
            self.transport.write(b"HTTP/1.1 100 Continue\r\n\r\n")  # curl waits a second for it otherwise
        raw = await self.read_body(headers)
        url = urlsplit(target)
        try:
            parsed = json.loads(raw) if raw else None
        except ValueError:
            parsed = None
        return RecordedRequest(method, url.path, headers, parsed, raw, url.query, self.peer)

    async def read_body(self, headers: dict[str, str]) -> bytes:
        try:
            if "chunked" in headers.get("transfer-encoding", "").lower():
                parts, total = [], 0
                while size := int((await self.read_until(b"\r\n", 1024)).split(b";")[0].strip() or b"0", 16):
                    total += size
                    if total > MAX_BODY:
                        raise _BadRequest(413, "request body too large")
                    parts.append(await self.read_exactly(size))
                    await self.read_until(b"\r\n", 2)
                while await self.read_until(b"\r\n", MAX_HEAD):
                    pass  # trailers
                return b"".join(parts)
            length = int(headers.get("content-length") or 0)
        except ValueError:
            raise _BadRequest(400, "malformed body framing") from None
        if length > MAX_BODY:
            raise _BadRequest(413, "request body too large")
        return await self.read_exactly(length) if length > 0 else b""

    async def serve(self) -> None:
        try:
            while True:
                request = await self.read_request()
                await self.fake._answer(self, request)
                if self.transport.is_closing():
                    return
                if not self.keep_alive:
                    return self.close()
        except _Gone:
            pass
        except _BadRequest as exc:
            self.keep_alive = False
            body = f"{exc.status} {exc}".encode()
            self.transport.write(self.head(_Reply(exc.status, TEXT_TYPE), length=len(body)) + body)
        except asyncio.CancelledError:
            raise
        except Exception:  # a bug in the fake: show it, and let the client see a broken connection
            traceback.print_exc()
        finally:
            if not self.transport.is_closing():
                self.close()



def _model_argument(text: str) -> tuple[str, ModelSpec | None]:
    name, _, capabilities = text.partition("=")
    return name, ModelSpec(tuple(c.strip() for c in capabilities.split(",") if c.strip())) if capabilities else None


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Serve a fake Ollama until interrupted.")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=11434)
    parser.add_argument("--model", action="append", dest="models", type=_model_argument,
                        help="model to offer (repeatable); NAME=cap,cap sets its capabilities (else the catalogue's)")
    parser.add_argument("--ollama-version", default="0.5.7")
    parser.add_argument("--reply", help="the content every chat/generate reply carries (default: an echo)")
    parser.add_argument("--delay", type=float, default=0.0,
                        help="seconds every generation waits before answering (default 0)")
    parser.add_argument("--chunks", type=int, default=None,
                        help="content lines per streamed reply (default: one a word, at most 32)")
    parser.add_argument("--chunk-delay", type=float, default=0.0, help="seconds between streamed lines (default 0)")
    parser.add_argument("--num-parallel", type=int, default=None,
                        help="generations each model runs at once, like OLLAMA_NUM_PARALLEL (default: no limit)")
    parser.add_argument("--max-queue", type=int, default=None,
                        help="requests that may wait before a 503, like OLLAMA_MAX_QUEUE (default: no limit)")
    parser.add_argument("--max-loaded-models", type=int, default=None,
                        help="models loaded at once, like OLLAMA_MAX_LOADED_MODELS (default: no limit)")
    parser.add_argument("--load-delay", type=float, default=0.0,
                        help="seconds a model that is not loaded takes to load (default 0)")
    args = parser.parse_args(argv)
    if args.delay < 0 or args.chunk_delay < 0 or args.load_delay < 0 or (args.chunks is not None and args.chunks < 1):
        parser.error("--delay, --chunk-delay and --load-delay must be >= 0 and --chunks >= 1")
    models = args.models or [(name, None) for name in DEFAULT_MODELS]
    try:
        fake = FakeOllama(args.host, args.port, [name for name, _ in models], args.ollama_version, reply=args.reply,
                          delay=args.delay, chunks=args.chunks, chunk_delay=args.chunk_delay,
                          specs={name: spec for name, spec in models if spec is not None},
                          num_parallel=args.num_parallel, max_queue=args.max_queue,
                          max_loaded_models=args.max_loaded_models, load_delay=args.load_delay)
    except ValueError as exc:
        parser.error(str(exc))
    fake.start()
    print(f"fake Ollama on {fake.url} with {', '.join(fake.models)} (Ctrl-C stops)", flush=True)
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        pass
    finally:
        fake.stop()


if __name__ == "__main__":
    main()
