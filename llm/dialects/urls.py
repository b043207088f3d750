"""The compatible dialects' paths: OpenAI's under /v1/, Ollama's at its own /api/ paths (mounted at the root)."""

from django.urls import path, re_path

from llm.dialects import ollama, openai

urlpatterns = [
    path("v1/chat/completions", openai.chat_completions, name="openai-chat"),
    path("v1/models", openai.models, name="openai-models"),
    # Model names hold ":" and "/" (library/llama3.2:3b).
    path("v1/models/<path:name>", openai.model, name="openai-model"),
    path("v1/embeddings", openai.embeddings, name="openai-embeddings"),
    # Any other path under /v1/, a newline in it included, gets OpenAI's 404 rather than the HTML page.
    re_path(r"^v1/(?P<rest>[\s\S]*)\Z", openai.not_found),
    path("", ollama.root, name="ollama-root"),
    path("api/chat", ollama.chat, name="ollama-chat"),
    path("api/generate", ollama.generate, name="ollama-generate"),
    path("api/tags", ollama.tags, name="ollama-tags"),
    path("api/show", ollama.show, name="ollama-show"),
    path("api/ps", ollama.ps, name="ollama-ps"),
    path("api/version", ollama.version, name="ollama-version"),
    path("api/embed", ollama.embed, name="ollama-embed"),
    path("api/embeddings", ollama.embeddings, name="ollama-embeddings"),
    *(path(f"api/{name}", ollama.model_management) for name in ("pull", "push", "create", "copy", "delete")),
    path("api/blobs/<str:digest>", ollama.model_management),
]
