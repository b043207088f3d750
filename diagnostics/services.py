"""Running the connection check and keeping its history: what the command, the admin and the API share."""

import logging

from django.db import DatabaseError

from diagnostics.models import ConnectionCheck
from diagnostics.ollama_check import ConnectionReport, check_ollama_connection

logger = logging.getLogger("diagnostics.services")


def run_connection_check(*, origin: str, user=None, generate: bool = False, model: str | None = None,
                         timeout: float | None = None, server=None) -> tuple[ConnectionReport, ConnectionCheck | None]:
    """Check Ollama (OLLAMA_BASE_URL, or `server`, one listed in the admin) and store the run as a ConnectionCheck;
    the row is None (and the report says so) if the database cannot take it, since a diagnosis must not fail for
    want of its history."""
    if server is None:
        report = check_ollama_connection(generate=generate, model=model, timeout=timeout)
    else:
        report = check_ollama_connection(generate=generate, model=model, timeout=timeout, base_url=server.base_url)
        _masked(report, server.base_url, server.shown_url)
        report.source = f"Ollama server {server.name}"
    if any(error.setting == "DATABASE_URL" for error in report.invalid_settings):
        # The database in use is the default standing in for the invalid one: the run does not belong there.
        report.warnings.append("This run was not recorded in the check history: DATABASE_URL is invalid.")
        return report, None
    try:
        row = record_connection_check(report, origin=origin, user=user, generation=generate)
    except DatabaseError as exc:
        logger.warning("connection check not recorded", extra={"error": str(exc)})
        report.warnings.append(f"This run was not recorded in the check history: the database failed ({exc}).")
        return report, None
    return report, row


def record_connection_check(report: ConnectionReport, *, origin: str, user=None,
                            generation: bool = False) -> ConnectionCheck:
    """Store one report as a ConnectionCheck row."""
    authenticated = user is not None and user.is_authenticated
    return ConnectionCheck.objects.create(
        user=user if authenticated else None,
        username=user.get_username() if authenticated else "",
        origin=origin,
        target_url=report.target_url[:500],
        source=report.source,
        model=report.model[:200],
        generation=generation,
        ok=report.ok,
        cause=report.cause.code if report.cause else "",
        cause_message=report.cause.message if report.cause else "",
        elapsed_ms=report.elapsed_ms,
        timings={step.name: step.elapsed_ms for step in report.steps},
        report=report.as_dict(),
    )


def _masked(report: ConnectionReport, raw: str, masked: str) -> None:
    """A listed server's URL masked (whatever stands before "@") wherever the report quotes it."""
    if raw == masked:
        return

    def scrub(text):
        return text.replace(raw, masked) if isinstance(text, str) else text

    report.target_url = masked
    for step in report.steps:
        step.detail = scrub(step.detail)
    if report.cause is not None:
        report.cause.message, report.cause.fix = scrub(report.cause.message), scrub(report.cause.fix)
    report.warnings = [scrub(w) for w in report.warnings]
