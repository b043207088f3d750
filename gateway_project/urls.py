from django.contrib import admin
from django.urls import include, path
from drf_spectacular.views import SpectacularAPIView, SpectacularSwaggerSplitView

from diagnostics.views import MetricsView, healthz, readyz

urlpatterns = [
    path("admin/", admin.site.urls),
    path("api/v1/llm/", include("llm.urls")),
    path("api/v1/schema/", SpectacularAPIView.as_view(urlconf="llm.schema_urls"), name="schema"),
    # The split view serves Swagger UI's start-up script as a file (?script), not inline: the Content-Security-Policy
    # runs no inline script.
    path("api/v1/docs/",
         SpectacularSwaggerSplitView.as_view(url_name="schema", template_name="api_docs/swagger_ui.html"), name="docs"),
    path("api/v1/debug/", include("diagnostics.urls")),
    path("healthz", healthz, name="healthz"),
    path("readyz", readyz, name="readyz"),
    path("metrics", MetricsView.as_view(), name="metrics"),
    path("", include("llm.dialects.urls")),
]

handler400 = "llm.errors.bad_request"
handler403 = "llm.errors.permission_denied"
handler404 = "llm.errors.page_not_found"
handler500 = "llm.errors.server_error"
