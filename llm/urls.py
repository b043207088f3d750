from django.urls import path

from llm.views import GenerateView, TemplateListView

app_name = "llm"
urlpatterns = [
    path("generate", GenerateView.as_view(), name="generate"),
    path("templates", TemplateListView.as_view(), name="templates"),
]
