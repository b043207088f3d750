"""The OpenAPI 3 schema at /api/v1/schema/ and its browsable docs at /api/v1/docs/."""

import re
from io import StringIO

import pytest
import yaml
from django.core.management import call_command

from llm.serializers import OllamaOptionsSerializer

pytestmark = pytest.mark.django_db

ERROR_STATUSES = {"400", "401", "404", "413", "415", "429", "502", "503", "504"}


@pytest.fixture
def schema(client):
    response = client.get("/api/v1/schema/", HTTP_ACCEPT="application/vnd.oai.openapi+json")
    assert response.status_code == 200, response.content
    return response.json()


def test_the_schema_is_openapi_3_for_the_llm_api_only(schema):
    assert schema["openapi"].startswith("3.")
    # The native API and the OpenAI dialect; no admin, no staff debug endpoints.
    assert set(schema["paths"]) == {"/api/v1/llm/generate", "/api/v1/llm/templates", "/v1/chat/completions",
                                    "/v1/models", "/v1/models/{name}"}


def test_the_openai_dialect_is_described_in_openais_shapes(schema):
    operation = schema["paths"]["/v1/chat/completions"]["post"]
    components = schema["components"]["schemas"]

    assert operation["requestBody"]["content"]["application/json"]["schema"] == {
        "$ref": "#/components/schemas/ChatCompletionRequest"}
    assert set(operation["responses"]["200"]["content"]) == {"application/json", "text/event-stream"}
    for status in ("400", "401", "403", "404", "429", "502"):
        error = operation["responses"][status]["content"]["application/json"]["schema"]
        assert error == {"$ref": "#/components/schemas/OpenAIError"}
    assert set(components["OpenAIError"]["properties"]["error"]["required"]) == {"message", "type", "param", "code"}
    request = components["ChatCompletionRequest"]
    assert request["additionalProperties"] is False and request["properties"]["n"]["enum"] == [1]


def test_authentication_is_described(schema):
    schemes = schema["components"]["securitySchemes"]
    assert schemes["ApiKeyBearer"]["type"] == "http" and schemes["ApiKeyBearer"]["scheme"] == "bearer"
    assert (schemes["ApiKeyHeader"]["in"], schemes["ApiKeyHeader"]["name"]) == ("header", "X-API-Key")
    operation = schema["paths"]["/api/v1/llm/generate"]["post"]
    assert operation["security"] == [{"ApiKeyBearer": []}, {"ApiKeyHeader": []}]  # and no anonymous {} entry


def test_every_error_response_is_documented_with_the_error_shape(schema):
    responses = schema["paths"]["/api/v1/llm/generate"]["post"]["responses"]

    assert ERROR_STATUSES <= set(responses)
    for status in ERROR_STATUSES:
        body = responses[status]["content"]["application/json"]
        assert body["schema"] == {"$ref": "#/components/schemas/Error"}
        assert responses[status]["description"]
        example = next(iter(body["examples"].values()))["value"]
        assert set(example["error"]) == {"type", "message", "request_id"}
    error = schema["components"]["schemas"]["ErrorDetail"]
    assert set(error["required"]) == {"type", "message", "request_id"}
    assert "Retry-After" in responses["429"]["description"]


def test_request_limits_are_in_the_schema(schema):
    components = schema["components"]["schemas"]
    request = components["GenerateRequestRequest"]
    options = components["OllamaOptionsRequest"]

    assert request["additionalProperties"] is False and options["additionalProperties"] is False
    assert request["properties"]["role"]["maxLength"] == 100
    assert request["properties"]["payload"]["type"] == "object"
    assert set(options["properties"]) == set(OllamaOptionsSerializer().fields)
    assert (options["properties"]["temperature"]["minimum"], options["properties"]["temperature"]["maximum"]) == (0, 2)


def test_the_schema_generates_without_warnings():
    out = StringIO()
    call_command("spectacular", "--validate", "--fail-on-warn", "--format", "openapi", stdout=out)

    assert yaml.safe_load(out.getvalue())["info"]["title"] == "LLM Gateway API"


def test_the_docs_page_is_served_with_local_assets(client):
    response = client.get("/api/v1/docs/")

    assert response.status_code == 200
    html = response.content.decode()
    assert "cdn.jsdelivr.net" not in html  # the UI's files come from drf-spectacular-sidecar, not the internet
    bundle = re.search(r'src="([^"]*swagger-ui-bundle\.js)"', html).group(1)
    assert client.get(bundle).status_code == 200
    # Its start-up script is a file of its own (no inline script under the Content-Security-Policy).
    assert "<script>" not in html and "<style>" not in html
    script = client.get(re.search(r'src="([^"]*\?script=[^"]*)"', html).group(1).replace("&amp;", "&"))
    assert script["Content-Type"].startswith("application/javascript") and "/api/v1/schema/" in script.content.decode()


def test_schema_and_docs_need_no_key(client):
    assert client.get("/api/v1/schema/").status_code == 200
    assert client.get("/api/v1/docs/").status_code == 200
