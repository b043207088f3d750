from django.contrib import admin
from django.urls import include, path

urlpatterns = [
    path("admin/", admin.site.urls),
    path("api/v1/llm/", include("llm.urls")),
]

handler400 = "llm.errors.bad_request"
handler403 = "llm.errors.permission_denied"
handler404 = "llm.errors.page_not_found"
handler500 = "llm.errors.server_error"
