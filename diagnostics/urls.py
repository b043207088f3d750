from django.urls import path

from diagnostics.views import DebugOllamaGenerateView, DebugOllamaView, DebugSettingsView

app_name = "diagnostics"
urlpatterns = [
    path("settings", DebugSettingsView.as_view(), name="debug-settings"),
    path("ollama", DebugOllamaView.as_view(), name="debug-ollama"),
    path("ollama/generate", DebugOllamaGenerateView.as_view(), name="debug-ollama-generate"),
]
