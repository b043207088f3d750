"""The start-up line each provider logs: which provider, which Ollama, and where that URL came from."""

import logging

import pytest

from llm.providers import _announce_mock, _ollama, get_provider


@pytest.fixture
def provider_log():
    """Lines logged by llm.providers, with fresh provider caches so that the first-build line is logged again."""
    records = []
    handler = logging.Handler()
    handler.emit = records.append
    logger = logging.getLogger("llm.providers")
    logger.addHandler(handler)
    _ollama.cache_clear()
    _announce_mock.cache_clear()
    yield records
    logger.removeHandler(handler)
    _ollama.cache_clear()
    _announce_mock.cache_clear()


def test_the_ollama_provider_logs_its_masked_url_and_source_once(provider_log, settings, gateway_env):
    gateway_env({"GENERATOR_MODE": "live", "OLLAMA_BASE_URL": "http://ops:hunter2@gpu-box:11434"}, "")

    get_provider()
    get_provider()

    [record] = provider_log
    assert record.getMessage().startswith(
        "provider ollama initialised: base URL http://ops:********@gpu-box:11434 (OLLAMA_BASE_URL from the OS "
        "environment)")
    assert (record.provider, record.source) == ("ollama", "environment")
    assert "hunter2" not in record.getMessage()


def test_the_mock_provider_logs_once_per_process(provider_log, settings):
    settings.GENERATOR_MODE = "mock"
    get_provider()
    get_provider()
    [record] = provider_log
    assert record.getMessage().startswith("provider mock initialised: GENERATOR_MODE=mock")
