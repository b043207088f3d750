"""A fake Ollama server on a real loopback socket, with fault injection.

Used by the pytest fixtures and by the latency benchmark. Standard library only.
Shapes follow ollama/ollama docs/api.md and server/routes.go: compact Go-style JSON,
NDJSON streams sent with chunked transfer encoding, errors as {"error": "..."}.

    python tests/fake_ollama.py --port 11434     # serve in the foreground
"""

from __future__ import annotations

import argparse
import hashlib
import json
import re
import select
import socket
import struct
import sys
import threading
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Iterable
from urllib.parse import urlsplit

DEFAULT_MODELS = ("qwen2.5:7b", "llama3.2:1b")
RUNNER_CRASH = "llama runner process has terminated: exit status 2"
HANG_LIMIT = 60.0  # a forgotten hang must not pin a thread for ever
MAX_STREAM_CHUNKS = 32
JSON_TYPE = "application/json; charset=utf-8"  # what gin's c.JSON sends
NDJSON_TYPE = "application/x-ndjson"
TEXT_TYPE = "text/plain; charset=utf-8"
HTML_TYPE = "text/html; charset=utf-8"

# Fault kind -> the keyword parameters it accepts.
#   slow        wait `delay` s (default 1) before answering; `chunk_delay` s between NDJSON lines
#   hang        read the request, never answer (until stop(), the client leaves, or `limit` s)
#   status      `status` (500) with Ollama's {"error": `message`} (a runner crash by default)
#   malformed   200 application/json whose body (`body`, default "<html>oops") is not JSON
#   cut_off     Content-Length or chunked stream promised, then the socket closes mid-body
#   not_ollama  some other web server: HTML 404 for /api/..., HTML 200 on /
#   reset       read the request, then close with RST and send nothing
FAULT_PARAMS: dict[str, frozenset[str]] = {
    "slow": frozenset({"delay", "chunk_delay"}),
    "hang": frozenset({"limit"}),
    "status": frozenset({"status", "message"}),
    "malformed": frozenset({"body"}),
    "cut_off": frozenset(),
    "not_ollama": frozenset(),
    "reset": frozenset(),
}

# Path -> methods; mirrors the routes Ollama registers (GET routes also answer HEAD).
ROUTES = {
    "/": {"GET", "HEAD"},
    "/api/version": {"GET", "HEAD"},
    "/api/tags": {"GET", "HEAD"},
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


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="microseconds").replace("+00:00", "Z")


def _canonical(name: str) -> str:
    # Ollama reads "llama3.2" as "llama3.2:latest" and compares names case-insensitively.
    name = name.strip().lower()
    return name if ":" in name.rsplit("/", 1)[-1] else name + ":latest"


def _words(text: Any) -> int:
    return len(str(text).split())


def _as_list(value: Any) -> list:
    return value if isinstance(value, list) else []


def _chunks(content: str) -> list[str]:
    """Split content into stream pieces that join back to exactly the content."""
    pieces = re.findall(r"\s*\S+|\s+\Z", content) or [content]
    step = -(-len(pieces) // MAX_STREAM_CHUNKS)
    return ["".join(pieces[i : i + step]) for i in range(0, len(pieces), step)]


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


def _stats(prompt_count: int, eval_count: int, started: float) -> dict[str, int]:
    # Invented but plausible timings (~80 tokens/s) so clients can compute rates.
    load, prompt_eval, evaluation = 2_345_678, prompt_count * 250_000, eval_count * 12_500_000
    spent = int((time.monotonic() - started) * 1e9)
    return {
        "total_duration": load + prompt_eval + evaluation + spent,
        "load_duration": load,
        "prompt_eval_count": prompt_count,
        "prompt_eval_duration": prompt_eval,
        "eval_count": eval_count,
        "eval_duration": evaluation,
    }


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


class FakeOllama:
    """An Ollama look-alike on a real socket: start it, aim a client at .url, inspect .requests."""

    # Ollama 0.5.x wording; newer releases say "model 'NAME' not found".
    not_found_message = 'model "{name}" not found, try pulling it first'

    def __init__(
        self,
        host: str = "127.0.0.1",
        port: int = 0,
        models: Iterable[str] = DEFAULT_MODELS,
        version: str = "0.5.7",
    ) -> None:
        self.host = host
        self.models: list[str] = list(models)
        self.version = version
        self.reply: str | None = None
        self._port = port
        self._initial_models = list(self.models)
        self._lock = threading.Lock()
        self._arrived = threading.Condition(self._lock)
        self._requests: list[RecordedRequest] = []
        self._faults: list[_Fault] = []
        self._connections: set[socket.socket] = set()
        self._stopping = threading.Event()  # wakes slow and hung handlers on stop()
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None

    @property
    def port(self) -> int:
        return self._server.server_address[1] if self._server else self._port

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}"

    def start(self) -> FakeOllama:
        """Bind and serve in a daemon thread. A restart after stop() reuses the same port."""
        if self._server is None:
            self._stopping.clear()
            self._server = _Server((self.host, self._port), self)
            self._port = self._server.server_address[1]
            self._thread = threading.Thread(
                target=self._server.serve_forever,
                kwargs={"poll_interval": 0.05},  # shutdown() waits up to one poll interval
                name=f"fake-ollama-{self._port}",
                daemon=True,
            )
            self._thread.start()
        return self

    def stop(self) -> None:
        """Stop serving and drop every open connection, including hung ones."""
        server, self._server = self._server, None
        if server is None:
            return
        self._stopping.set()
        server.shutdown()
        server.server_close()
        # Idle keep-alive handlers block in readline(); shutting their sockets ends them,
        # and keeps pooled client connections from talking to a stopped server.
        with self._lock:
            for conn in self._connections:
                try:
                    conn.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass
            self._connections.clear()
        if self._thread is not None:
            self._thread.join(timeout=2)

    def __enter__(self) -> FakeOllama:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    @property
    def requests(self) -> list[RecordedRequest]:
        """A snapshot of the requests received so far, oldest first."""
        with self._lock:
            return list(self._requests)

    def wait_for_requests(self, count: int, timeout: float = 2.0) -> bool:
        """Block until at least count requests have arrived; False on timeout."""
        with self._arrived:
            return self._arrived.wait_for(lambda: len(self._requests) >= count, timeout)

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
        """Forget recorded requests and faults."""
        with self._lock:
            self._requests.clear()
            self._faults.clear()

    def reset(self) -> None:
        """clear(), and also restore .reply and .models to their initial state."""
        self.clear()
        self.reply = None
        self.models[:] = self._initial_models

    # -- called from handler threads --

    def _record(self, request: RecordedRequest) -> None:
        with self._arrived:
            self._requests.append(request)
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

    def _route(self, method: str, path: str, raw: bytes, started: float) -> _Reply:
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
        if path == "/api/show":
            return self._show(raw)
        return self._complete(path == "/api/chat", raw, started)

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

    def _complete(self, chat: bool, raw: bytes, started: float) -> _Reply:
        body, problem = _parse_body(raw, "api.ChatRequest" if chat else "api.GenerateRequest")
        if problem:
            return problem
        model = body.get("model")
        if not isinstance(model, str) or not model.strip():
            return _error(400, "model is required")
        if self._find_model(model) is None:
            return _error(404, self.not_found_message.format(name=model))

        def frame(piece: str, done: bool) -> dict[str, Any]:
            out: dict[str, Any] = {"model": model, "created_at": _now()}
            if chat:
                out["message"] = {"role": "assistant", "content": piece}
            else:
                out["response"] = piece
            out["done"] = done
            return out

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
        eval_count = max(1, _words(content))

        stream = body.get("stream") is not False  # Ollama streams unless told "stream": false
        lines = [_dumps(frame(piece, False)) + b"\n" for piece in _chunks(content)] if stream else []
        final = frame("" if stream else content, True)
        final["done_reason"] = "stop"
        if not chat and not body.get("raw"):
            final["context"] = list(range(1, prompt_count + eval_count + 1))
        final.update(_stats(prompt_count, eval_count, started))
        if not stream:
            return _json_reply(200, final)
        return _Reply(200, NDJSON_TYPE, lines=[*lines, _dumps(final) + b"\n"])


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True  # streamed lines must leave at once, not wait for ACKs
    server: _Server

    def setup(self) -> None:
        super().setup()
        with self.server.fake._lock:
            self.server.fake._connections.add(self.connection)

    def finish(self) -> None:
        with self.server.fake._lock:
            self.server.fake._connections.discard(self.connection)
        super().finish()

    def log_message(self, format: str, *args: Any) -> None:
        pass  # a benchmark would drown in access logs

    def send_response(self, code: int, message: str | None = None) -> None:
        # Ollama (Go) sends no Server header; leave it out so "who answered" checks are honest.
        self.send_response_only(code, message)
        self.send_header("Date", self.date_time_string())

    def do_GET(self) -> None:
        fake = self.server.fake
        started = time.monotonic()
        raw = self._read_body()
        url = urlsplit(self.path)
        try:
            parsed = json.loads(raw) if raw else None
        except ValueError:
            parsed = None
        headers: dict[str, str] = {}
        for name, value in self.headers.items():
            key = name.lower()
            headers[key] = f"{headers[key]}, {value}" if key in headers else value
        fake._record(RecordedRequest(self.command, url.path, headers, parsed, raw, url.query, self.client_address[:2]))

        fault = fake._take_fault(url.path)
        kind, params = (fault.kind, fault.params) if fault else (None, {})
        if kind == "reset":
            return self._reset()
        if kind == "hang":
            self._hang(params.get("limit", HANG_LIMIT))
            self.close_connection = True
            return
        if kind == "slow" and fake._stopping.wait(params.get("delay", 1.0)):
            self.close_connection = True
            return
        if kind == "status":
            reply = _error(params.get("status", 500), params.get("message", RUNNER_CRASH))
        elif kind == "malformed":
            body = params.get("body", b"<html>oops")
            reply = _Reply(200, JSON_TYPE, body.encode() if isinstance(body, str) else body)
        elif kind == "not_ollama":
            reply = _not_ollama(url.path)
        else:
            reply = fake._route(self.command, url.path, raw, started)
        self._send(reply, cut_off=kind == "cut_off", chunk_delay=params.get("chunk_delay", 0.0))

    do_HEAD = do_POST = do_PUT = do_DELETE = do_PATCH = do_OPTIONS = do_GET

    def _read_body(self) -> bytes:
        if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
            parts = []
            while size := int(self.rfile.readline().split(b";")[0].strip() or b"0", 16):
                parts.append(self.rfile.read(size))
                self.rfile.readline()
            while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                pass  # trailers
            return b"".join(parts)
        length = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(length) if length > 0 else b""

    def _send(self, reply: _Reply, *, cut_off: bool = False, chunk_delay: float = 0.0) -> None:
        self.send_response(reply.status)
        self.send_header("Content-Type", reply.content_type)
        for name, value in reply.headers.items():
            self.send_header(name, value)
        if reply.lines is None:
            body = reply.body
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(body[: len(body) // 2] if cut_off else body)
        else:
            self.send_header("Transfer-Encoding", "chunked")
            self.end_headers()
            lines = _truncate_stream(reply.lines) if cut_off else reply.lines
            for i, line in enumerate(lines):
                if i and chunk_delay and self.server.fake._stopping.wait(chunk_delay):
                    cut_off = True
                    break
                self.wfile.write(b"%x\r\n%s\r\n" % (len(line), line))
            if not cut_off:
                self.wfile.write(b"0\r\n\r\n")
        if cut_off:
            self.close_connection = True  # the body is short; only closing can end it

    def _hang(self, limit: float) -> None:
        stopping = self.server.fake._stopping
        deadline = time.monotonic() + limit
        while not stopping.is_set() and time.monotonic() < deadline:
            readable, _, _ = select.select([self.connection], [], [], 0.05)
            if readable:
                try:
                    if not self.connection.recv(1, socket.MSG_PEEK):
                        return  # the client gave up
                except OSError:
                    return
                stopping.wait(0.05)  # pipelined bytes keep it readable; don't spin

    def _reset(self) -> None:
        # Linger 0 makes close() send RST rather than FIN: the client sees a reset, not an EOF.
        self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        self.close_connection = True
        self.rfile.close()  # the makefile reference would otherwise defer the real close
        self.connection.close()


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    block_on_close = False  # stop() must not wait for idle keep-alive connections
    request_queue_size = 128  # the benchmark opens many connections at once

    def __init__(self, address: tuple[str, int], fake: FakeOllama) -> None:
        self.fake = fake
        self.address_family = socket.AF_INET6 if ":" in address[0] else socket.AF_INET
        super().__init__(address, _Handler)

    def handle_error(self, request: Any, client_address: Any) -> None:
        # Clients hanging up mid-reply is routine here; anything else is a bug in the fake.
        if not isinstance(sys.exc_info()[1], OSError):
            super().handle_error(request, client_address)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Serve a fake Ollama until interrupted.")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=11434)
    parser.add_argument("--model", action="append", dest="models", help="model to offer (repeatable)")
    parser.add_argument("--ollama-version", default="0.5.7")
    parser.add_argument("--reply", help="the content every chat/generate reply carries (default: an echo)")
    args = parser.parse_args(argv)
    fake = FakeOllama(args.host, args.port, args.models or DEFAULT_MODELS, args.ollama_version)
    fake.reply = args.reply
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
