"""The model listings the compatible dialects answer (OpenAI's /v1/models, Ollama's /api/tags, /api/show, /api/ps,
/api/version): a valid key is needed, but a listing is no generation, so it leaves no audit row and does not count
against the rate limit (chat UIs poll them). Only the models the consumer may use are shown.

In mock mode the models are those the prompt templates and OLLAMA_DEFAULT_MODEL name.
"""

from __future__ import annotations

from typing import Callable

from django.conf import settings
from django.utils import timezone

from gateway_project.db_steps import db_step
from llm import api_keys, model_access, selectors, servers
from llm.errors import ModelNotFound
from llm.models import Consumer
from llm.providers import get_provider

MOCK_VERSION = "0.0.0-mock"


async def models(caller) -> list[dict]:
    """Ollama's /api/tags entries (name, model, modified_at, size, digest, details) the consumer may use."""
    consumer, mock_names = await db_step(_authenticated, caller)
    if mock_names is not None:
        entries = [_mock_entry(name) for name in mock_names]
    else:
        entries = (await get_provider().catalog("GET", "/api/tags")).get("models") or []
        entries = [e for e in entries if isinstance(e, dict) and isinstance(e.get("name") or e.get("model"), str)]
    return [e for e in entries if model_access.allows(consumer, e.get("name") or e["model"])]


async def show(caller, read_name: Callable[[], str]) -> dict:
    """Ollama's /api/show of a model the consumer may use; ModelNotFound for any other, as if it did not exist.

    `read_name` reads the model's name from the request (or raises the error answered): only once the caller is
    known, so that nothing an unauthenticated client sends is even parsed.
    """
    consumer, mock_names = await db_step(_authenticated, caller)
    name = read_name()
    missing = ModelNotFound(f"Model {name!r} not found.")
    if not model_access.allows(consumer, name):
        raise missing
    if mock_names is not None:
        if model_access.canonical(name) not in {model_access.canonical(n) for n in mock_names}:
            raise missing
        return {"modelfile": "", "parameters": "", "template": "{{ .Prompt }}", "details": _mock_details(),
                "model_info": {}, "capabilities": ["completion"], "modified_at": timezone.now().isoformat()}
    return _within_num_ctx_max(await get_provider().catalog("POST", "/api/show", {"model": name}))


async def running(caller) -> list[dict]:
    """Ollama's /api/ps entries of the models the consumer may use."""
    consumer, mock_names = await db_step(_authenticated, caller)
    if mock_names is not None:
        return []
    entries = (await get_provider().catalog("GET", "/api/ps")).get("models") or []
    return [e for e in entries if isinstance(e, dict) and model_access.allows(consumer, str(e.get("model", "")))]


async def version(caller) -> str:
    _, mock_names = await db_step(_authenticated, caller)
    if mock_names is not None:
        return MOCK_VERSION
    return str((await get_provider().catalog("GET", "/api/version")).get("version", ""))


def _within_num_ctx_max(shown: dict) -> dict:
    """/api/show with the context length a client may use through the gateway: at most NUM_CTX_MAX. Clients size
    num_ctx from it (LlamaIndex sends the model's whole context with every request), and a larger num_ctx is
    refused: it would reload the model for every consumer."""
    bound = settings.NUM_CTX_MAX
    info = shown.get("model_info")
    if isinstance(info, dict):
        for key, value in info.items():
            if key.endswith(".context_length") and isinstance(value, int) and value > bound:
                info[key] = bound
    details = shown.get("details")
    if isinstance(details, dict) and isinstance(details.get("context_length"), int):
        details["context_length"] = min(details["context_length"], bound)
    return shown


def _authenticated(caller) -> tuple[Consumer, list[str] | None]:
    """The caller's consumer (NotAuthenticated or KeyRefused if none) and, in mock mode, the mock's models."""
    caller.api_key = api_keys.check(caller.presented_key, refusal=caller.refusal, client_ip=caller.client_ip)
    mock_names = selectors.template_model_names() if settings.GENERATOR_MODE != "live" else None
    servers.refresh_if_stale()  # the admin's list of Ollama servers, at most every 2 s (llm.servers)
    return caller.api_key.consumer, mock_names


def _mock_details() -> dict:
    return {"format": "mock", "family": "mock", "families": ["mock"], "parameter_size": "", "quantization_level": ""}


def _mock_entry(name: str) -> dict:
    return {"name": name, "model": name, "modified_at": timezone.now().isoformat(), "size": 0,
            "digest": "0" * 64, "details": _mock_details()}
