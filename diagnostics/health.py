"""Liveness and readiness: cheap answers for a load balancer or an orchestrator. Neither calls Ollama."""

import logging

from django.db import DatabaseError, connections

from gateway_project.conditions import Condition

logger = logging.getLogger("diagnostics.health")
# Load balancers probe every few seconds: an outage is logged when it begins and when it ends, not per probe.
DATABASE_DOWN = Condition(logger, "database_not_ready")


def database_ready(alias: str = "default") -> bool:
    """Whether the database answers a trivial query; the error is logged, not returned (readyz is public)."""
    try:
        with connections[alias].cursor() as cursor:
            cursor.execute("SELECT 1")
            cursor.fetchone()
    except DatabaseError as exc:
        DATABASE_DOWN.occurred("database not ready: /readyz answers 503 until it is", database=alias,
                               error=str(exc))
        return False
    DATABASE_DOWN.cleared("database ready again", database=alias)
    return True
