"""gunicorn settings for the gateway: `gunicorn` alone, run from the project root, picks this file up and serves it.

uvicorn workers running the ASGI application: a generation mostly waits on Ollama, so each worker's event loop
holds hundreds of them at once. gunicorn's master keeps the start-up hooks and worker supervision.
Every value can be overridden on the command line or through GUNICORN_CMD_ARGS.
"""

import os

from gateway_project.environment import resolve

_gateway = resolve()

bind = os.environ.get("GUNICORN_BIND", "127.0.0.1:8000")
wsgi_app = "gateway_project.asgi:application"
worker_class = "gateway_project.workers.GatewayWorker"
workers = int(os.environ.get("WEB_CONCURRENCY", "2"))
# A worker whose event loop has not reported to the master for this long is stuck and is restarted. A long
# generation does not count: it waits on the loop, which keeps reporting.
timeout = 30
# On SIGTERM generations in flight get GRACEFUL_TIMEOUT to finish, then the worker ends the rest itself (error and
# completed audit row) within seconds (gateway_project.workers); only after that margin does the master kill it.
graceful_timeout = int(_gateway["GRACEFUL_TIMEOUT"]) + 20
keepalive = 5
# The gateway logs one structured line per request itself.
accesslog = None
errorlog = "-"


def on_starting(server):
    """Name shadowed and suspicious settings in gunicorn's log at start, as runserver's system checks do."""
    from diagnostics.resolved_settings import proxy_warnings, settings_warnings

    for warning in settings_warnings(_gateway) + proxy_warnings(os.environ):
        server.log.warning("%s: (%s) %s", warning.name, warning.id, warning)
