"""The name of this gateway process as its audit rows record it (Generation.worker): host:pid:token.

gunicorn's master knows each worker by its pid and by the token it drew for the worker before forking it
(gateway_project.workers), so that when the worker dies it finds the rows the worker left pending. The token
tells apart two processes with the same host name and pid (containers with a fixed host name). A process that
gunicorn did not start (uvicorn alone, runserver, a test) draws a token of its own.
"""

from __future__ import annotations

import os
import secrets
import socket

_HOST = socket.gethostname()[:60]
_token: str = secrets.token_hex(4)
_pid: int = os.getpid()
_name: str | None = None


def name_of(pid: int, token: str) -> str:
    return f"{_HOST}:{pid}:{token}"


def new_token() -> str:
    return secrets.token_hex(4)


def adopt(token: str) -> None:
    """In a gunicorn worker, just forked: take the token the master drew for it."""
    global _token, _pid, _name
    _token, _pid, _name = token, os.getpid(), None


def current() -> str:
    """This process's name."""
    global _token, _pid, _name
    pid = os.getpid()
    if pid != _pid:
        # Forked without adopt(): the parent's token would name the parent's rows too.
        _token, _pid, _name = new_token(), pid, None
    if _name is None:
        _name = name_of(pid, _token)
    return _name
