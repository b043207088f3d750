"""Which models a request may use, and asking them in order until one answers.

Fallback rule: the next model is tried only when the failure belongs to the model, not to the server:
- model_not_found (Ollama's 404: the model is not pulled there), and
- ModelFailed (Ollama itself answered 500 with its error: the model would not load or crashed, e.g. out of memory).
A refused connection, a timeout, a busy queue (503) or a garbled reply says the server (or the path to it) is in
trouble: every other model is behind the same server, so falling back would only multiply the wait before the
same error.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import replace
from functools import partial

from llm import model_access
from llm.errors import GatewayError, InvalidRequest, ModelFailed, ModelNotFound
from llm.models import PromptTemplateVersion
from llm.providers import GenerationRequest, ProviderReply

FALLBACK_ON = (ModelNotFound, ModelFailed)


def candidate_models(version: PromptTemplateVersion, requested: str | None, consumer) -> list[str]:
    """The models to try in order, of those the consumer may use: the one a request names (if the template allows
    it), else the chain; ModelNotAllowed (403) if the consumer may use none of them."""
    if requested is None:
        return model_access.permitted(consumer, version.model_chain(), chosen=False)
    allowed = version.allowed_model_names()
    if requested not in allowed:
        # Named in the message: only the template's models that this consumer may use.
        usable = model_access.permitted(consumer, allowed, chosen=False)
        chain = model_access.visible(consumer, version.model_chain())
        template = version.template
        instead = f"; or name no model to use {chain[0]} with its fallbacks" if chain else ""
        raise InvalidRequest(
            f"Model {requested!r} is not allowed for {template.role}/{template.task}. "
            f"Allowed: {', '.join(usable)}{instead}.",
            details={"model": [f"Not allowed for this template. Allowed: {', '.join(usable)}."]},
        )
    # A model the client chose is the one it gets: no silent substitute.
    return model_access.permitted(consumer, [requested], chosen=True)


class Route:
    """One request's way through its candidate models; what it tried stays readable after a failure."""

    def __init__(self, models: list[str], *, consumer=None):
        self.models = models
        # {"model": ..., "outcome": "succeeded" | error type}, one per provider call; with several servers (a pool
        # that records its own tries) {"model", "server", "outcome"}, one per server called.
        self.tried: list[dict] = []
        self.consumer = consumer
        self._state = None  # a pool's: the request's retry budget and the server that answered
        self.upstream_ms = 0.0
        self.attempts = 0  # HTTP calls to the provider, its own retries included
        self._first = 0  # the model asked first: the one that answered last

    async def ask(self, provider, request: GenerationRequest) -> ProviderReply:
        """A reply from the first model that answers, from the one that answered last on; else the error."""
        call = provider.generate if request.completion is None else provider.complete
        return await self._first_answer(call, request)

    async def open_stream(self, provider, request: GenerationRequest):
        """A stream from the first model whose first delta (of any kind) arrives: fallback happens before any is
        sent."""
        call = provider.stream if request.completion is None else partial(provider.complete, stream=True)
        return await self._first_answer(call, request)

    async def embed(self, provider, request):
        """Vectors from the request's model (a client's chosen model has no fallback)."""
        return await self._first_answer(provider.embed, request)

    @property
    def server(self) -> str:
        """The server that answered last (empty without several servers)."""
        return self._state.server if self._state is not None else ""

    def reject(self, error: GatewayError) -> None:
        """Record that the last reply could not be used."""
        self.tried[-1]["outcome"] = error.type

    async def _first_answer(self, call, request: GenerationRequest):
        failures: list[GatewayError] = []
        for index in range(self._first, len(self.models)):
            try:
                answer = await self._call(call, replace(request, model=self.models[index]))
            except FALLBACK_ON as exc:
                failures.append(exc)
                continue
            self._first = index
            return answer
        raise _exhausted(failures, self.tried)

    async def _call(self, call, request: GenerationRequest):
        if getattr(getattr(call, "__self__", None) or getattr(getattr(call, "func", None), "__self__", None),
                   "records_tries", False):
            return await self._pooled(call, request)
        entry = {"model": request.model, "outcome": "pending"}
        self.tried.append(entry)
        started = time.perf_counter()
        try:
            answer = await call(request)
        except BaseException as exc:
            # A cancelled call (the client went away) is on record as such, not as pending.
            entry["outcome"] = getattr(exc, "type", "cancelled" if isinstance(exc, asyncio.CancelledError)
                                       else "internal_error")
            self.attempts += getattr(exc, "attempts", None) or 1
            raise
        finally:
            self.upstream_ms += (time.perf_counter() - started) * 1000
        entry["outcome"] = "succeeded"
        self.attempts += answer.attempts
        return answer

    async def _pooled(self, call, request: GenerationRequest):
        """A call through llm.servers' pool: it records one entry per server it calls, and shares one retry budget
        over the request's calls."""
        from llm import servers

        if self._state is None:
            self._state = servers.RouteState(self.tried, self.consumer)
        token = servers.ROUTE.set(self._state)
        started = time.perf_counter()
        try:
            answer = await call(request)
        except BaseException as exc:
            calls = getattr(exc, "attempts", None)  # 0: refused while waiting for a slot, no server called
            self.attempts += calls if calls is not None else 1
            raise
        finally:
            servers.ROUTE.reset(token)
            self.upstream_ms += (time.perf_counter() - started) * 1000
        self.attempts += answer.attempts
        return answer


def _exhausted(failures: list[GatewayError], tried: list[dict]) -> GatewayError:
    """The error once no model is left: the first real failure, else "none of them is pulled"."""
    if len(failures) == 1:
        return failures[0]
    summary = ", ".join(f"{t['model']} ({t['outcome']})" for t in tried)
    failed = next((exc for exc in failures if not isinstance(exc, ModelNotFound)), None)
    if failed is not None:
        # The client's message and the staff one (with the server and its answer) each keep their own words.
        return type(failed)(f"{failed.message.rstrip('.')}. Models tried: {summary}.",
                            staff_message=f"{failed.staff_message.rstrip('.')}. Models tried: {summary}.",
                            attempts=failed.attempts)
    pulls = " or ".join(f"ollama pull {t['model']}" for t in tried)
    staff = "; ".join(exc.staff_message for exc in failures)
    message = (f"None of the models for this template is available: {summary}. "
               f"Pull one on the Ollama server with: {pulls}")
    return ModelNotFound(message, staff_message=f"{message} ({staff})")
