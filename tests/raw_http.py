"""HTTP/1.1 written by hand over a socket: the requests no client library sends (a lying Content-Length, a body cut
off at the limit, a head or a body trickled a byte at a time)."""

from __future__ import annotations

import http.client
import json
import socket
import threading
import time
from dataclasses import dataclass


@dataclass
class RawResponse:
    status: int
    headers: dict[str, str]
    body: bytes
    seconds: float  # from the first byte sent to the whole response read

    def json(self):
        return json.loads(self.body)


class RawConnection:
    """One connection to the gateway at `url`; every wait on it gives up after `timeout` seconds."""

    def __init__(self, url: str, *, timeout: float = 5.0):
        host, port = url.removeprefix("http://").split(":")
        self.sock = socket.create_connection((host, int(port)), timeout=timeout)
        self.started = time.monotonic()
        self.sent = 0

    def send(self, data: bytes) -> None:
        if not self.sent:
            self.started = time.monotonic()
        self.sock.sendall(data)
        self.sent += len(data)

    def send_in_background(self, data: bytes) -> threading.Thread:
        """Send `data` from another thread, as a client writes its whole body before it reads the answer."""
        self.started = time.monotonic()
        errors = []

        def send():
            try:
                self.sock.sendall(data)
            except OSError as exc:
                errors.append(exc)

        thread = threading.Thread(target=send, daemon=True)
        thread.errors = errors
        thread.start()
        return thread

    def trickle(self, data: bytes, *, every: float = 0.1) -> threading.Thread:
        """Send `data` a byte every `every` seconds from another thread, until it is sent, the server closes the
        connection, or this side does."""
        self.started = time.monotonic()

        def send():
            for byte in data:
                try:
                    self.sock.sendall(bytes([byte]))
                except OSError:
                    return
                time.sleep(every)

        thread = threading.Thread(target=send, daemon=True)
        thread.start()
        return thread

    def response(self) -> RawResponse:
        """The next response (a 100 Continue included), read to its end."""
        reply = http.client.HTTPResponse(self.sock)
        reply.begin()
        body = reply.read()
        return RawResponse(reply.status, {k.lower(): v for k, v in reply.getheaders()}, body,
                           time.monotonic() - self.started)

    def closed_by_server(self, timeout: float = 5.0) -> bool:
        """Whether the server ends the connection (EOF or reset) within `timeout`; any bytes it sends are dropped."""
        self.sock.settimeout(timeout)
        deadline = time.monotonic() + timeout
        try:
            while time.monotonic() < deadline:
                if not self.sock.recv(65536):
                    return True
        except (ConnectionResetError, BrokenPipeError):
            return True
        except TimeoutError:
            return False
        return False

    def close(self) -> None:
        self.sock.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def head(method: str, path: str, *, key: str | None = None, **headers: str) -> bytes:
    """A request line and headers; keyword names are header names with _ for - (content_length=...)."""
    lines = [f"{method} {path} HTTP/1.1", "Host: 127.0.0.1"]
    if key:
        lines.append(f"Authorization: Bearer {key}")
    lines += [f"{name.replace('_', '-').title()}: {value}" for name, value in headers.items()]
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


def chunked(data: bytes, size: int = 16 * 1024, *, last: bool = True) -> bytes:
    """`data` in Transfer-Encoding: chunked, with the terminating chunk unless `last` is False."""
    chunks = [b"%x\r\n%s\r\n" % (len(data[i:i + size]), data[i:i + size]) for i in range(0, len(data), size)]
    return b"".join(chunks) + (b"0\r\n\r\n" if last else b"")
