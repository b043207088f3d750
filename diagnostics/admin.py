"""Admin: the Diagnostics section (resolved settings, the Ollama check with its buttons, the check history)."""

import json

from django.conf import settings
from django.contrib import admin, messages
from django.shortcuts import redirect
from django.template.response import TemplateResponse
from django.urls import path, reverse
from django.utils.html import format_html

from diagnostics.models import ConnectionCheck
from gateway_project.admin_site import StaffReadOnlyAdmin
from diagnostics.resolved_settings import resolved_settings
from diagnostics.services import run_connection_check

HISTORY_ON_PAGE = 10


@admin.register(ConnectionCheck)
class ConnectionCheckAdmin(StaffReadOnlyAdmin):
    """Read-only history of connection checks, and the Diagnostics pages that add to it."""

    list_display = ("created_at", "outcome", "target_url", "source", "model", "generation", "username", "origin",
                    "elapsed_ms")
    list_filter = ("ok", "cause", "origin", "generation")
    ordering = ("-created_at", "-id")
    list_per_page = 50

    class Media:
        css = {"all": ("diagnostics/admin.css",)}
    fields = ("created_at", "username", "origin", "target_url", "source", "model", "generation", "ok", "cause",
              "cause_message", "elapsed_ms", "timings_table", "report_json")

    @admin.display(description="Outcome", ordering="ok")
    def outcome(self, obj):
        return "✓ OK" if obj.ok else f"✗ {obj.cause}"

    @admin.display(description="Timings")
    def timings_table(self, obj):
        # Styled by diagnostics/admin.css (no inline styles: the Content-Security-Policy refuses them).
        return format_html('<pre class="timings">{}</pre>',
                           "\n".join(f"{name:<28} {ms:>9.1f} ms" for name, ms in (obj.timings or {}).items()))

    @admin.display(description="Report")
    def report_json(self, obj):
        return format_html('<pre class="json">{}</pre>',
                           json.dumps(obj.report, indent=2, ensure_ascii=False))

    # -- the Diagnostics pages --

    def get_urls(self):
        pages = [
            path("settings/", self.admin_site.admin_view(self.settings_view), name="diagnostics_settings"),
            path("ollama/", self.admin_site.admin_view(self.ollama_view), name="diagnostics_ollama"),
            path("servers/", self.admin_site.admin_view(self.servers_view), name="diagnostics_servers"),
        ]
        return pages + super().get_urls()

    def index_pages(self, request):
        """Entries for the Diagnostics section of the admin index (see GatewayAdminSite.get_app_list)."""
        return [
            {"name": "Resolved settings", "object_name": "ResolvedSettings", "model": None, "perms": {"view": True},
             "admin_url": reverse("admin:diagnostics_settings"), "add_url": None, "view_only": True},
            {"name": "Ollama connection", "object_name": "OllamaConnection", "model": None, "perms": {"view": True},
             "admin_url": reverse("admin:diagnostics_ollama"), "add_url": None, "view_only": True},
            {"name": "Ollama servers", "object_name": "OllamaServers", "model": None, "perms": {"view": True},
             "admin_url": reverse("admin:diagnostics_servers"), "add_url": None, "view_only": True},
        ]

    def servers_view(self, request):
        """Each Ollama server listed in the admin as this process knows it; POST: read them all now."""
        from llm import servers

        servers.registry.refresh()
        if servers.registry.listed:
            servers.pool().configured()  # polled from now on in this process too
        if request.method == "POST":
            servers.pool().poller().refresh_now()
            messages.success(request, "Every server's models and loaded models are being read now; reload the page "
                                      "in a few seconds.")
            return redirect(reverse("admin:diagnostics_servers"))
        context = {**self.admin_site.each_context(request), "opts": self.opts, "title": "Ollama servers",
                   "snapshot": servers.snapshot(), "mode": settings.GENERATOR_MODE}
        return TemplateResponse(request, "admin/diagnostics/servers.html", context)

    def settings_view(self, request):
        context = {**self.admin_site.each_context(request), "opts": self.opts, "title": "Resolved settings",
                   "report": resolved_settings()}
        return TemplateResponse(request, "admin/diagnostics/settings.html", context)

    def ollama_view(self, request):
        """GET: the page with its two buttons, a result and the recent history. POST: run a check, then show it."""
        page_url = reverse("admin:diagnostics_ollama")
        if request.method == "POST":
            generate = request.POST.get("action") == "generation"
            report, row = run_connection_check(origin=ConnectionCheck.Origin.ADMIN, user=request.user,
                                               generate=generate)
            if row is None:  # not recorded: show this run's report straight away
                messages.warning(request, report.warnings[-1])
                return self._ollama_page(request, report.as_dict(), None)
            return redirect(f"{page_url}?check={row.pk}")
        shown = None
        check_id = request.GET.get("check", "")
        if check_id.isdigit():
            shown = ConnectionCheck.objects.filter(pk=int(check_id)).first()
        return self._ollama_page(request, shown.report if shown else None, shown)

    def _ollama_page(self, request, report, row):
        from llm.models import OllamaServer

        if OllamaServer.objects.exists():
            messages.warning(request, "Ollama servers are listed in the admin: OLLAMA_BASE_URL, checked here, is "
                                      "ignored by generations. See Diagnostics → Ollama servers, or run "
                                      "manage.py check_ollama.")
        current = {s.name: s for s in resolved_settings().settings}
        context = {
            **self.admin_site.each_context(request),
            "opts": self.opts,
            "title": "Ollama connection",
            "report": report,
            "check": row,
            "history": ConnectionCheck.objects.all()[:HISTORY_ON_PAGE],
            "base_url": current["OLLAMA_BASE_URL"],
            "default_model": current["OLLAMA_DEFAULT_MODEL"],
            "mode": settings.GENERATOR_MODE,
        }
        return TemplateResponse(request, "admin/diagnostics/ollama.html", context)
