import json
import uuid

from django import forms
from django.contrib import admin, messages
from django.contrib.admin import helpers
from django.contrib.admin.utils import flatten_fieldsets, unquote
from django.core.exceptions import PermissionDenied, ValidationError
from django.core.paginator import Paginator
from django.db import connection
from django.db.models import Count, Max
from django.template.response import TemplateResponse
from django.urls import path, reverse
from django.utils.functional import cached_property
from django.utils import timezone
from django.utils.html import format_html, format_html_join
from django.utils.safestring import mark_safe

from gateway_project.admin_site import StaffReadOnlyAdmin
from llm import admission, api_keys, budgets, dashboard, prompt_templates
from llm.models import (VERSION_CONTENT, ApiKey, Consumer, Generation, PromptTemplate, PromptTemplateVersion,
                        ToolSet)
from llm.prompts import MissingPlaceholders, TemplateSyntaxError


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


class ModelListField(forms.CharField):
    """A list of model names, typed as "qwen2.5:7b, llama3.2:3b"."""

    def prepare_value(self, value):
        return ", ".join(value) if isinstance(value, list) else value

    def to_python(self, value):
        return [name.strip() for name in (value or "").split(",") if name.strip()]


class ConsumerForm(forms.ModelForm):
    allowed_models = ModelListField(
        required=False, help_text="Comma-separated: the only models its keys may use, in every dialect; empty: every "
                                  "model the Ollama server has.")

    class Meta:
        model = Consumer
        fields = "__all__"


@admin.register(Consumer)
class ConsumerAdmin(admin.ModelAdmin):
    form = ConsumerForm
    list_display = ("name", "is_active", "rate_limit_per_minute", "concurrency_cap", "templates_only", "metadata_only",
                    "created_at")
    list_filter = ("is_active", "templates_only", "metadata_only")
    search_fields = ("name",)
    fields = ("name", "is_active", "rate_limit_per_minute", "max_concurrent", "tokens_per_day", "tokens_per_month",
              "budget_use", "allowed_models", "templates_only", "metadata_only", "created_at")
    readonly_fields = ("budget_use", "created_at")
    inlines = [ApiKeyInline]

    @admin.display(description="Max concurrent", ordering="max_concurrent")
    def concurrency_cap(self, obj):
        """What applies: its own cap, or DEFAULT_MAX_CONCURRENT (said so) when it has none; 0 is no cap."""
        cap, named = admission.concurrency_cap(obj)
        shown = str(cap) if cap else "no cap"
        return shown if named == "max_concurrent" else f"{shown} (default)"

    @admin.display(description="Token budget use")
    def budget_use(self, obj):
        """Today's and this month's tokens against each budget (UTC windows), with a warning past 80 %."""
        if obj is None or obj.pk is None:
            return "-"
        uses = budgets.use_of(obj)
        if not uses:
            return "No token budget."
        when = {budgets.DAY: "today", budgets.MONTH: "this month"}
        return format_html_join(
            mark_safe("<br>"), "{} of {} tokens {} ({}%){}",
            ((use.used, use.budget, when[use.window.kind], f"{use.share * 100:.0f}",
              format_html(" <strong>— warning: past {}% of the budget</strong>", round(budgets.WARNING_SHARE * 100))
              if use.warning else "")
             for use in uses))


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


class IndentedJSONField(forms.JSONField):
    """JSON shown indented for editing, and nothing rather than `null` when there is no value."""

    def to_python(self, value):
        try:
            return super().to_python(value)
        except RecursionError:
            # Python's JSON parser recurses: text nested a thousand levels deep exhausts its stack.
            raise forms.ValidationError("Enter JSON nested less deeply.", code="invalid") from None

    def bound_data(self, data, initial):
        try:
            return super().bound_data(data, initial)
        except RecursionError:
            return forms.fields.InvalidJSONInput(data)

    def prepare_value(self, value):
        if value is None or isinstance(value, forms.fields.InvalidJSONInput):
            return "" if value is None else value
        return json.dumps(value, ensure_ascii=False, indent=2)


class PromptTemplateForm(forms.ModelForm):
    """The template and the content of its current version; saving writes that content as a new version."""

    system_prompt = forms.CharField(widget=forms.Textarea(attrs={"rows": 6, "cols": 100}),
                                    help_text=PromptTemplateVersion._meta.get_field("system_prompt").help_text)
    user_template = forms.CharField(widget=forms.Textarea(attrs={"rows": 8, "cols": 100}),
                                    help_text=PromptTemplateVersion._meta.get_field("user_template").help_text)
    mode = forms.ChoiceField(choices=PromptTemplateVersion.Mode.choices, initial="json",
                             help_text=PromptTemplateVersion._meta.get_field("mode").help_text)
    model = forms.CharField(required=False, max_length=200,
                            help_text=PromptTemplateVersion._meta.get_field("model").help_text)
    fallback_models = ModelListField(required=False, help_text="Comma-separated, tried in this order when a model "
                                                               "is missing or fails to run.")
    allowed_models = ModelListField(required=False, help_text="Comma-separated: further models a request may name.")
    options = IndentedJSONField(required=False, initial=dict,
                                help_text='Default Ollama options, e.g. {"temperature": 0.7}.')
    output_schema = IndentedJSONField(required=False, widget=forms.Textarea(attrs={"rows": 12, "cols": 100}),
                                      help_text=PromptTemplateVersion._meta.get_field("output_schema").help_text)

    class Meta:
        model = PromptTemplate
        fields = ["role", "task", "description", "is_active", "sample_payload"]

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        current = self.instance.current_version if self.instance.pk else None
        if current is not None:
            for name in VERSION_CONTENT:
                self.initial.setdefault(name, getattr(current, name))

    def clean(self):
        cleaned = super().clean()
        if any(name in self.errors for name in VERSION_CONTENT):
            return cleaned
        version = self.draft_version()
        try:
            version.clean()
        except ValidationError as exc:
            for field, messages in exc.message_dict.items():
                self.add_error(field, messages)
            return cleaned
        sample = cleaned.get("sample_payload")
        if "sample_payload" not in self.errors:
            if not isinstance(sample, dict):
                self.add_error("sample_payload", "A JSON object with a value for each placeholder.")
            else:
                missing = [name for name in version.payload_fields if name not in sample]
                if missing:
                    self.add_error("sample_payload", f"Lacks {', '.join(missing)}, which the prompts use.")
        return cleaned

    def version_content(self) -> dict:
        content = {name: self.cleaned_data.get(name) for name in VERSION_CONTENT}
        content["model"] = (content["model"] or "").strip()
        content["options"] = content["options"] if content["options"] is not None else {}
        content["fallback_models"] = content["fallback_models"] or []
        content["allowed_models"] = content["allowed_models"] or []
        return content

    def draft_version(self) -> PromptTemplateVersion:
        """An unsaved version with the form's content, to validate and preview."""
        return PromptTemplateVersion(template=self.instance, number=0, **self.version_content())


def prompt_preview(version: PromptTemplateVersion | None, payload, *, unsaved: bool = False) -> dict | None:
    """What the admin shows of a version rendered for a payload: the messages, or why they cannot be built."""
    if version is None:
        return None
    preview = {"unsaved": unsaved, "models": version.model_chain(), "error": None,
               "format": "the output schema" if version.mode == "json" and version.output_schema else
               ('"json"' if version.mode == "json" else "none (text)")}
    try:
        preview["messages"] = version.render(payload if isinstance(payload, dict) else {})
    except MissingPlaceholders as exc:
        preview["error"] = f"The sample payload lacks {', '.join(exc.names)}."
    except TemplateSyntaxError as exc:
        preview["error"] = str(exc)
    return preview


@admin.register(PromptTemplate)
class PromptTemplateAdmin(admin.ModelAdmin):
    """Templates are edited here with Django's model permissions (llm.change_prompttemplate to edit).

    Each save with changed content writes a new immutable version; templates are deactivated, never deleted.
    """

    form = PromptTemplateForm
    change_form_template = "admin/llm/prompttemplate/change_form.html"

    class Media:
        css = {"all": ("llm/admin.css",)}

    list_display = ("role", "task", "is_active", "current_number", "description")
    list_filter = ("is_active", "role")
    search_fields = ("role", "task", "description")
    fieldsets = (
        (None, {"fields": ("role", "task", "description", "is_active")}),
        ("Prompt", {"fields": ("system_prompt", "user_template", "mode", "output_schema")}),
        ("Models", {"fields": ("model", "fallback_models", "allowed_models", "options")}),
        ("Preview", {"fields": ("sample_payload",),
                     "description": "Press Preview to render the prompt for the sample payload without saving."}),
    )

    def get_fieldsets(self, request, obj=None):
        if obj is None:
            return self.fieldsets
        history = ("Versions (immutable: a save that changes the prompt or models adds one)",
                   {"fields": ("version_history",)})
        if not self.has_change_permission(request, obj):
            # View only: the current version's text is in the preview and on each version's page.
            return ((None, {"fields": ("role", "task", "description", "is_active", "sample_payload")}), history)
        return (*self.fieldsets[:3], history, *self.fieldsets[3:])

    def get_readonly_fields(self, request, obj=None):
        # Past generations name their role and task: a template keeps the pair it was created with.
        return ("role", "task", "version_history") if obj is not None else ()

    @admin.display(description="History")
    def version_history(self, obj):
        versions = obj.versions.annotate(generation_count=Count("generations")).order_by("-number")
        rows = format_html_join(
            "", '<tr><td><a href="{}">v{}</a></td><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>',
            ((reverse("admin:llm_prompttemplateversion_change", args=[v.pk]), v.number,
              v.created_at.strftime("%Y-%m-%d %H:%M:%S"), v.created_by or "—", ", ".join(v.model_chain()),
              v.generation_count) for v in versions),
        )
        return format_html('<table id="version-history"><thead><tr><th>Version</th><th>Saved (UTC)</th><th>By</th>'
                           "<th>Models</th><th>Generations</th></tr></thead><tbody>{}</tbody></table>", rows)

    def has_delete_permission(self, request, obj=None):
        return False

    def get_queryset(self, request):
        return super().get_queryset(request).annotate(latest_number=Max("versions__number"))

    @admin.display(description="Version", ordering="latest_number")
    def current_number(self, obj):
        return f"v{obj.latest_number}" if obj.latest_number else "—"

    def save_model(self, request, obj, form, change):
        super().save_model(request, obj, form, change)
        # The admin's change view runs in one transaction: the template and its new version land together.
        prompt_templates.save_version(template=obj, content=form.version_content(),
                                      author=request.user.get_username())

    def changeform_view(self, request, object_id=None, form_url="", extra_context=None):
        if request.method == "POST" and "_preview" in request.POST:
            return self._preview_unsaved(request, object_id, form_url)
        obj = self.get_object(request, unquote(object_id)) if object_id else None
        preview = prompt_preview(obj.current_version, obj.sample_payload) if obj else None
        return super().changeform_view(request, object_id, form_url, {**(extra_context or {}), "preview": preview})

    def _preview_unsaved(self, request, object_id, form_url):
        """The change form again, as posted, with the prompt it would build; nothing is saved."""
        add = object_id is None
        obj = None if add else self.get_object(request, unquote(object_id))
        if not add and obj is None:
            return self._get_obj_does_not_exist_redirect(request, self.opts, object_id)
        if not (self.has_add_permission(request) if add else self.has_change_permission(request, obj)):
            raise PermissionDenied
        fieldsets = self.get_fieldsets(request, obj)
        form = self.get_form(request, obj, change=not add, fields=flatten_fieldsets(fieldsets))(
            request.POST, instance=obj)
        preview = None
        if form.is_valid():
            preview = prompt_preview(form.draft_version(), form.cleaned_data["sample_payload"], unsaved=True)
        admin_form = helpers.AdminForm(form, list(fieldsets), {}, self.get_readonly_fields(request, obj),
                                       model_admin=self)
        context = {
            **self.admin_site.each_context(request),
            "title": ("Add %s" if add else "Change %s") % self.opts.verbose_name,
            "subtitle": str(obj) if obj else None,
            "adminform": admin_form,
            "object_id": object_id,
            "original": obj,
            "is_popup": False,
            "to_field": None,
            "media": self.media + admin_form.media,
            "inline_admin_formsets": [],
            "errors": helpers.AdminErrorList(form, []),
            "preserved_filters": self.get_preserved_filters(request),
            "preview": preview,
        }
        return self.render_change_form(request, context, add=add, change=not add, obj=obj, form_url=form_url)


@admin.register(PromptTemplateVersion)
class PromptTemplateVersionAdmin(StaffReadOnlyAdmin):
    """One version exactly as generations used it: part of the audit trail, so read-only like the history."""

    list_display = ("template", "number", "created_at", "created_by", "model", "mode")
    list_filter = ("template__role", "template__task")
    list_select_related = ("template",)

    class Media:
        css = {"all": ("llm/admin.css",)}

    fieldsets = (
        (None, {"fields": ("template", "number", "created_at", "created_by")}),
        ("Prompt", {"fields": ("system_prompt_text", "user_template_text", "mode", "output_schema_json")}),
        ("Models", {"fields": ("model", "fallback_models", "allowed_models", "options_json")}),
        ("Preview for the template's sample payload", {"fields": ("preview",)}),
    )

    @admin.display(description="System prompt")
    def system_prompt_text(self, obj):
        return _pre(obj.system_prompt)

    @admin.display(description="User template")
    def user_template_text(self, obj):
        return _pre(obj.user_template)

    @admin.display(description="Output schema")
    def output_schema_json(self, obj):
        return _pretty(obj.output_schema)

    @admin.display(description="Options")
    def options_json(self, obj):
        return _pretty(obj.options)

    @admin.display(description="Messages")
    def preview(self, obj):
        shown = prompt_preview(obj, obj.template.sample_payload)
        if shown["error"]:
            return shown["error"]
        return _pretty(shown["messages"])


class CappedPaginator(Paginator):
    """Counts at most CAP rows, through the index, instead of every matching row on each page view.

    Pages beyond CAP / per page cannot be reached: past that, a filter or a search narrows the list faster
    than paging does. Unfiltered on PostgreSQL, the planner's row estimate says roughly how many there are.
    """

    CAP = 10_000

    @cached_property
    def count(self):
        rows = self.object_list
        counted = rows.order_by()[: self.CAP + 1].count()  # SELECT COUNT(*) FROM (SELECT … LIMIT CAP + 1)
        self.capped = counted > self.CAP
        return min(counted, self.CAP)

    @cached_property
    def estimate(self) -> int | None:
        """About how many rows the whole table holds, without counting them; None where unknown."""
        rows = self.object_list
        if not getattr(self, "capped", False) or rows.query.where or connection.vendor != "postgresql":
            return None
        with connection.cursor() as cursor:
            cursor.execute("SELECT reltuples FROM pg_class WHERE oid = %s::regclass", [rows.model._meta.db_table])
            found = cursor.fetchone()
        # -1: never analysed yet.
        return int(found[0]) if found and found[0] > 0 else None

    @property
    def estimate_text(self) -> str:
        return f"{self.estimate:,}" if self.estimate else ""


def distinct_values(model, column: str, *, limit: int = 100) -> list:
    """A column's distinct values, read by jumping from one value to the next in an index that starts with
    the column: one index probe per value, where SELECT DISTINCT reads every row."""
    table = connection.ops.quote_name(model._meta.db_table)
    name = connection.ops.quote_name(model._meta.get_field(column).column)
    sql = (f"WITH RECURSIVE v(x) AS (SELECT MIN({name}) FROM {table} "
           f"UNION ALL SELECT (SELECT MIN({name}) FROM {table} WHERE {name} > v.x) FROM v WHERE v.x IS NOT NULL) "
           f"SELECT x FROM v WHERE x IS NOT NULL LIMIT %s")
    with connection.cursor() as cursor:
        cursor.execute(sql, [limit])
        return [row[0] for row in cursor.fetchall()]


class IndexedValuesFilter(admin.SimpleListFilter):
    """A filter on a column's values, its choices read through the column's index (see distinct_values)."""

    def lookups(self, request, model_admin):
        return [(value, value or "(none)") for value in distinct_values(model_admin.model, self.parameter_name)]

    def queryset(self, request, queryset):
        value = self.value()
        return queryset if value is None else queryset.filter(**{self.parameter_name: value})


def indexed_values_filter(column: str, title: str) -> type[IndexedValuesFilter]:
    return type(f"{column.title()}Filter", (IndexedValuesFilter,), {"parameter_name": column, "title": title})


class KindFilter(admin.SimpleListFilter):
    """Generations or embeddings: the choices are the code's, so showing them costs no query."""

    title = "kind"
    parameter_name = "kind"

    def lookups(self, request, model_admin):
        return Generation.Kind.choices

    def queryset(self, request, queryset):
        value = self.value()
        return queryset if value is None else queryset.filter(kind=value)


@admin.register(Generation)
class GenerationAdmin(StaffReadOnlyAdmin):
    """Read-only generation history: an audit log is reviewed here, never edited, by anyone.

    Built for millions of rows: no full count, filter choices and pages read through indexes that match
    the filters and the ordering (see Generation.Meta.indexes), sorting only by time.
    """

    # What a reviewer scans for; the rest is on the detail page.
    list_display = ("created", "status", "consumer", "role_task", "model", "latency", "error")
    list_filter = ("status", KindFilter, indexed_values_filter("dialect", "dialect"), "consumer", "content_stored",
                   indexed_values_filter("provider", "provider"),
                   indexed_values_filter("mode", "mode"), indexed_values_filter("model", "model"),
                   indexed_values_filter("error_type", "error type"), ("created_at", admin.DateFieldListFilter))
    list_select_related = ("consumer",)
    # Any other sort would read the whole table.
    sortable_by = ("created",)
    search_fields = ("=id",)
    search_help_text = ("Search by generation id (the X-Request-ID of the response, or an OpenAI chatcmpl-… id), "
                        "or by end user, exactly as recorded (e.g. alice@example.com).")
    ordering = ("-created_at",)
    # Counting millions of rows on every page view is what makes log admins slow.
    show_full_result_count = False
    show_facets = admin.ShowFacets.NEVER
    paginator = CappedPaginator
    list_per_page = 50
    fieldsets = (
        (None, {"fields": ("id", "kind", "status", "http_status", "created_at", "finished_at", "worker",
                           "repeat_count")}),
        ("Request", {"fields": ("consumer", "api_key_prefix", "dialect", "endpoint", "role", "task",
                                "template_version_link", "mode", "provider", "model", "stream", "end_user_shown",
                                "client_ip_shown", "user_agent", "request_bytes", "request_json")}),
        ("Prompt sent upstream", {"fields": ("tools_offered", "tool_results", "prompt_json")}),
        ("Embeddings (the vectors are never stored)", {
            "fields": ("input_count", "input_chars", "inputs_json", "dimensions")}),
        ("Outcome", {"fields": ("output_json", "calls_made", "thinking_text", "raw_output_text", "models_tried_json",
                                "error_type", "error_message_text", "finish_reason", "prompt_tokens",
                                "completion_tokens", "attempts", "latency_ms", "upstream_ms", "first_token_ms")}),
        ("Content", {"fields": ("content_stored", "content_hmac_json")}),
    )

    def get_fieldsets(self, request, obj=None):
        # An embedding row has inputs and no prompt, tools or output; a generation row the other way round.
        if obj is None:
            return self.fieldsets
        embedding = obj.kind == Generation.Kind.EMBEDDING
        hidden = "Prompt sent upstream" if embedding else "Embeddings (the vectors are never stored)"
        return tuple(section for section in self.fieldsets if section[0] != hidden)

    def get_search_results(self, request, queryset, search_term):
        term = search_term.strip()
        if not term:
            return queryset, False
        # The OpenAI dialect answers with chatcmpl-<the row's id>.
        try:
            return queryset.filter(id=uuid.UUID(term.removeprefix("chatcmpl-"))), False
        except ValueError:
            # An exact match, which the end-user index answers page by page (no LIKE over millions of rows).
            return queryset.filter(end_user=term[: Generation._meta.get_field("end_user").max_length]), False

    class Media:
        css = {"all": ("llm/admin.css", "llm/generations.css")}

    @admin.display(description="Created (UTC)", ordering="created_at")
    def created(self, obj):
        return timezone.localtime(obj.created_at).strftime("%Y-%m-%d %H:%M:%S")

    @admin.display(description="Role / task")
    def role_task(self, obj):
        # <wbr>: a long task name may wrap after the slash instead of widening the table.
        if obj.role or obj.task:
            asked = format_html("{}/<wbr>{}", obj.role, obj.task)
        else:
            # A raw chat through a compatible endpoint has no template: its dialect's endpoint says what it was.
            asked = format_html("{} {}", obj.dialect, obj.endpoint) if obj.endpoint else "—"
        if obj.content_stored:
            return asked
        # A metadata-only consumer's row says so in the list (its page shows the HMACs).
        return format_html('{}<br><span class="content-withheld">{}</span>', asked, WITHHELD)

    @admin.display(description="Error type")
    def error(self, obj):
        # Error types are snake_case: let them wrap after an underscore, like the task after its slash.
        shown = format_html_join(mark_safe("_<wbr>"), "{}", ((part,) for part in obj.error_type.split("_"))) or "—"
        if obj.repeat_count > 1:
            # The refusals of one address in one minute, counted in one row (llm.failed_keys).
            return format_html('{} <span class="repeat-count" title="requests this row counts">×{}</span>',
                               shown, obj.repeat_count)
        return shown

    @admin.display(description="Latency", ordering="latency_ms")
    def latency(self, obj):
        if obj.latency_ms is None:
            return "—"
        return f"{obj.latency_ms:.0f} ms" if obj.latency_ms < 10_000 else f"{obj.latency_ms / 1000:.1f} s"

    # -- the usage dashboard --

    def get_urls(self):
        dashboard = path("usage/", self.admin_site.admin_view(self.usage_view), name="llm_usage")
        return [dashboard, *super().get_urls()]

    def index_pages(self, request):
        """The dashboard's entry in the LLM section of the admin index (see GatewayAdminSite.get_app_list)."""
        return [{"name": "Usage dashboard", "object_name": "Usage", "model": None, "perms": {"view": True},
                 "admin_url": reverse("admin:llm_usage"), "add_url": None, "view_only": True}]

    def usage_view(self, request):
        if not self.has_view_permission(request):
            raise PermissionDenied
        context = {**self.admin_site.each_context(request), "opts": self.opts, "title": "Usage dashboard",
                   **dashboard.context(request.GET)}
        return TemplateResponse(request, "admin/llm/usage.html", context)

    @admin.display(description="Template version")
    def template_version_link(self, obj):
        if obj.template_version_id is None:
            return "—"
        url = reverse("admin:llm_prompttemplateversion_change", args=[obj.template_version_id])
        return format_html('<a href="{}">{}</a>', url, obj.template_version)

    @admin.display(description="Models tried")
    def models_tried_json(self, obj):
        return _pretty(obj.models_tried or None)

    # A metadata-only row's content fields say so, rather than look empty (see Generation.content_stored).

    @admin.display(description="Request")
    def request_json(self, obj):
        return _pretty(obj.request) if obj.content_stored else WITHHELD

    @admin.display(description="Messages")
    def prompt_json(self, obj):
        return _pretty(obj.prompt) if obj.content_stored else WITHHELD

    @admin.display(description="Inputs (as kept: EMBEDDING_STORED_INPUT_CHARS)")
    def inputs_json(self, obj):
        return _pretty(obj.inputs)

    @admin.display(description="Output")
    def output_json(self, obj):
        return _pretty(obj.output) if obj.content_stored else WITHHELD

    @admin.display(description="Thinking")
    def thinking_text(self, obj):
        if not obj.content_stored:
            return WITHHELD
        return _pre(obj.thinking) if obj.thinking else "—"

    @admin.display(description="Raw output")
    def raw_output_text(self, obj):
        if not obj.content_stored:
            return WITHHELD
        return _pre(obj.raw_output) if obj.raw_output else "—"

    @admin.display(description="Error message")
    def error_message_text(self, obj):
        if not obj.content_stored:
            return WITHHELD
        return obj.error_message or "—"

    @admin.display(description="End user")
    def end_user_shown(self, obj):
        return (obj.end_user or "—") if obj.content_stored else WITHHELD

    @admin.display(description="Client IP")
    def client_ip_shown(self, obj):
        return (obj.client_ip or "—") if obj.content_stored else WITHHELD

    @admin.display(description="Content HMACs")
    def content_hmac_json(self, obj):
        return _pretty(obj.content_hmac)

    @admin.display(description="Tool calls made")
    def calls_made(self, obj):
        return _calls_table(obj.tool_calls or []) if obj.content_stored else WITHHELD

    @admin.display(description="Tools offered")
    def tools_offered(self, obj):
        if not obj.content_stored:
            return WITHHELD
        if obj.tool_set_id is None:
            return "—"
        tool_set = obj.tool_set
        url = reverse("admin:llm_toolset_change", args=[tool_set.pk])
        return format_html('<a href="{}">{}</a><br><code>{}</code>', url, tool_set, tool_set.pk)

    @admin.display(description="Tool results in the conversation")
    def tool_results(self, obj):
        if not obj.content_stored:
            return WITHHELD
        results = [m for m in obj.prompt or [] if isinstance(m, dict) and m.get("role") == "tool"] \
            if isinstance(obj.prompt, list) else []
        if not results:
            return "—"
        rows = format_html_join("", "<tr><td>{}</td><td><code>{}</code></td><td>{}</td></tr>",
                                ((m.get("tool_name") or "?", m.get("tool_call_id") or "", _pre(m.get("content", "")))
                                 for m in results))
        return format_html('<table class="tool-calls"><thead><tr><th>Tool</th><th>Call id</th><th>Result</th>'
                           '</tr></thead><tbody>{}</tbody></table>', rows)


@admin.register(ToolSet)
class ToolSetAdmin(StaffReadOnlyAdmin):
    """The distinct sets of tools clients offered, each stored once; generations point here by its SHA-256."""

    list_display = ("sha256", "count", "names", "created_at")
    search_fields = ("=sha256",)
    ordering = ("-created_at",)
    show_full_result_count = False
    fieldsets = ((None, {"fields": ("sha256", "count", "created_at", "definitions_json")}),)

    @admin.display(description="Tools")
    def names(self, obj):
        return ", ".join(d.get("function", {}).get("name", "?") for d in obj.definitions if isinstance(d, dict))

    @admin.display(description="Definitions")
    def definitions_json(self, obj):
        return _pretty(obj.definitions)


def _calls_table(calls: list):
    """Tool calls as a reviewer reads them: which tool, with which arguments, under which id."""
    if not calls:
        return "—"
    rows = format_html_join(
        "", "<tr><td>{}</td><td><code>{}</code></td><td>{}</td></tr>",
        ((call.get("name"), call.get("id"), _pretty(call.get("arguments"))) for call in calls if isinstance(call, dict)))
    return format_html('<table class="tool-calls"><thead><tr><th>Tool</th><th>Call id</th><th>Arguments</th></tr>'
                       '</thead><tbody>{}</tbody></table>', rows)


# What a metadata-only consumer's row shows in place of each content field.
WITHHELD = "content not stored"


# Styled by llm/admin.css (no inline styles: the Content-Security-Policy refuses them).
def _pre(text: str):
    return format_html('<pre class="text">{}</pre>', text)


def _pretty(value):
    if value is None:
        return "—"
    return format_html('<pre class="json">{}</pre>', json.dumps(value, indent=2, ensure_ascii=False, sort_keys=False))
