"""A fake Ollama server on a real loopback socket, with fault injection.

Used by the pytest fixtures and by the benchmarks. Standard library only: one asyncio event loop with a small
HTTP/1.1 parser, so a single thread holds thousands of connections. Shapes follow ollama/ollama docs/api.md and
server/routes.go: compact Go-style JSON, NDJSON streams sent with chunked transfer encoding, errors as
{"error": "..."}, and an error in mid-stream as one more line of that shape.

    python tests/fake_ollama.py --port 11434                              # serve in the foreground
    python tests/fake_ollama.py --port 0 --delay 2 --chunks 20 --chunk-delay 0.05
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import re
import socket
import struct
import sys
import threading
import time
import traceback
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from email.utils import formatdate
from http import HTTPStatus
from typing import Any, Iterable
from urllib.parse import urlsplit

DEFAULT_MODELS = ("qwen2.5:7b", "llama3.2:1b")
RUNNER_CRASH = "llama runner process has terminated: exit status 2"
HANG_LIMIT = 60.0  # a forgotten hang must not hold a connection for ever
STALL_SECONDS = 10.0
LOAD_DELAY = 5.0
KEEP_ALIVE = 300.0  # Ollama keeps a model loaded 5 minutes after its last use
MAX_STREAM_CHUNKS = 32
BACKLOG = 4096  # the benchmark opens hundreds of connections at once
MAX_HEAD = 64 * 1024
MAX_BODY = 64 * 1024 * 1024
GENERATION_PATHS = frozenset({"/api/chat", "/api/generate"})
JSON_TYPE = "application/json; charset=utf-8"  # what gin's c.JSON sends
NDJSON_TYPE = "application/x-ndjson"
TEXT_TYPE = "text/plain; charset=utf-8"
HTML_TYPE = "text/html; charset=utf-8"

# Fault kind -> the keyword parameters it accepts. "Chunks" are the NDJSON lines of a streamed reply.
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

# Path -> methods; mirrors the routes Ollama registers (GET routes also answer HEAD).
ROUTES = {
    "/": {"GET", "HEAD"},
    "/api/version": {"GET", "HEAD"},
    "/api/tags": {"GET", "HEAD"},
    "/api/ps": {"GET", "HEAD"},
    "/api/show": {"POST"},
    "/api/chat": {"POST"},
    "/api/generate": {"POST"},
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
    lines: list[bytes] | None = None  # set for an NDJSON stream
    headers: dict[str, str] = field(default_factory=dict)


class _Gone(Exception):
    """The client closed the connection, or stop() dropped it."""


class _BadRequest(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


def free_port_refused(host: str = "127.0.0.1") -> str:
    """A URL on which nothing listens, for "connection refused" tests."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        port = sock.getsockname()[1]
    return f"http://{host}:{port}"


def _dumps(obj: Any) -> bytes:
    # Go's encoding/json writes compact UTF-8 and escapes <, > and & inside strings.
    text = json.dumps(obj, separators=(",", ":"), ensure_ascii=False)
    return text.replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026").encode()


def _json_reply(status: int, obj: Any) -> _Reply:
    return _Reply(status, JSON_TYPE, _dumps(obj))


def _error(status: int, message: str) -> _Reply:
    return _json_reply(status, {"error": message})


def _iso(moment: datetime) -> str:
    return moment.isoformat(timespec="microseconds").replace("+00:00", "Z")


def _now() -> str:
    return _iso(datetime.now(timezone.utc))


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


def _words(text: Any) -> int:
    return len(str(text).split())


def _as_list(value: Any) -> list:
    return value if isinstance(value, list) else []


def _chunks(content: str, count: int | None = None) -> list[str]:
    """Split content into stream pieces that join back to exactly the content: `count` of them, or one a word."""
    if count is not None:
        size = len(content)
        return [content[i * size // count : (i + 1) * size // count] for i in range(count)]
    pieces = re.findall(r"\s*\S+|\s+\Z", content) or [content]
    step = -(-len(pieces) // MAX_STREAM_CHUNKS)
    return ["".join(pieces[i : i + step]) for i in range(0, len(pieces), step)]


def _keep_alive_seconds(value: Any) -> float | None:
    """Ollama's keep_alive: seconds as a number or a Go duration ("5m"); negative is for ever (None)."""
    seconds = KEEP_ALIVE
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        seconds = float(value)
    elif isinstance(value, str) and (match := re.fullmatch(r"\s*(-?\d+(?:\.\d+)?)(ms|s|m|h)?\s*", value)):
        seconds = float(match.group(1)) * {"ms": 0.001, "s": 1, "m": 60, "h": 3600}.get(match.group(2) or "s", 1)
    return None if seconds < 0 else seconds


def _model_entry(name: str) -> dict[str, Any]:
    base, _, tag = name.partition(":")
    size = re.search(r"(\d+(?:\.\d+)?)b", tag)
    billions = float(size.group(1)) if size else 7.0
    family = re.sub(r"[\d.]+$", "", base.rsplit("/", 1)[-1]) or base
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


def _parse_body(raw: bytes, go_type: str) -> tuple[dict, None] | tuple[None, _Reply]:
    """Decode a request body the way gin's ShouldBindJSON reports problems."""
    if not raw.strip():
        return None, _error(400, "missing request body")
    text = raw.decode("utf-8", "replace")
    try:
        body = json.loads(text)
    except ValueError as exc:
        pos = getattr(exc, "pos", 0)
        if pos >= len(text.rstrip()):
            return None, _error(400, "unexpected EOF")
        return None, _error(400, f"invalid character '{text[pos]}' looking for beginning of value")
    if body is None:  # Go decodes null into a zero struct without complaint
        return {}, None
    if not isinstance(body, dict):
        kind = {list: "array", str: "string", bool: "bool"}.get(type(body), "number")
        return None, _error(400, f"json: cannot unmarshal {kind} into Go value of type {go_type}")
    return body, None


def _stats(prompt_count: int, eval_count: int, started: float, *, load_ns: int | None,
           cached: bool) -> dict[str, int]:
    # Invented but plausible timings (~80 tokens/s) so clients can compute rates; a real load (the `load`
    # fault) was waited for, so it is already in the time spent.
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


class FakeOllama:
    """An Ollama look-alike on a real socket: start it, aim a client at .url, inspect .requests.

    delay, chunks and chunk_delay (also attributes, read per request) shape every generation (/api/chat,
    /api/generate) like a busy model: `delay` seconds before the reply whatever the fault (but hang and reset),
    `chunks` content lines per stream (default one a word, at most 32), `chunk_delay` seconds between lines.
    Fault delays come on top.
    """

    # Ollama 0.5.x wording; newer releases say "model 'NAME' not found".
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
    ) -> None:
        if delay < 0 or chunk_delay < 0 or (chunks is not None and chunks < 1):
            raise ValueError("delay and chunk_delay must be >= 0, chunks >= 1 or None")
        self.host = host
        self.models: list[str] = list(models)
        self.version = version
        self.reply = reply
        self.delay = delay
        self.chunks = chunks
        self.chunk_delay = chunk_delay
        self._port = port
        self._initial_models = list(self.models)
        self._initial_settings = (reply, delay, chunks, chunk_delay)
        self._lock = threading.Lock()
        self._arrived = threading.Condition(self._lock)
        self._requests: list[RecordedRequest] = []
        self._cancelled: list[RecordedRequest] = []
        self._faults: list[_Fault] = []
        self._loaded: dict[str, float | None] = {}  # model -> expiry (time.time()), None: for ever
        # Touched only in the loop's thread.
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
        """Stop serving and drop every open connection, including hung ones (not counted as cancelled)."""
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

    def __enter__(self) -> FakeOllama:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

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

    def wait_for_requests(self, count: int, timeout: float = 2.0) -> bool:
        """Block until at least count requests have arrived; False on timeout."""
        with self._arrived:
            return self._arrived.wait_for(lambda: len(self._requests) >= count, timeout)

    def wait_for_cancelled(self, count: int, timeout: float = 2.0) -> bool:
        """Block until at least count requests were given up by their clients; False on timeout."""
        with self._arrived:
            return self._arrived.wait_for(lambda: len(self._cancelled) >= count, timeout)

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
        """Forget recorded and cancelled requests, faults and loaded models."""
        with self._lock:
            self._requests.clear()
            self._cancelled.clear()
            self._faults.clear()
            self._loaded.clear()

    def reset(self) -> None:
        """clear(), and also restore .models, .reply, .delay, .chunks and .chunk_delay to their initial state."""
        self.clear()
        self.reply, self.delay, self.chunks, self.chunk_delay = self._initial_settings
        self.models[:] = self._initial_models

    # -- called in the loop's thread --

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

    def _touch(self, model: str, keep_alive: Any) -> None:
        seconds = _keep_alive_seconds(keep_alive)
        with self._lock:
            if seconds == 0:
                self._loaded.pop(model, None)
            else:
                self._loaded[model] = None if seconds is None else time.time() + seconds

    async def _answer(self, conn: _Connection, request: RecordedRequest) -> None:
        started = time.monotonic()
        self._record(request)
        conn.current = request
        fault = self._take_fault(request.path)
        kind, params = (fault.kind, fault.params) if fault else (None, {})
        if kind == "reset":
            return conn.reset()
        if kind == "hang":
            await conn.pause(params.get("limit", HANG_LIMIT))
            return conn.close()
        if request.path in GENERATION_PATHS:
            await conn.pause(self.delay)
        if kind in ("slow", "load"):
            await conn.pause(params.get("delay", 1.0 if kind == "slow" else LOAD_DELAY))
        if kind == "status":
            reply = _error(params.get("status", 500), params.get("message", RUNNER_CRASH))
        elif kind == "malformed":
            body = params.get("body", b"<html>oops")
            reply = _Reply(200, JSON_TYPE, body.encode() if isinstance(body, str) else body)
        elif kind == "not_ollama":
            reply = _not_ollama(request.path)
        else:
            load_ns = int(params.get("delay", LOAD_DELAY) * 1e9) if kind == "load" else None
            reply = self._route(request.method, request.path, request.raw, started, load_ns=load_ns,
                                cached=kind == "cached_prompt")
        if reply.lines is None:
            await self._send_whole(conn, request.method, reply, kind, params)
        else:
            await self._send_stream(conn, reply, kind, params)

    async def _send_whole(self, conn: _Connection, method: str, reply: _Reply, kind: str | None,
                          params: dict[str, Any]) -> None:
        if kind == "stream_error" and reply.status == 200:
            reply = _error(500, params.get("message", RUNNER_CRASH))
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
        await conn.send(head + body)
        conn.complete()

    async def _send_stream(self, conn: _Connection, reply: _Reply, kind: str | None, params: dict[str, Any]) -> None:
        lines = reply.lines or []
        chunk_delay = params.get("chunk_delay", self.chunk_delay) if kind == "slow" else self.chunk_delay
        stall_at = None
        if kind == "cut_off":
            after = params.get("after")
            lines = _truncate_stream(lines) if after is None else lines[:after]
        elif kind == "stream_error":
            error = _dumps({"error": params.get("message", RUNNER_CRASH)}) + b"\n"
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
        await conn.send(b"".join(out))
        conn.complete()

    def _route(self, method: str, path: str, raw: bytes, started: float, *, load_ns: int | None = None,
               cached: bool = False) -> _Reply:
        if path not in ROUTES:
            return _Reply(404, TEXT_TYPE, b"404 page not found")
        if method not in ROUTES[path]:
            return _Reply(405, TEXT_TYPE, b"405 method not allowed")
        if path == "/":
            return _Reply(200, TEXT_TYPE, b"Ollama is running")
        if path == "/api/version":
            return _json_reply(200, {"version": self.version})
        if path == "/api/tags":
            return _json_reply(200, {"models": [_model_entry(m) for m in list(self.models)]})
        if path == "/api/ps":
            return self._ps()
        if path == "/api/show":
            return self._show(raw)
        return self._complete(path == "/api/chat", raw, started, load_ns=load_ns, cached=cached)

    def _ps(self) -> _Reply:
        now = time.time()
        with self._lock:
            loaded = [(m, expiry) for m, expiry in self._loaded.items() if expiry is None or expiry > now]
        installed = {_canonical(m) for m in self.models}
        running = []
        for name, expiry in loaded:
            if _canonical(name) not in installed:
                continue
            entry = _model_entry(name)
            del entry["modified_at"]
            until = datetime.now(timezone.utc) + (timedelta(days=36500) if expiry is None
                                                  else timedelta(seconds=expiry - now))
            entry["expires_at"] = _iso(until)
            entry["size_vram"] = entry["size"]  # all on the GPU
            running.append(entry)
        return _json_reply(200, {"models": running})

    def _show(self, raw: bytes) -> _Reply:
        body, problem = _parse_body(raw, "api.ShowRequest")
        if problem:
            return problem
        name = body.get("model") or body.get("name")
        if not isinstance(name, str) or not name:
            return _error(400, "model is required")
        found = self._find_model(name)
        if found is None:
            return _error(404, f"model '{name}' not found")
        details = _model_entry(found)["details"]
        return _json_reply(200, {
            "modelfile": f'# Modelfile generated by "ollama show"\nFROM {found}\n',
            "parameters": 'stop                           "<|im_end|>"',
            "template": "{{ .Prompt }}",
            "details": details,
            "model_info": {"general.architecture": details["family"], f"{details['family']}.context_length": 32768},
            "capabilities": ["completion"],
            "modified_at": "2025-01-20T10:00:00.123456789Z",
        })

    def _complete(self, chat: bool, raw: bytes, started: float, *, load_ns: int | None, cached: bool) -> _Reply:
        body, problem = _parse_body(raw, "api.ChatRequest" if chat else "api.GenerateRequest")
        if problem:
            return problem
        model = body.get("model")
        if not isinstance(model, str) or not model.strip():
            return _error(400, "model is required")
        found = self._find_model(model)
        if found is None:
            return _error(404, self.not_found_message.format(name=model))

        def frame(piece: str, done: bool) -> dict[str, Any]:
            out: dict[str, Any] = {"model": model, "created_at": _now()}
            if chat:
                out["message"] = {"role": "assistant", "content": piece}
            else:
                out["response"] = piece
            out["done"] = done
            return out

        self._touch(found, body.get("keep_alive"))
        messages = [m for m in _as_list(body.get("messages")) if isinstance(m, dict)]
        if (chat and not messages) or (not chat and not body.get("prompt")):
            # Ollama answers an empty conversation by (un)loading the model, never streamed.
            loaded = frame("", True)
            loaded["done_reason"] = "unload" if body.get("keep_alive") in (0, "0", "0s") else "load"
            return _json_reply(200, loaded)

        if chat:
            user = next((m for m in reversed(messages) if m.get("role") == "user"), {})
            asked = str(user.get("content") or "")
            prompt_count = sum(_words(m.get("content") or "") for m in messages)
        else:
            asked = str(body["prompt"])
            prompt_count = _words(body.get("system") or "") + _words(asked)
        content = self.reply
        if content is None:
            fmt = body.get("format")
            if fmt == "json" or isinstance(fmt, dict):
                content = json.dumps({"echo": asked[:200], "model": model})
            else:
                content = f"Echo: {asked[:200]}"
        prompt_count = max(1, prompt_count)
        pieces = _chunks(content, self.chunks)
        eval_count = len(pieces) if self.chunks else max(1, _words(content))

        stream = body.get("stream") is not False  # Ollama streams unless told "stream": false
        lines = [_dumps(frame(piece, False)) + b"\n" for piece in pieces] if stream else []
        final = frame("" if stream else content, True)
        final["done_reason"] = "stop"
        if not chat and not body.get("raw"):
            final["context"] = list(range(1, prompt_count + eval_count + 1))
        final.update(_stats(prompt_count, eval_count, started, load_ns=load_ns, cached=cached))
        if not stream:
            return _json_reply(200, final)
        return _Reply(200, NDJSON_TYPE, lines=[*lines, _dumps(final) + b"\n"])


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


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Serve a fake Ollama until interrupted.")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=11434)
    parser.add_argument("--model", action="append", dest="models", help="model to offer (repeatable)")
    parser.add_argument("--ollama-version", default="0.5.7")
    parser.add_argument("--reply", help="the content every chat/generate reply carries (default: an echo)")
    parser.add_argument("--delay", type=float, default=0.0,
                        help="seconds every /api/chat and /api/generate waits before answering (default 0)")
    parser.add_argument("--chunks", type=int, default=None,
                        help="content lines per streamed reply (default: one a word, at most 32)")
    parser.add_argument("--chunk-delay", type=float, default=0.0, help="seconds between streamed lines (default 0)")
    args = parser.parse_args(argv)
    if args.delay < 0 or args.chunk_delay < 0 or (args.chunks is not None and args.chunks < 1):
        parser.error("--delay and --chunk-delay must be >= 0 and --chunks >= 1")
    fake = FakeOllama(args.host, args.port, args.models or DEFAULT_MODELS, args.ollama_version, reply=args.reply,
                      delay=args.delay, chunks=args.chunks, chunk_delay=args.chunk_delay)
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
