"""gunicorn settings for the gateway: `gunicorn gateway_project.wsgi` picks this file up from the project root.

gthread workers: a generation mostly waits on Ollama, so threads (not processes) carry the concurrency.
Every value can be overridden on the command line or through GUNICORN_CMD_ARGS.
"""

import os

from gateway_project.environment import resolve

_gateway = resolve()

bind = os.environ.get("GUNICORN_BIND", "127.0.0.1:8000")
worker_class = "gthread"
workers = int(os.environ.get("WEB_CONCURRENCY", "2"))
threads = int(os.environ.get("GUNICORN_THREADS", "8"))
# A worker silent for longer than this is killed; it must outlast the slowest legitimate generation: every
# call to Ollama (retries included, and json mode's one extra ask) taking the longest it may, plus the pauses.
_calls = 2 * (_gateway["OLLAMA_MAX_RETRIES"] + 1)
_pauses = 2 * _gateway["OLLAMA_MAX_RETRIES"] * 10  # llm.providers.ollama.MAX_BACKOFF_SECONDS each
timeout = int(_calls * (_gateway["OLLAMA_TIMEOUT"] + _gateway["OLLAMA_CONNECT_TIMEOUT"]) + _pauses + 30)
graceful_timeout = 30
keepalive = 5
# The gateway logs one structured line per request itself.
accesslog = None
errorlog = "-"


def on_starting(server):
    """Name shadowed and suspicious settings in gunicorn's log at start, as runserver's system checks do."""
    from diagnostics.resolved_settings import proxy_warnings, settings_warnings

    for warning in settings_warnings(_gateway) + proxy_warnings(os.environ):
        server.log.warning("%s: (%s) %s", warning.name, warning.id, warning)
