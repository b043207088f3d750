from django.urls import path

from llm.views import TemplateListView, generate

app_name = "llm"
urlpatterns = [
    path("generate", generate, name="generate"),
    path("templates", TemplateListView.as_view(), name="templates"),
]
