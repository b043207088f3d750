"""The HTTP/1.1 protocol the gateway's workers speak: uvicorn's (httptools), with two guards for slow clients.

- **The request head is bounded.** uvicorn waits for a request's line and headers as long as the client takes,
  so a client that sends one byte every few seconds holds its connection for ever (400 such clients were never
  timed out). Here the head must be complete within REQUEST_HEADER_TIMEOUT, counted from the connection's start
  or, on a kept-alive connection, from the next request's first byte (the idle time before it is uvicorn's
  keep-alive timeout); otherwise the client gets 408 and the connection is closed. A timer per connection, on the
  event loop: nothing else waits for it. (A slow body is bounded by the ASGI handler: gateway_project.asgi.)
- **A refused body is drained before the connection closes.** A request answered without its body having been
  read (413, 408) ends with `Connection: close`. Closing a socket whose peer is still sending makes the kernel
  answer with a reset, which can destroy the answer before the client reads it (RFC 9112, section 9.6). So such a
  connection stops writing, reads and drops whatever still comes for up to LINGER_SECONDS, then closes.
"""

from __future__ import annotations

import asyncio
import logging

from django.conf import settings
from uvicorn.protocols.http.httptools_impl import STATUS_LINE, HttpToolsProtocol

logger = logging.getLogger("gateway.connections")

LINGER_SECONDS = 5.0


class GatewayHttpProtocol(HttpToolsProtocol):
    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self._head_timer: asyncio.TimerHandle | None = None
        self._head_bytes = 0  # of the request head that is awaited
        self._linger_timer: asyncio.TimerHandle | None = None
        self._lingering = False

    def connection_made(self, transport):
        self._socket_transport = transport
        super().connection_made(_LingeringTransport(transport, self))
        self._await_head()

    def connection_lost(self, exc):
        for timer in (self._head_timer, self._linger_timer):
            if timer is not None:
                timer.cancel()
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        if self._lingering:
            return  # the rest of a refused body: dropped
        if self.cycle is None or self.cycle.response_complete:
            if self._head_timer is None:
                self._await_head()
            self._head_bytes += len(data)
        super().data_received(data)

    def eof_received(self):
        if self._lingering:
            self._socket_transport.close()
        return super().eof_received()

    def on_headers_complete(self) -> None:
        if self._head_timer is not None:
            self._head_timer.cancel()
            self._head_timer = None
        self._head_bytes = 0
        super().on_headers_complete()

    def _await_head(self) -> None:
        self._head_timer = self.loop.call_later(settings.REQUEST_HEADER_TIMEOUT, self._head_timed_out)

    def _head_timed_out(self) -> None:
        self._head_timer = None
        if self._socket_transport.is_closing():
            return
        if self._head_bytes:
            # A connection that never sent a byte (a browser's spare one) is closed without an answer.
            logger.info("request head timed out", extra={
                "client_ip": self.client[0] if self.client else None, "head_bytes": self._head_bytes,
                "timeout_s": settings.REQUEST_HEADER_TIMEOUT})
            message = (f"The request's line and headers did not arrive within {settings.REQUEST_HEADER_TIMEOUT:g}s "
                       "(REQUEST_HEADER_TIMEOUT).").encode()
            defaults = [name + b": " + value + b"\r\n" for name, value in self.server_state.default_headers]
            self._socket_transport.write(b"".join([
                STATUS_LINE[408], *defaults, b"content-type: text/plain; charset=utf-8\r\n",
                b"content-length: " + str(len(message)).encode() + b"\r\n",
                b"connection: close\r\n\r\n", message]))
        self._socket_transport.close()

    def close_connection(self) -> None:
        """Close, after draining the request body if the client is still sending one that was not read."""
        transport = self._socket_transport
        if self._lingering or transport.is_closing():
            return
        if self.cycle is not None and self.cycle.more_body and transport.can_write_eof():
            self._lingering = True
            transport.write_eof()  # the answer is flushed first, then the client reads the end of it
            self.flow.resume_reading()
            self._linger_timer = self.loop.call_later(LINGER_SECONDS, transport.close)
            return
        transport.close()


class _LingeringTransport:
    """The connection's transport as uvicorn sees it: its close() is GatewayHttpProtocol.close_connection."""

    def __init__(self, transport: asyncio.Transport, protocol: GatewayHttpProtocol):
        self._transport = transport
        self._protocol = protocol

    def close(self) -> None:
        self._protocol.close_connection()

    def is_closing(self) -> bool:
        # Lingering, the connection is as good as closed: uvicorn must not wait for a next request on it.
        return self._protocol._lingering or self._transport.is_closing()

    def __getattr__(self, name):
        return getattr(self._transport, name)
