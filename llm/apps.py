from django.apps import AppConfig


class LlmConfig(AppConfig):
    name = "llm"
    verbose_name = "LLM generations"
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self):
        from llm import servers

        servers.connect_signals()
