"""What every provider takes and returns."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import AsyncIterator, Protocol


@dataclass(frozen=True)
class GenerationRequest:
    """The neutral request a provider answers: chat messages for one model, with options and an output format."""

    role: str  # role, task and payload: "", "" and None for a raw chat (no template)
    task: str
    payload: dict | None
    mode: str  # "json" | "text"
    model: str
    messages: list[dict]
    options: dict = field(default_factory=dict)
    output_schema: dict | None = None  # json mode: the reply must match it


@dataclass(frozen=True)
class ProviderReply:
    """The model's reply text, the model that produced it, token counts and time spent upstream.

    A count the provider did not report is None (Ollama omits prompt_eval_count for a cached prompt), never 0.
    """

    content: str
    model: str
    prompt_tokens: int | None
    completion_tokens: int | None
    upstream_ms: float
    attempts: int = 1  # calls made upstream for this reply, retries included
    finish_reason: str = ""  # why the model stopped: Ollama's done_reason (stop, length, ...)
    durations: dict | None = None  # the provider's own nanosecond timings, by Ollama's names


class ReplyStream(Protocol):
    """A reply being streamed: opened once the first piece of text has arrived (so that errors before it are normal
    errors, retried and fallen back from like any other), then read piece by piece.

    `first` is the text that arrived first; iterating yields the pieces after it. Once iteration ends, `reply` is the
    whole reply with the counts the provider reported. A failure mid-stream raises a GatewayError from the iteration.
    """

    first: str
    attempts: int
    reply: ProviderReply | None
    pieces_received: int

    def __aiter__(self) -> AsyncIterator[str]: ...

    async def aclose(self) -> None: ...
