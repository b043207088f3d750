"""Providers answer a GenerationRequest with a ProviderReply, or raise a typed gateway error."""

from functools import lru_cache

from django.conf import settings

from .base import GenerationRequest, ProviderReply
from .mock import MockProvider
from .ollama import OllamaProvider

__all__ = ["GenerationRequest", "ProviderReply", "MockProvider", "OllamaProvider", "get_provider"]


def get_provider():
    """The provider GENERATOR_MODE selects, built once per process (per distinct configuration)."""
    if settings.GENERATOR_MODE == "live":
        return _ollama(settings.OLLAMA_BASE_URL, settings.OLLAMA_TIMEOUT, settings.OLLAMA_CONNECT_TIMEOUT,
                       settings.OLLAMA_MAX_RETRIES, settings.OLLAMA_RETRY_BACKOFF)
    return MockProvider(delay=settings.MOCK_RESPONSE_DELAY)


@lru_cache(maxsize=8)
def _ollama(base_url: str, timeout: float, connect_timeout: float, max_retries: int,
            retry_backoff: float) -> OllamaProvider:
    return OllamaProvider(base_url=base_url, timeout=timeout, connect_timeout=connect_timeout,
                          max_retries=max_retries, retry_backoff=retry_backoff)
