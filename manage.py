#!/usr/bin/env python
"""Django's command-line utility for the LLM Gateway."""
import os
import sys


def main():
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "gateway_project.settings")
    from gateway_project.environment import start_leniently_for

    # check_ollama must run and report an invalid setting; everything else refuses to start with one.
    start_leniently_for(sys.argv)
    from django.conf import settings
    from django.core.exceptions import ImproperlyConfigured
    from django.core.management import execute_from_command_line

    try:
        settings.INSTALLED_APPS  # resolves the gateway settings
    except ImproperlyConfigured as exc:
        # A wrong setting is the operator's to fix: say which, not a traceback.
        sys.exit(f"Configuration error: {exc}")
    execute_from_command_line(sys.argv)


if __name__ == "__main__":
    main()
