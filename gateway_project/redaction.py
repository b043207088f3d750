"""Masking secrets before they reach a page, a log line or the audit log."""

from urllib.parse import urlsplit, urlunsplit

MASK = "********"


def mask_url(url: str) -> str:
    """The URL with any password replaced by a mask: postgres://app:********@db:5432/gateway."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return MASK
    if parts.password is None:
        return url
    user = parts.username or ""
    host = parts.hostname or ""
    if ":" in host:  # IPv6 literal
        host = f"[{host}]"
    port = f":{parts.port}" if parts.port else ""
    return urlunsplit((parts.scheme, f"{user}:{MASK}@{host}{port}", parts.path, parts.query, parts.fragment))
