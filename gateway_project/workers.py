"""The gunicorn worker the gateway runs in: uvicorn's, with a shutdown that drains generations first.

On SIGTERM the worker stops accepting connections, /readyz answers 503, and generations in flight get
GRACEFUL_TIMEOUT seconds to finish. Those still running then are ended by the gateway itself — an error line for a
stream, an error answer otherwise, and a completed audit row — before uvicorn closes the connections; never killed
with a pending row.
"""

import sys
from contextlib import closing
from datetime import datetime, timezone

from gunicorn.arbiter import Arbiter
from uvicorn.server import Server
from uvicorn_worker import UvicornWorker

from gateway_project import process_name
from gateway_project.connections import GatewayHttpProtocol

# What uvicorn waits for once the generations are done: responses being written out, idle keep-alive connections.
CONNECTIONS_GRACE_SECONDS = 5


class DrainingServer(Server):
    async def shutdown(self, sockets=None):
        from django.conf import settings

        from gateway_project.db_steps import db_step
        from llm import admission, audit_spool

        for server in self.servers:
            server.close()  # stop accepting first: the load balancer sends new requests elsewhere
        await admission.drain(settings.GRACEFUL_TIMEOUT)
        # Outcomes kept in memory (no spool file could be written) would end with the process.
        await db_step(audit_spool.before_exit)
        await super().shutdown(sockets=sockets)


class GatewayWorker(UvicornWorker):
    # Django's ASGI handler implements no lifespan protocol; saying so keeps a misleading line out of the log.
    # The HTTP protocol is uvicorn's httptools one with a bound on slow request heads (gateway_project.connections).
    CONFIG_KWARGS = {"loop": "auto", "http": GatewayHttpProtocol, "lifespan": "off"}

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.config.timeout_graceful_shutdown = CONNECTIONS_GRACE_SECONDS
        # Drawn in the master, before the fork: the master names the worker's audit rows with it (child_exit).
        self.audit_token = process_name.new_token()

    def init_process(self) -> None:
        process_name.adopt(self.audit_token)
        super().init_process()

    @property
    def audit_name(self) -> str:
        """The name the worker's audit rows carry (Generation.worker)."""
        return process_name.name_of(self.pid, self.audit_token)

    async def _serve(self) -> None:
        from llm import audit_spool

        # As UvicornWorker._serve, with the draining server and the audit spool's replay (at once, then periodically).
        self.config.app = self.wsgi
        audit_spool.start_replaying()
        server = DrainingServer(config=self.config)
        self._install_sigquit_handler()
        await server.serve(sockets=self.sockets)
        if not server.started:
            sys.exit(Arbiter.WORKER_BOOT_ERROR)


WORKER_LOST_MESSAGE = ("The gateway worker process running this generation stopped before it finished (killed or "
                       "crashed), so its client got no answer or a cut one. Marked by the gunicorn master.")


def mark_worker_lost(database: dict, worker: str) -> int:
    """Mark the audit rows a dead worker left pending failed (`worker_lost`); how many. Runs in gunicorn's master.

    Plain driver calls, not the ORM: the master never sets Django up, whose connections and pool (with its
    threads) every forked worker would inherit. `database` is DATABASE_URL's Django configuration. The table and
    column names are the Generation model's (tests/gateway_project/test_worker_lost.py holds them to it).
    """
    now = datetime.now(timezone.utc)
    sql = ("UPDATE llm_generation SET status = {p}, error_type = {p}, error_message = {p}, finished_at = {p} "
           "WHERE status = {p} AND worker = {p}")
    engine = database["ENGINE"]
    if engine.endswith(".sqlite3"):
        import sqlite3

        # As Django writes a datetime to SQLite: UTC, without the offset.
        values = ("failed", "worker_lost", WORKER_LOST_MESSAGE, now.replace(tzinfo=None).isoformat(" "), "pending",
                  worker)
        with closing(sqlite3.connect(database["NAME"], timeout=5)) as db, db:
            return db.execute(sql.format(p="?"), values).rowcount
    if engine.endswith(".postgresql"):
        import psycopg

        values = ("failed", "worker_lost", WORKER_LOST_MESSAGE, now, "pending", worker)
        options = {k: v for k, v in database.get("OPTIONS", {}).items() if k != "pool"}
        options.setdefault("connect_timeout", 2)
        params = {"dbname": database.get("NAME"), "user": database.get("USER"), "password": database.get("PASSWORD"),
                  "host": database.get("HOST"), "port": database.get("PORT")}
        with psycopg.connect(**{k: v for k, v in params.items() if v}, **options, autocommit=True) as db:
            return db.execute(sql.format(p="%s"), values).rowcount
    raise NotImplementedError(f"{engine} is not supported here; prune_audit marks the rows abandoned later")
