"""The gateway's settings for the test suite: DEBUG stays off as in production, so a SECRET_KEY must be set."""

import os
import tempfile

os.environ.setdefault("SECRET_KEY", "test-suite-only-" + "k" * 50)

from gateway_project.settings import *  # noqa: E402,F401,F403
from gateway_project.settings import DATABASES  # noqa: E402

# The test client runs async views from the test's thread, whose connection holds the test's transaction.
DB_STEPS_IN_CALLER_THREAD = True

if DATABASES["default"]["ENGINE"] == "django.db.backends.sqlite3":
    # A file, not Django's shared-cache in-memory test database: the concurrency tests need SQLite's real
    # locking (WAL, busy timeout), which a shared-cache database replaces with instant "table is locked" errors.
    DATABASES["default"]["TEST"] = {"NAME": os.path.join(tempfile.gettempdir(), f"gateway-test-{os.getpid()}.sqlite3")}
