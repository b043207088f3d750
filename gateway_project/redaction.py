"""Masking secrets before they reach a page, a log line or the audit log."""

import re
from functools import lru_cache
from typing import Any, Iterable
from urllib.parse import urlsplit, urlunsplit

MASK = "********"


def mask_url(url: str) -> str:
    """The URL with any password replaced by a mask: postgres://app:********@db:5432/gateway.

    Works on the text of the URL's authority, so that a URL that is wrong in some other way (a port out of range,
    a port that is not a number) is still shown, masked, in the message that says what is wrong with it.
    """
    try:
        parts = urlsplit(url)
    except ValueError:
        return MASK
    # The host never holds "@": everything before the last one is user and password (which may hold "@").
    userinfo, at, hostport = parts.netloc.rpartition("@")
    if not at or ":" not in userinfo:
        return url
    user = userinfo.split(":", 1)[0]
    return urlunsplit((parts.scheme, f"{user}:{MASK}@{hostport}", parts.path, parts.query, parts.fragment))


@lru_cache(maxsize=4096)  # payload key names repeat from request to request
def _words(name: str) -> tuple[str, ...]:
    """A key name as lower-case words, singular: "apiKey", "API_KEYS" and "api-key" all give ("api", "key")."""
    words = re.findall(r"[A-Z]+(?![a-z])|[A-Z]?[a-z]+|\d+", name)
    return tuple(word.lower().removesuffix("s") or word.lower() for word in words)


def is_secret_key(name: str, secret_names: Iterable[str]) -> bool:
    """Whether a key names a secret: one of secret_names appears in it as whole words (access_token, dbPassword)."""
    words = _words(name)
    for secret in secret_names:
        wanted = _words(secret)
        if wanted and any(words[i : i + len(wanted)] == wanted for i in range(len(words) - len(wanted) + 1)):
            return True
    return False


def mask_secrets(value: Any, secret_names: Iterable[str]) -> Any:
    """A copy of a parsed JSON value with the value of every secret-named key, at any depth, replaced by MASK."""
    secret_names = tuple(secret_names)
    if isinstance(value, dict):
        return {key: MASK if isinstance(key, str) and is_secret_key(key, secret_names)
                else mask_secrets(item, secret_names) for key, item in value.items()}
    if isinstance(value, list):
        return [mask_secrets(item, secret_names) for item in value]
    return value
