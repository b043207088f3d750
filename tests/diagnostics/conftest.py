import pytest

from gateway_project.environment import resolve

# The Django settings each gateway setting becomes (the rest are reshaped, e.g. DATABASE_URL into DATABASES).
DIRECT = ("GENERATOR_MODE", "OLLAMA_BASE_URL", "OLLAMA_TIMEOUT", "OLLAMA_CONNECT_TIMEOUT", "OLLAMA_DEFAULT_MODEL",
          "MOCK_RESPONSE_DELAY", "COMFYUI_BASE_URL")


@pytest.fixture
def gateway_env(tmp_path, settings):
    """Start the gateway's settings over from an OS environment and an env file: as if the process started so.

    Returns the Resolved; settings.GATEWAY_ENV and the Django settings it feeds are set from it.
    """

    def start(os_values: dict | None = None, env_file: str = ""):
        path = tmp_path / ".env"
        path.write_text(env_file or "")
        resolved = resolve({**(os_values or {}), "ENV_FILE": str(path)})
        settings.GATEWAY_ENV = resolved
        for name in DIRECT:
            setattr(settings, name, resolved.values[name])
        return resolved

    return start
