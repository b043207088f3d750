"""Ollama over HTTP (POST /api/chat, /api/generate, /api/embed, /api/embeddings): the wire protocol and the mapping of its failures to
gateway errors. The one module that knows Ollama's JSON: the neutral request becomes a body here, and Ollama's
replies and stream chunks become neutral replies and typed deltas.

Each error has two messages: the client's names "Ollama" and what went wrong, never the server's address nor what
it answered (an error text or a page may quote internal paths and hosts); the staff message, for the audit row
and the log, adds both.
"""

from __future__ import annotations

import asyncio
import json
from array import array
import logging
import random
import re
import time
import weakref
from dataclasses import dataclass
from typing import Callable

import httpx
import orjson

from gateway_project.conditions import Conditions
from gateway_project.redaction import mask_url
from llm import content_hmac
from llm.errors import (GatewayError, InvalidRequest, ModelFailed, ModelNotFound, UpstreamError, UpstreamTimeout,
                        UpstreamUnavailable)

from .base import (Delta, EmbeddingReply, EmbeddingRequest, GenerationRequest, Message, ProviderReply, TextDelta,
                   ThinkingDelta, ToolCall, ToolCallsDelta)

logger = logging.getLogger("llm.providers")

# Failures worth another try: Ollama could not be reached, or dropped the connection before a full reply (a
# restarting server, a stale keep-alive connection). A read timeout is not among them: it has already waited
# OLLAMA_TIMEOUT, and trying again would make the client wait that long once more.
RETRIED_TRANSPORT_ERRORS = (httpx.ConnectError, httpx.ConnectTimeout, httpx.RemoteProtocolError, httpx.ReadError,
                            httpx.WriteError, httpx.PoolTimeout)
# What says the server (or the way to it) is in trouble, as opposed to a request it refused or a model it lacks.
SERVER_FAILURES = ("upstream_unavailable", "upstream_timeout", "upstream_error")
# Busy (429) or failing (5xx): worth another try. Other 4xx say the request itself is wrong: never retried.
RETRIED_STATUS_MIN = 500
TOO_MANY_REQUESTS = 429
# Ollama's 400 for a capability the model lacks ("registry.ollama.ai/library/phi:2.7b does not support tools"):
# it names the model the client asked for and nothing of the server, and tells the client what to change.
CAPABILITY_ERROR = re.compile(r"""[\w.:/@"'+-]{1,300} does not support [a-z ]{1,40}""")
# Ollama's 400s for an embedding input longer than the model's context (with "truncate": false, or past what it can
# truncate): they say what the client must change and nothing of the server.
CONTEXT_ERRORS = ("the input length exceeds the context length", "input after truncation exceeds maximum context length",
                  "input exceeds maximum context length and cannot be truncated further")
# An embeddings reply larger than this is parsed off the event loop (a batch of long vectors is megabytes of JSON).
EMBED_PARSE_INLINE_BYTES = 256 * 1024
# No single pause between tries is longer than this, whatever the backoff or a Retry-After header say.
MAX_BACKOFF_SECONDS = 10.0
# Connections per pooled client. httpcore's pool checks every connection it holds on every request (a poll() per
# idle one): one client with 500 keep-alive connections spent most of the event loop on that, and one keeping
# fewer alive than were in flight paid a new TCP connection per call. Calls spread over clients of this size.
SHARD_CONNECTIONS = 32


class ClientShards:
    """Pooled clients of SHARD_CONNECTIONS each, filled in order: a call leases the first one with room, so that a
    quiet gateway uses one client and one keep-alive connection, and a busy one as many clients as it needs."""

    def __init__(self, new_client: Callable[[], httpx.AsyncClient]):
        self.new_client = new_client
        self.clients: list[httpx.AsyncClient] = []
        self.leased: list[int] = []

    def lease(self) -> tuple[httpx.AsyncClient, Callable[[], None]]:
        index = next((i for i, count in enumerate(self.leased) if count < SHARD_CONNECTIONS), None)
        if index is None:
            index = len(self.clients)
            self.clients.append(self.new_client())
            self.leased.append(0)
        self.leased[index] += 1
        released = False

        def release() -> None:
            nonlocal released
            if not released:
                released = True
                self.leased[index] -= 1

        return self.clients[index], release

    def discard(self, client: httpx.AsyncClient) -> None:
        """Replace a client whose pool has lost connection slots to cancelled requests (encode/httpcore#1093: only
        a new pool recovers). Calls still running on it finish there."""
        if client in self.clients:
            self.clients[self.clients.index(client)] = self.new_client()


def _nothing() -> None:
    pass


class OllamaProvider:
    name = "ollama"

    def __init__(self, *, base_url: str, timeout: float, connect_timeout: float, max_retries: int = 0,
                 retry_backoff: float = 0.5):
        self.base_url = base_url.rstrip("/")
        self.shown_url = mask_url(self.base_url)
        # How staff messages name the server; clients only ever read "Ollama".
        self.where = f"Ollama at {self.shown_url}"
        # The server failing (by error type) is logged when it begins and when it is over, not per request.
        self.failing = Conditions(logger, f"ollama {self.shown_url}")
        self.timeout = timeout
        self.connect_timeout = connect_timeout
        self.max_retries = max_retries
        self.retry_backoff = retry_backoff
        self._clients: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()
        # Told of every failure and answer of this server (llm.servers: its health, per process), if set.
        self.observer = None

    def _shards(self) -> ClientShards:
        """The running event loop's clients: one set per worker process in production.

        A client per request would pay a new TCP (and TLS) handshake each time; the connections belong to the loop
        that opened them, so a second loop (a test's) gets clients of its own.
        """
        loop = asyncio.get_running_loop()
        shards = self._clients.get(loop)
        if shards is None:
            shards = self._clients[loop] = ClientShards(self._new_client)
        return shards

    def _new_client(self) -> httpx.AsyncClient:
        return httpx.AsyncClient(
            base_url=self.base_url,
            timeout=httpx.Timeout(self.timeout, connect=self.connect_timeout, pool=self.connect_timeout),
            # The gateway's own cap (UPSTREAM_MAX_IN_FLIGHT) decides how many calls run at once; each client holds
            # at most SHARD_CONNECTIONS, all kept alive for the next call.
            limits=httpx.Limits(max_connections=SHARD_CONNECTIONS, max_keepalive_connections=SHARD_CONNECTIONS,
                                keepalive_expiry=30),
            # trust_env=False: an HTTP_PROXY meant for the internet must not silently reroute calls to a LAN Ollama.
            trust_env=False,
            headers={"User-Agent": "llm-gateway"},
        )

    async def generate(self, request: GenerationRequest) -> ProviderReply:
        """A chat reply (POST /api/chat), not streamed."""
        return await self._noted(self._reply(CHAT, _chat_body(request, stream=False), request.model))

    async def stream(self, request: GenerationRequest) -> OllamaStream:
        """Start a streamed chat reply and wait for its first delta; errors until then are raised here."""
        return await self._noted(self._stream(CHAT, _chat_body(request, stream=True), request.model))

    async def complete(self, request: GenerationRequest, *, stream: bool = False) -> ProviderReply | OllamaStream:
        """A prompt completion (POST /api/generate: suffix, raw, images), whole or, with `stream`, as a stream
        opened at its first delta."""
        body = _generate_body(request, stream=stream)
        if stream:
            return await self._noted(self._stream(GENERATE, body, request.model))
        return await self._noted(self._reply(GENERATE, body, request.model))

    async def embed(self, request: EmbeddingRequest) -> EmbeddingReply:
        """Vectors for the request's texts: one POST /api/embed for them all (or /api/embeddings for `legacy`)."""
        return await self._noted(self._embed(request))

    async def _embed(self, request: EmbeddingRequest) -> EmbeddingReply:
        started = time.perf_counter()
        call = EMBEDDINGS if request.legacy else EMBED
        response, attempts, _ = await self._send(_embed_body(request), stream=False, path=call.path)
        try:
            if response.status_code != 200:
                self._parse(response, request.model, call)  # raises the error Ollama's answer stands for
            content = response.content
            if len(content) > EMBED_PARSE_INLINE_BYTES:
                reply = await asyncio.to_thread(_embed_reply, content, request.legacy)
            else:
                reply = _embed_reply(content, request.legacy)
            if reply is None or (not request.legacy and len(reply["vectors"]) != len(request.inputs)):
                raise UpstreamError(f"Ollama sent a reply that is not Ollama's {call.name} JSON.",
                                    staff_message=f"{self.where} sent a reply that is not Ollama's {call.name} JSON: "
                                                  f"{_excerpt(content[:400].decode('utf-8', 'replace'))}")
        except GatewayError as exc:
            raise _with_attempts(exc, attempts)
        return EmbeddingReply(vectors=reply["vectors"], model=reply["model"] or request.model,
                              prompt_tokens=reply["prompt_tokens"],
                              upstream_ms=round((time.perf_counter() - started) * 1000, 2), attempts=attempts,
                              durations=reply["durations"])

    async def _noted(self, call):
        try:
            answer = await call
        except GatewayError as exc:
            self.note_failure(exc)
            raise
        self.note_answer()
        return answer

    async def catalog(self, method: str, path: str, body: dict | None = None) -> dict:
        """One of Ollama's read-only endpoints (/api/tags, /api/show, /api/ps, /api/version) as JSON, tried once.

        ModelNotFound for Ollama's 404 (/api/show of a model it lacks); the transport's errors as for a generation.
        """
        try:
            data = await self._catalog(method, path, body)
        except GatewayError as exc:
            self.note_failure(exc)
            raise
        self.note_answer()
        return data

    def note_failure(self, exc: GatewayError) -> None:
        """A failure of the server's (not of a request or a missing model): logged once, until it is over."""
        if exc.type in SERVER_FAILURES:
            # Not what Ollama answered, for a metadata-only consumer's request: it may quote the content.
            said = exc.message if content_hmac.withheld_here() else exc.staff_message
            self.failing[exc.type].occurred(f"Ollama requests are failing ({exc.type}): {said}",
                                            base_url=self.shown_url)
        if self.observer is not None:
            self.observer.failed(exc)

    def note_answer(self) -> None:
        if self.observer is not None:
            self.observer.answered()
        for condition in self.failing.all():
            condition.cleared(f"Ollama answers again ({condition.name.rsplit(':', 1)[-1]} is over)",
                              base_url=self.shown_url)

    async def _reply(self, call: OllamaCall, body: dict, model: str) -> ProviderReply:
        started = time.perf_counter()
        response, attempts, _ = await self._send(body, stream=False, path=call.path)
        try:
            reply = self._parse(response, model, call)
        except GatewayError as exc:
            raise _with_attempts(exc, attempts)
        parts = call.parts(reply)
        return ProviderReply(
            content=parts["content"],
            model=reply.get("model") or model,
            prompt_tokens=reply.get("prompt_eval_count"),
            completion_tokens=reply.get("eval_count"),
            upstream_ms=round((time.perf_counter() - started) * 1000, 2),
            attempts=attempts,
            finish_reason=_done_reason(reply),
            durations=_durations(reply),
            thinking=parts["thinking"],
            tool_calls=_tool_calls(parts["tool_calls"]),
        )

    async def _stream(self, call: OllamaCall, body: dict, model: str) -> OllamaStream:
        started = time.perf_counter()
        response, attempts, release = await self._send(body, stream=True, path=call.path)
        stream = OllamaStream(self, response, model, started, attempts, release, call)
        try:
            if response.status_code != 200:
                await response.aread()
                self._parse(response, model, call)  # raises the error Ollama's answer stands for
            await stream.open()
        except GatewayError as exc:
            await stream.aclose()
            raise _with_attempts(exc, attempts)
        except BaseException:
            await stream.aclose()
            raise
        return stream

    async def _catalog(self, method: str, path: str, body: dict | None = None) -> dict:
        where = self.where
        client, release = self._shards().lease()
        try:
            response = await client.request(method, path, json=body)
        except httpx.TransportError as exc:
            raise self.transport_error(exc) from None
        finally:
            release()
        try:
            data = response.json()
        except ValueError:
            data = None
        if response.status_code == 404 and body is not None:
            raise ModelNotFound(f"Model {body.get('model')!r} not found.",
                                staff_message=f"Model {body.get('model')!r} is not available on {where}.")
        if response.status_code != 200 or not isinstance(data, dict):
            raise UpstreamError(
                f"Ollama answered {path} with HTTP {response.status_code}.",
                staff_message=f"{where} answered {path} with HTTP {response.status_code}: {_excerpt(response.text)}")
        return data

    async def _send(self, body: dict, *, stream: bool,
                    path: str = "/api/chat") -> tuple[httpx.Response, int, Callable[[], None]]:
        """POST to `path`, trying again (at most max_retries times) after failures that may pass.

        Returns the response, the attempts made and the release of the client it came through: at once for a
        read response, once the stream is closed for a streamed one.
        """
        content = _encoded(body)
        headers = {**JSON_CONTENT, "Content-Length": str(len(content))}
        attempt = 0
        while True:
            attempt += 1
            retries_left = attempt <= self.max_retries
            shards = self._shards()
            client, release = shards.lease()
            try:
                response = await client.send(client.build_request("POST", path, content=content, headers=headers),
                                             stream=stream)
            except httpx.TransportError as exc:
                release()
                if isinstance(exc, httpx.PoolTimeout):
                    # Leases keep a client's calls within its pool, so a wait for a pooled connection means the
                    # pool leaked slots; nothing was sent, and a new client is as good as a retry.
                    logger.warning("upstream client pool exhausted by leaked connections; replaced",
                                   extra={"base_url": self.shown_url})
                    shards.discard(client)
                if retries_left and isinstance(exc, RETRIED_TRANSPORT_ERRORS):
                    await self._pause(attempt)
                    continue
                error = self.transport_error(exc)
                # Nothing came back: another server may take the request at once (llm.servers).
                error.failover = isinstance(exc, RETRIED_TRANSPORT_ERRORS)
                raise _with_attempts(error, attempt) from None
            except BaseException:
                release()
                raise
            busy = response.status_code == TOO_MANY_REQUESTS or response.status_code >= RETRIED_STATUS_MIN
            if retries_left and busy:
                await response.aclose()
                release()
                await self._pause(attempt, retry_after=response.headers.get("Retry-After"))
                continue
            if not stream:
                release()
            return response, attempt, release

    async def _pause(self, attempt: int, *, retry_after: str | None = None) -> None:
        """Exponential backoff with jitter, so that requests retrying together do not arrive together."""
        delay = min(MAX_BACKOFF_SECONDS, self.retry_backoff * 2 ** (attempt - 1))
        delay = random.uniform(delay / 2, delay)
        if retry_after and retry_after.strip().isdigit():
            delay = max(delay, min(MAX_BACKOFF_SECONDS, float(retry_after)))
        await asyncio.sleep(delay)

    def transport_error(self, exc: httpx.TransportError, *, mid_stream: bool = False) -> GatewayError:
        where, reason = self.where, _reason(exc)
        if isinstance(exc, httpx.ConnectTimeout):
            return UpstreamUnavailable(f"No connection to Ollama within {self.connect_timeout:g}s.",
                                       staff_message=f"No connection to {where} within {self.connect_timeout:g}s.")
        if isinstance(exc, httpx.ConnectError):
            return UpstreamUnavailable("Cannot connect to Ollama.",
                                       staff_message=f"Cannot connect to {where}: {reason}.")
        if isinstance(exc, httpx.PoolTimeout):
            waited = f"became free within {self.connect_timeout:g}s"
            return UpstreamUnavailable(f"No pooled connection to Ollama {waited}.",
                                       staff_message=f"No pooled connection to {where} {waited}.")
        if isinstance(exc, httpx.TimeoutException):
            if mid_stream:
                late = f"sent nothing for {self.timeout:g}s mid-stream (OLLAMA_TIMEOUT)"
            else:
                late = f"did not reply within {self.timeout:g}s (OLLAMA_TIMEOUT)"
            return UpstreamTimeout(f"Ollama {late}.", staff_message=f"{where} {late}.")
        return UpstreamError("The connection to Ollama broke off mid-reply.",
                             staff_message=f"The connection to {where} broke off mid-reply: {reason}.")

    def _parse(self, response: httpx.Response, model: str, call: OllamaCall) -> dict:
        status = response.status_code
        try:
            data = response.json()
        except (json.JSONDecodeError, UnicodeDecodeError):
            data = None
        error = data.get("error") if isinstance(data, dict) else None
        try:
            self._refuse(status, error, data, response, model, call)
        except GatewayError as exc:
            exc.upstream_status = status
            # Busy or failing as a whole (502, 503, 429) or refusing the gateway itself (401, 403): another server
            # may take the request at once (llm.servers).
            exc.failover = status in (401, 403, 429, 502, 503)
            exc.misconfigured = status in (401, 403)
            raise
        return data

    def _refuse(self, status: int, error, data, response: httpx.Response, model: str, call: OllamaCall) -> None:
        """Raise the error a non-200 (or unusable 200) answer stands for."""
        where = self.where
        if status == 404 and isinstance(error, str) and "not found" in error:
            pull = f"Pull it there with: ollama pull {model}"
            raise ModelNotFound(f"Model {model!r} is not available on Ollama. {pull}",
                                staff_message=f"Model {model!r} is not available on {where} ({error}). {pull}")
        if status == 400 and isinstance(error, str):
            if CAPABILITY_ERROR.fullmatch(error) or error.strip() in CONTEXT_ERRORS:
                raise InvalidRequest(f"Ollama rejected the request: {error}.",
                                     staff_message=f"{where} rejected the request: {error}")
            raise InvalidRequest("Ollama rejected the request; its reason is in the gateway's audit log.",
                                 staff_message=f"{where} rejected the request: {error}")
        # Ollama answers 500 with its error when the model cannot load or its runner dies; 503 is a full queue.
        # Its error text may name files on the server (a model blob's path), so the client gets none of it.
        if status == 500 and isinstance(error, str):
            raise ModelFailed(f"Ollama could not run model {model!r} (HTTP 500).",
                              staff_message=f"{where} could not run model {model!r}: HTTP {status}: {error}")
        if status != 200:
            detail = error if isinstance(error, str) else _excerpt(response.text)
            if status == TOO_MANY_REQUESTS:
                raise UpstreamUnavailable("Ollama is busy (HTTP 429).",
                                          staff_message=f"{where} is busy (HTTP 429): {detail}")
            raise UpstreamError(f"Ollama answered HTTP {status}.",
                                staff_message=f"{where} answered HTTP {status}: {detail}")
        if not isinstance(data, dict) or call.parts(data) is None:
            raise UpstreamError(f"Ollama sent a reply that is not Ollama's {call.name} JSON.",
                                staff_message=f"{where} sent a reply that is not Ollama's {call.name} JSON: "
                                              f"{_excerpt(response.text)}")


class OllamaStream:
    """Ollama's NDJSON stream: one line per piece (`message` of /api/chat, `response` and `thinking` of
    /api/generate), then a done line with the counts. Each line becomes the deltas it carries, in the order
    thinking, text, tool calls; a line's tool calls stay together in one delta."""

    def __init__(self, provider: OllamaProvider, response: httpx.Response, model: str, started: float,
                 attempts: int, release: Callable[[], None], call: OllamaCall):
        self.provider = provider
        self.response = response
        self._release = release
        self.call = call
        self.model = model
        self.started = started
        self.attempts = attempts
        self.first: Delta | None = None
        self.reply: ProviderReply | None = None
        self.deltas_received = 0
        self._lines = response.aiter_lines()
        self._text: list[str] = []
        self._thinking: list[str] = []
        self._calls: list[ToolCall] = []
        self._pending: list[Delta] = []  # deltas of a line already read, not yet handed out
        self._done = False

    async def open(self) -> None:
        """Read up to the first delta of any kind (or the end of an empty reply)."""
        while not self._done and not self._pending:
            self._pending = await self._next_deltas(before_first=True)
        if self._pending:
            self.first = self._pending.pop(0)

    async def __aiter__(self):
        while True:
            while self._pending:
                yield self._pending.pop(0)
            if self._done:
                return
            try:
                self._pending = await self._next_deltas(before_first=False)
            except GatewayError as exc:
                self.provider.note_failure(exc)
                raise

    async def aclose(self) -> None:
        """Close the upstream response: when the client went away, Ollama sees the request cancelled."""
        try:
            await self.response.aclose()
        finally:
            release, self._release = self._release, _nothing
            release()

    async def _next_deltas(self, *, before_first: bool) -> list[Delta]:
        where = self.provider.where
        try:
            line = await anext(self._lines)
        except StopAsyncIteration:
            self._done = True
            error = UpstreamError("The stream from Ollama ended before its final chunk.",
                                  staff_message=f"The stream from {where} ended before its final chunk.")
            error.failover = before_first  # nothing sent to the client yet: another server may take it
            raise error from None
        except httpx.TransportError as exc:
            self._done = True
            error = self.provider.transport_error(exc, mid_stream=not before_first)
            error.failover = before_first and isinstance(exc, RETRIED_TRANSPORT_ERRORS)
            raise error from None
        if not line.strip():
            return []
        try:
            chunk = json.loads(line)
        except ValueError:
            chunk = None
        parts = self.call.parts(chunk) if isinstance(chunk, dict) else None
        if isinstance(chunk, dict) and "error" in chunk:
            self._done = True
            error = _excerpt(chunk["error"] if isinstance(chunk["error"], str) else json.dumps(chunk["error"]), 500)
            if before_first:
                raise ModelFailed(f"Ollama could not run model {self.model!r}.",
                                  staff_message=f"{where} could not run model {self.model!r}: {error}")
            raise UpstreamError("Ollama reported an error mid-stream.",
                                staff_message=f"{where} reported an error mid-stream: {error}")
        if parts is None:
            self._done = True
            raise UpstreamError(f"Ollama sent a stream line that is not Ollama's {self.call.name} JSON.",
                                staff_message=f"{where} sent a stream line that is not Ollama's {self.call.name} "
                                              f"JSON: {_excerpt(line)}")
        deltas: list[Delta] = []
        if parts["thinking"]:
            self._thinking.append(parts["thinking"])
            deltas.append(ThinkingDelta(parts["thinking"]))
        if parts["content"]:
            self._text.append(parts["content"])
            deltas.append(TextDelta(parts["content"]))
        calls = _tool_calls(parts["tool_calls"])
        if calls:
            self._calls.extend(calls)
            deltas.append(ToolCallsDelta(calls))
        self.deltas_received += len(deltas)
        if chunk.get("done"):
            self._done = True
            self.reply = ProviderReply(
                content="".join(self._text),
                model=chunk.get("model") or self.model,
                prompt_tokens=chunk.get("prompt_eval_count"),
                completion_tokens=chunk.get("eval_count"),
                upstream_ms=round((time.perf_counter() - self.started) * 1000, 2),
                attempts=self.attempts,
                finish_reason=_done_reason(chunk),
                durations=_durations(chunk),
                thinking="".join(self._thinking),
                tool_calls=tuple(self._calls),
            )
        return deltas


@dataclass(frozen=True)
class OllamaCall:
    """One of Ollama's generation endpoints: its path, and where its replies (and stream lines) carry the text,
    the thinking and the tool calls."""

    name: str
    path: str
    parts: Callable[[dict], dict | None]  # None: not this endpoint's JSON


def _chat_parts(reply: dict) -> dict | None:
    message = reply.get("message")
    if not isinstance(message, dict) or not isinstance(message.get("content", ""), str):
        return None
    return {"content": message.get("content") or "", "thinking": _text(message.get("thinking")),
            "tool_calls": message.get("tool_calls")}


def _generate_parts(reply: dict) -> dict | None:
    if not isinstance(reply.get("response", ""), str):
        return None
    return {"content": reply.get("response") or "", "thinking": _text(reply.get("thinking")),
            "tool_calls": reply.get("tool_calls")}


def _embed_parts(reply: dict) -> dict | None:
    return reply if isinstance(reply.get("embeddings", reply.get("embedding")), list) else None


CHAT = OllamaCall("chat", "/api/chat", _chat_parts)
EMBED = OllamaCall("embed", "/api/embed", _embed_parts)
EMBEDDINGS = OllamaCall("embeddings", "/api/embeddings", _embed_parts)
GENERATE = OllamaCall("generate", "/api/generate", _generate_parts)


def _text(value) -> str:
    return value if isinstance(value, str) else ""


def _tool_calls(calls) -> tuple[ToolCall, ...]:
    """Ollama's tool calls as neutral ones, each keeping the call exactly as Ollama sent it."""
    if not isinstance(calls, list):
        return ()
    neutral = []
    for call in calls:
        if not isinstance(call, dict):
            continue
        function = call.get("function") if isinstance(call.get("function"), dict) else {}
        arguments = function.get("arguments")
        neutral.append(ToolCall(name=_text(function.get("name")),
                                arguments=arguments if isinstance(arguments, dict) else {},
                                id=_text(call.get("id")), raw=call))
    return tuple(neutral)


JSON_CONTENT = {"Content-Type": "application/json"}


# A large image's base64 goes out in slices of this size: each is one short copy (h11 joins what it sends).
SPLICED_SLICE = 256 * 1024


class SplicedBody:
    """A request body in parts, a large image's base64 (a memoryview of the client's body, see llm.large_bodies)
    among them: encoding or copying a 20 MiB string would hold the event loop for tens of milliseconds. It can be
    sent again, for a retry."""

    def __init__(self, parts: list):
        self.parts = parts

    def __len__(self) -> int:
        return sum(len(part) for part in self.parts)

    async def __aiter__(self):
        for part in self.parts:
            if isinstance(part, memoryview):
                for start in range(0, len(part), SPLICED_SLICE):
                    yield bytes(part[start:start + SPLICED_SLICE])
            else:
                yield part


def _encoded(body: dict) -> bytes | SplicedBody:
    """The body as JSON; with a large image, as a SplicedBody."""
    spliced: list[memoryview] = []

    def later(value):
        if isinstance(value, memoryview):
            spliced.append(value)
            return f"\x00spliced:{len(spliced) - 1}"
        raise TypeError(f"{type(value).__name__} is not JSON serializable")

    encoded = json.dumps(body, default=later, ensure_ascii=False, separators=(",", ":")).encode()
    if not spliced:
        return encoded
    parts, rest = [], encoded
    for index, data in enumerate(spliced):
        before, _, rest = rest.partition(b'"\\u0000spliced:%d"' % index)
        parts += [before + b'"', data, b'"']
    return SplicedBody([*parts, rest])


def _chat_body(request: GenerationRequest, *, stream: bool) -> dict:
    body = {"model": request.model, "messages": [_wire_message(m) for m in request.messages], "stream": stream}
    if request.tools:
        body["tools"] = [tool.definition for tool in request.tools]
    _common_fields(body, request)
    return body


def _generate_body(request: GenerationRequest, *, stream: bool) -> dict:
    completion = request.completion
    body = {"model": request.model, "prompt": completion.prompt, "stream": stream}
    if completion.system:
        body["system"] = completion.system
    if completion.suffix:
        body["suffix"] = completion.suffix
    if completion.raw:
        body["raw"] = True
    if completion.images:
        body["images"] = [image.data for image in completion.images]
    _common_fields(body, request)
    return body


def _embed_body(request: EmbeddingRequest) -> dict:
    if request.legacy:
        body = {"model": request.model, "prompt": request.inputs[0]}
    else:
        body = {"model": request.model, "input": list(request.inputs)}
        if request.truncate is not None:
            body["truncate"] = request.truncate
        if request.dimensions:
            body["dimensions"] = request.dimensions
    if request.options:
        body["options"] = request.options
    if request.keep_alive is not None:
        body["keep_alive"] = request.keep_alive
    return body


def _embed_reply(content: bytes, legacy: bool) -> dict | None:
    """Ollama's embeddings reply read and checked (a list of lists of numbers), or None if it is not one."""
    try:
        data = orjson.loads(content)  # a batch is tens of thousands of numbers: ~5x faster than json's
    except orjson.JSONDecodeError:
        return None
    if not isinstance(data, dict):
        return None
    vectors = [data.get("embedding")] if legacy else data.get("embeddings")
    if not isinstance(vectors, list) or not all(isinstance(vector, list) for vector in vectors):
        return None
    try:
        for vector in vectors:
            array("d", vector)  # numbers only (checked in C: a batch holds tens of thousands)
    except (TypeError, OverflowError):
        return None
    count = data.get("prompt_eval_count")
    return {"vectors": vectors, "model": _text(data.get("model")), "durations": _durations(data),
            "prompt_tokens": count if type(count) is int else None}


def _common_fields(body: dict, request: GenerationRequest) -> None:
    if request.mode == "json":
        # A schema makes Ollama constrain the reply to it (structured outputs); "json" just to JSON.
        body["format"] = request.output_schema or "json"
    if request.options:
        body["options"] = request.options
    if request.think is not None:
        body["think"] = request.think
    if request.keep_alive is not None:
        body["keep_alive"] = request.keep_alive


def _wire_message(message: Message) -> dict:
    wire = {"role": message.role, "content": message.content}
    if message.thinking:
        wire["thinking"] = message.thinking
    if message.images:
        wire["images"] = [image.data for image in message.images]
    if message.tool_calls:
        wire["tool_calls"] = [_wire_call(call) for call in message.tool_calls]
    if message.tool_name:
        wire["tool_name"] = message.tool_name
    if message.tool_call_id:
        wire["tool_call_id"] = message.tool_call_id
    return wire


def _wire_call(call: ToolCall) -> dict:
    if call.raw is not None:
        return call.raw  # replayed by an Ollama client: as it was sent (id, function.index)
    wire = {"function": {"name": call.name, "arguments": call.arguments}}
    return {"id": call.id, **wire} if call.id else wire


DURATIONS = ("total_duration", "load_duration", "prompt_eval_duration", "eval_duration")


def _durations(reply: dict) -> dict:
    return {name: reply[name] for name in DURATIONS
            if isinstance(reply.get(name), int) and not isinstance(reply.get(name), bool)}


def _done_reason(reply: dict) -> str:
    reason = reply.get("done_reason")
    return reason if isinstance(reason, str) else ""


def _with_attempts(error: GatewayError, attempts: int) -> GatewayError:
    error.attempts = attempts
    if attempts > 1 and "attempts)" not in error.message:
        error.message += f" ({attempts} attempts)"
        error.staff_message += f" ({attempts} attempts)"
    return error


def _reason(exc: Exception) -> str:
    return str(exc) or exc.__class__.__name__


def _excerpt(text: str, limit: int = 200) -> str:
    text = " ".join(text.split())
    return (text[:limit] + "…") if len(text) > limit else (text or "(empty body)")
