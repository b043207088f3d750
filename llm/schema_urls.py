"""The URLs the OpenAPI schema describes: the consumers' API, each path with the class that documents it."""

from django.urls import path

from llm.dialects.openai_schema import ChatCompletionsOperation, ModelOperation, ModelsOperation
from llm.schema import GenerateOperation
from llm.views import TemplateListView

urlpatterns = [
    path("api/v1/llm/generate", GenerateOperation.as_view()),
    path("api/v1/llm/templates", TemplateListView.as_view()),
    path("v1/chat/completions", ChatCompletionsOperation.as_view()),
    path("v1/models", ModelsOperation.as_view()),
    path("v1/models/<str:name>", ModelOperation.as_view()),
]
