"""What every provider takes and returns."""

from dataclasses import dataclass, field


@dataclass(frozen=True)
class GenerationRequest:
    role: str
    task: str
    payload: dict
    mode: str  # "json" | "text"
    model: str
    messages: list[dict]
    options: dict = field(default_factory=dict)
    output_schema: dict | None = None  # json mode: the reply must match it


@dataclass(frozen=True)
class ProviderReply:
    """The model's reply text, the model that produced it, token counts and time spent upstream."""

    content: str
    model: str
    prompt_tokens: int | None
    completion_tokens: int | None
    upstream_ms: float
    attempts: int = 1  # calls made upstream for this reply, retries included
