"""Images in requests (vision models): read and checked before Ollama sees them, never fetched, never stored.

Both dialects bring images as text: the Ollama dialect as base64, the OpenAI dialect as a `data:` URL. The gateway
decodes each once, checks that it is an image of a kind vision models read (by its bytes, whatever it claims),
and from then on carries an Image: the base64 for Ollama, and the SHA-256, size and detected type that the audit
log keeps in its place. A remote URL is never fetched: that would make the gateway a way into the network it
stands in.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
from dataclasses import dataclass

import filetype

from llm.large_bodies import CHUNK, Base64Text
from llm.providers.base import Image

# What Ollama's vision models decode (Go's image packages and llama.cpp's stb_image both read these).
MEDIA_TYPES = ("image/png", "image/jpeg", "image/webp", "image/gif", "image/bmp")
# The magic numbers of every type above sit in the first bytes; the sniffer is given no more.
SNIFFED_BYTES = 64


@dataclass(frozen=True)
class UnreadableImage:
    """Something at an image's place that is not one: why, and what the audit log keeps of it instead."""

    problem: str
    sha256: str  # of the text as sent
    size: int  # characters as sent

    def audit(self) -> dict:
        return {"image": {"sha256": self.sha256, "size": self.size, "type": None, "problem": self.problem}}


@dataclass(frozen=True)
class RemoteImage:
    """An image by URL: refused, never fetched. The URL is what the audit log keeps (it holds no image bytes)."""

    url: str

    def audit(self) -> str:
        return self.url


def read_base64(text) -> Image | UnreadableImage:
    """An image sent as base64 (Ollama's `images`): the Image, or why it is not one."""
    if isinstance(text, Base64Text):
        if text.head:
            return UnreadableImage("is not valid base64 (a data URL: send the base64 alone)", _sha256(text.head),
                                   len(text))
        return _decoded_in_chunks(text.data)
    if not isinstance(text, str):
        return UnreadableImage("must be a base64 string", hashlib.sha256(repr(text).encode()).hexdigest(), 0)
    return _decoded(text, text)


def read_url(url) -> Image | UnreadableImage | RemoteImage:
    """An image sent as a URL (OpenAI's `image_url`): a `data:image/...;base64,` URL is read; an http(s) URL is
    a RemoteImage (refused by the front door); anything else is unreadable."""
    if isinstance(url, Base64Text):
        declared = url.head[5:-7].lower()
        if not url.head:
            return UnreadableImage('must be a data URL ("data:image/png;base64,..."); the gateway fetches no URL',
                                   hashlib.sha256(url.data).hexdigest(), len(url))
        if declared and not declared.startswith("image/"):
            return UnreadableImage(f"a data URL of type {declared[:40]!r} is not an image", _sha256(url.head),
                                   len(url))
        return _decoded_in_chunks(url.data)
    if not isinstance(url, str):
        return UnreadableImage('must be a data URL ("data:image/png;base64,...")',
                               hashlib.sha256(repr(url).encode()).hexdigest(), 0)
    scheme = url[:8].lower()
    if scheme.startswith(("http://", "https://")):
        return RemoteImage(url)
    head, comma, data = url.partition(",")
    if not comma or not head.lower().startswith("data:") or not head.lower().endswith(";base64"):
        return UnreadableImage('must be a data URL ("data:image/png;base64,..."); the gateway fetches no URL',
                               _sha256(url), len(url))
    declared = head[5:-7].lower()
    if declared and not declared.startswith("image/"):
        return UnreadableImage(f"a data URL of type {declared[:40]!r} is not an image", _sha256(url), len(url))
    return _decoded(data, url)


def _decoded(data: str, sent: str) -> Image | UnreadableImage:
    # Go's base64 decoder (Ollama's) skips line breaks; anything else outside the alphabet is an error.
    compact = data.replace("\r", "").replace("\n", "") if ("\n" in data or "\r" in data) else data
    try:
        raw = base64.b64decode(compact, validate=True)
    except (binascii.Error, ValueError):
        return UnreadableImage("is not valid base64", _sha256(sent), len(sent))
    kind = filetype.guess_mime(raw[:SNIFFED_BYTES]) if raw else None
    if kind not in MEDIA_TYPES:
        found = f" (its bytes are {kind})" if kind else ""
        return UnreadableImage(f"is not an image{found}; send PNG, JPEG, WebP, GIF or BMP", hashlib.sha256(raw)
                               .hexdigest(), len(raw))
    return Image(data=compact, sha256=hashlib.sha256(raw).hexdigest(), size=len(raw), media_type=kind)


def _decoded_in_chunks(data: memoryview) -> Image | UnreadableImage:
    """A long base64 image (see llm.large_bodies) decoded and hashed a chunk at a time: no single step holds the
    GIL for more than a millisecond or so. Its base64 goes to Ollama as it came."""
    digest, size, head = hashlib.sha256(), 0, b""
    step = CHUNK - CHUNK % 4
    if len(data) % 4:
        return UnreadableImage("is not valid base64", hashlib.sha256(data).hexdigest(), len(data))
    for start in range(0, len(data), step):
        chunk = data[start:start + step]
        if start + step < len(data) and chunk[-1] == 0x3D:  # "=": padding before the end
            return UnreadableImage("is not valid base64", hashlib.sha256(data).hexdigest(), len(data))
        try:
            raw = binascii.a2b_base64(chunk, strict_mode=True)
        except binascii.Error:
            return UnreadableImage("is not valid base64", hashlib.sha256(data).hexdigest(), len(data))
        if not head:
            head = raw[:SNIFFED_BYTES]
        digest.update(raw)
        size += len(raw)
    kind = filetype.guess_mime(head) if head else None
    if kind not in MEDIA_TYPES:
        found = f" (its bytes are {kind})" if kind else ""
        return UnreadableImage(f"is not an image{found}; send PNG, JPEG, WebP, GIF or BMP", digest.hexdigest(), size)
    return Image(data=data, sha256=digest.hexdigest(), size=size, media_type=kind)


def _sha256(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8", "replace")).hexdigest()
