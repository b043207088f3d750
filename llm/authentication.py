"""API-key authentication for the LLM API views.

Set per view, never in DEFAULT_AUTHENTICATION_CLASSES: an API key opens the generation API and nothing else
(not the admin, not the debug endpoints, which take staff sessions).
"""

from rest_framework import authentication, exceptions

from llm import api_keys, content_hmac
from llm.errors import AUTHENTICATE_HEADER


class ApiKeyRefused(exceptions.AuthenticationFailed):
    """DRF's AuthenticationFailed carrying the gateway's refusal, so that the view can audit it."""

    def __init__(self, refusal: api_keys.KeyRefused):
        super().__init__(refusal.message)
        self.refusal = refusal


class ApiKeyAuthentication(authentication.BaseAuthentication):
    """`Authorization: Bearer <key>` or `X-API-Key: <key>`; authenticates as (Consumer, ApiKey)."""

    def authenticate(self, request):
        try:
            raw, refusal = api_keys.presented_key(request.META), None
        except api_keys.KeyRefused as exc:
            raw, refusal = None, exc
        if raw is None and refusal is None:
            return None
        try:
            # Counted against the client's address like a generation's key (llm.failed_keys).
            key = api_keys.check(raw, refusal=refusal, client_ip=request.META.get("REMOTE_ADDR"))
        except api_keys.KeyRefused as refusal:
            raise ApiKeyRefused(refusal) from None
        if key.consumer.metadata_only:
            content_hmac.withhold_from_log(request, request.META.get("REMOTE_ADDR"))
        return key.consumer, key

    def authenticate_header(self, request):
        return AUTHENTICATE_HEADER
