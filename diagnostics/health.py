"""Liveness and readiness: cheap answers for a load balancer or an orchestrator. Neither calls Ollama."""

import logging

from django.db import DatabaseError, connections

logger = logging.getLogger("diagnostics.health")


def database_ready(alias: str = "default") -> bool:
    """Whether the database answers a trivial query; the error is logged, not returned (readyz is public)."""
    try:
        with connections[alias].cursor() as cursor:
            cursor.execute("SELECT 1")
            cursor.fetchone()
    except DatabaseError as exc:
        logger.warning("database not ready", extra={"database": alias, "error": str(exc)})
        return False
    return True
