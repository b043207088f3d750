"""Ollama over HTTP (POST /api/chat): the wire protocol and the mapping of its failures to gateway errors."""

import json
import random
import time

import httpx

from gateway_project.redaction import mask_url
from llm.errors import (GatewayError, InvalidRequest, ModelFailed, ModelNotFound, UpstreamError, UpstreamTimeout,
                        UpstreamUnavailable)

from .base import GenerationRequest, ProviderReply

# Failures worth another try: Ollama could not be reached, or dropped the connection before a full reply (a
# restarting server, a stale keep-alive connection). A read timeout is not among them: it has already waited
# OLLAMA_TIMEOUT, and trying again would make the client wait that long once more.
RETRIED_TRANSPORT_ERRORS = (httpx.ConnectError, httpx.ConnectTimeout, httpx.RemoteProtocolError, httpx.ReadError,
                            httpx.WriteError)
# Busy (429) or failing (5xx): worth another try. Other 4xx say the request itself is wrong: never retried.
RETRIED_STATUS_MIN = 500
TOO_MANY_REQUESTS = 429
# No single pause between tries is longer than this, whatever the backoff or a Retry-After header say.
MAX_BACKOFF_SECONDS = 10.0


class OllamaProvider:
    name = "ollama"

    def __init__(self, *, base_url: str, timeout: float, connect_timeout: float, max_retries: int = 0,
                 retry_backoff: float = 0.5):
        self.base_url = base_url.rstrip("/")
        self.shown_url = mask_url(self.base_url)
        self.timeout = timeout
        self.connect_timeout = connect_timeout
        self.max_retries = max_retries
        self.retry_backoff = retry_backoff
        # One pooled client per process: a client per request would pay a new TCP (and TLS) handshake each time.
        # trust_env=False: an HTTP_PROXY meant for the internet must not silently reroute calls to a LAN Ollama.
        self.client = httpx.Client(
            base_url=self.base_url,
            timeout=httpx.Timeout(timeout, connect=connect_timeout, pool=connect_timeout),
            limits=httpx.Limits(max_connections=100, max_keepalive_connections=20, keepalive_expiry=30),
            trust_env=False,
            headers={"User-Agent": "llm-gateway"},
        )

    def generate(self, request: GenerationRequest) -> ProviderReply:
        body = {"model": request.model, "messages": request.messages, "stream": False}
        if request.mode == "json":
            # A schema makes Ollama constrain the reply to it (structured outputs); "json" just to JSON.
            body["format"] = request.output_schema or "json"
        if request.options:
            body["options"] = request.options
        started = time.perf_counter()
        response, attempts = self._post("/api/chat", body)
        upstream_ms = round((time.perf_counter() - started) * 1000, 2)
        try:
            reply = self._parse(response, request.model)
        except GatewayError as exc:
            exc.attempts = attempts
            if attempts > 1:
                exc.message += f" ({attempts} attempts)"
            raise
        return ProviderReply(
            content=reply["message"]["content"],
            model=reply.get("model") or request.model,
            prompt_tokens=reply.get("prompt_eval_count"),
            completion_tokens=reply.get("eval_count"),
            upstream_ms=upstream_ms,
            attempts=attempts,
        )

    def _post(self, path: str, body: dict) -> tuple[httpx.Response, int]:
        """POST, trying again (at most max_retries times) after failures that may pass; the response and tries."""
        attempt = 0
        while True:
            attempt += 1
            retries_left = attempt <= self.max_retries
            try:
                response = self.client.post(path, json=body)
            except httpx.TransportError as exc:
                if retries_left and isinstance(exc, RETRIED_TRANSPORT_ERRORS):
                    self._pause(attempt)
                    continue
                error = self._transport_error(exc)
                error.attempts = attempt
                if attempt > 1:
                    error.message += f" ({attempt} attempts)"
                raise error from None
            busy = response.status_code == TOO_MANY_REQUESTS or response.status_code >= RETRIED_STATUS_MIN
            if retries_left and busy:
                self._pause(attempt, retry_after=response.headers.get("Retry-After"))
                continue
            return response, attempt

    def _pause(self, attempt: int, *, retry_after: str | None = None) -> None:
        """Exponential backoff with jitter, so that gateway threads retrying together do not arrive together."""
        delay = min(MAX_BACKOFF_SECONDS, self.retry_backoff * 2 ** (attempt - 1))
        delay = random.uniform(delay / 2, delay)
        if retry_after and retry_after.strip().isdigit():
            delay = max(delay, min(MAX_BACKOFF_SECONDS, float(retry_after)))
        time.sleep(delay)

    def _transport_error(self, exc: httpx.TransportError) -> GatewayError:
        where = f"Ollama at {self.shown_url}"
        if isinstance(exc, httpx.ConnectTimeout):
            return UpstreamUnavailable(f"No connection to {where} within {self.connect_timeout:g}s.")
        if isinstance(exc, httpx.ConnectError):
            return UpstreamUnavailable(f"Cannot connect to {where}: {_reason(exc)}.")
        if isinstance(exc, httpx.TimeoutException):
            return UpstreamTimeout(f"{where} did not reply within {self.timeout:g}s (OLLAMA_TIMEOUT).")
        return UpstreamError(f"The connection to {where} broke off mid-reply: {_reason(exc)}.")

    def _parse(self, response: httpx.Response, model: str) -> dict:
        where = f"Ollama at {self.shown_url}"
        try:
            data = response.json()
        except (json.JSONDecodeError, UnicodeDecodeError):
            data = None
        error = data.get("error") if isinstance(data, dict) else None
        if response.status_code == 404 and isinstance(error, str) and "not found" in error:
            raise ModelNotFound(
                f"Model {model!r} is not available on {where} ({error}). Pull it there with: ollama pull {model}"
            )
        if response.status_code == 400 and isinstance(error, str):
            raise InvalidRequest(f"{where} rejected the request: {error}")
        # Ollama answers 500 with its error when the model cannot load or its runner dies; 503 is a full queue.
        if response.status_code == 500 and isinstance(error, str):
            raise ModelFailed(f"{where} could not run model {model!r}: HTTP {response.status_code}: {error}")
        if response.status_code != 200:
            detail = error if isinstance(error, str) else _excerpt(response.text)
            if response.status_code == TOO_MANY_REQUESTS:
                raise UpstreamUnavailable(f"{where} is busy (HTTP 429): {detail}")
            raise UpstreamError(f"{where} answered HTTP {response.status_code}: {detail}")
        message = data.get("message") if isinstance(data, dict) else None
        if not isinstance(message, dict) or not isinstance(message.get("content"), str):
            raise UpstreamError(f"{where} sent a reply that is not Ollama's chat JSON: {_excerpt(response.text)}")
        return data


def _reason(exc: Exception) -> str:
    return str(exc) or exc.__class__.__name__


def _excerpt(text: str, limit: int = 200) -> str:
    text = " ".join(text.split())
    return (text[:limit] + "…") if len(text) > limit else (text or "(empty body)")
