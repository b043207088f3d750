"""Issuing and checking consumers' API keys.

A key reads gw_<prefix>_<secret>: the prefix (shown in admin and in the audit log) tells keys apart, the
secret makes the key unguessable. Only the SHA-256 of the whole key is stored.
"""

from __future__ import annotations

import base64
import hashlib
import logging
import re
import secrets
from datetime import datetime, timedelta

from django.db import DatabaseError
from django.utils import timezone

from llm import failed_keys
from llm.errors import AuditUnavailable, AuthenticationFailed, NotAuthenticated
from llm.models import ApiKey, Consumer

logger = logging.getLogger("llm.api_keys")

KEY_PREFIX = "gw_"
_SHAPE = re.compile(rf"{KEY_PREFIX}([0-9a-f]{{{ApiKey.PREFIX_LENGTH}}})_")
# last_used_at is written at most this often per key, so that checking a key rarely costs a write.
LAST_USED_RESOLUTION = timedelta(minutes=1)


class KeyRefused(AuthenticationFailed):
    """A key was presented and refused. `api_key` is the stored key when it was recognised (revoked, expired)."""

    def __init__(self, message: str, *, api_key: ApiKey | None = None):
        super().__init__(message)
        self.api_key = api_key


def hash_key(raw: str) -> str:
    return hashlib.sha256(raw.encode("utf-8", "surrogatepass")).hexdigest()


def assign_secret(key: ApiKey) -> str:
    """Give an unsaved ApiKey a new random key (its prefix and hash); return the raw key, never available again."""
    # The prefix avoids "_" so that gw_<prefix>_<secret> splits unambiguously when read back by a person.
    key.prefix = secrets.token_hex(ApiKey.PREFIX_LENGTH // 2)
    raw = f"{KEY_PREFIX}{key.prefix}_{secrets.token_urlsafe(32)}"
    key.hash = hash_key(raw)
    return raw


def issue_key(consumer: Consumer, *, expires_at: datetime | None = None) -> tuple[ApiKey, str]:
    """Create a key for the consumer; return the stored row and the raw key."""
    key = ApiKey(consumer=consumer, expires_at=expires_at)
    raw = assign_secret(key)
    key.save(force_insert=True)
    return key, raw


def revoke(keys) -> int:
    """Revoke the keys of a queryset that are not revoked yet; return how many were."""
    return keys.filter(revoked_at__isnull=True).update(revoked_at=timezone.now())


def presented_key(meta: dict, *, basic: bool = False) -> str | None:
    """The key a request presents, from `Authorization: Bearer <key>` or `X-API-Key: <key>`; None if neither.

    With `basic`, also the password of HTTP Basic auth (the user name is ignored), for clients that take only a
    URL such as http://user:KEY@gateway:8000. Raises KeyRefused for an empty key, or an Authorization header of
    another scheme without an X-API-Key.
    """
    authorization = meta.get("HTTP_AUTHORIZATION", "").strip()
    scheme, _, credentials = authorization.partition(" ")
    if scheme.lower() == "bearer":
        if not credentials.strip():
            raise KeyRefused("The Authorization header holds no API key after 'Bearer'.")
        return credentials.strip()
    if basic and scheme.lower() == "basic":
        return _basic_password(credentials.strip())
    header = meta.get("HTTP_X_API_KEY")
    if header is not None:
        if not header.strip():
            raise KeyRefused("The X-API-Key header is empty.")
        return header.strip()
    if authorization:  # another scheme (Basic, Token, ...) and no X-API-Key
        raise KeyRefused("Send the API key as 'Authorization: Bearer <key>' or 'X-API-Key: <key>'.")
    return None


def _basic_password(credentials: str) -> str:
    try:
        decoded = base64.b64decode(credentials, validate=True).decode("utf-8")
    except (ValueError, UnicodeDecodeError):
        raise KeyRefused("The Basic credentials are not base64 of user:key.") from None
    user, _, password = decoded.partition(":")
    # A key given as the user name alone (http://KEY@host) is still the key.
    key = (password or user).strip()
    if not key:
        raise KeyRefused("The Basic credentials hold no API key: put it as the password.")
    return key


def presented_prefix(raw: str | None) -> str:
    """The prefix of a presented key of the gateway's shape (gw_<prefix>_...), checked only for its shape; or ""."""
    match = _SHAPE.match(raw or "")
    return match[1] if match else ""


def verify(raw: str) -> ApiKey:
    """The active ApiKey (with its consumer) that `raw` is, or KeyRefused saying why not.

    The message never repeats the presented key: error bodies and audit rows must not carry it.
    """
    try:
        # get() on the unique hash: one indexed lookup, no ORDER BY (first() would add the model's ordering).
        key = ApiKey.objects.select_related("consumer").get(hash=hash_key(raw))
    except ApiKey.DoesNotExist:
        raise KeyRefused("The API key is not valid.") from None
    except DatabaseError as exc:
        logger.error("API keys cannot be read", extra={"error": str(exc)})
        raise AuditUnavailable("The gateway's database cannot be read, so nothing was generated. Try again later.")
    now = timezone.now()
    refusal = key.refusal(now)
    if refusal:
        raise KeyRefused(refusal, api_key=key)
    if key.last_used_at is None or key.last_used_at < now - LAST_USED_RESOLUTION:
        try:
            ApiKey.objects.filter(pk=key.pk).update(last_used_at=now)
        except DatabaseError as exc:
            # Bookkeeping only: a busy database must not turn a valid key away.
            logger.warning("last_used_at not recorded", extra={"api_key_prefix": key.prefix, "error": str(exc)})
        key.last_used_at = now
    return key


def check(presented: str | None, *, refusal: NotAuthenticated | None = None, client_ip: str | None) -> ApiKey:
    """The active key presented, for every door that takes one; else raise why not, counted against the address.

    `refusal` is why what was presented is no key at all (presented_key's KeyRefused). Past FAILED_KEYS_PER_MINUTE
    refusals from the address in a minute, a refusal is AuthThrottled instead (counted in one row, see failed_keys).
    """
    try:
        if refusal is not None:
            raise refusal
        if presented is None:
            raise missing_key()
        return verify(presented)
    except NotAuthenticated:
        failed_keys.count_refusal(client_ip)
        raise


def missing_key() -> NotAuthenticated:
    return NotAuthenticated("An API key is required: send 'Authorization: Bearer <key>' or 'X-API-Key: <key>'.")
