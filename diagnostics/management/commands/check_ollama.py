"""manage.py check_ollama: why doesn't live mode work? One line per step, then the cause and the fix."""

import json

from django.conf import settings
from django.core.management.base import BaseCommand, CommandError

from diagnostics.models import ConnectionCheck
from diagnostics.services import run_connection_check


class Command(BaseCommand):
    help = ("Check the configured Ollama step by step (DNS, TCP, /api/version, /api/tags, the model) and name the "
            "cause and fix of a failure, judged by the gateway's own settings and timeouts. Runs even when a "
            "setting is invalid, and reports it. Exits 0 when the check passes, 1 when it fails.")
    # The command prints the settings warnings itself, in its report; a diagnosis must also run when another
    # system check fails.
    requires_system_checks = []

    def add_arguments(self, parser):
        parser.add_argument("--generate", action="store_true", help="also run a tiny test generation")
        parser.add_argument("--model", help="model to look for (default: OLLAMA_DEFAULT_MODEL)")
        parser.add_argument("--timeout", type=float, help="seconds each step may take (default: 5)")
        parser.add_argument("--json", action="store_true", help="print one JSON document instead of text")
        parser.add_argument("--server", help="with Ollama servers listed in the admin: check only this one")

    def handle(self, *args, **options):
        listed = self.listed_servers(options["server"])
        if listed:
            return self.handle_servers(listed, options)
        report, _ = run_connection_check(origin=ConnectionCheck.Origin.COMMAND, generate=options["generate"],
                                         model=options["model"], timeout=options["timeout"])
        if options["json"]:
            self.stdout.write(json.dumps(report.as_dict(), indent=2, ensure_ascii=False))
        else:
            self.write_text(report)
        if not report.ok:
            raise CommandError(f"Ollama check failed: {report.cause.code}", returncode=1)

    def listed_servers(self, name):
        """The servers listed in the admin to check (all but the disabled ones, or the one named); [] for none."""
        from django.db import DatabaseError

        from llm.servers import ServerConfig

        try:
            from llm.models import OllamaServer

            rows = list(OllamaServer.objects.order_by("name"))
        except DatabaseError:
            rows = []
        if name is not None:
            chosen = [row for row in rows if row.name == name]
            if not chosen:
                known = ", ".join(row.name for row in rows) or "none is listed (OLLAMA_BASE_URL is the one server)"
                raise CommandError(f"No Ollama server named {name!r} in the admin; servers: {known}.", returncode=2)
            rows = chosen
        else:
            rows = [row for row in rows if row.state != OllamaServer.State.DISABLED]
        return [ServerConfig(name=r.name, base_url=r.base_url, state=r.state, slots=r.slots,
                             model_slots=r.model_slots or {}, max_in_flight=r.max_in_flight) for r in rows]

    def handle_servers(self, listed, options):
        """One check per server listed in the admin: a block each, or a JSON list of objects with their name."""
        results = []
        for server in listed:
            report, _ = run_connection_check(origin=ConnectionCheck.Origin.COMMAND, generate=options["generate"],
                                             model=options["model"], timeout=options["timeout"], server=server)
            results.append((server, report))
        if options["json"]:
            self.stdout.write(json.dumps([{"name": server.name, "state": server.state, **report.as_dict()}
                                          for server, report in results], indent=2, ensure_ascii=False))
        else:
            if options["server"] is None:
                self.stdout.write(f"{len(listed)} Ollama server(s) listed in the admin; OLLAMA_BASE_URL is ignored.")
            for server, report in results:
                self.stdout.write("")
                self.stdout.write(f"[{server.name}] state {server.state}")
                self.write_text(report, server=server)
        failed = [server.name for server, report in results if not report.ok]
        if failed:
            raise CommandError(f"Ollama check failed for: {', '.join(failed)}", returncode=1)

    def write_text(self, report, server=None):
        out = self.stdout
        if server is not None:
            out.write(f"Ollama server {server.name} at {report.target_url}, model {report.model}, "
                      f"GENERATOR_MODE={report.mode}")
        else:
            source = settings.GATEWAY_ENV.describe_source(report.source)
            out.write(f"Ollama at {report.target_url} (OLLAMA_BASE_URL from {source}), "
                      f"model {report.model}, GENERATOR_MODE={report.mode}")
        width = max((len(step.name) for step in report.steps), default=0)
        for step in report.steps:
            mark = self.style.SUCCESS("✓") if step.ok else self.style.ERROR("✗")
            out.write(f"  {mark} {step.name:<{width}}  {step.elapsed_ms:>8.1f} ms  {step.detail}")
        if report.generation:
            out.write(f"  reply ({report.generation['length']} characters, {report.generation['elapsed_ms']:.0f} ms): "
                      f"{report.generation['reply']!r}")
        if report.cause:
            out.write(self.style.ERROR(f"FAILED: {report.cause.code}"))
            out.write(f"  Cause: {report.cause.message}")
            out.write(f"  Fix:   {report.cause.fix}")
            for error in report.invalid_settings[1:]:
                # The first is the cause; an operator fixing one value at a time would otherwise rerun for each.
                out.write(self.style.ERROR(f"Also invalid: {error.setting}"))
                out.write(f"  Cause: {error.message}")
                out.write(f"  Fix:   {error.fix}")
        else:
            out.write(self.style.SUCCESS(f"OK in {report.elapsed_ms:.0f} ms"))
        if report.warnings:
            out.write("Warnings:")
            for warning in report.warnings:
                out.write(self.style.WARNING(f"  ! {warning}"))

