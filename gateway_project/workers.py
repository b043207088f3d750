"""The gunicorn worker the gateway runs in: uvicorn's, with a shutdown that drains generations first.

On SIGTERM the worker stops accepting connections, /readyz answers 503, and generations in flight get
GRACEFUL_TIMEOUT seconds to finish. Those still running then are ended by the gateway itself — an error line for a
stream, an error answer otherwise, and a completed audit row — before uvicorn closes the connections; never killed
with a pending row.
"""

import sys

from gunicorn.arbiter import Arbiter
from uvicorn.server import Server
from uvicorn_worker import UvicornWorker

from gateway_project.connections import GatewayHttpProtocol

# What uvicorn waits for once the generations are done: responses being written out, idle keep-alive connections.
CONNECTIONS_GRACE_SECONDS = 5


class DrainingServer(Server):
    async def shutdown(self, sockets=None):
        from django.conf import settings

        from llm import admission

        for server in self.servers:
            server.close()  # stop accepting first: the load balancer sends new requests elsewhere
        await admission.drain(settings.GRACEFUL_TIMEOUT)
        await super().shutdown(sockets=sockets)


class GatewayWorker(UvicornWorker):
    # Django's ASGI handler implements no lifespan protocol; saying so keeps a misleading line out of the log.
    # The HTTP protocol is uvicorn's httptools one with a bound on slow request heads (gateway_project.connections).
    CONFIG_KWARGS = {"loop": "auto", "http": GatewayHttpProtocol, "lifespan": "off"}

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.config.timeout_graceful_shutdown = CONNECTIONS_GRACE_SECONDS

    async def _serve(self) -> None:
        # As UvicornWorker._serve, with the draining server.
        self.config.app = self.wsgi
        server = DrainingServer(config=self.config)
        self._install_sigquit_handler()
        await server.serve(sockets=self.sockets)
        if not server.started:
            sys.exit(Arbiter.WORKER_BOOT_ERROR)
