"""What a metadata-only consumer's rows keep in place of content: an HMAC-SHA-256 and a length per field.

The HMAC's key is CONTENT_HMAC_KEY, else a key derived from SECRET_KEY. Without the key nobody can test guesses
against a stored HMAC; with it, an operator can check whether a known text was sent (`manage.py content_hmac`).
A text is hashed as its UTF-8 bytes, anything else (messages, tool calls, a request body) as canonical JSON:
sorted keys, no spaces, non-ASCII characters as they are.
"""

from __future__ import annotations

import contextvars
import hashlib
import hmac
import json
import traceback

from django.conf import settings

from gateway_project.middleware import annotate_request_log

# Set in the task of a metadata-only consumer's generation: what is logged there (the provider's conditions) says
# nothing that may quote content.
_withheld = contextvars.ContextVar("content_withheld", default=False)

# The derivation's label: a key derived from SECRET_KEY for this purpose only, never SECRET_KEY itself.
DERIVATION_LABEL = b"llm-gateway content hmac v1"


def key() -> bytes:
    """The HMAC key: CONTENT_HMAC_KEY, or one derived from SECRET_KEY when it is not set."""
    own = getattr(settings, "CONTENT_HMAC_KEY", "")
    if own:
        return own.encode()
    return hmac.new(settings.SECRET_KEY.encode(), DERIVATION_LABEL, hashlib.sha256).digest()


def canonical(value) -> str:
    """The text a value is hashed as: a string itself, anything else its canonical JSON."""
    if isinstance(value, str):
        return value
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def digest(value) -> dict:
    """{"hmac_sha256": hex, "length": characters} of one value."""
    text = canonical(value)
    mac = hmac.new(key(), text.encode("utf-8", "replace"), hashlib.sha256).hexdigest()
    return {"hmac_sha256": mac, "length": len(text)}


def digests(values: dict) -> dict:
    """The digest of each value that holds something (empty strings and None stay out: nothing was there)."""
    return {name: digest(value) for name, value in values.items() if value not in (None, "", [], {})}


def frames_only(exc: BaseException) -> str:
    """A traceback with its frames and the exception's class, without its message (which may quote content)."""
    frames = "".join(traceback.format_tb(exc.__traceback__))
    return f"Traceback (most recent call last):\n{frames}{exc.__class__.__module__}.{exc.__class__.__qualname__}: " \
           "[message withheld: content not stored]"


def withhold_from_log(request, client_ip: str | None) -> None:
    """A metadata-only consumer's request log line: its address as an HMAC, and no error detail (see
    llm.errors.annotate_error), which may quote what Ollama answered."""
    annotate_request_log(request, content_stored=False, client_ip=None,
                         client_ip_hmac=digest(client_ip)["hmac_sha256"] if client_ip else None)


def withhold_here(withheld: bool) -> None:
    """From here on in this task, logs carry no content (a metadata-only consumer's generation) or may.

    Set by every generation, either way: a test client copies a request's context back into its caller's."""
    _withheld.set(withheld)


def withheld_here() -> bool:
    return _withheld.get()
