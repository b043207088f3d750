"""Django settings for the LLM Gateway. Every tunable value comes from gateway_project.environment."""

from gateway_project.environment import BASE_DIR, resolve, strict_start

# Strict for the server and every command but a diagnostic one (manage.py check_ollama), which reports invalid
# values where the others refuse to start.
GATEWAY_ENV = resolve(strict=strict_start())
env = GATEWAY_ENV.values

DEBUG = env["DEBUG"]
# Sessions (admin logins) are signed with this key. A published default would let anyone forge them, so it
# is accepted only for local development with DEBUG on.
DEV_SECRET_KEY = "django-insecure-dev-only-never-use-this-key-outside-a-developer-machine"
SECRET_KEY = env["SECRET_KEY"] or (DEV_SECRET_KEY if DEBUG else "")
if not DEBUG and (not SECRET_KEY or SECRET_KEY.startswith("django-insecure")):
    _fix = ("Set SECRET_KEY=$(python -c 'import secrets; print(secrets.token_urlsafe(50))'); "
            "for local development set DEBUG=true instead.")
    GATEWAY_ENV.reject("SECRET_KEY", "it must be set to a long random value when DEBUG is off", fix=_fix,
                       message=f"SECRET_KEY must be set to a long random value when DEBUG is off, e.g. "
                               f"{_fix.removeprefix('Set ')}")
    # Reached only by a diagnostic command, which reports the key and signs nothing with this one.
    SECRET_KEY = DEV_SECRET_KEY
ALLOWED_HOSTS = env["ALLOWED_HOSTS"]

# HTTPS behind a TLS-terminating proxy: trust its X-Forwarded-Proto, keep cookies on HTTPS, send HSTS.
# Off by default so that the quickstart works over plain http://127.0.0.1.
if env["BEHIND_TLS_PROXY"]:
    SECURE_PROXY_SSL_HEADER = ("HTTP_X_FORWARDED_PROTO", "https")
    SECURE_SSL_REDIRECT = True
    SESSION_COOKIE_SECURE = True
    CSRF_COOKIE_SECURE = True
    SECURE_HSTS_SECONDS = env["SECURE_HSTS_SECONDS"]
    SECURE_HSTS_INCLUDE_SUBDOMAINS = env["SECURE_HSTS_INCLUDE_SUBDOMAINS"]
    SECURE_HSTS_PRELOAD = env["SECURE_HSTS_PRELOAD"]

# Gateway
GENERATOR_MODE = env["GENERATOR_MODE"]
OLLAMA_BASE_URL = env["OLLAMA_BASE_URL"]
OLLAMA_TIMEOUT = env["OLLAMA_TIMEOUT"]
OLLAMA_CONNECT_TIMEOUT = env["OLLAMA_CONNECT_TIMEOUT"]
OLLAMA_DEFAULT_MODEL = env["OLLAMA_DEFAULT_MODEL"]
MOCK_RESPONSE_DELAY = env["MOCK_RESPONSE_DELAY"]
COMFYUI_BASE_URL = env["COMFYUI_BASE_URL"]
OLLAMA_MAX_RETRIES = env["OLLAMA_MAX_RETRIES"]
OLLAMA_RETRY_BACKOFF = env["OLLAMA_RETRY_BACKOFF"]
GENERATION_DEADLINE = env["GENERATION_DEADLINE"]
UPSTREAM_MAX_IN_FLIGHT = env["UPSTREAM_MAX_IN_FLIGHT"]
UPSTREAM_QUEUE_TIMEOUT = env["UPSTREAM_QUEUE_TIMEOUT"]
DEFAULT_MAX_CONCURRENT = env["DEFAULT_MAX_CONCURRENT"]
GRACEFUL_TIMEOUT = env["GRACEFUL_TIMEOUT"]
DATABASE_POOL_SIZE = env["DATABASE_POOL_SIZE"]
# Database steps of async views run in a pool of threads (gateway_project.db_steps); the test suite runs them in
# the test's thread instead, where its transaction is.
DB_STEPS_IN_CALLER_THREAD = False
GENERATE_MAX_BODY_BYTES = 64 * 1024
CHAT_MAX_BODY_BYTES = env["CHAT_MAX_BODY_BYTES"]
CHAT_MAX_IMAGE_BODY_BYTES = env["CHAT_MAX_IMAGE_BODY_BYTES"]
KEEP_ALIVE_MAX = env["KEEP_ALIVE_MAX"]
NUM_CTX_MAX = env["NUM_CTX_MAX"]
END_USER_HEADERS = env["END_USER_HEADERS"]
EMBEDDING_MAX_INPUTS = env["EMBEDDING_MAX_INPUTS"]
EMBEDDING_MAX_INPUT_CHARS = env["EMBEDDING_MAX_INPUT_CHARS"]
EMBEDDING_MAX_DIMENSIONS = env["EMBEDDING_MAX_DIMENSIONS"]
EMBEDDING_STORED_INPUT_CHARS = env["EMBEDDING_STORED_INPUT_CHARS"]
OLLAMA_DIALECT_ORIGINS = env["OLLAMA_DIALECT_ORIGINS"]
# Every other API path (listings, health, the refused endpoints): their bodies are small or absent. The admin's
# paths take DATA_UPLOAD_MAX_MEMORY_SIZE. A larger body is refused before it is read (llm.body_limits).
API_MAX_BODY_BYTES = 16 * 1024
# Slow clients: the request head (gateway_project.connections) and the body (gateway_project.asgi) are bounded.
REQUEST_HEADER_TIMEOUT = env["REQUEST_HEADER_TIMEOUT"]
REQUEST_BODY_TIMEOUT = env["REQUEST_BODY_TIMEOUT"]
RATE_LIMIT_PER_MINUTE = env["RATE_LIMIT_PER_MINUTE"]
# The counting window; only tests shorten or lengthen it.
RATE_LIMIT_WINDOW_SECONDS = 60
FAILED_KEYS_PER_MINUTE = env["FAILED_KEYS_PER_MINUTE"]
# Token budgets per consumer (llm.budgets).
BUDGET_SHADOW_MODE = env["BUDGET_SHADOW_MODE"]
BUDGET_COMPLETION_ESTIMATE = env["BUDGET_COMPLETION_ESTIMATE"]
PASSWORD_FAILURE_MAX_DELAY = env["PASSWORD_FAILURE_MAX_DELAY"]
REDACT_KEYS = env["REDACT_KEYS"]
AUDIT_RETENTION_DAYS = env["AUDIT_RETENTION_DAYS"]
# Outcomes the database could not take, kept until it can (llm.audit_spool): files under this directory up to
# AUDIT_SPOOL_MAX_MB, and in memory (per process, up to AUDIT_SPOOL_MEMORY_BYTES) while no file can be written.
AUDIT_SPOOL_DIR = env["AUDIT_SPOOL_DIR"]
AUDIT_SPOOL_MAX_BYTES = env["AUDIT_SPOOL_MAX_MB"] * 1024 * 1024
AUDIT_SPOOL_MEMORY_BYTES = 64 * 1024 * 1024
# How often each process looks for kept outcomes to replay (one stat of the directory when there are none).
AUDIT_SPOOL_REPLAY_SECONDS = 5.0
# GET /metrics: the scraper's bearer token; empty: staff users only.
METRICS_TOKEN = env["METRICS_TOKEN"]
# The key of the HMACs a metadata-only consumer's rows keep in place of content (llm.content_hmac); empty: a key
# derived from SECRET_KEY (diagnostics warns: rotating SECRET_KEY would then change every HMAC).
CONTENT_HMAC_KEY = env["CONTENT_HMAC_KEY"]

INSTALLED_APPS = [
    "gateway_project.apps.GatewayAdminConfig",  # django.contrib.admin with the gateway's site
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "servestatic",  # its system checks; the middleware serves the files
    "django.contrib.staticfiles",
    "rest_framework",
    "drf_spectacular",
    "drf_spectacular_sidecar",  # Swagger UI's files served from here, not from a CDN
    "llm",
    "diagnostics",
]

MIDDLEWARE = [
    "gateway_project.middleware.RequestIdMiddleware",
    "llm.body_limits.UnreadBodyMiddleware",
    "django.middleware.security.SecurityMiddleware",
    "csp.middleware.CSPMiddleware",
    "servestatic.middleware.ServeStaticMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
]

# The API's own chain (gateway_project.asgi): async-capable middleware only, none of which the API needs from the
# list above (it authenticates by API key, not by session, and sends no cookies).
API_MIDDLEWARE = [
    "gateway_project.middleware.RequestIdMiddleware",
    # Django's host check runs only when something asks for the host; on this chain nothing else does.
    "llm.dialects.hosts.AllowedHostsMiddleware",
    "llm.body_limits.UnreadBodyMiddleware",
    "gateway_project.middleware.SecurityHeadersMiddleware",
]
# The front doors: the native API, the OpenAI dialect and the Ollama dialect at Ollama's own paths (not all of
# /api/: the debug API, the schema and the docs keep the full chain).
# Async views only: the lean handler sends no request_finished, so a sync view's database connection (opened in a
# thread of its own) would never go back to the pool. The template catalog (a sync DRF view) has the full chain.
API_PATH_PREFIXES = ("/v1/", "/api/blobs/")
API_PATHS = ("/", "/api/v1/llm/generate", "/healthz", "/readyz", "/api/chat", "/api/generate", "/api/tags", "/api/show",
             "/api/version",
             "/api/ps", "/api/embed", "/api/embeddings", "/api/pull", "/api/push", "/api/create", "/api/copy",
             "/api/delete")

# Content-Security-Policy of every page of the full chain (the admin, the usage dashboard, the diagnostics pages,
# Swagger UI): scripts, styles, images and fonts from the gateway itself only, nothing inline, no frames, forms
# posting only here. An injected <script> or style, or a page framing the admin, does nothing. SVG charts are
# markup; Swagger UI's icons are data: images, its start-up script a file of its own (llm.schema_urls).
CONTENT_SECURITY_POLICY = {
    "DIRECTIVES": {
        "default-src": ["'none'"],
        "script-src": ["'self'"],
        "style-src": ["'self'"],
        "img-src": ["'self'", "data:"],
        "font-src": ["'self'"],
        "connect-src": ["'self'"],
        "form-action": ["'self'"],
        "frame-ancestors": ["'none'"],
        "base-uri": ["'none'"],
    },
}

ROOT_URLCONF = "gateway_project.urls"
WSGI_APPLICATION = "gateway_project.wsgi.application"
ASGI_APPLICATION = "gateway_project.asgi.application"

TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [],
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
            ],
        },
    },
]

DATABASES = {"default": env["DATABASE_URL"]}
if DATABASES["default"]["ENGINE"] == "django.db.backends.sqlite3":
    # WAL lets readers (admin) and the writer (audit rows) work at once; NORMAL sync keeps a commit off fsync.
    DATABASES["default"].setdefault("OPTIONS", {}).update(
        {
            "init_command": "PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL;",
            "transaction_mode": "IMMEDIATE",
            "timeout": 20,
        }
    )
    # Reopening a WAL database per request costs ~2.5 ms (open, PRAGMAs, and a checkpoint at close): keep it open.
    DATABASES["default"]["CONN_MAX_AGE"] = None
else:
    # Django's psycopg pool: at most DATABASE_POOL_SIZE connections per process, whatever the number of requests in
    # flight; a connection goes back to the pool at the end of each database step (and of each sync request).
    DATABASES["default"]["CONN_MAX_AGE"] = 0
    # Django's backend, failing fast for a moment after the database could not be reached (see the module).
    if DATABASES["default"]["ENGINE"] == "django.db.backends.postgresql":
        DATABASES["default"]["ENGINE"] = "gateway_project.postgresql"
    # Waits bounded to about a second while the database is unreachable, so that a request is answered (and its
    # outcome spooled, llm.audit_spool) instead of hanging: a connection from the pool within POOL_TIMEOUT, a new
    # one within libpq's connect_timeout (2 s, libpq's minimum; the pool opens them in the background).
    DATABASES["default"].setdefault("OPTIONS", {}).setdefault("connect_timeout", 2)
    DATABASES["default"]["OPTIONS"].setdefault(
        "pool", {"min_size": 1, "max_size": env["DATABASE_POOL_SIZE"], "timeout": 1})
# Threads for the database steps of async views: one per pooled connection on PostgreSQL. SQLite admits one writer
# at a time, so more threads only queue for its lock and compete for the GIL with the event loop (measured, 500
# connections: 8 threads 171 req/s and /healthz p99 128 ms; 2 threads 217 req/s and 89 ms).
# On PostgreSQL one connection of the pool is left to the sync views (the admin's thread), so that a step never
# waits for another one's connection: a step that cannot get one within the pool's second means the database is in
# trouble (gateway_project.postgresql), not that the gateway is busy.
DB_STEP_THREADS = (min(2, env["DATABASE_POOL_SIZE"]) if DATABASES["default"]["ENGINE"] == "django.db.backends.sqlite3"
                   else max(1, env["DATABASE_POOL_SIZE"] - 1))
# An audit row must survive the error that the view returns: never wrap requests in one transaction.
DATABASES["default"]["ATOMIC_REQUESTS"] = False

CACHES = {"default": env["CACHE_URL"]}
if CACHES["default"]["BACKEND"] == "django.core.cache.backends.redis.RedisCache":
    # A rate-limit check waits at most this long for Redis, then lets the request through (llm.rate_limits).
    CACHES["default"].setdefault("OPTIONS", {}).update(socket_connect_timeout=0.5, socket_timeout=0.5)

DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

# Every Django password (admin login, Basic auth) is checked through this one backend: one slow hash at a time per
# process, failures delayed per address and user name, successes remembered for a minute.
AUTHENTICATION_BACKENDS = ["gateway_project.passwords.ThrottledPasswordBackend"]

AUTH_PASSWORD_VALIDATORS = [
    {"NAME": "django.contrib.auth.password_validation.UserAttributeSimilarityValidator"},
    {"NAME": "django.contrib.auth.password_validation.MinimumLengthValidator"},
    {"NAME": "django.contrib.auth.password_validation.CommonPasswordValidator"},
    {"NAME": "django.contrib.auth.password_validation.NumericPasswordValidator"},
]

LANGUAGE_CODE = "en-us"
TIME_ZONE = "UTC"
USE_I18N = True
USE_TZ = True

STATIC_URL = "static/"
STATIC_ROOT = BASE_DIR / "staticfiles"
STORAGES = {
    "default": {"BACKEND": "django.core.files.storage.FileSystemStorage"},
    "staticfiles": {"BACKEND": "servestatic.storage.CompressedStaticFilesStorage"},
}
# Serve admin assets straight from the apps when collectstatic has not run (tests, a fresh checkout).
SERVESTATIC_USE_FINDERS = True

REST_FRAMEWORK = {
    "DEFAULT_RENDERER_CLASSES": ["rest_framework.renderers.JSONRenderer"],
    "DEFAULT_PARSER_CLASSES": ["rest_framework.parsers.JSONParser"],
    "EXCEPTION_HANDLER": "llm.errors.api_exception_handler",
    # Basic auth (a password check) only where a view asks for it: the debug API and /metrics. The schema and the
    # docs are public and have no use for a password.
    "DEFAULT_AUTHENTICATION_CLASSES": ["rest_framework.authentication.SessionAuthentication"],
    "DEFAULT_SCHEMA_CLASS": "drf_spectacular.openapi.AutoSchema",
}

SPECTACULAR_SETTINGS = {
    "TITLE": "LLM Gateway API",
    "DESCRIPTION": "Generations from locally hosted LLMs, for other teams' services. Authenticate with an API key "
                   "(`Authorization: Bearer <key>` or `X-API-Key: <key>`). Every error of the native API has the "
                   'shape `{"error": {"type", "message", "request_id", "details"?}}`; the OpenAI-compatible '
                   'endpoints under /v1/ answer in OpenAI\'s shape, `{"error": {"message", "type", "param", '
                   '"code"}}`. The Ollama-compatible endpoints (/api/chat, /api/generate, /api/tags, …) follow '
                   "Ollama's own API and are not described here.",
    "VERSION": "1.0.0",
    "SERVE_INCLUDE_SCHEMA": False,
    "PREPROCESSING_HOOKS": ["llm.schema.only_the_llm_api"],
    "POSTPROCESSING_HOOKS": ["drf_spectacular.hooks.postprocess_schema_enums", "llm.schema.closed_request_objects",
                            "llm.dialects.openai_schema.add_components"],
    "COMPONENT_SPLIT_REQUEST": True,
    "SWAGGER_UI_DIST": "SIDECAR",
    "SWAGGER_UI_FAVICON_HREF": "SIDECAR",
    "REDOC_DIST": "SIDECAR",
}

LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "formatters": {
        "json": {
            # python-json-logger's, with every record bounded: a traceback may quote a whole reply.
            "()": "gateway_project.log_format.BoundedJsonFormatter",
            "fmt": "%(asctime)s %(levelname)s %(name)s %(message)s",
            "rename_fields": {"asctime": "ts", "levelname": "level", "name": "logger"},
        },
    },
    "handlers": {"console": {"class": "logging.StreamHandler", "formatter": "json"}},
    "root": {"handlers": ["console"], "level": "WARNING"},
    "loggers": {
        "gateway": {"level": env["LOG_LEVEL"].upper(), "propagate": True},
        "llm": {"level": env["LOG_LEVEL"].upper(), "propagate": True},
        "diagnostics": {"level": env["LOG_LEVEL"].upper(), "propagate": True},
        # The gateway writes its own line per request; Django's would repeat it (and 4xx are not errors here).
        "django.request": {"level": "ERROR"},
        "django.server": {"level": "ERROR"},
    },
}
