"""ALLOWED_HOSTS holds on the lean API chain too, over the production ASGI application; health probes by IP pass."""

import httpx
import pytest

from llm.models import Generation

pytestmark = pytest.mark.django_db(transaction=True)

EVIL = {"Host": "evil.example"}


def call(gateway, method, path, *, headers=None, json=None):
    with httpx.Client(base_url=gateway.url, trust_env=False, timeout=10) as client:
        return client.request(method, path, json=json,
                              headers={"Authorization": f"Bearer {gateway.key}", **(headers or {})})


def test_the_native_api_refuses_a_foreign_host_in_its_shape(gateway, valid_request):
    response = call(gateway, "POST", "/api/v1/llm/generate", headers=EVIL, json=valid_request)

    assert response.status_code == 400
    error = response.json()["error"]
    assert error["type"] == "invalid_request" and "'evil.example'" in error["message"]
    assert error["request_id"] == response.headers["x-request-id"]
    assert Generation.objects.count() == 0  # nothing reached the use case


def test_the_openai_dialect_refuses_a_foreign_host_in_its_shape(gateway):
    response = call(gateway, "GET", "/v1/models", headers=EVIL)

    assert response.status_code == 400
    assert set(response.json()["error"]) == {"message", "type", "param", "code"}
    assert response.json()["error"]["code"] == "invalid_request"


@pytest.mark.parametrize("method, path, body", [
    ("GET", "/api/tags", None), ("POST", "/api/chat", {"model": "qwen2.5:7b", "messages": []}),
    ("POST", "/api/show", {"model": "qwen2.5:7b"}),
])
def test_the_ollama_dialect_refuses_a_foreign_host_in_its_shape(gateway, method, path, body):
    response = call(gateway, method, path, headers=EVIL, json=body)

    assert response.status_code == 400
    assert list(response.json()) == ["error"] and "evil.example" in response.json()["error"]


def test_an_allowed_host_is_answered(gateway):
    assert call(gateway, "GET", "/api/tags", headers={"Host": "localhost:8000"}).status_code == 200


@pytest.mark.parametrize("path", ["/healthz", "/readyz"])
def test_health_probes_by_ip_address_are_answered(gateway, path):
    assert call(gateway, "GET", path, headers={"Host": "10.0.3.7:8000"}).status_code == 200
