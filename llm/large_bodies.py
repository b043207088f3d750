"""Reading a body that images make large without holding Python's GIL for long.

json.loads of a 20 MiB body, or base64-decoding a 15 MiB image, is one C call that holds the GIL for 100-200 ms:
while it runs (in a database step's thread) the event loop, and every request of the worker with it, stands still.
So a body larger than the chat limit is read in steps that each take a few milliseconds at most:

- its long string literals that are base64 (or data URLs of base64) are found by a scan in Python, checked a chunk
  at a time, and cut out of the body; json.loads only sees the rest, which must fit the chat limit anyway;
- they come back, where they stood, as Base64Text: bytes of the body, read (decoded, hashed, sniffed) a chunk at a
  time by llm.images, and spliced into the provider's request as they are, never encoded as JSON again.
"""

from __future__ import annotations

import re
import secrets
from dataclasses import dataclass
from typing import Any, Callable

# String literals longer than this are cut out when they are base64: they may be images, which do not count
# against the text limit. Shorter ones cost json.loads nothing to speak of.
CUT_OVER = 4 * 1024
# Bytes per C call when checking or decoding: half a millisecond each (measured: base64 decoding 1 MiB, 2 ms).
CHUNK = 1 << 18
BASE64_ALPHABET = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/="
DATA_URL_HEAD = re.compile(rb"data:[A-Za-z0-9.+/-]{0,100};base64,")


@dataclass(frozen=True, eq=False)
class Base64Text:
    """A long string of the body that is base64, kept as the body's bytes: `head` is a data URL's
    "data:...;base64," (empty for plain base64), `data` the base64 itself."""

    head: str
    data: memoryview  # of the body itself: a 20 MiB copy holds the GIL for milliseconds too

    def __len__(self) -> int:
        return len(self.head) + len(self.data)

    def text(self) -> str:
        """The string as the client sent it (for a place where no image is expected)."""
        return self.head + bytes(self.data).decode("ascii")


class TextTooLarge(ValueError):
    """What is left of the body once its base64 is cut out is over the text limit: never parsed."""

    def __init__(self, size: int):
        super().__init__(size)
        self.size = size


def loads(body: bytes, parse: Callable[[bytes], Any], text_limit: int) -> Any:
    """The body parsed by `parse` (json.loads with the gateway's rules), its long base64 strings cut out first and
    put back as Base64Text. TextTooLarge as soon as more than `text_limit` bytes of it are something else: neither
    the scan nor the parser then spends more time on it."""
    token = secrets.token_hex(8)
    kept: list[bytes] = []
    cut: dict[str, Base64Text] = {}
    last = position = cut_bytes = 0
    while True:
        if position - cut_bytes > text_limit:
            raise TextTooLarge(position - cut_bytes)
        start = body.find(b'"', position)
        if start < 0:
            break
        end = _string_end(body, start)
        if end < 0:
            break  # unterminated: json.loads says so
        if end - start - 1 > CUT_OVER:
            found = _base64_literal(body, start + 1, end)
            if found is not None:
                name = f"\x00{token}:{len(cut)}"
                kept += [body[last:start], b'"\\u0000' + name[1:].encode() + b'"']
                cut[name] = found
                cut_bytes += end + 1 - start
                last = end + 1
        position = end + 1
    if len(body) - cut_bytes > text_limit:
        raise TextTooLarge(len(body) - cut_bytes)
    if not cut:
        return parse(body)
    data = parse(b"".join([*kept, body[last:]]))
    return _put_back(data, cut)


def restore(value) -> Any:
    """A parsed body with any Base64Text left where no image was expected turned back into its text."""
    stack = [value]
    while stack:
        item = stack.pop()
        pairs = item.items() if isinstance(item, dict) else enumerate(item) if isinstance(item, list) else ()
        for key, child in list(pairs):
            if isinstance(child, Base64Text):
                item[key] = child.text()
            elif isinstance(child, (dict, list)):
                stack.append(child)
    return value


def _string_end(body: bytes, start: int) -> int:
    """The index of the quote that closes the string opened at `start`, or -1."""
    position = start + 1
    while True:
        end = body.find(b'"', position)
        if end < 0:
            return -1
        backslashes = 0
        while body[end - 1 - backslashes] == 0x5C:  # a quote after an odd number of backslashes is escaped
            backslashes += 1
        if backslashes % 2 == 0:
            return end
        position = end + 1


def _base64_literal(body: bytes, start: int, end: int) -> Base64Text | None:
    head = DATA_URL_HEAD.match(body, start, min(end, start + 120))
    data_start = head.end() if head else start
    view = memoryview(body)
    for chunk_start in range(data_start, end, CHUNK):
        if bytes(view[chunk_start:min(end, chunk_start + CHUNK)]).translate(None, BASE64_ALPHABET):
            return None  # something else than base64: an escape, a space, text
    return Base64Text(head=head.group().decode("ascii") if head else "", data=view[data_start:end])


def _put_back(value, cut: dict[str, Base64Text]):
    if isinstance(value, str):
        return cut.get(value, value)
    stack = [value]
    while stack:
        item = stack.pop()
        pairs = item.items() if isinstance(item, dict) else enumerate(item) if isinstance(item, list) else ()
        for key, child in list(pairs):
            if isinstance(child, str) and child in cut:
                item[key] = cut[child]
            elif isinstance(child, (dict, list)):
                stack.append(child)
    return value
