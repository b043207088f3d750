"""Django's PostgreSQL backend, failing fast while the database is known to be unreachable.

The pool bounds one wait for a connection to about a second (settings: pool timeout, connect_timeout). During an
outage every database step would still wait that second, each one: a request's steps add up, and with the steps'
threads all waiting, requests queue behind them for many seconds. So the first failure to get a connection while
the database cannot be reached opens a short window in which this process's other attempts fail at once; after
it one attempt at a time probes the database, and the first connection that works closes the window. The audit
spool keeps the outcomes meanwhile.
"""

from __future__ import annotations

import threading
import time
import weakref

from django.db.backends.postgresql import base

# After a failure, attempts fail at once for this long; then one probe at a time, each given PROBE_SECONDS.
FAST_FAIL_SECONDS = 0.5
PROBE_SECONDS = 2.0


class Outage:
    """Whether this process last failed to reach the database, and until when attempts fail without trying."""

    def __init__(self):
        self._lock = threading.Lock()
        self._until = 0.0
        self._failing = False

    def admit(self) -> bool:
        """Whether an attempt to connect may go ahead now (one probe at a time while the database is failing)."""
        with self._lock:
            if not self._failing:
                return True
            now = time.monotonic()
            if now < self._until:
                return False
            self._until = now + PROBE_SECONDS  # this caller probes; the others keep failing fast meanwhile
            return True

    def failed(self) -> None:
        with self._lock:
            self._failing = True
            self._until = time.monotonic() + FAST_FAIL_SECONDS

    def recovered(self) -> None:
        with self._lock:
            self._failing = False

    @property
    def failing(self) -> bool:
        return self._failing


outage = Outage()


# Per pool: its count of failed connection attempts when a connection was last handed out.
_errors_seen: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


class DatabaseWrapper(base.DatabaseWrapper):
    def get_new_connection(self, conn_params):
        if not outage.admit():
            raise base.Database.OperationalError(
                "the database was unreachable moments ago; not tried again yet (gateway_project.postgresql)")
        pool = self.pool
        try:
            connection = super().get_new_connection(conn_params)
        except base.Database.OperationalError:  # psycopg_pool's PoolTimeout included
            # A pool that only ran out of connections is busy, not cut off: only failed attempts to connect (the
            # pool's own, in the background, or this one without a pool) open the window.
            if pool is None or _connection_errors(pool) > _errors_seen.get(pool, 0):
                outage.failed()
            raise
        if pool is not None:
            _errors_seen[pool] = _connection_errors(pool)
        if outage.failing:
            outage.recovered()
        return connection


def _connection_errors(pool) -> int:
    return pool.get_stats().get("connections_errors", 0)
