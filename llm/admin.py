import json
import uuid

from django.contrib import admin
from django.utils.html import format_html

from llm.models import Generation


@admin.register(Generation)
class GenerationAdmin(admin.ModelAdmin):
    """Read-only generation history: an audit log is reviewed here, never edited, by anyone."""

    list_display = ("created_at", "status", "http_status", "role", "task", "provider", "model", "mode",
                    "latency_ms", "prompt_tokens", "completion_tokens", "error_type")
    list_filter = ("status", "provider", "mode", "model", "error_type", ("created_at", admin.DateFieldListFilter))
    search_fields = ("=id",)
    search_help_text = "Search by generation id (the X-Request-ID of the response)."
    ordering = ("-created_at",)
    # Counting millions of rows on every page view is what makes log admins slow.
    show_full_result_count = False
    list_per_page = 50
    fieldsets = (
        (None, {"fields": ("id", "status", "http_status", "created_at", "finished_at")}),
        ("Request", {"fields": ("role", "task", "mode", "provider", "model", "client_ip", "user_agent",
                                "request_bytes", "request_json")}),
        ("Prompt sent upstream", {"fields": ("prompt_json",)}),
        ("Outcome", {"fields": ("output_json", "raw_output", "error_type", "error_message",
                                "prompt_tokens", "completion_tokens", "latency_ms", "upstream_ms")}),
    )

    def get_readonly_fields(self, request, obj=None):
        return [name for _, options in self.fieldsets for name in options["fields"]]

    def get_search_results(self, request, queryset, search_term):
        term = search_term.strip()
        if not term:
            return queryset, False
        try:
            return queryset.filter(id=uuid.UUID(term)), False
        except ValueError:
            return queryset.none(), False

    def has_add_permission(self, request):
        return False

    def has_change_permission(self, request, obj=None):
        return False

    def has_delete_permission(self, request, obj=None):
        return False

    def has_view_permission(self, request, obj=None):
        return request.user.is_active and request.user.is_staff

    def has_module_permission(self, request):
        return request.user.is_active and request.user.is_staff

    @admin.display(description="Request")
    def request_json(self, obj):
        return _pretty(obj.request)

    @admin.display(description="Messages")
    def prompt_json(self, obj):
        return _pretty(obj.prompt)

    @admin.display(description="Output")
    def output_json(self, obj):
        return _pretty(obj.output)


def _pretty(value):
    if value is None:
        return "—"
    return format_html('<pre class="json" style="white-space: pre-wrap; margin: 0">{}</pre>',
                       json.dumps(value, indent=2, ensure_ascii=False, sort_keys=False))
