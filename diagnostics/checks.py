"""Django system checks: `manage.py check` and server start name invalid, shadowed and suspicious settings."""

import os

from django.conf import settings
from django.core import checks

from diagnostics.resolved_settings import invalid_settings, proxy_warnings, settings_warnings

INVALID_SETTING = "diagnostics.E001"


@checks.register()
def gateway_settings_check(app_configs=None, **kwargs):
    """An error for each gateway setting the process holds that does not parse, a warning for each suspicious one.

    Start-up already refuses invalid environment values ("Configuration error: ..."); E001 catches values that
    reached Django settings some other way (a settings module, code, a test).
    """
    resolved = getattr(settings, "GATEWAY_ENV", None)  # absent under a settings module of another project
    messages = [checks.Error(f"{error.setting}={error.value!r} is invalid: {error.problem}.", hint=error.fix,
                             obj=error.setting, id=INVALID_SETTING)
                for error in (invalid_settings(resolved) if resolved else [])]
    warnings = (settings_warnings(resolved) if resolved else []) + proxy_warnings(os.environ)
    for warning in warnings:
        messages.append(checks.Warning(warning.message, hint=warning.fix, obj=warning.name, id=warning.id))
    return messages
