"""Every gateway setting as the running process uses it, where it came from, and what looks wrong about it.

The warnings are a pure function of a `Resolved` (start-up's layers), so tests build one from a dict and a
temporary env file; the effective values come from django.conf.settings, so override_settings is honoured.
"""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass
from typing import Any, Mapping
from urllib.parse import urlsplit

from django.conf import settings

from gateway_project.environment import (BASE_DIR, DEFAULT, ENV_FILE, ENVIRONMENT, OVERRIDE, SPECS, Resolved,
                                         SettingSpec, inline_comment_hint)
from gateway_project.redaction import MASK, mask_url

# Base URLs, and a path the gateway appends to each (what a base URL with a path of its own would break).
API_PATHS = {"OLLAMA_BASE_URL": "/api/chat", "COMFYUI_BASE_URL": "/system_stats"}
URL_SETTINGS = tuple(API_PATHS)
# Settings that Django settings hold only in a reshaped form, so their start-up text is what can be shown.
RAW_ONLY = ("DATABASE_URL", "CACHE_URL", "LOG_LEVEL")
# Under this, a live-mode request that loads a model before answering times out more often than not.
SHORT_LIVE_TIMEOUT = 10.0
PROXY_VARIABLES = ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY")
QUOTES = ("'", '"')

# System check ids (diagnostics/checks.py) of each kind of warning.
SHADOWED = "diagnostics.W001"
INLINE_COMMENT = "diagnostics.W002"
STRAY_QUOTES_OR_WHITESPACE = "diagnostics.W003"
SUSPICIOUS_URL = "diagnostics.W004"
SHORT_TIMEOUT = "diagnostics.W005"
PROXY_IGNORED = "diagnostics.W006"
ENV_FILE_MISSING = "diagnostics.W007"
CONTENT_KEY_DERIVED = "diagnostics.W008"
# The cause code of a value the gateway cannot use (check_ollama's cause, the report's invalid_settings).
INVALID_SETTING = "invalid_setting"


@dataclass(frozen=True)
class SettingWarning:
    """A value that is probably not what the operator meant: which setting, why, and what to do."""

    id: str
    name: str
    message: str
    fix: str

    def __str__(self) -> str:
        return f"{self.message} {self.fix}"


@dataclass(frozen=True)
class SettingError:
    """A value the gateway cannot use, as reports show it: the value masked, where it came from, the fix."""

    setting: str
    value: str
    source: str
    message: str
    fix: str
    problem: str  # the parser's reason alone, for the system check's own wording

    def as_dict(self) -> dict:
        return {"code": INVALID_SETTING, "setting": self.setting, "value": self.value, "source": self.source,
                "message": self.message, "fix": self.fix}


@dataclass(frozen=True)
class ResolvedSetting:
    """One setting as the process uses it; `value` is display text with secrets masked."""

    name: str
    value: str
    source: str
    secret: bool
    help: str


@dataclass(frozen=True)
class SettingsReport:
    env_file: str
    env_file_found: bool
    settings: list[ResolvedSetting]
    warnings: list[SettingWarning]
    invalid_settings: list[SettingError]

    @property
    def sources(self) -> dict[str, str]:
        return {s.name: s.source for s in self.settings}

    def as_dict(self) -> dict:
        return {
            "env_file": {"path": self.env_file, "found": self.env_file_found},
            "settings": [asdict(s) for s in self.settings],
            "sources": self.sources,
            "warnings": [str(w) for w in self.warnings],
            "invalid_settings": [e.as_dict() for e in self.invalid_settings],
        }


def shown(spec_or_name: SettingSpec | str, raw: Any) -> str:
    """A value as it may be displayed: passwords inside URLs masked, secrets that are not URLs hidden."""
    spec = spec_or_name if isinstance(spec_or_name, SettingSpec) else _spec(spec_or_name)
    text = as_text(raw)
    if "://" in text:
        return mask_url(text)
    if spec is not None and spec.secret and text:
        return MASK
    return text


def resolved_settings() -> SettingsReport:
    """Every gateway setting with its effective value (masked), its source, and the warnings about them."""
    resolved: Resolved = settings.GATEWAY_ENV
    rows = []
    for spec in SPECS:
        effective, source = _effective(spec.name, resolved)
        rows.append(ResolvedSetting(
            name=spec.name,
            value=shown(spec, effective),
            source=source,
            secret=spec.secret,
            help=spec.help,
        ))
    return SettingsReport(
        env_file=str(resolved.env_file),
        env_file_found=resolved.env_file_found,
        settings=rows,
        warnings=settings_warnings(resolved) + proxy_warnings(os.environ) + content_key_warnings(),
        invalid_settings=invalid_settings(resolved),
    )


def invalid_settings(resolved: Resolved | None = None) -> list[SettingError]:
    """Every value the gateway cannot use, in SPECS order: those start-up resolved leniently (only a diagnostic
    command starts with them) and those Django settings hold after a run-time override."""
    resolved = settings.GATEWAY_ENV if resolved is None else resolved
    at_start = {problem.name: problem for problem in resolved.invalid}
    errors = []
    for spec in SPECS:
        if spec.name in at_start:
            problem = at_start[spec.name]
            errors.append(_setting_error(spec, problem.raw, problem.source, problem.problem, resolved, problem.fix))
            continue
        if spec.name in RAW_ONLY or not hasattr(settings, spec.name):
            continue
        effective = getattr(settings, spec.name)
        if resolved.source_of(spec.name, effective) != OVERRIDE:
            continue
        try:
            spec.parse(as_text(effective))
        except ValueError as exc:
            errors.append(_setting_error(spec, effective, OVERRIDE, str(exc), resolved))
    return errors


def _setting_error(spec: SettingSpec, raw: Any, source: str, problem: str, resolved: Resolved,
                   fix: str = "") -> SettingError:
    value = shown(spec, raw)
    where = resolved.describe_source(source)
    message = (f"{spec.name}={value!r} (from {where}) is invalid: {problem}."
               f"{inline_comment_hint(as_text(raw))}")
    if not fix:
        default = shown(spec, spec.default) or "empty"
        if source == ENVIRONMENT:
            instead = (f"the value in {resolved.env_file}" if spec.name in resolved.file_values
                       else f"the default ({default})")
            fix = (f"Correct {spec.name} in the environment the gateway runs with (its service unit or container), "
                   f"or unset it (`unset {spec.name}`) to use {instead}.")
        elif source == ENV_FILE:
            fix = f"Correct {spec.name} in {resolved.env_file}, or delete that line to use the default ({default})."
        elif source == OVERRIDE:
            fix = f"Correct {spec.name} where the code or settings module sets it after start-up."
        else:
            fix = f"Set {spec.name} in the OS environment or in {resolved.env_file}."
        fix += f" {spec.name}: {spec.help}." if spec.help else ""
    return SettingError(spec.name, value, source, message, fix, problem)


def settings_warnings(resolved: Resolved) -> list[SettingWarning]:
    """Shadowed and suspicious values in what start-up resolved."""
    warnings: list[SettingWarning] = []
    # Resolved keeps no ENV_FILE of its own; a path other than the default can only have come from it.
    if not resolved.env_file_found and resolved.env_file != BASE_DIR / ".env":
        warnings.append(SettingWarning(
            ENV_FILE_MISSING, "ENV_FILE",
            f"ENV_FILE names {resolved.env_file}, which does not exist, so no env file was read.",
            "Fix the path or unset ENV_FILE.",
        ))
    for spec in SPECS:
        warnings += _shadowing(spec, resolved)
        raw = resolved.raw.get(spec.name)
        source = resolved.sources.get(spec.name)
        if raw is None or source == DEFAULT:
            continue
        where = _where(spec.name, resolved)
        warnings += _suspicious_text(spec, raw, where)
        if spec.name in URL_SETTINGS:
            warnings += [SettingWarning(SUSPICIOUS_URL, spec.name, f"{problem} ({where}).", fix)
                         for problem, fix in base_url_problems(spec.name, raw)]
    timeout = resolved.values.get("OLLAMA_TIMEOUT")
    if resolved.values.get("GENERATOR_MODE") == "live" and timeout is not None and timeout < SHORT_LIVE_TIMEOUT:
        warnings.append(SettingWarning(
            SHORT_TIMEOUT, "OLLAMA_TIMEOUT",
            f"OLLAMA_TIMEOUT={timeout:g}s ({_where('OLLAMA_TIMEOUT', resolved)}) is short for live mode: loading a "
            f"model and generating a reply often takes longer, and the request then fails with upstream_timeout.",
            "Use 60 or more (the default is 120).",
        ))
    return warnings


def content_key_warnings() -> list[SettingWarning]:
    """CONTENT_HMAC_KEY unset: metadata-only rows' HMACs are keyed from SECRET_KEY (never shown, nor the key)."""
    if getattr(settings, "CONTENT_HMAC_KEY", ""):
        return []
    return [SettingWarning(
        CONTENT_KEY_DERIVED, "CONTENT_HMAC_KEY",
        "CONTENT_HMAC_KEY is not set: the HMACs kept in place of a metadata-only consumer's content use a key "
        "derived from SECRET_KEY, so rotating SECRET_KEY makes the HMACs already stored uncheckable.",
        "Set CONTENT_HMAC_KEY to its own random value (16+ characters) before any consumer is metadata only; "
        "nothing to do if none is.",
    )]


def proxy_warnings(environ: Mapping[str, str]) -> list[SettingWarning]:
    """Proxy variables that the gateway deliberately does not follow for Ollama."""
    warnings = []
    for name in PROXY_VARIABLES:
        for variant in (name, name.lower()):
            if environ.get(variant):
                warnings.append(SettingWarning(
                    PROXY_IGNORED, variant,
                    f"{variant}={mask_url(environ[variant])} is set, but the gateway ignores proxy variables and "
                    f"connects to Ollama directly.",
                    "Nothing to do if Ollama is reachable without the proxy; otherwise make it reachable directly "
                    "(e.g. over a VPN address).",
                ))
    return warnings


def base_url_problems(name: str, raw: str) -> list[tuple[str, str]]:
    """(problem, fix) pairs for a base URL that parses but would not work as meant: no scheme, a path, spaces."""
    value = raw.strip().strip("".join(QUOTES)).strip()
    if not value:
        return []
    if not value.startswith(("http://", "https://")):
        return [(f"{name}={shown(name, value)!r} has no http:// or https:// scheme",
                 f"Write it with scheme and port, e.g. http://{value.split('/')[0]}.")]
    problems = []
    if any(c.isspace() for c in value):
        problems.append((f"{name}={shown(name, value)!r} contains a space (an inline comment?)",
                         "Keep only the URL in the value."))
        return problems
    try:
        parts = urlsplit(value)
        parts.port  # noqa: B018 - a port that is not a number raises here
    except ValueError as exc:
        return [(f"{name}={shown(name, value)!r} is not a URL ({exc})",
                 "Write it as scheme://host:port, e.g. http://localhost:11434.")]
    if parts.path not in ("", "/") or parts.query:
        root = f"{parts.scheme}://{parts.netloc}"
        problems.append((
            f"{name}={shown(name, value)} has a path ({parts.path or '?' + parts.query}); the gateway appends "
            f"paths such as {API_PATHS[name]} itself, so requests would go to "
            f"{shown(name, value.rstrip('/'))}{API_PATHS[name]}",
            f"Use the server's root: {name}={shown(name, root)}.",
        ))
    return problems


def _shadowing(spec: SettingSpec, resolved: Resolved) -> list[SettingWarning]:
    if spec.name not in resolved.os_values or spec.name not in resolved.file_values:
        return []
    os_raw, file_raw = resolved.os_values[spec.name], resolved.file_values[spec.name]
    if _parsed(spec, os_raw) == _parsed(spec, file_raw):
        return []
    return [SettingWarning(
        SHADOWED, spec.name,
        f"{spec.name} from the OS environment ({shown(spec, os_raw)}) overrides the {resolved.env_file.name} value "
        f"({shown(spec, file_raw)}) in {resolved.env_file}.",
        f"Unset it (`unset {spec.name}`) to use the {resolved.env_file.name} value, or correct whichever is wrong.",
    )]


def shadowing_note(name: str, resolved: Resolved) -> str:
    """The sentence a failure cause adds about where a setting came from, naming an env-file value it overrides."""
    spec = _spec(name)
    source = resolved.sources.get(name, DEFAULT)
    value = shown(spec, resolved.raw.get(name, ""))
    if source == ENVIRONMENT and name in resolved.file_values and _shadowing(spec, resolved):
        return (f"{name}={value} comes from the OS environment and overrides "
                f"{shown(spec, resolved.file_values[name])} in {resolved.env_file} — unset it (`unset {name}`) "
                f"or fix it.")
    if source == ENVIRONMENT:
        return f"{name}={value} comes from the OS environment."
    if source == ENV_FILE:
        return f"{name}={value} comes from {resolved.env_file}."
    where = (f"in {resolved.env_file}" if resolved.env_file_found
             else f"in an env file (none was found at {resolved.env_file})")
    return f"{name}={value} is the code default: it is set neither in the OS environment nor {where}."


def _suspicious_text(spec: SettingSpec, raw: str, where: str) -> list[SettingWarning]:
    warnings = []
    comment = inline_comment(raw)
    if comment is not None:
        warnings.append(SettingWarning(
            INLINE_COMMENT, spec.name,
            f"{spec.name} ({where}) keeps the inline comment {shown(spec, comment)!r} inside its value "
            f"{shown(spec, raw)!r}: django-environ does not strip comments after an unquoted value.",
            f"Move the comment to its own line, or quote the value: "
            f"{spec.name}=\"{shown(spec, raw[:-len(comment)].rstrip())}\".",
        ))
    if raw != raw.strip():
        warnings.append(SettingWarning(
            STRAY_QUOTES_OR_WHITESPACE, spec.name,
            f"{spec.name} ({where}) has leading or trailing whitespace: {shown(spec, raw)!r}.",
            "Remove the spaces around the value.",
        ))
    stripped = raw.strip()
    if comment is None and (stripped[:1] in QUOTES or stripped[-1:] in QUOTES):
        warnings.append(SettingWarning(
            STRAY_QUOTES_OR_WHITESPACE, spec.name,
            f"{spec.name} ({where}) has quotes inside its value: {shown(spec, raw)!r} (unbalanced quotes in the env "
            f"file, or quotes a shell or container runtime did not remove).",
            f"Write it without the quotes: {spec.name}={shown(spec, stripped.strip(''.join(QUOTES)))}.",
        ))
    return warnings


def inline_comment(raw: str) -> str | None:
    """The ` # ...` tail that django-environ keeps in an unquoted value, if any."""
    for index, char in enumerate(raw):
        if char == "#" and index > 0 and raw[index - 1].isspace():
            return raw[index - 1:] if raw[:index - 1].strip() else None
    return None


def _where(name: str, resolved: Resolved) -> str:
    source = resolved.sources.get(name, DEFAULT)
    return "from the OS environment" if source == ENVIRONMENT else f"from {resolved.describe_source(source)}"


def _parsed(spec: SettingSpec, raw: str) -> Any:
    try:
        return spec.parse(raw)
    except ValueError:
        return ("unparsable", raw)


def _effective(name: str, resolved: Resolved) -> tuple[Any, str]:
    """What the running process uses, and its source: the Django setting of that name if there is one (so a
    run-time override shows as such), else start-up's raw text (DATABASE_URL, for one, lives on as DATABASES)."""
    if name in RAW_ONLY or not hasattr(settings, name) or any(p.name == name for p in resolved.invalid):
        # An invalid value shows as given, not as the default that stands in for it.
        return resolved.raw[name], resolved.sources[name]
    effective = getattr(settings, name)
    return effective, resolved.source_of(name, effective)


def as_text(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return f"{value:g}"
    if isinstance(value, (list, tuple)):
        return ",".join(str(v) for v in value)
    return "" if value is None else str(value)


def _spec(name: str) -> SettingSpec | None:
    return next((s for s in SPECS if s.name == name), None)
