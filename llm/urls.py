from django.urls import path

from llm.views import GenerateView

app_name = "llm"
urlpatterns = [
    path("generate", GenerateView.as_view(), name="generate"),
]
