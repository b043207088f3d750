"""No error a client reads names the Ollama server: not its address, not what it answered.

Every failure of the provider, through the three front doors, streamed and not, over a real socket: the fake
Ollama's host:port (and the words it sent) appear in no response body or header, and do appear in the audit row
and in the request's log line, for staff.
"""

import logging

import pytest

from llm.models import Generation
from tests.conftest import wait_for

pytestmark = pytest.mark.django_db(transaction=True)

# What a real Ollama's error text can carry: a path on its server. A client must never read it.
SERVER_PATH = "/usr/share/ollama/.ollama/models/blobs/sha256-6a0746a1ec1a"
INTERNAL_PAGE = "<html><title>intranet.corp: admin console</title></html>"
MESSAGES = [{"role": "user", "content": "Say hello."}]
PAYLOAD = {"product": "Green tea", "tone": "calm"}

# fault -> (set up the fake, words of the upstream that only the row may hold)
FAULTS = {
    "connect_refused": (lambda ollama, settings, refused: setattr(settings, "OLLAMA_BASE_URL", refused), None),
    "timeout": (lambda ollama, settings, refused: ollama.fault("slow", paths="/api/chat", delay=3), None),
    "stall_mid_stream": (lambda ollama, settings, refused: ollama.fault("stall", paths="/api/chat", after=2,
                                                                        seconds=3), None),
    "status_500": (lambda ollama, settings, refused: ollama.fault(
        "status", paths="/api/chat", status=500, message=f"error loading model {SERVER_PATH}"), SERVER_PATH),
    "malformed_page": (lambda ollama, settings, refused: ollama.fault(
        "malformed", paths="/api/chat", body=INTERNAL_PAGE), "intranet.corp"),
    "model_missing": (lambda ollama, settings, refused: ollama.models.remove("llama3.2:1b"), None),
    "error_mid_stream": (lambda ollama, settings, refused: ollama.fault(
        "stream_error", paths="/api/chat", after=2, message=f"runner died reading {SERVER_PATH}"), SERVER_PATH),
    "cut_stream": (lambda ollama, settings, refused: ollama.fault("cut_off", paths="/api/chat", after=2), None),
}


def request_for(door: str, stream: bool) -> tuple[str, dict]:
    # llama3.2:1b: a model the fake has until model_missing removes it; the native API names it as the
    # template's fallback (text mode, so that no output schema is in the way).
    if door == "native":
        return "/api/v1/llm/generate", {"role": "copywriter", "task": "sns", "payload": PAYLOAD, "mode": "text",
                                        "model": "llama3.2:1b", "stream": stream}
    if door == "openai":
        return "/v1/chat/completions", {"model": "llama3.2:1b", "messages": MESSAGES, "stream": stream}
    return "/api/chat", {"model": "llama3.2:1b", "messages": MESSAGES, "stream": stream}


@pytest.fixture
def with_fallback_model(shipped_templates):
    """The shipped copywriter/sns template, allowed to name llama3.2:1b."""
    from llm import prompt_templates
    from llm.models import PromptTemplate

    template = PromptTemplate.objects.get(role="copywriter", task="sns")
    content = template.current_version.content()
    content["allowed_models"] = [*content["allowed_models"], "llama3.2:1b"]
    prompt_templates.save_version(template=template, content=content, author="pytest")


@pytest.mark.parametrize("stream", [False, True], ids=["plain", "stream"])
@pytest.mark.parametrize("door", ["native", "openai", "ollama"])
@pytest.mark.parametrize("fault", list(FAULTS))
def test_no_error_names_the_server_but_the_row_and_the_log_do(gateway, ollama, settings, refused_url, caplog,
                                                              with_fallback_model, fault, door, stream):
    settings.OLLAMA_TIMEOUT = 0.5
    settings.RATE_LIMIT_PER_MINUTE = 0
    set_up, upstream_words = FAULTS[fault]
    set_up(ollama, settings, refused_url)
    address = settings.OLLAMA_BASE_URL.removeprefix("http://")
    path, body = request_for(door, stream)
    caplog.set_level(logging.INFO, logger="gateway.request")

    with gateway.client() as client:
        with client.stream("POST", path, json=body) as response:
            text = response.read().decode()
            headers = "\n".join(f"{name}: {value}" for name, value in response.headers.multi_items())

    row = wait_for(lambda: Generation.objects.exclude(status="pending").first())
    assert row is not None and row.status == "failed", text
    assert address not in text and address not in headers, text
    # Nor a piece of it: the host alone, or the port alone after a colon.
    assert ":" + address.rsplit(":", 1)[1] not in text.replace(" ", "")
    if upstream_words:
        assert upstream_words not in text, text
        assert upstream_words in row.error_message
    assert address in row.error_message, row.error_message
    logged = [r for r in caplog.records if getattr(r, "request_id", None) == str(row.id)]
    assert logged and address in logged[-1].error_detail


@pytest.mark.parametrize("fault", ["connect_refused", "status_500"])
@pytest.mark.parametrize("method, path, body", [
    ("GET", "/api/tags", None), ("GET", "/api/ps", None), ("GET", "/api/version", None),
    ("POST", "/api/show", {"model": "qwen2.5:7b"}), ("GET", "/v1/models", None),
    ("GET", "/v1/models/qwen2.5:7b", None),
])
def test_no_listing_error_names_the_server(gateway, ollama, settings, refused_url, caplog, fault, method, path, body):
    if fault == "connect_refused":
        settings.OLLAMA_BASE_URL = refused_url
    else:
        ollama.fault("status", status=500, message=f"cannot read {SERVER_PATH}")
    address = settings.OLLAMA_BASE_URL.removeprefix("http://")
    caplog.set_level(logging.INFO, logger="gateway.request")

    with gateway.client() as client:
        response = client.request(method, path, json=body)

    assert response.status_code >= 500
    assert address not in response.text and SERVER_PATH not in response.text
    assert not any(address in value for value in response.headers.values())
    request_id = response.headers["x-request-id"]
    logged = [r for r in caplog.records if getattr(r, "request_id", None) == request_id]
    assert logged and address in logged[-1].error_detail
