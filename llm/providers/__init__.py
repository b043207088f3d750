"""Providers answer a GenerationRequest with a ProviderReply, or raise a typed gateway error."""

import logging
from functools import lru_cache

from django.conf import settings

from gateway_project.redaction import mask_url

from .base import GenerationRequest, ProviderReply
from .mock import MockProvider
from .ollama import OllamaProvider

__all__ = ["GenerationRequest", "ProviderReply", "MockProvider", "OllamaProvider", "get_provider"]

logger = logging.getLogger("llm.providers")


def get_provider():
    """The provider GENERATOR_MODE selects, built once per process (per distinct configuration)."""
    if settings.GENERATOR_MODE == "live":
        from llm import servers

        if servers.listed():
            # Servers listed in the admin: OLLAMA_BASE_URL is ignored (diagnostics say so).
            return servers.pool()
        return _ollama(settings.OLLAMA_BASE_URL, settings.OLLAMA_TIMEOUT, settings.OLLAMA_CONNECT_TIMEOUT,
                       settings.OLLAMA_MAX_RETRIES, settings.OLLAMA_RETRY_BACKOFF)
    _announce_mock()
    return MockProvider(delay=settings.MOCK_RESPONSE_DELAY)


@lru_cache(maxsize=8)
def _ollama(base_url: str, timeout: float, connect_timeout: float, max_retries: int,
            retry_backoff: float) -> OllamaProvider:
    provider = OllamaProvider(base_url=base_url, timeout=timeout, connect_timeout=connect_timeout,
                              max_retries=max_retries, retry_backoff=retry_backoff)
    # The line that answers "which Ollama is this process talking to, and why that one?" from the logs alone.
    source = settings.GATEWAY_ENV.source_of("OLLAMA_BASE_URL", base_url)
    logger.info(
        f"provider ollama initialised: base URL {provider.shown_url} (OLLAMA_BASE_URL from "
        f"{settings.GATEWAY_ENV.describe_source(source)}), timeout {timeout:g}s, "
        f"connect timeout {connect_timeout:g}s, up to {max_retries} retries",
        extra={"provider": "ollama", "base_url": provider.shown_url, "source": source, "timeout": timeout,
               "connect_timeout": connect_timeout, "max_retries": max_retries, "retry_backoff": retry_backoff},
    )
    return provider


@lru_cache(maxsize=1)
def _announce_mock() -> None:
    """Log once per process that the mock provider serves requests (it is cheap, so it is built per request)."""
    source = settings.GATEWAY_ENV.source_of("GENERATOR_MODE", settings.GENERATOR_MODE)
    logger.info(
        f"provider mock initialised: GENERATOR_MODE=mock (from {settings.GATEWAY_ENV.describe_source(source)}); "
        f"requests get deterministic replies, Ollama at {mask_url(settings.OLLAMA_BASE_URL)} is not used",
        extra={"provider": "mock", "source": source},
    )
