"""Ollama over HTTP (POST /api/chat): the wire protocol and the mapping of its failures to gateway errors."""

import json
import time

import httpx

from gateway_project.redaction import mask_url
from llm.errors import (InvalidRequest, ModelFailed, ModelNotFound, UpstreamError, UpstreamTimeout,
                        UpstreamUnavailable)

from .base import GenerationRequest, ProviderReply


class OllamaProvider:
    name = "ollama"

    def __init__(self, *, base_url: str, timeout: float, connect_timeout: float):
        self.base_url = base_url.rstrip("/")
        self.shown_url = mask_url(self.base_url)
        self.timeout = timeout
        self.connect_timeout = connect_timeout
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
        response = self._post("/api/chat", body)
        upstream_ms = round((time.perf_counter() - started) * 1000, 2)
        reply = self._parse(response, request.model)
        return ProviderReply(
            content=reply["message"]["content"],
            model=reply.get("model") or request.model,
            prompt_tokens=reply.get("prompt_eval_count"),
            completion_tokens=reply.get("eval_count"),
            upstream_ms=upstream_ms,
        )

    def _post(self, path: str, body: dict) -> httpx.Response:
        where = f"Ollama at {self.shown_url}"
        try:
            return self.client.post(path, json=body)
        except httpx.ConnectTimeout:
            raise UpstreamUnavailable(f"No connection to {where} within {self.connect_timeout:g}s.") from None
        except httpx.ConnectError as exc:
            raise UpstreamUnavailable(f"Cannot connect to {where}: {_reason(exc)}.") from None
        except httpx.TimeoutException:
            raise UpstreamTimeout(f"{where} did not reply within {self.timeout:g}s (OLLAMA_TIMEOUT).") from None
        except httpx.TransportError as exc:
            raise UpstreamError(f"The connection to {where} broke off mid-reply: {_reason(exc)}.") from None

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
