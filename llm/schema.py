"""The OpenAPI description of the LLM API (drf-spectacular): authentication, the error shape, which paths."""

from drf_spectacular.extensions import OpenApiAuthenticationExtension
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import OpenApiExample, OpenApiResponse, extend_schema
from rest_framework.views import APIView

from llm.authentication import ApiKeyAuthentication
from llm.serializers import ErrorSerializer, GenerateRequestSerializer, GenerationSerializer

BEARER = "ApiKeyBearer"
HEADER = "ApiKeyHeader"


class ApiKeyAuthenticationScheme(OpenApiAuthenticationExtension):
    target_class = "llm.authentication.ApiKeyAuthentication"
    name = [BEARER, HEADER]

    def get_security_requirement(self, auto_schema):
        # Either header alone authenticates: two alternatives, not one requirement naming both.
        return [{BEARER: []}, {HEADER: []}]

    def get_security_definition(self, auto_schema):
        how = ("A consumer's API key (gw_…), issued by `manage.py create_api_key NAME` or in admin. "
               "Missing, invalid, expired or revoked keys get 401.")
        return [
            {"type": "http", "scheme": "bearer", "bearerFormat": "gw_<prefix>_<secret>", "description": how},
            {"type": "apiKey", "in": "header", "name": "X-API-Key", "description": how},
        ]


def _error(description: str, type_: str, message: str) -> OpenApiResponse:
    example = {"error": {"type": type_, "message": message, "request_id": "0f8fad5b-d9cb-469f-a165-70867728950e"}}
    return OpenApiResponse(ErrorSerializer, description=description,
                           examples=[OpenApiExample(type_, value=example, response_only=True)])


ERROR_RESPONSES = {
    400: _error("invalid_request: the body is not JSON, or fields are missing, unknown or out of range "
                "(per-field messages in `details`); also Ollama refusing the request.",
                "invalid_request", "The request is invalid; see details."),
    401: _error("not_authenticated (no key) or authentication_failed (invalid, expired or revoked key). "
                "Sent with `WWW-Authenticate: Bearer`.", "authentication_failed", "The API key is not valid."),
    404: _error("model_not_found: the model is not pulled on the Ollama server.", "model_not_found",
                "Model 'mistral:7b' is not available on Ollama. Pull it there with: ollama pull mistral:7b"),
    408: _error("request_timeout: the body did not arrive within REQUEST_BODY_TIMEOUT (30 s by default); the "
                "connection is closed after the answer.", "request_timeout",
                "The request body did not arrive within 30s (REQUEST_BODY_TIMEOUT); 2048 bytes came."),
    413: _error("payload_too_large: the body is over 64 KiB. A Content-Length over it is refused before the body is "
                "read, a chunked body once it passes the limit; the connection is closed after the answer.",
                "payload_too_large", "The request body is over the limit of 65536 bytes (64 KiB)."),
    415: _error("unsupported_media_type: the body must be application/json.", "unsupported_media_type",
                "Content-Type must be application/json, not 'text/plain'."),
    429: _error("rate_limited: the consumer's generations per minute are used up; or auth_throttled: this client "
                "address presented more than FAILED_KEYS_PER_MINUTE missing or wrong keys this minute, so no key is "
                "checked until it is over. `Retry-After` says for how many seconds.", "rate_limited",
                "Rate limit of 60 generations per minute exceeded; retry after 12s."),
    502: _error("upstream_error (Ollama failed, after retries) or invalid_output (json mode: the model's reply, "
                "asked twice, was not a JSON object).", "invalid_output", "The model's reply is not a JSON object."),
    503: _error("upstream_unavailable (Ollama cannot be reached or is busy, after retries) or audit_unavailable "
                "(the audit log cannot be written, so nothing was generated).", "upstream_unavailable",
                "Cannot connect to Ollama. (3 attempts)"),
    504: _error("upstream_timeout: Ollama did not reply within OLLAMA_TIMEOUT.", "upstream_timeout",
                "Ollama did not reply within 120s (OLLAMA_TIMEOUT)."),
}


def only_the_llm_api(endpoints):
    """drf-spectacular preprocessing hook: the published schema is the consumers' API (the native one and the OpenAI
    dialect), not staff endpoints."""
    return [endpoint for endpoint in endpoints if endpoint[0].startswith(("/api/v1/llm/", "/v1/"))]


def closed_request_objects(result, generator, request, public):
    """drf-spectacular postprocessing hook: request objects reject unknown fields, so the schema says so."""
    schemas = result.get("components", {}).get("schemas", {})
    for name in ("GenerateRequestRequest", "OllamaOptionsRequest"):
        if name in schemas:
            schemas[name]["additionalProperties"] = False
    return result


class GenerateOperation(APIView):
    """The OpenAPI description of POST /api/v1/llm/generate.

    An async Django view serves the endpoint (DRF's views cannot be async), and drf-spectacular only describes DRF
    views: it reads this class through llm.schema_urls. No request ever reaches it.
    """

    authentication_classes = [ApiKeyAuthentication]
    permission_classes = []

    @extend_schema(
        operation_id="generate",
        tags=["generation"],
        summary="Generate with a local LLM",
        description="Builds a prompt from role, task and payload, asks the model (Ollama, or the mock) and returns "
                    "its output: a JSON object in json mode, a string in text mode. Every attempt, refused ones "
                    "included, leaves one audit row whose id is the X-Request-ID response header. "
                    "With `\"stream\": true` the answer is `application/x-ndjson`: one "
                    '`{"id", "delta", "done": false}` line per piece of text (`{"id", "thinking", "done": false}` for '
                    "a reasoning model's thinking), then one line with `\"done\": true` "
                    "and either the fields of the JSON answer (plus `first_token_ms`) or an `error` object. "
                    "`Server-Timing` says how long the provider took (`upstream`) and the gateway (`gateway`).",
        request={"application/json": GenerateRequestSerializer},
        responses={(200, "application/json"): GenerationSerializer,
                   (200, "application/x-ndjson"): OpenApiTypes.STR,
                   **ERROR_RESPONSES},
    )
    def post(self, request):
        raise NotImplementedError("served by llm.views.generate")
