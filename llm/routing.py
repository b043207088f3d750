"""Which models a request may use, and trying them in order until one answers with a usable reply.

Fallback rule: the next model is tried only when the failure belongs to the model, not to the server:
- model_not_found (Ollama's 404: the model is not pulled there), and
- ModelFailed (Ollama itself answered 500 with its error: the model would not load or crashed, e.g. out of memory).
A refused connection, a timeout, a busy queue (503) or a garbled reply says the server (or the path to it) is in
trouble: every other model is behind the same server, so falling back would only multiply the wait before the
same error.
"""

from __future__ import annotations

import time
from dataclasses import replace

from llm.errors import GatewayError, InvalidOutput, InvalidRequest, ModelFailed, ModelNotFound
from llm.models import PromptTemplateVersion
from llm.output_schema import read_output
from llm.providers import GenerationRequest, ProviderReply

FALLBACK_ON = (ModelNotFound, ModelFailed)
# An invalid JSON reply is asked for again once on the same model; sampling often gets it right the second time.
OUTPUT_ATTEMPTS = 2


def candidate_models(version: PromptTemplateVersion, requested: str | None) -> list[str]:
    """The models to try in order: the one a request names (if the template allows it), else the chain."""
    if requested is None:
        return version.model_chain()
    allowed = version.allowed_model_names()
    if requested not in allowed:
        template = version.template
        raise InvalidRequest(
            f"Model {requested!r} is not allowed for {template.role}/{template.task}. "
            f"Allowed: {', '.join(allowed)}; or name no model to use {allowed[0]} with its fallbacks.",
            details={"model": [f"Not allowed for this template. Allowed: {', '.join(allowed)}."]},
        )
    # A model the client chose is the one it gets: no silent substitute.
    return [requested]


class Route:
    """One request's way through its candidate models; what it tried stays readable after a failure."""

    def __init__(self, models: list[str]):
        self.models = models
        self.tried: list[dict] = []  # {"model": ..., "outcome": "succeeded" | error type}, one per provider call
        self.upstream_ms = 0.0
        self.last_reply: ProviderReply | None = None

    def run(self, provider, request: GenerationRequest):
        """The first usable (reply, output); raises the GatewayError the client is answered with."""
        failures: list[GatewayError] = []
        for model in self.models:
            try:
                return self._generate(provider, replace(request, model=model))
            except FALLBACK_ON as exc:
                failures.append(exc)
        raise _exhausted(failures, self.tried)

    def _generate(self, provider, request: GenerationRequest):
        for attempt in range(1, OUTPUT_ATTEMPTS + 1):
            reply = self._call(provider, request)
            try:
                output = read_output(reply.content, request.mode, request.output_schema)
            except InvalidOutput as exc:
                self.tried[-1]["outcome"] = exc.type
                if attempt == OUTPUT_ATTEMPTS:
                    raise
                continue
            return reply, output

    def _call(self, provider, request: GenerationRequest) -> ProviderReply:
        entry = {"model": request.model, "outcome": "pending"}
        self.tried.append(entry)
        started = time.perf_counter()
        try:
            reply = provider.generate(request)
        except Exception as exc:
            entry["outcome"] = getattr(exc, "type", "internal_error")
            raise
        finally:
            self.upstream_ms += (time.perf_counter() - started) * 1000
        entry["outcome"] = "succeeded"
        self.last_reply = reply
        return reply


def _exhausted(failures: list[GatewayError], tried: list[dict]) -> GatewayError:
    """The error once no model is left: the first real failure, else "none of them is pulled"."""
    if len(failures) == 1:
        return failures[0]
    summary = ", ".join(f"{t['model']} ({t['outcome']})" for t in tried)
    failed = next((exc for exc in failures if not isinstance(exc, ModelNotFound)), None)
    if failed is not None:
        return type(failed)(f"{failed.message.rstrip('.')}. Models tried: {summary}.")
    pulls = " or ".join(f"ollama pull {t['model']}" for t in tried)
    return ModelNotFound(f"None of the models for this template is available: {summary}. "
                         f"Pull one on the Ollama server with: {pulls}")
