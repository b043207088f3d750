"""Which models a consumer may use (Consumer.allowed_models): the one place generations and listings ask.

An empty list allows every model the Ollama server has. Names compare as Ollama does: "llama3.2" is
"llama3.2:latest".
"""

from __future__ import annotations

from typing import Iterable

from llm.errors import ModelNotAllowed


def canonical(name: str) -> str:
    """The name with Ollama's implicit tag: a name without a tag means its `latest`."""
    last = name.rsplit("/", 1)[-1]
    return name if ":" in last else f"{name}:latest"


def allows(consumer, model: str) -> bool:
    names = consumer.allowed_models or []
    if not names:
        return True
    return canonical(model) in {canonical(n) for n in names if isinstance(n, str)}


def visible(consumer, models: Iterable[str]) -> list[str]:
    """The models of a listing the consumer may see (and use), in the listing's order."""
    return [model for model in models if allows(consumer, model)]


def permitted(consumer, models: list[str], *, chosen: bool) -> list[str]:
    """The candidate models the consumer may use, in order; ModelNotAllowed (403) if none is left.

    A model the client chose is refused outright; of a template's chain, disallowed models are skipped like
    missing ones.
    """
    left = visible(consumer, models)
    if left:
        return left
    shown = ", ".join(consumer.allowed_models)
    if chosen:
        message = f"Consumer {consumer.name!r} may not use model {models[0]!r}; its models: {shown}."
    else:
        # The template's own models are not named: a consumer learns of no model outside its list.
        message = f"None of this template's models is among those consumer {consumer.name!r} may use: {shown}."
    raise ModelNotAllowed(message, details={"model": [message]})
