"""A deterministic provider that needs no model: same request, same reply."""

from __future__ import annotations

import asyncio
import hashlib
import json
import math
import struct
import time

from referencing.jsonschema import DRAFT202012

from llm.output_schema import schema_problem, schema_resolver

from .base import (Delta, EmbeddingReply, EmbeddingRequest, GenerationRequest, Message, ProviderReply, TextDelta, ThinkingDelta, ToolCall,
                   ToolCallsDelta)

# The mock streams its reply in this many pieces, spread over its delay.
STREAM_PIECES = 4
# The length of the mock's vectors unless a request asks for `dimensions` (that of nomic-embed-text).
MOCK_DIMENSIONS = 768


class MockProvider:
    name = "mock"

    def __init__(self, *, delay: float):
        self.delay = delay

    async def generate(self, request: GenerationRequest) -> ProviderReply:
        started = time.perf_counter()
        if self.delay:
            await asyncio.sleep(self.delay)
        return _reply(request, started)

    async def stream(self, request: GenerationRequest) -> MockStream:
        stream = MockStream(request, self.delay)
        await stream.open()
        return stream

    async def complete(self, request: GenerationRequest, *, stream: bool = False) -> ProviderReply | MockStream:
        """A prompt completion (Ollama's /api/generate), answered like a chat of that prompt."""
        return await (self.stream(request) if stream else self.generate(request))


    async def embed(self, request: EmbeddingRequest) -> EmbeddingReply:
        """Deterministic unit vectors, one per text: the same model and text give the same vector."""
        started = time.perf_counter()
        if self.delay:
            await asyncio.sleep(self.delay)
        size = request.dimensions or MOCK_DIMENSIONS
        # Bounded (EMBEDDING_MAX_INPUTS x EMBEDDING_MAX_DIMENSIONS), but a large batch is still work: off the loop.
        vectors = await asyncio.to_thread(lambda: [mock_vector(request.model, text, size) for text in request.inputs])
        return EmbeddingReply(vectors=vectors, model=request.model,
                              prompt_tokens=sum(len(text.split()) for text in request.inputs),
                              upstream_ms=round((time.perf_counter() - started) * 1000, 2))


def mock_vector(model: str, text: str, size: int) -> list[float]:
    """A unit-length vector of `size` values, seeded from the SHA-256 of the model and the text."""
    seed = hashlib.sha256(f"{model}\0{text}".encode("utf-8", "replace")).digest()
    words = struct.unpack(f"<{size}I", hashlib.shake_256(seed).digest(4 * size))
    values = [word / 2**31 - 1.0 for word in words]
    norm = math.sqrt(math.fsum(value * value for value in values)) or 1.0
    return [value / norm for value in values]


class MockStream:
    """The mock's reply as deltas (thinking, then text in a few pieces, then its tool calls together), the delay
    spread between them; the first one before open() returns."""

    attempts = 1

    def __init__(self, request: GenerationRequest, delay: float):
        self.request = request
        self.started = time.perf_counter()
        whole = _reply(request, self.started)
        deltas: list[Delta] = [ThinkingDelta(piece) for piece in _pieces(whole.thinking)]
        deltas += [TextDelta(piece) for piece in _pieces(whole.content)]
        if whole.tool_calls:
            deltas.append(ToolCallsDelta(whole.tool_calls))
        self._deltas = deltas
        self._pause = delay / max(len(deltas), 1)
        self.first: Delta | None = None
        self.reply: ProviderReply | None = None
        self.deltas_received = 0

    async def open(self) -> None:
        if self._pause:
            await asyncio.sleep(self._pause)
        if self._deltas:
            self.first = self._deltas[0]
            self.deltas_received = 1

    async def __aiter__(self):
        for delta in self._deltas[1:]:
            if self._pause:
                await asyncio.sleep(self._pause)
            self.deltas_received += 1
            yield delta
        self.reply = _reply(self.request, self.started)

    async def aclose(self) -> None:
        """Nothing to release."""


def _pieces(text: str) -> list[str]:
    size = max(1, -(-len(text) // STREAM_PIECES))
    return [text[i:i + size] for i in range(0, len(text), size)]


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
    """A raw chat (no template): the reply names the last user message (or tool result), so that a conversation
    can be followed."""
    digest = _digest(request)
    last = _last_turn(request)
    excerpt = " ".join(last.content.split())[:80]
    if request.mode == "json" and request.output_schema:
        return json.dumps(schema_instance(request.output_schema, f"mock {digest}"), ensure_ascii=False)
    if request.mode == "json":
        return json.dumps({"mock": True, "model": request.model, "digest": digest, "reply_to": excerpt},
                          ensure_ascii=False)
    if last.role == "tool":
        return f"[mock {digest}] {request.model} read the result of {last.tool_name or 'the tool'}: {excerpt}"
    seen = f" (and {len(last.images)} image{'s' if len(last.images) > 1 else ''}: " \
           f"{', '.join(image.media_type for image in last.images)})" if last.images else ""
    return f"[mock {digest}] {request.model} would now answer: {excerpt}{seen}"


def _last_turn(request: GenerationRequest) -> Message:
    """The turn the mock answers: the last user message or tool result (a completion's prompt)."""
    if request.completion is not None:
        return Message(role="user", content=request.completion.prompt, images=request.completion.images)
    return next((m for m in reversed(request.messages) if m.role in ("user", "tool")), Message(role="user"))


def _digest(request: GenerationRequest) -> str:
    turns = [[m.role, m.content, m.tool_call_id, [i.sha256 for i in m.images]] for m in request.messages]
    if request.completion is not None:
        completion = request.completion
        turns.append([completion.system, completion.prompt, completion.suffix, completion.raw])
    return hashlib.sha256(json.dumps([turns, request.model], sort_keys=True).encode()).hexdigest()[:16]


def _tool_calls(request: GenerationRequest) -> tuple[ToolCall, ...]:
    """Offered tools and a conversation not yet answered by one: the mock calls the first tool, with arguments
    that fit its parameters, as a model would."""
    if not request.tools or _last_turn(request).role == "tool":
        return ()
    tool = request.tools[0]
    parameters = tool.definition.get("function", {}).get("parameters")
    # Parameters are the client's JSON Schema: only one that passes the output schemas' bounds is instantiated.
    usable = isinstance(parameters, dict) and parameters and schema_problem(parameters) is None
    arguments = schema_instance(parameters, "mock") if usable else {}
    return (ToolCall(name=tool.name, arguments=arguments if isinstance(arguments, dict) else {}),)


def _thinking(request: GenerationRequest) -> str:
    if request.think in (None, False):
        return ""
    level = f" ({request.think})" if isinstance(request.think, str) else ""
    return f"[mock thinking{level}] What is asked: {' '.join(_last_turn(request).content.split())[:80]}"


def _reply(request: GenerationRequest, started: float) -> ProviderReply:
    calls = _tool_calls(request) if not request.role else ()
    content = "" if calls else mock_content(request)
    thinking = _thinking(request)
    prompt = request.messages if request.completion is None else [_last_turn(request)]
    prompt_words = sum(len(m.content.split()) for m in prompt)
    return ProviderReply(
        content=content,
        model=request.model,
        prompt_tokens=prompt_words,
        # As Ollama's eval_count: thinking and tool calls are generated tokens too.
        completion_tokens=len(content.split()) + len(thinking.split()) + sum(
            len(json.dumps(c.arguments).split()) for c in calls),
        upstream_ms=round((time.perf_counter() - started) * 1000, 2),
        finish_reason="stop",
        thinking=thinking,
        tool_calls=calls,
    )


# The most a mock reply holds, whatever its schema demands: values, characters of text, levels. A schema may ask for
# more (minItems up to output_schema.MAX_MINIMUM at every level): the mock stops there, and the gateway's check of
# the reply says what falls short.
MOCK_MAX_VALUES = 1_000
MOCK_MAX_TEXT = 256 * 1024  # a payload is at most 64 KiB, and a few strings echo it whole
MOCK_MAX_DEPTH = 32


def schema_instance(schema: dict, label: str, name: str = "", *, echo: str = ""):
    """A small deterministic value that satisfies a JSON Schema of the kinds templates use, within the mock's bounds.

    Covers const, enum, anyOf/oneOf/allOf (first branch), objects (every property), arrays (minItems, at least one
    item, distinct), strings (min/maxLength), numbers (minimum/maximum), booleans, null, and refs inside the schema
    (a recursive one is followed once more with only what is required). Other keywords (pattern, ...) are not
    attempted: the gateway validates the reply and says so if it misses. Strings read "[label] name: echo", cut to
    their maxLength.
    """
    if not isinstance(schema, dict):
        return None
    return _MockValue(label, echo).build(schema, name, schema_resolver(schema), 0, frozenset())


class _MockValue:
    """One mock reply being built: what it may still hold."""

    def __init__(self, label: str, echo: str):
        self.label, self.echo = label, echo
        self.values_left, self.text_left = MOCK_MAX_VALUES, MOCK_MAX_TEXT

    def build(self, schema, name: str, resolver, depth: int, following: frozenset, *, minimal: bool = False):
        self.values_left -= 1
        if not isinstance(schema, dict) or self.values_left < 0 or depth > MOCK_MAX_DEPTH:
            return None
        if "$id" in schema and depth:
            resolver = _in_subresource(resolver, schema)
        ref = schema.get("$ref", schema.get("$dynamicRef"))
        if isinstance(ref, str):
            try:
                resolved = resolver.lookup(ref)
            except Exception:  # noqa: BLE001 - a ref the schema check would refuse: the mock leaves it out
                resolved = None
            if resolved is not None:
                target = id(resolved.contents)
                return self.build(resolved.contents, name, resolved.resolver, depth + 1, following | {target},
                                  minimal=minimal or target in following)
        if "const" in schema:
            return schema["const"]
        if isinstance(schema.get("enum"), list) and schema["enum"]:
            return schema["enum"][0]
        for combinator in ("anyOf", "oneOf", "allOf"):
            if isinstance(schema.get(combinator), list) and schema[combinator]:
                return self.build(schema[combinator][0], name, resolver, depth + 1, following, minimal=minimal)
        kind = schema.get("type", "object" if "properties" in schema else "string")
        if isinstance(kind, list):
            kind = next((k for k in kind if k != "null"), "null")
        if kind == "object":
            properties = schema.get("properties")
            properties = properties if isinstance(properties, dict) else {}
            if minimal:
                # A recursive ref followed again: only what is required, so that the recursion ends.
                required = schema.get("required") if isinstance(schema.get("required"), list) else []
                properties = {key: sub for key, sub in properties.items() if key in required}
            value = {}
            for key, sub in properties.items():
                if self.values_left <= 0:
                    break
                value[key] = self.build(sub, f"{name} {key}".strip(), resolver, depth + 1, following,
                                        minimal=minimal)
            return value
        if kind == "array":
            low = _count(schema.get("minItems"), 0)
            count = low if minimal else max(low, 1)
            count = min(count, _count(schema.get("maxItems"), count), max(self.values_left, 0))
            items = schema.get("items", {})
            # The index comes before the echo, so that items stay distinct when maxLength cuts them.
            return [self.build(items, f"{name} {index + 1}", resolver, depth + 1, following,
                               minimal=minimal) for index in range(count)]
        if kind == "string":
            prefix = f"[{self.label}] {name or 'value'}"
            text = prefix + (f": {self.echo}" if self.echo else "")
            if len(text) > self.text_left:
                text = text[:max(self.text_left, len(prefix))]  # the echo goes first, the name stays
            low, high = _count(schema.get("minLength"), 0), schema.get("maxLength")
            text = text.ljust(min(low, max(self.text_left, len(text))), ".")
            text = text[:high] if isinstance(high, int) and not isinstance(high, bool) else text
            self.text_left -= len(text)
            return text
        if kind in ("integer", "number"):
            value = schema.get("minimum")
            if not _is_number(value):
                above = schema.get("exclusiveMinimum")
                value = above + 1 if _is_number(above) else 0
            if _is_number(schema.get("maximum")):
                value = min(value, schema["maximum"])
            return int(value) if kind == "integer" else value
        if kind == "boolean":
            return True
        return None


def _count(value, default: int) -> int:
    """A count a schema gives (minItems, maxLength, ...), or the default when it gives none that makes sense."""
    return value if isinstance(value, int) and not isinstance(value, bool) and value >= 0 else default


def _is_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _in_subresource(resolver, schema: dict):
    try:
        return resolver.in_subresource(DRAFT202012.create_resource(schema))
    except Exception:  # noqa: BLE001 - an $id the schema check would refuse
        return resolver
