"""What every provider takes and returns: the neutral request, reply and stream deltas, in no wire format.

The front doors and the use case speak these types; only a provider module (llm.providers.ollama) knows how they
travel on its wire. Fields a neutral type does not model but a client must get back unchanged (Ollama's tool call
`id` and `function.index`) ride beside the neutral value as `raw`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import AsyncIterator, Protocol, Union


@dataclass(frozen=True)
class Image:
    """An image a message carries: base64 as Ollama takes it, and what the audit log keeps in its place."""

    # A memoryview: a large image's base64, still in the client's body, sent on to Ollama from there.
    data: str | memoryview = field(repr=False)
    sha256: str
    size: int  # bytes, decoded
    media_type: str  # as detected from the bytes, never as the client declared it

    def audit(self) -> dict:
        """The image as stored: never its bytes."""
        return {"image": {"sha256": self.sha256, "size": self.size, "type": self.media_type}}


@dataclass(frozen=True)
class Tool:
    """A tool the model may call: its name, and its definition exactly as Ollama takes it
    (`{"type": "function", "function": {"name", "description", "parameters"}}`)."""

    name: str
    definition: dict


@dataclass(frozen=True)
class ToolCall:
    """A call of a tool: by the model in a reply, or replayed by the client in an assistant message.

    `id` is Ollama's when it sent one, else the gateway's (minted once per call, see llm.services); `raw` is the
    call as Ollama sent it (or as an Ollama client replayed it), so that it goes back byte for byte.
    """

    name: str
    arguments: dict
    id: str = ""
    raw: dict | None = None


@dataclass(frozen=True)
class Message:
    """One chat message: text, and what a richer conversation carries (thinking, images, tool calls and results)."""

    role: str  # system | user | assistant | tool
    content: str = ""
    thinking: str = ""
    images: tuple[Image, ...] = ()
    tool_calls: tuple[ToolCall, ...] = ()
    tool_name: str = ""  # a tool result: the tool that produced it
    tool_call_id: str = ""  # a tool result: the call it answers


@dataclass(frozen=True)
class Completion:
    """A prompt completion (Ollama's /api/generate): its own upstream call, not a chat."""

    prompt: str
    system: str = ""
    suffix: str = ""  # fill-in-the-middle: the text after the insertion point
    raw: bool = False  # the prompt goes to the model unformatted by its template
    images: tuple[Image, ...] = ()


@dataclass(frozen=True)
class GenerationRequest:
    """The neutral request a provider answers: chat messages (or a prompt completion) for one model, with options,
    an output format, the tools offered and how much to think."""

    role: str  # role, task and payload: "", "" and None for a raw chat (no template)
    task: str
    payload: dict | None
    mode: str  # "json" | "text"
    model: str
    messages: list[Message]
    options: dict = field(default_factory=dict)
    output_schema: dict | None = None  # json mode: the reply must match it
    tools: tuple[Tool, ...] = ()
    think: bool | str | None = None  # None: the model's default; True/False or a level ("low" ... "max")
    keep_alive: int | float | str | None = None  # as the client sent it, within the operator's maximum
    completion: Completion | None = None  # set for Ollama's /api/generate; `messages` is then empty


@dataclass(frozen=True)
class ProviderReply:
    """The model's reply (text, thinking, tool calls), the model that produced it, token counts and time spent.

    A count the provider did not report is None (Ollama omits prompt_eval_count for a cached prompt), never 0.
    completion_tokens counts thinking tokens too, as Ollama's eval_count does.
    """

    content: str
    model: str
    prompt_tokens: int | None
    completion_tokens: int | None
    upstream_ms: float
    attempts: int = 1  # calls made upstream for this reply, retries included
    finish_reason: str = ""  # why the model stopped: Ollama's done_reason (stop, length, ...)
    durations: dict | None = None  # the provider's own nanosecond timings, by Ollama's names
    thinking: str = ""
    tool_calls: tuple[ToolCall, ...] = ()


@dataclass(frozen=True)
class EmbeddingRequest:
    """Texts to embed with one model, in one call (Ollama's /api/embed); `legacy`: Ollama's older /api/embeddings,
    one text, whose vector comes back as the runner made it (not normalised)."""

    model: str
    inputs: tuple[str, ...]
    truncate: bool | None = None  # None: Ollama's default (truncate to the context)
    dimensions: int | None = None  # cut the vectors to this length (and normalise them again)
    options: dict = field(default_factory=dict)
    keep_alive: int | float | str | None = None
    legacy: bool = False


@dataclass(frozen=True)
class EmbeddingReply:
    """One vector per input, in order; the model, the prompt tokens Ollama counted (None if it did not say) and
    its own nanosecond durations."""

    vectors: list[list[float]] = field(repr=False)
    model: str
    prompt_tokens: int | None
    upstream_ms: float
    attempts: int = 1
    durations: dict | None = None

    @property
    def dimensions(self) -> int | None:
        return len(self.vectors[0]) if self.vectors else None


@dataclass(frozen=True)
class TextDelta:
    """A piece of the reply's text."""

    text: str


@dataclass(frozen=True)
class ThinkingDelta:
    """A piece of the model's thinking (reasoning models), kept apart from the text."""

    text: str


@dataclass(frozen=True)
class ToolCallsDelta:
    """Whole tool calls, as many as one upstream chunk carried: a call is never split or held back."""

    calls: tuple[ToolCall, ...]


Delta = Union[TextDelta, ThinkingDelta, ToolCallsDelta]


class ReplyStream(Protocol):
    """A reply being streamed: opened once its first delta of any kind has arrived (so that errors before it are
    normal errors, retried and fallen back from like any other), then read delta by delta.

    `first` is the delta that arrived first (None for a reply that ended empty); iterating yields the deltas after
    it. Once iteration ends, `reply` is the whole reply with the counts the provider reported. A failure
    mid-stream raises a GatewayError from the iteration.
    """

    first: Delta | None
    attempts: int
    reply: ProviderReply | None
    deltas_received: int

    def __aiter__(self) -> AsyncIterator[Delta]: ...

    async def aclose(self) -> None: ...
