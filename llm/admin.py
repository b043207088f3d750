import json
import uuid

from django.contrib import admin, messages
from django.template.response import TemplateResponse
from django.utils import timezone
from django.utils.html import format_html

from llm import api_keys
from llm.models import ApiKey, Consumer, Generation


class ApiKeyInline(admin.TabularInline):
    """A consumer's keys at a glance; keys are issued and revoked on the API key pages."""

    model = ApiKey
    fields = ("shown_prefix", "created_at", "expires_at", "revoked_at", "last_used_at")
    readonly_fields = fields
    extra = 0
    can_delete = False
    show_change_link = True

    def has_add_permission(self, request, obj=None):
        return False

    @admin.display(description="Key")
    def shown_prefix(self, obj):
        return f"gw_{obj.prefix}…"


@admin.register(Consumer)
class ConsumerAdmin(admin.ModelAdmin):
    list_display = ("name", "is_active", "rate_limit_per_minute", "created_at")
    list_filter = ("is_active",)
    search_fields = ("name",)
    fields = ("name", "is_active", "rate_limit_per_minute", "created_at")
    readonly_fields = ("created_at",)
    inlines = [ApiKeyInline]


@admin.register(ApiKey)
class ApiKeyAdmin(admin.ModelAdmin):
    """Issue keys (the key is shown once, on the page after saving), set expiries, revoke. No hash is ever shown."""

    list_display = ("shown_prefix", "consumer", "state", "created_at", "expires_at", "revoked_at", "last_used_at")
    list_filter = ("consumer", ("revoked_at", admin.EmptyFieldListFilter))
    list_select_related = ("consumer",)
    search_fields = ("prefix", "consumer__name")
    actions = ["revoke_keys"]

    def get_fields(self, request, obj=None):
        if obj is None:
            return ("consumer", "expires_at")
        return ("shown_prefix", "consumer", "state", "created_at", "expires_at", "revoked_at", "last_used_at")

    def get_readonly_fields(self, request, obj=None):
        if obj is None:
            return ()
        return ("shown_prefix", "consumer", "state", "created_at", "revoked_at", "last_used_at")

    def save_model(self, request, obj, form, change):
        if not change:
            # Kept on the instance for response_add only; the database gets the hash.
            obj.raw_key = api_keys.assign_secret(obj)
        super().save_model(request, obj, form, change)

    def response_add(self, request, obj, post_url_continue=None):
        """Show the new key once, on this response itself: a redirect would have to carry it in a cookie."""
        context = {**self.admin_site.each_context(request), "opts": self.opts, "api_key": obj,
                   "raw_key": obj.raw_key, "title": "API key created"}
        return TemplateResponse(request, "admin/llm/apikey/created.html", context)

    @admin.action(description="Revoke selected API keys")
    def revoke_keys(self, request, queryset):
        count = api_keys.revoke(queryset)
        self.message_user(request, f"Revoked {count} API key(s).", messages.SUCCESS)

    @admin.display(description="Key", ordering="prefix")
    def shown_prefix(self, obj):
        return f"gw_{obj.prefix}…"

    @admin.display(description="State")
    def state(self, obj):
        return obj.refusal(timezone.now()) or "Active"


@admin.register(Generation)
class GenerationAdmin(admin.ModelAdmin):
    """Read-only generation history: an audit log is reviewed here, never edited, by anyone."""

    list_display = ("created_at", "status", "http_status", "consumer", "role", "task", "provider", "model", "mode",
                    "latency_ms", "attempts", "prompt_tokens", "completion_tokens", "error_type")
    list_filter = ("status", "consumer", "provider", "mode", "model", "error_type",
                   ("created_at", admin.DateFieldListFilter))
    list_select_related = ("consumer",)
    search_fields = ("=id",)
    search_help_text = "Search by generation id (the X-Request-ID of the response)."
    ordering = ("-created_at",)
    # Counting millions of rows on every page view is what makes log admins slow.
    show_full_result_count = False
    list_per_page = 50
    fieldsets = (
        (None, {"fields": ("id", "status", "http_status", "created_at", "finished_at")}),
        ("Request", {"fields": ("consumer", "api_key_prefix", "role", "task", "mode", "provider", "model",
                                "client_ip", "user_agent", "request_bytes", "request_json")}),
        ("Prompt sent upstream", {"fields": ("prompt_json",)}),
        ("Outcome", {"fields": ("output_json", "raw_output", "error_type", "error_message",
                                "prompt_tokens", "completion_tokens", "attempts", "latency_ms",
                                "upstream_ms")}),
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
