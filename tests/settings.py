"""The gateway's settings for the test suite: DEBUG stays off as in production, so a SECRET_KEY must be set."""

import os

os.environ.setdefault("SECRET_KEY", "test-suite-only-" + "k" * 50)

from gateway_project.settings import *  # noqa: E402,F401,F403
