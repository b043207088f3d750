"""A deterministic provider that needs no model: same request, same reply."""

from __future__ import annotations

import asyncio
import hashlib
import json
import time

from .base import GenerationRequest, ProviderReply

# The mock streams its reply in this many pieces, spread over its delay.
STREAM_PIECES = 4


class MockProvider:
    name = "mock"

    def __init__(self, *, delay: float):
        self.delay = delay

    async def generate(self, request: GenerationRequest) -> ProviderReply:
        started = time.perf_counter()
        if self.delay:
            await asyncio.sleep(self.delay)
        return _reply(request, mock_content(request), started)

    async def stream(self, request: GenerationRequest) -> MockStream:
        stream = MockStream(request, self.delay)
        await stream.open()
        return stream


class MockStream:
    """The mock's reply in a few pieces, the delay spread between them; the first one before open() returns."""

    attempts = 1

    def __init__(self, request: GenerationRequest, delay: float):
        self.request = request
        self.started = time.perf_counter()
        content = mock_content(request)
        size = max(1, -(-len(content) // STREAM_PIECES))
        self._pieces = [content[i:i + size] for i in range(0, len(content), size)] or [""]
        self._pause = delay / len(self._pieces)
        self.first = ""
        self.reply: ProviderReply | None = None
        self.pieces_received = 0

    async def open(self) -> None:
        if self._pause:
            await asyncio.sleep(self._pause)
        self.first = self._pieces[0]
        self.pieces_received = 1

    async def __aiter__(self):
        for piece in self._pieces[1:]:
            if self._pause:
                await asyncio.sleep(self._pause)
            self.pieces_received += 1
            yield piece
        self.reply = _reply(self.request, "".join(self._pieces), self.started)

    async def aclose(self) -> None:
        """Nothing to release."""


def mock_content(request: GenerationRequest) -> str:
    """The mock's reply text: deterministic, valid against the request's output schema in json mode, and
    carrying the payload's values, so that a front end wired up in mock mode sees its payload arrive."""
    if not request.role:
        return _raw_chat_content(request)
    if request.mode == "json" and request.output_schema:
        return json.dumps(schema_instance(request.output_schema, "mock", echo=payload_text(request.payload)),
                          ensure_ascii=False)
    digest = hashlib.sha256(
        json.dumps([request.role, request.task, request.payload, request.model], sort_keys=True).encode()
    ).hexdigest()[:16]
    if request.mode == "json":
        return json.dumps(
            {"role": request.role, "task": request.task, "payload": request.payload,
             "model": request.model, "digest": digest, "mock": True},
            ensure_ascii=False,
        )
    return f"[mock {digest}] {request.role} would now {request.task} for {json.dumps(request.payload)}"


def payload_text(payload) -> str:
    """The payload's values as one line, in the payload's order: "Green tea, calm"."""
    if isinstance(payload, dict):
        return ", ".join(payload_text(value) for value in payload.values())
    if isinstance(payload, list):
        return ", ".join(payload_text(item) for item in payload)
    if isinstance(payload, str):
        return payload
    return json.dumps(payload, ensure_ascii=False)


def _raw_chat_content(request: GenerationRequest) -> str:
    """A raw chat (no template): the reply names the last user message, so that a conversation can be followed."""
    digest = hashlib.sha256(json.dumps([request.messages, request.model], sort_keys=True).encode()).hexdigest()[:16]
    last = next((m["content"] for m in reversed(request.messages) if m.get("role") == "user"), "")
    excerpt = " ".join(last.split())[:80]
    if request.mode == "json" and request.output_schema:
        return json.dumps(schema_instance(request.output_schema, f"mock {digest}"), ensure_ascii=False)
    if request.mode == "json":
        return json.dumps({"mock": True, "model": request.model, "digest": digest, "reply_to": excerpt},
                          ensure_ascii=False)
    return f"[mock {digest}] {request.model} would now answer: {excerpt}"


def _reply(request: GenerationRequest, content: str, started: float) -> ProviderReply:
    prompt_words = sum(len(m["content"].split()) for m in request.messages)
    return ProviderReply(
        content=content,
        model=request.model,
        prompt_tokens=prompt_words,
        completion_tokens=len(content.split()),
        upstream_ms=round((time.perf_counter() - started) * 1000, 2),
        finish_reason="stop",
    )


def schema_instance(schema: dict, label: str, name: str = "", *, echo: str = ""):
    """A small deterministic value that satisfies a JSON Schema of the kinds templates use.

    Covers const, enum, anyOf/oneOf (first branch), objects (every property), arrays (minItems, at least one
    item, distinct), strings (min/maxLength), numbers (minimum/maximum), booleans and null. Other keywords
    (pattern, $ref, ...) are not attempted: the gateway validates the reply and says so if it misses.
    Strings read "[label] name: echo", cut to their maxLength.
    """
    if not isinstance(schema, dict):
        return None
    if "const" in schema:
        return schema["const"]
    if schema.get("enum"):
        return schema["enum"][0]
    for combinator in ("anyOf", "oneOf", "allOf"):
        if schema.get(combinator):
            return schema_instance(schema[combinator][0], label, name, echo=echo)
    kind = schema.get("type", "object" if "properties" in schema else "string")
    if isinstance(kind, list):
        kind = next((k for k in kind if k != "null"), "null")
    if kind == "object":
        return {key: schema_instance(sub, label, f"{name} {key}".strip(), echo=echo)
                for key, sub in schema.get("properties", {}).items()}
    if kind == "array":
        count = max(schema.get("minItems", 1), 1)
        count = min(count, schema.get("maxItems", count))
        items = schema.get("items", {})
        # The index comes before the echo, so that items stay distinct when maxLength cuts them.
        return [schema_instance(items, label, f"{name} {index + 1}", echo=echo) for index in range(count)]
    if kind == "string":
        text = f"[{label}] {name or 'value'}" + (f": {echo}" if echo else "")
        low, high = schema.get("minLength", 0), schema.get("maxLength")
        text = text.ljust(low, ".")
        return text[:high] if high is not None else text
    if kind in ("integer", "number"):
        value = schema.get("minimum", schema.get("exclusiveMinimum", -1) + 1)
        if "maximum" in schema:
            value = min(value, schema["maximum"])
        return int(value) if kind == "integer" else value
    if kind == "boolean":
        return True
    return None
