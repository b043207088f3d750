"""Gateway settings read from the OS environment and an env file, remembering where each value came from.

The OS environment wins over the env file, which wins over the code default. Keeping the three layers apart
(instead of letting django-environ merge the file into os.environ and forget) is what lets diagnostics say
"OLLAMA_BASE_URL from the OS environment overrides the .env value".
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping
from urllib.parse import urlsplit

import environ
from django.core.exceptions import ImproperlyConfigured

from gateway_project.redaction import mask_url

BASE_DIR = Path(__file__).resolve().parent.parent

ENVIRONMENT = "environment"
ENV_FILE = "env_file"
DEFAULT = "default"
# Not a layer of the environment: the running settings differ from what start-up resolved (overridden in code
# or by a test), so none of the three layers explains the value.
OVERRIDE = "override"


def _duration(minimum: float) -> Callable[[str], float]:
    """Seconds, written as a number or as a Go duration like Ollama's keep_alive ("30m", "1h30m")."""

    def parse(raw: str) -> float:
        text = raw.strip()
        match = re.fullmatch(r"((?:\d+(?:\.\d*)?|\.\d+)(?:ms|s|m|h))+", text)
        if match:
            units = {"ms": 0.001, "s": 1, "m": 60, "h": 3600}
            value = sum(float(n) * units[u] for n, u in re.findall(r"(\d+(?:\.\d*)?|\.\d+)(ms|s|m|h)", text))
        else:
            try:
                value = float(text)
            except ValueError:
                raise ValueError('expected seconds or a duration such as "30m" or "1h30m"') from None
        if value != value or value in (float("inf"), float("-inf")) or value < minimum:
            raise ValueError(f"expected a duration of at least {minimum:g}s")
        return value

    return parse


def _header_list(raw: str) -> tuple[str, ...]:
    headers = tuple(name.strip() for name in raw.split(",") if name.strip())
    for name in headers:
        if not re.fullmatch(r"[A-Za-z0-9-]+", name):
            raise ValueError(f"{name!r} is not an HTTP header name; separate the names with commas, "
                             "e.g. X-OpenWebUI-User-Email,X-User")
    return headers


def _origin_list(raw: str) -> tuple[str, ...]:
    origins = tuple(origin.strip().rstrip("/") for origin in raw.split(",") if origin.strip())
    for origin in origins:
        if origin != "*" and ("://" not in origin or any(c.isspace() for c in origin)):
            raise ValueError(f"{origin!r} is not an origin; write scheme and host, e.g. https://chat.example.com "
                             "or http://localhost:*")
    return origins


def _choice(*allowed: str) -> Callable[[str], str]:
    def parse(raw: str) -> str:
        value = raw.strip().lower()
        if value not in allowed:
            raise ValueError("allowed values are " + ", ".join(repr(a) for a in allowed))
        return value

    return parse


def _number(minimum: float, *, exclusive: bool = False) -> Callable[[str], float]:
    def parse(raw: str) -> float:
        try:
            value = float(raw.strip())
        except ValueError:
            raise ValueError(f"expected a number of seconds, e.g. {minimum + 1:g}") from None
        if value != value or value in (float("inf"), float("-inf")):
            raise ValueError("expected a finite number")
        if value < minimum or (exclusive and value == minimum):
            relation = "greater than" if exclusive else "at least"
            raise ValueError(f"expected a number {relation} {minimum:g}")
        return value

    return parse


def _integer(minimum: int, maximum: int) -> Callable[[str], int]:
    def parse(raw: str) -> int:
        try:
            value = int(raw.strip())
        except ValueError:
            raise ValueError(f"expected a whole number from {minimum} to {maximum}") from None
        if not minimum <= value <= maximum:
            raise ValueError(f"expected a whole number from {minimum} to {maximum}")
        return value

    return parse


def _bool(raw: str) -> bool:
    value = raw.strip().lower()
    if value in environ.Env.BOOLEAN_TRUE_STRINGS:
        return True
    if value in ("false", "off", "no", "n", "0", ""):
        return False
    raise ValueError("allowed values are true/false, on/off, yes/no, 1/0")


def _base_url(raw: str) -> str:
    value = raw.strip()
    if not value.startswith(("http://", "https://")):
        raise ValueError("expected an http:// or https:// URL such as http://localhost:11434")
    _port(value, "http://localhost:11434")
    if not urlsplit(value).hostname:
        raise ValueError("the URL names no host; write it as scheme://host:port, e.g. http://localhost:11434")
    return value.rstrip("/")


def _optional_url(raw: str) -> str:
    return _base_url(raw) if raw.strip() else ""


def _text(raw: str) -> str:
    value = raw.strip()
    if not value:
        raise ValueError("must not be empty")
    return value


def _token(raw: str) -> str:
    value = raw.strip()
    # A short token could be guessed by trying; the metrics name every consumer and model.
    if value and (len(value) < 16 or any(c.isspace() for c in value)):
        raise ValueError("expected empty or at least 16 characters without spaces, e.g. "
                         "python -c 'import secrets; print(secrets.token_urlsafe(32))'")
    return value


def _directory(raw: str) -> str:
    value = raw.strip()
    if not os.path.isabs(value):
        # Relative to what? gunicorn, manage.py and a systemd unit each start in a directory of their own.
        raise ValueError(f"expected an absolute path, e.g. /var/lib/llm-gateway/audit-spool, not {value!r}")
    if os.path.exists(value) and not os.path.isdir(value):
        raise ValueError("the path exists and is not a directory")
    return os.path.normpath(value)


def _host_list(raw: str) -> list[str]:
    hosts = [host.strip() for host in raw.split(",") if host.strip()]
    if not hosts:
        # With DEBUG off Django answers every request 400 when no host is allowed.
        raise ValueError("name at least one host, e.g. localhost")
    for host in hosts:
        if "://" in host or "/" in host or any(c.isspace() for c in host):
            # Django compares the Host header, which never holds a scheme, a path or a space.
            raise ValueError(f"{host!r} is not a host name; write host names only, separated by commas, "
                             f"e.g. gateway.example.com,localhost")
    return hosts


def _word_list(raw: str) -> tuple[str, ...]:
    words = tuple(word.strip().lower() for word in raw.split(",") if word.strip())
    for word in words:
        if not re.fullmatch(r"[\w.-]+", word):
            # A key with spaces or semicolons in it matches no payload key, so nothing would be masked.
            raise ValueError(f"{word!r} is not a key name; separate the keys with commas, e.g. password,token")
    return words


def _scheme(raw: str, known: dict, example: str) -> None:
    scheme = raw.strip().split("://", 1)[0] if "://" in raw else ""
    if scheme not in known:
        # django-environ would accept an unknown scheme and fail only at the first query.
        raise ValueError(f"unknown scheme {scheme!r}; use one of {', '.join(sorted(known))}, e.g. {example}")


def _port(raw: str, example: str) -> None:
    try:
        # Blanks around the authority are left out: an inline " # comment" makes them, and the gateway's clients
        # read it as a fragment and reach the server all the same (diagnostics warns about it).
        urlsplit("//" + urlsplit(raw.strip()).netloc.strip()).port  # noqa: B018 - a bad port raises here
    except ValueError as exc:
        # urllib's reasons name the port at most, never the user or password.
        raise ValueError(f"not a URL ({exc}); e.g. {example}") from None


def _database_url(raw: str) -> dict:
    _scheme(raw, environ.Env.DB_SCHEMES, "postgres://user:pass@host:5432/name")
    _port(raw, "postgres://user:pass@host:5432/name")
    try:
        return environ.Env.db_url_config(raw.strip())
    except Exception as exc:  # django-environ raises several types for unknown schemes
        # The exception text may quote the URL, password included.
        raise ValueError(f"not a database URL ({exc.__class__.__name__}); e.g. postgres://user:pass@host/name") from None


def _cache_url(raw: str) -> dict:
    _scheme(raw, environ.Env.CACHE_SCHEMES, "redis://127.0.0.1:6379/0")
    _port(raw, "redis://127.0.0.1:6379/0")
    try:
        return environ.Env.cache_url_config(raw.strip())
    except Exception as exc:
        raise ValueError(f"not a cache URL ({exc.__class__.__name__}); e.g. redis://127.0.0.1:6379/0") from None


@dataclass(frozen=True)
class SettingSpec:
    """One gateway setting: its name, code default (as text, like the environment holds it) and parser."""

    name: str
    default: str
    parse: Callable[[str], Any]
    secret: bool = False
    help: str = ""


SPECS: tuple[SettingSpec, ...] = (
    SettingSpec("GENERATOR_MODE", "mock", _choice("mock", "live"),
                help="mock: deterministic local replies; live: forward to Ollama"),
    SettingSpec("OLLAMA_BASE_URL", "http://localhost:11434", _base_url, help="Ollama server, scheme and port"),
    SettingSpec("OLLAMA_TIMEOUT", "120", _number(0, exclusive=True),
                help="seconds to wait for Ollama's reply (read timeout)"),
    SettingSpec("OLLAMA_CONNECT_TIMEOUT", "5", _number(0, exclusive=True),
                help="seconds to wait for a TCP connection to Ollama"),
    SettingSpec("OLLAMA_MAX_RETRIES", "2", _integer(0, 10),
                help="extra tries after a connection error, 429 or 5xx from Ollama (never after other 4xx)"),
    SettingSpec("OLLAMA_RETRY_BACKOFF", "0.5", _number(0),
                help="seconds before the first retry; doubled for each further one (with jitter, capped at 10s)"),
    SettingSpec("OLLAMA_DEFAULT_MODEL", "qwen2.5:7b", _text,
                help="model tried first for prompt templates that name none"),
    SettingSpec("MOCK_RESPONSE_DELAY", "1.0", _number(0), help="seconds the mock provider waits before replying"),
    SettingSpec("COMFYUI_BASE_URL", "", _optional_url, help="optional ComfyUI server checked by diagnostics"),
    SettingSpec("DATABASE_URL", f"sqlite:///{BASE_DIR / 'db.sqlite3'}", _database_url, secret=True,
                help="audit database; SQLite file by default"),
    SettingSpec("CACHE_URL", "locmemcache://", _cache_url, secret=True, help="shared cache, e.g. redis://host:6379/0"),
    SettingSpec("SECRET_KEY", "", str.strip, secret=True,
                help="Django secret key: required unless DEBUG is on; 50+ random characters in production"),
    SettingSpec("DEBUG", "false", _bool, help="Django debug mode; never on in production"),
    SettingSpec("BEHIND_TLS_PROXY", "false", _bool,
                help="served over HTTPS via a proxy that sets X-Forwarded-Proto: secure cookies, HTTPS redirect, HSTS"),
    SettingSpec("SECURE_HSTS_SECONDS", "31536000", _integer(0, 10 * 365 * 24 * 3600),
                help="HSTS max-age sent when BEHIND_TLS_PROXY is on; 0 sends none"),
    SettingSpec("SECURE_HSTS_INCLUDE_SUBDOMAINS", "false", _bool, help="HSTS also covers subdomains"),
    SettingSpec("SECURE_HSTS_PRELOAD", "false", _bool, help="HSTS asks to be preloaded by browsers"),
    SettingSpec("GENERATION_DEADLINE", "300", _number(0, exclusive=True),
                help="seconds a whole generation may take, retries and fallbacks included; then 504"),
    SettingSpec("UPSTREAM_MAX_IN_FLIGHT", "64", _integer(0, 100_000),
                help="calls to the provider one gateway process makes at once; 0: no cap"),
    SettingSpec("DEFAULT_MAX_CONCURRENT", "16", _integer(0, 100_000),
                help="generations a consumer without its own max_concurrent may have in flight at once, per gateway "
                     "process; 0: no cap"),
    SettingSpec("UPSTREAM_QUEUE_TIMEOUT", "30", _number(0),
                help="seconds a generation waits for a free upstream slot before 503 upstream_busy"),
    SettingSpec("GRACEFUL_TIMEOUT", "300", _number(0),
                help="seconds in-flight generations get to finish when a worker stops (SIGTERM); then they end"),
    SettingSpec("DATABASE_POOL_SIZE", "8", _integer(1, 1000),
                help="database connections per gateway process (PostgreSQL pool and database threads)"),
    SettingSpec("CHAT_MAX_BODY_BYTES", "1048576", _integer(1024, 64 * 1024 * 1024),
                help="largest request body of the OpenAI- and Ollama-compatible chat endpoints (they carry the "
                     "conversation); the native API keeps 64 KiB"),
    SettingSpec("CHAT_MAX_IMAGE_BODY_BYTES", "20971520", _integer(1024, 256 * 1024 * 1024),
                help="largest body of those chat endpoints when it carries images; without its images a body "
                     "must still fit CHAT_MAX_BODY_BYTES"),
    SettingSpec("KEEP_ALIVE_MAX", "30m", _duration(1),
                help="longest keep_alive a client may ask for (seconds or a duration like 30m); longer, negative "
                     "and 0 are refused"),
    SettingSpec("NUM_CTX_MAX", "32768", _integer(1, 131072),
                help="largest num_ctx a client may ask for: each new context size reloads the model for everyone"),
    SettingSpec("EMBEDDING_MAX_INPUTS", "512", _integer(1, 100000),
                help="most texts one embeddings request may carry (a list input is one call to Ollama)"),
    SettingSpec("EMBEDDING_MAX_INPUT_CHARS", "524288", _integer(1, 64 * 1024 * 1024),
                help="most characters the texts of one embeddings request may hold together"),
    SettingSpec("EMBEDDING_MAX_DIMENSIONS", "8192", _integer(1, 65536),
                help="largest `dimensions` an embeddings request may ask for"),
    SettingSpec("EMBEDDING_STORED_INPUT_CHARS", "4096", _integer(0, 16 * 1024 * 1024),
                help="characters of an embeddings request's texts kept on its audit row (the full count is "
                     "recorded); 0: none; vectors are never stored"),
    SettingSpec("END_USER_HEADERS", "X-OpenWebUI-User-Email,X-OpenWebUI-User-Id,X-OpenWebUI-User-Name",
                _header_list,
                help="headers naming the end user behind a shared key, first present wins (OpenAI's `user` in "
                     "the body wins over them); empty: none"),
    SettingSpec("OLLAMA_DIALECT_ORIGINS", "", _origin_list,
                help="browser origins allowed to call the Ollama dialect (like OLLAMA_ORIGINS; * as a wildcard, "
                     "e.g. http://localhost:*); requests without an Origin are not affected"),
    SettingSpec("REQUEST_HEADER_TIMEOUT", "10", _number(0, exclusive=True),
                help="seconds a client has to send a request's line and headers, from connecting (or from its first "
                     "byte on a kept-alive connection); then 408 and the connection is closed"),
    SettingSpec("REQUEST_BODY_TIMEOUT", "30", _number(0, exclusive=True),
                help="seconds a client has to send a request's whole body, from the end of its headers; then 408 "
                     "(audited on the generation endpoints)"),
    SettingSpec("RATE_LIMIT_PER_MINUTE", "60", _integer(0, 1_000_000),
                help="generations per consumer per minute unless the consumer has its own limit; 0: unlimited"),
    SettingSpec("BUDGET_SHADOW_MODE", "false", _bool,
                help="token budgets are counted and reported (headers, admin, /metrics) but never refuse nor cap "
                     "a generation: for rolling budgets out"),
    SettingSpec("BUDGET_COMPLETION_ESTIMATE", "1024", _integer(1, 10_000_000),
                help="tokens a generation without max_tokens / num_predict reserves for its reply against its "
                     "consumer's token budget, until its real count settles the reservation"),
    SettingSpec("FAILED_KEYS_PER_MINUTE", "30", _integer(0, 1_000_000),
                help="missing or wrong API keys a client address may present per minute; past it the address is "
                     "answered 429 before any key is checked, its refusals counted in one audit row a minute; "
                     "0: no limit"),
    SettingSpec("PASSWORD_FAILURE_MAX_DELAY", "300", _integer(1, 86_400),
                help="longest wait, in seconds, a client address or a user name is given after failed passwords "
                     "(Basic auth, admin login); the wait doubles with each failure after the first five"),
    SettingSpec("REDACT_KEYS", "password,secret,token,api_key,authorization", _word_list,
                help="payload keys whose values are masked before they are stored or sent to a model"),
    SettingSpec("AUDIT_RETENTION_DAYS", "90", _integer(0, 100 * 365),
                help="days prune_audit keeps generations and connection checks (their usage rollup stays); "
                     "0: keep everything"),
    SettingSpec("AUDIT_SPOOL_DIR", str(BASE_DIR / "audit-spool"), _directory,
                help="directory where outcomes the database could not take wait to be replayed (one per host; "
                     "they hold prompts and outputs, so keep it private)"),
    SettingSpec("AUDIT_SPOOL_MAX_MB", "512", _integer(1, 1_000_000),
                help="most the audit spool directory may hold, in MiB; past it outcomes are kept in memory, "
                     "then dropped (counted in /metrics and logged)"),
    SettingSpec("METRICS_TOKEN", "", _token, secret=True,
                help="bearer token the Prometheus scraper sends to GET /metrics; empty: only staff users may read it"),
    SettingSpec("CONTENT_HMAC_KEY", "", _token, secret=True,
                help="key of the HMAC-SHA-256 kept in place of a metadata-only consumer's content (16+ characters); "
                     "empty: derived from SECRET_KEY"),
    SettingSpec("ALLOWED_HOSTS", "localhost,127.0.0.1,[::1]", _host_list, help="host names the gateway answers to"),
    SettingSpec("LOG_LEVEL", "INFO", _choice("debug", "info", "warning", "error"), help="log level of the gateway"),
)


def read_env_file(path: Path) -> dict[str, str] | None:
    """The variables an env file sets, parsed exactly as django-environ does; None if the file does not exist."""
    if not path.is_file():
        return None
    values: dict[str, str] = {}
    # read_env writes into cls.ENVIRON; pointing that at an empty dict captures the file alone.
    reader = type("EnvFileReader", (environ.Env,), {"ENVIRON": values})
    reader.read_env(str(path), overwrite=True)
    return values


# The commands that diagnose the configuration. They must run, and report, when a setting is invalid, so for
# them start-up resolves leniently; the server and every other command refuse to start ("Configuration error").
DIAGNOSTIC_COMMANDS = ("check_ollama",)
_lenient_start = False


def start_leniently_for(argv: list[str]) -> None:
    """Called by manage.py before the settings load: `manage.py check_ollama` starts whatever the settings say."""
    global _lenient_start
    _lenient_start = len(argv) > 1 and argv[1] in DIAGNOSTIC_COMMANDS


def strict_start() -> bool:
    """Whether the settings module refuses invalid values (everything but a diagnostic command)."""
    return not _lenient_start


@dataclass(frozen=True)
class InvalidSetting:
    """A value start-up cannot use: the setting, its raw text, where it came from, what is wrong, and (for
    rules beyond one value's syntax) how to fix it."""

    name: str
    raw: str
    source: str
    problem: str
    fix: str = ""


@dataclass
class Resolved:
    """What start-up resolved: raw text and parsed value per setting, where each came from, and the layers.

    Resolved leniently (strict=False), an invalid value is listed in `invalid` and its setting holds the code
    default in `values`, while `raw` and `sources` keep the value given and where it came from.
    """

    env_file: Path
    env_file_found: bool
    os_values: dict[str, str]
    file_values: dict[str, str]
    raw: dict[str, str] = field(default_factory=dict)
    values: dict[str, Any] = field(default_factory=dict)
    sources: dict[str, str] = field(default_factory=dict)
    strict: bool = True
    invalid: list[InvalidSetting] = field(default_factory=list)

    def __getitem__(self, name: str) -> Any:
        return self.values[name]

    def source_of(self, name: str, effective: Any) -> str:
        """Where the running value of a setting came from: its start-up source, or OVERRIDE if it was changed since."""
        if name in self.values and self.values[name] == effective:
            return self.sources[name]
        return OVERRIDE

    def describe_source(self, source: str) -> str:
        """A source in words, for messages: "the OS environment", "/srv/gateway/.env", ..."""
        return {
            ENVIRONMENT: "the OS environment",
            ENV_FILE: str(self.env_file),
            DEFAULT: "the code default",
            OVERRIDE: "a run-time override of Django settings",
        }.get(source, source)

    def reject(self, name: str, problem: str, *, message: str, fix: str = "") -> None:
        """A value the gateway cannot run with: ImproperlyConfigured(message) when resolved strictly, else one
        more entry in `invalid`."""
        if self.strict:
            raise ImproperlyConfigured(message) from None  # the ValueError behind it says nothing more
        self.invalid.append(InvalidSetting(name, self.raw.get(name, ""), self.sources.get(name, DEFAULT), problem,
                                           fix))


def resolve(environ_: Mapping[str, str] | None = None, *, specs: tuple[SettingSpec, ...] = SPECS,
            strict: bool = True) -> Resolved:
    """Resolve every setting from the OS environment, then the env file (ENV_FILE or ./.env), then the default.

    Raises ImproperlyConfigured naming the variable, its source and what is allowed when a value does not parse;
    with strict=False it lists every such value in `invalid` and uses the code default in its place instead.
    """
    os_env = dict(os.environ if environ_ is None else environ_)
    env_file = Path(os_env.get("ENV_FILE") or BASE_DIR / ".env")
    if not env_file.is_absolute():
        env_file = BASE_DIR / env_file
    file_values = read_env_file(env_file)
    resolved = Resolved(
        env_file=env_file,
        env_file_found=file_values is not None,
        os_values={s.name: os_env[s.name] for s in specs if s.name in os_env},
        file_values={s.name: file_values[s.name] for s in specs if file_values and s.name in file_values},
        strict=strict,
    )
    for spec in specs:
        if spec.name in resolved.os_values:
            source, raw = ENVIRONMENT, resolved.os_values[spec.name]
        elif spec.name in resolved.file_values:
            source, raw = ENV_FILE, resolved.file_values[spec.name]
        else:
            source, raw = DEFAULT, spec.default
        resolved.raw[spec.name] = raw
        resolved.sources[spec.name] = source
        try:
            resolved.values[spec.name] = spec.parse(raw)
        except ValueError as exc:
            where = {ENVIRONMENT: "the OS environment", ENV_FILE: str(env_file), DEFAULT: "the code default"}[source]
            # A URL's password is masked even in a setting that is no secret (OLLAMA_BASE_URL with credentials).
            shown = "(hidden)" if spec.secret else repr(mask_url(raw) if "://" in raw else raw)
            resolved.reject(spec.name, str(exc),
                            message=f"{spec.name}={shown} (from {where}) is invalid: {exc}.{inline_comment_hint(raw)}")
            resolved.values[spec.name] = spec.parse(spec.default)
    return resolved


def inline_comment_hint(raw: str) -> str:
    """The sentence that explains an inline comment kept in a value, or ""."""
    if " #" in raw or "\t#" in raw:
        return (" The value holds an inline comment, which django-environ keeps after an unquoted value: "
                "move the comment to its own line or quote the value.")
    return ""
