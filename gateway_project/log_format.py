"""The one JSON log line format, with every record bounded in size.

An exception's message may quote whatever it was raised about: a validation error quotes the whole reply it
checked, a database error the values it refused. Unbounded, one such traceback was a 150 KB log record carrying
a consumer's data. Here a traceback keeps its outermost and innermost frames with each line cut short, and every
other string field (the message, the `extra` values) is cut to a fixed length.
"""

from __future__ import annotations

import traceback

from pythonjsonlogger.json import JsonFormatter

# A frame's lines are short; what makes a line long is a value quoted in the exception's message.
MAX_LINE = 1_000
MAX_TRACEBACK = 8_000
MAX_FIELD = 2_000


def cut(text: str, limit: int, *, head_share: float = 2 / 3) -> str:
    """`text` if it fits, else its start and end with how much was left out between them."""
    if len(text) <= limit:
        return text
    keep = max(limit - 40, 2)
    head = int(keep * head_share)
    tail = keep - head
    return f"{text[:head]}… [{len(text) - head - tail} characters left out] …{text[len(text) - tail:]}"


class BoundedJsonFormatter(JsonFormatter):
    """python-json-logger's formatter, with tracebacks and string fields cut to bounded lengths."""

    def formatException(self, ei) -> str:  # noqa: N802 - logging's name
        lines = [cut(line, MAX_LINE) for chunk in traceback.format_exception(*ei) for line in chunk.splitlines()]
        # The end holds the innermost frames and the exception itself: it keeps the larger share.
        return cut("\n".join(lines), MAX_TRACEBACK, head_share=1 / 3)

    def process_log_record(self, log_data):
        for key, value in log_data.items():
            if isinstance(value, str) and key != "exc_info" and len(value) > MAX_FIELD:
                log_data[key] = cut(value, MAX_FIELD)
        return log_data
