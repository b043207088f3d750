"""Django system checks: `manage.py check` and server start name invalid, shadowed and suspicious settings."""

import os

from django.conf import settings
from django.core import checks

from diagnostics.resolved_settings import as_text, proxy_warnings, settings_warnings, shown
from gateway_project.environment import SPECS

INVALID_SETTING = "diagnostics.E001"
# The gateway settings that Django settings hold as they are (DATABASE_URL, for one, becomes DATABASES).
RUNTIME_SETTINGS = ("GENERATOR_MODE", "OLLAMA_BASE_URL", "OLLAMA_TIMEOUT", "OLLAMA_CONNECT_TIMEOUT",
                    "OLLAMA_DEFAULT_MODEL", "MOCK_RESPONSE_DELAY", "COMFYUI_BASE_URL")


@checks.register()
def gateway_settings_check(app_configs=None, **kwargs):
    """An error for a gateway setting the process holds that does not parse, a warning for each suspicious one.

    Start-up already refuses invalid environment values ("Configuration error: ..."); E001 catches values that
    reached Django settings some other way (a settings module, code, a test).
    """
    messages = []
    for spec in SPECS:
        if spec.name not in RUNTIME_SETTINGS:
            continue
        value = getattr(settings, spec.name, None)
        try:
            spec.parse(as_text(value))
        except ValueError as exc:
            messages.append(checks.Error(
                f"{spec.name}={shown(spec, value)!r} is invalid: {exc}.", hint=f"{spec.help}.", obj=spec.name,
                id=INVALID_SETTING))
    resolved = getattr(settings, "GATEWAY_ENV", None)  # absent under a settings module of another project
    warnings = (settings_warnings(resolved) if resolved else []) + proxy_warnings(os.environ)
    for warning in warnings:
        messages.append(checks.Warning(warning.message, hint=warning.fix, obj=warning.name, id=warning.id))
    return messages
