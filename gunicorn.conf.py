"""gunicorn settings for the gateway: `gunicorn` alone, run from the project root, picks this file up and serves it.

uvicorn workers running the ASGI application: a generation mostly waits on Ollama, so each worker's event loop
holds hundreds of them at once. gunicorn's master keeps the start-up hooks and worker supervision.
Every value can be overridden on the command line or through GUNICORN_CMD_ARGS.
"""

import glob
import os
import shutil
import tempfile

# Prometheus' multiprocess mode: each worker writes its metrics to files in this directory, and /metrics, served by
# any worker, sums them. prometheus_client chooses the mode when it is first imported, so the variable is set here,
# in the master, before any worker (or this file) imports it. An operator's own directory is kept; otherwise each
# master gets a fresh one, so that two gateways on one machine never add up each other's counts.
if "PROMETHEUS_MULTIPROC_DIR" not in os.environ:
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = tempfile.mkdtemp(prefix="llm-gateway-metrics-")
    # Remembered in the environment: a reload (SIGHUP) reads this file again and must still know it is ours.
    os.environ["LLM_GATEWAY_OWN_METRICS_DIR"] = os.environ["PROMETHEUS_MULTIPROC_DIR"]
_metrics_dir = os.environ["PROMETHEUS_MULTIPROC_DIR"]

from gateway_project.environment import resolve  # noqa: E402

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
# gunicorn's control socket (gunicornc: worker counts, reload, shutdown) defaults to one path per user,
# $XDG_RUNTIME_DIR/gunicorn.ctl or ~/.gunicorn/gunicorn.ctl: a second gateway started by the same user unlinks the
# first one's socket and binds its own there, so gunicornc then steers (or shuts down) the wrong gateway, and once
# the second stops, the first has none. Off, unless GUNICORN_CONTROL_SOCKET names a path of this instance's own.
_control_socket = os.environ.get("GUNICORN_CONTROL_SOCKET", "").strip()
if _control_socket:
    control_socket = _control_socket
control_socket_disable = not _control_socket
# The gateway logs one structured line per request itself.
accesslog = None
errorlog = "-"


def on_starting(server):
    """Name shadowed and suspicious settings in gunicorn's log at start, as runserver's system checks do.

    Also empties the metrics directory: the files of a previous run would otherwise be counted again, and a
    counter would jump when Prometheus expects it to have restarted from zero.
    """
    from diagnostics.resolved_settings import proxy_warnings, settings_warnings

    for warning in settings_warnings(_gateway) + proxy_warnings(os.environ):
        server.log.warning("%s: (%s) %s", warning.name, warning.id, warning)
    os.makedirs(_metrics_dir, exist_ok=True)
    for path in glob.glob(os.path.join(_metrics_dir, "*.db")):
        os.remove(path)


def child_exit(server, worker):
    """A worker that died no longer has requests in flight: drop its live gauges (its counters still count)."""
    from prometheus_client import multiprocess

    multiprocess.mark_process_dead(worker.pid, _metrics_dir)


def on_exit(server):
    if os.environ.get("LLM_GATEWAY_OWN_METRICS_DIR") == _metrics_dir:
        shutil.rmtree(_metrics_dir, ignore_errors=True)
