"""The Ollama connection check: each step timed, a failure classified into a cause with a one-line fix.

The command, the admin pages and the debug API all call `check_ollama_connection()` (through
`diagnostics.services.run_connection_check`). It uses a short-lived httpx client of its own: the gateway's
pooled client has generation-length timeouts, and a check must answer in seconds.
"""

from __future__ import annotations

import math
import os
import socket
import ssl
import time
from concurrent.futures import ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from typing import Any, Callable

import httpx
from django.conf import settings

from diagnostics.resolved_settings import (INVALID_SETTING, SHADOWED, SettingError, SettingWarning,
                                           base_url_problems, inline_comment, invalid_settings, proxy_warnings,
                                           settings_warnings, shadowing_note, shown)
from gateway_project.environment import ENVIRONMENT, OVERRIDE, Resolved
from gateway_project.redaction import mask_url

# Seconds each probe may take when the caller names no timeout; a healthy Ollama answers these in milliseconds.
DEFAULT_TIMEOUT = 5.0
TEST_PROMPT = "Reply with the single word: ready"
TEST_NUM_PREDICT = 16
EXCERPT = 160

# Cause codes (INVALID_SETTING comes with the settings report, which lists the same errors).
DNS_FAILURE = "dns_failure"
CONNECTION_REFUSED = "connection_refused"
TIMEOUT = "timeout"
NOT_OLLAMA = "not_ollama"
HTTP_ERROR = "http_error"
MODEL_MISSING = "model_missing"
GENERATION_FAILED = "generation_failed"
# Ollama answers, but slower than the gateway's own timeouts allow: live requests would fail although the steps
# pass. The check's verdict is the gateway's, not that of its own, more patient, client.
GATEWAY_TIMEOUT = "gateway_timeout"
# A test generation that uses more of the gateway's time limit than this is a warning: longer replies may not fit.
CLOSE_TO_LIMIT = 0.5
# The causes in which the base URL is the likely culprit, so where it came from is part of the message.
URL_CAUSES = (DNS_FAILURE, CONNECTION_REFUSED, TIMEOUT, NOT_OLLAMA)
CAUSE_CODES = (INVALID_SETTING, DNS_FAILURE, CONNECTION_REFUSED, TIMEOUT, NOT_OLLAMA, HTTP_ERROR, MODEL_MISSING,
               GENERATION_FAILED, GATEWAY_TIMEOUT)


@dataclass
class Step:
    name: str
    ok: bool
    elapsed_ms: float
    detail: str


@dataclass
class Cause:
    code: str
    message: str
    fix: str
    # The cause's particulars, shown between code and message: the setting, its value and source for
    # invalid_setting; the setting, its limit and the time measured for gateway_timeout.
    extra: dict = field(default_factory=dict)

    def as_dict(self) -> dict:
        return {"code": self.code, **self.extra, "message": self.message, "fix": self.fix}

    @classmethod
    def of_setting(cls, error: SettingError) -> "Cause":
        data = error.as_dict()
        return cls(INVALID_SETTING, error.message, error.fix,
                   {key: data[key] for key in ("setting", "value", "source")})


@dataclass
class ConnectionReport:
    """Everything one run of the check found; `as_dict()` is the JSON of `check_ollama --json` and the API."""

    target_url: str
    source: str
    base_url_from_settings: str
    mode: str
    model: str
    timestamp: str
    version: str | None = None
    models: list[str] | None = None
    model_available: bool | None = None
    steps: list[Step] = field(default_factory=list)
    invalid_settings: list[SettingError] = field(default_factory=list)
    cause: Cause | None = None
    warnings: list[str] = field(default_factory=list)
    generation: dict | None = None
    comfyui: dict | None = None
    elapsed_ms: float = 0.0

    @property
    def ok(self) -> bool:
        return self.cause is None

    def as_dict(self) -> dict:
        data = {
            "ok": self.ok,
            "target_url": self.target_url,
            "source": self.source,
            "base_url_from_settings": self.base_url_from_settings,
            "mode": self.mode,
            "timestamp": self.timestamp,
            "version": self.version,
            "models": self.models,
            "model": self.model,
            "model_available": self.model_available,
            "steps": [asdict(step) for step in self.steps],
            "cause": self.cause.as_dict() if self.cause else None,
            "invalid_settings": [error.as_dict() for error in self.invalid_settings],
            "warnings": self.warnings,
            "elapsed_ms": self.elapsed_ms,
        }
        if self.generation is not None:
            data["generation"] = self.generation
        if self.comfyui is not None:
            data["comfyui"] = self.comfyui
        return data


class _Failed(Exception):
    """Ends the check with a cause."""

    def __init__(self, code: str, message: str, fix: str, **extra: Any):
        super().__init__(message)
        self.cause = Cause(code, message, fix, extra)


def check_ollama_connection(*, generate: bool = False, model: str | None = None, timeout: float | None = None,
                            base_url: str | None = None) -> ConnectionReport:
    """Check the configured Ollama (or `base_url`): DNS, TCP, /api/version, /api/tags, the model, and on request a
    tiny generation. Never raises for a failure of Ollama's: the report's `cause` says what went wrong.

    It passes only if a live generation with the same settings would work: a setting the gateway cannot use
    fails it (invalid_setting), and so does Ollama answering slower than the gateway's timeouts (gateway_timeout).
    """
    started = time.perf_counter()
    resolved: Resolved = settings.GATEWAY_ENV
    errors = invalid_settings(resolved)
    configured = settings.OLLAMA_BASE_URL
    source = resolved.source_of("OLLAMA_BASE_URL", configured)
    if any(problem.name == "OLLAMA_BASE_URL" for problem in resolved.invalid):
        # Settings hold the default in its place; the check must look at what the operator wrote.
        configured = resolved.raw["OLLAMA_BASE_URL"]
    target = configured if base_url is None else base_url
    source = "argument" if base_url is not None else source
    model_name = model if model is not None else settings.OLLAMA_DEFAULT_MODEL
    report = ConnectionReport(
        target_url=shown("OLLAMA_BASE_URL", target),
        source=source,
        base_url_from_settings=shown("OLLAMA_BASE_URL", configured),
        mode=settings.GENERATOR_MODE,
        model=model_name,
        timestamp=datetime.now(timezone.utc).isoformat(),
        invalid_settings=errors,
    )
    setting_warnings = settings_warnings(resolved) + proxy_warnings(os.environ)
    report.warnings = [str(w) for w in setting_warnings]
    if settings.GENERATOR_MODE != "live":
        report.warnings.append(
            f"GENERATOR_MODE={settings.GENERATOR_MODE}: requests are currently served by the mock provider, not by "
            f"this Ollama. Set GENERATOR_MODE=live to use it."
        )
    run = _Run(report, resolved, setting_warnings, model_from_settings=model is None)
    try:
        probe_timeout = _timeout(timeout)
        url = _target(target, run)
        run.probe(url, probe_timeout)
        run.judge_connect()
        if generate:
            setting, limit = gateway_limit()
            # Wait longer than the gateway would, to measure how long the model really takes.
            run.generate(url, timeout if timeout is not None else max(limit, probe_timeout), setting, limit)
    except _Failed as failed:
        report.cause = run.with_shadowing_fix(failed.cause)
    if errors:
        # The gateway would not even start (or not use the value): that comes before anything Ollama does.
        report.cause = Cause.of_setting(errors[0])
    if settings.COMFYUI_BASE_URL:
        report.comfyui = _check_comfyui(settings.COMFYUI_BASE_URL, _safe_timeout(timeout), report)
    report.elapsed_ms = _ms(started)
    return report


class _Run:
    """One run's state: the report it fills in and what it knows about the settings involved."""

    def __init__(self, report: ConnectionReport, resolved: Resolved, warnings: list[SettingWarning], *,
                 model_from_settings: bool):
        self.report = report
        self.resolved = resolved
        self.warnings = warnings
        self.model_from_settings = model_from_settings

    def step(self, name: str, action: Callable[[], tuple[Any, str]]) -> Any:
        """Run one step, timed; a _Failed it raises is recorded as a failed step and passed on."""
        started = time.perf_counter()
        try:
            result, detail = action()
        except _Failed as failed:
            self.report.steps.append(Step(name, False, _ms(started), failed.cause.message.split(". ")[0]))
            raise
        self.report.steps.append(Step(name, True, _ms(started), detail))
        return result

    def origin(self, name: str = "OLLAMA_BASE_URL") -> str:
        """Where the setting involved in a failure came from, naming a value it shadows and any warning about it."""
        if name == "OLLAMA_BASE_URL" and self.report.source == "argument":
            return "The URL was given to the check, not taken from OLLAMA_BASE_URL."
        if self.resolved.source_of(name, getattr(settings, name)) == OVERRIDE:
            return f"{name} was overridden in Django settings after start-up."
        notes = [shadowing_note(name, self.resolved)]
        notes += [w.message for w in self.warnings if w.name == name and w.id != SHADOWED]
        return " ".join(notes)

    def with_shadowing_fix(self, cause: Cause) -> Cause:
        """A cause about the URL, when an OS variable shadows the env file's URL: the first fix is to unset it."""
        shadowed = any(w.id == SHADOWED and w.name == "OLLAMA_BASE_URL" for w in self.warnings)
        if cause.code not in URL_CAUSES or not shadowed or self.report.source != ENVIRONMENT:
            return cause
        file_value = shown("OLLAMA_BASE_URL", self.resolved.file_values["OLLAMA_BASE_URL"])
        return Cause(cause.code, cause.message,
                     f"`unset OLLAMA_BASE_URL` (and remove it from the service's environment) so that "
                     f"{file_value} from {self.resolved.env_file} applies. If the OS value is the right one: "
                     f"{cause.fix}", cause.extra)

    # -- the steps --

    def probe(self, url: httpx.URL, timeout: float) -> None:
        host, port = url.host, url.port or (443 if url.scheme == "https" else 80)
        infos = self.step("resolve host", lambda: _resolve(host, port, timeout, self))
        self.step("connect", lambda: _connect(infos, host, port, timeout, self))
        with _client(url, timeout) as client:
            version = self.step("GET /api/version", lambda: self.get_json(client, "/api/version", "version"))
            self.report.version = version.get("version") if isinstance(version, dict) else None
            tags = self.step("GET /api/tags", lambda: self.get_json(client, "/api/tags", "models"))
        self.report.models = [m.get("name") or m.get("model") for m in tags.get("models") or []
                              if isinstance(m, dict)]
        self.step("model", self.find_model)

    def get_json(self, client: httpx.Client, path: str, key: str) -> tuple[dict, str]:
        shown_url = self.report.target_url
        try:
            response = client.get(path)
        except httpx.TimeoutException:
            raise self.timed_out(f"GET {path}", client.timeout.read) from None
        except httpx.ConnectError as exc:
            if isinstance(exc.__context__, ssl.SSLError) or "SSL" in str(exc):
                raise _Failed(NOT_OLLAMA, f"The TLS handshake with {shown_url} failed ({exc}). {self.origin()}",
                              "Ollama serves plain HTTP: use http:// unless a TLS proxy is in front of it.") from None
            raise _Failed(CONNECTION_REFUSED, f"Cannot connect to {shown_url}: {exc}. {self.origin()}",
                          _REFUSED_FIX) from None
        except httpx.RemoteProtocolError as exc:
            raise _Failed(NOT_OLLAMA, f"Something at {shown_url} answered GET {path} with something that is not "
                          f"HTTP ({exc}). {self.origin()}", _NOT_OLLAMA_FIX) from None
        except httpx.TransportError as exc:
            raise _Failed(HTTP_ERROR, f"The connection to {shown_url} broke off during GET {path}: "
                          f"{exc or exc.__class__.__name__}.",
                          "Retry; if it persists, see Ollama's server log (`journalctl -u ollama`).") from None
        data = _json_or_none(response)
        error = data.get("error") if isinstance(data, dict) else None
        if response.status_code == 200 and isinstance(data, dict) and key in data:
            if key == "version":
                return data, f"Ollama {data['version']}"
            names = [m.get("name") for m in data.get("models") or [] if isinstance(m, dict)]
            return data, f"{len(names)} model(s): {', '.join(names) or 'none'}"
        if isinstance(error, str) and response.status_code >= 400:
            # Ollama's own error shape: it is Ollama, and it is unwell.
            raise _Failed(HTTP_ERROR, f"Ollama at {shown_url} answered GET {path} with HTTP "
                          f"{response.status_code}: {error}.",
                          "See Ollama's server log (`journalctl -u ollama` or `docker logs ollama`); restarting "
                          "Ollama usually helps.")
        if response.status_code in (401, 403, 407):
            raise _Failed(HTTP_ERROR, f"{shown_url} refused GET {path} with HTTP {response.status_code}: a proxy "
                          f"in front of Ollama wants credentials.",
                          "Put the proxy's user:password into OLLAMA_BASE_URL, or point it at Ollama directly.")
        raise _Failed(NOT_OLLAMA, f"Something answers at {shown_url}, but not Ollama: GET {path} gave HTTP "
                      f"{response.status_code} ({_describe(response)}). {self.origin()}", _NOT_OLLAMA_FIX)

    def find_model(self) -> tuple[bool, str]:
        report = self.report
        available = _canonical(report.model) in {_canonical(m) for m in report.models or [] if m}
        report.model_available = available
        if available:
            return True, f"{report.model} is available"
        there = ", ".join(m for m in report.models or [] if m) or "none"
        note = f" {self.origin('OLLAMA_DEFAULT_MODEL')}" if self.model_from_settings else ""
        raise _Failed(MODEL_MISSING, f"Model {report.model!r} is not on Ollama at {report.target_url}. Models "
                      f"there: {there}.{note}",
                      f"Run `ollama pull {report.model}` on the Ollama server, or use one of the models there "
                      f"(OLLAMA_DEFAULT_MODEL or --model).")

    def judge_connect(self) -> None:
        """gateway_timeout if the TCP connection took longer than the gateway's connect timeout allows."""
        # The connect step alone: the gateway's client resolves the name outside its connect timeout.
        spent = sum(step.elapsed_ms for step in self.report.steps if step.name == "connect")
        limit = settings.OLLAMA_CONNECT_TIMEOUT
        if spent / 1000 <= limit:
            return
        raise _Failed(GATEWAY_TIMEOUT, f"Connecting to {self.report.target_url} took {spent:.1f} ms, "
                      f"but the gateway waits at most {limit * 1000:g} ms for a connection "
                      f"(OLLAMA_CONNECT_TIMEOUT): live generations would fail with upstream_unavailable (503). "
                      f"{self.origin('OLLAMA_CONNECT_TIMEOUT')}",
                      f"Raise OLLAMA_CONNECT_TIMEOUT above the time measured, e.g. "
                      f"OLLAMA_CONNECT_TIMEOUT={max(5, math.ceil(spent / 1000 * 3))}.",
                      setting="OLLAMA_CONNECT_TIMEOUT", limit_s=limit, measured_s=round(spent / 1000, 3))

    def too_slow(self, measured: float | None, waited: float, setting: str, limit: float) -> _Failed:
        """gateway_timeout for a test generation that the gateway would have given up on."""
        model = self.report.model
        took = f"took {measured:.1f}s" if measured is not None else f"got no reply within {waited:g}s"
        error = ("upstream_timeout (504)" if setting == "OLLAMA_TIMEOUT"
                 else "a 504 once the whole generation's time is up")
        suggestion = max(60, math.ceil((measured or waited) * 3))
        deadline_too = setting == "OLLAMA_TIMEOUT" and getattr(settings, "GENERATION_DEADLINE", math.inf) < suggestion
        fix = (f"Raise {setting} well above the time measured (e.g. {setting}={suggestion}"
               + (", and GENERATION_DEADLINE with it" if deadline_too else "")
               + "), or keep the model loaded so that a request need not wait for it to load: set "
               "OLLAMA_KEEP_ALIVE=-1 (or a duration such as 24h) on the Ollama server, or send keep_alive with "
               "the requests.")
        return _Failed(GATEWAY_TIMEOUT, f"The test generation with {model!r} {took}, but the gateway waits at "
                       f"most {limit:g}s ({setting}): every live generation with these settings would fail with "
                       f"{error}. {self.origin(setting)}", fix,
                       setting=setting, limit_s=limit,
                       measured_s=round(measured, 3) if measured is not None else None)

    def generate(self, url: httpx.URL, timeout: float, setting: str, limit: float) -> None:
        report = self.report
        body = {"model": report.model, "messages": [{"role": "user", "content": TEST_PROMPT}], "stream": False,
                "options": {"num_predict": TEST_NUM_PREDICT}}

        def call() -> tuple[dict, str]:
            started = time.perf_counter()
            try:
                with _client(url, timeout) as client:
                    response = client.post("/api/chat", json=body)
            except httpx.TimeoutException:
                if timeout > limit:
                    raise self.too_slow(None, timeout, setting, limit) from None
                raise _Failed(GENERATION_FAILED, f"The test generation with {report.model!r} got no reply within "
                              f"{timeout:g}s.", "Loading a model can take minutes the first time: retry with a "
                              "longer --timeout, or use a smaller model.") from None
            except httpx.TransportError as exc:
                raise _Failed(GENERATION_FAILED, f"The test generation with {report.model!r} broke off: "
                              f"{exc or exc.__class__.__name__}.",
                              "See Ollama's server log; the model runner may have crashed (out of memory?).") from None
            data = _json_or_none(response)
            message = data.get("message") if isinstance(data, dict) else None
            content = message.get("content") if isinstance(message, dict) else None
            if response.status_code != 200 or not isinstance(content, str):
                error = data.get("error") if isinstance(data, dict) else None
                detail = error if isinstance(error, str) else _excerpt(response.text)
                raise _Failed(GENERATION_FAILED, f"The test generation with {report.model!r} failed with HTTP "
                              f"{response.status_code}: {detail}.",
                              "See Ollama's server log; the model runner may have crashed (out of memory?).")
            text = message["content"]
            elapsed_ms = _ms(started)
            report.generation = {"model": report.model, "prompt": TEST_PROMPT, "num_predict": TEST_NUM_PREDICT,
                                 "reply": text, "length": len(text), "elapsed_ms": elapsed_ms,
                                 "limit": {"setting": setting, "seconds": limit}}
            if elapsed_ms / 1000 > limit:
                raise self.too_slow(elapsed_ms / 1000, timeout, setting, limit)
            if elapsed_ms / 1000 > limit * CLOSE_TO_LIMIT:
                report.warnings.append(
                    f"The test generation took {elapsed_ms / 1000:.1f}s of the {limit:g}s that {setting} allows; "
                    f"a longer reply than its {TEST_NUM_PREDICT} tokens may not fit. Consider raising {setting}.")
            return data, f"{len(text)} characters: {_excerpt(text, 60)}"

        self.step("test generation", call)

    def timed_out(self, what: str, seconds: float | None) -> _Failed:
        return _Failed(TIMEOUT, f"{self.report.target_url} did not answer {what} within {seconds or 0:g}s. "
                       f"{self.origin()}",
                       "Check that the address is right and that no firewall drops the traffic; if the server is "
                       "only slow (busy loading a model), retry with a longer --timeout.")


_REFUSED_FIX = ("Start Ollama there (`ollama serve`); if it runs on another machine, set OLLAMA_HOST=0.0.0.0:11434 on "
                "that server so that it listens on an address this machine can reach (it binds to 127.0.0.1 by "
                "default), and check the port.")
_NOT_OLLAMA_FIX = "Point OLLAMA_BASE_URL at Ollama itself (its port is 11434 by default), not at another server."


def gateway_limit() -> tuple[str, float]:
    """The setting that ends a live generation's wait for Ollama first, and its seconds: the read timeout
    (OLLAMA_TIMEOUT) or the whole generation's deadline (GENERATION_DEADLINE)."""
    timeout, deadline = settings.OLLAMA_TIMEOUT, getattr(settings, "GENERATION_DEADLINE", None)
    if deadline is not None and deadline < timeout:
        return "GENERATION_DEADLINE", deadline
    return "OLLAMA_TIMEOUT", timeout


def _timeout(timeout: float | None) -> float:
    if timeout is None:
        return DEFAULT_TIMEOUT
    if not isinstance(timeout, (int, float)) or not math.isfinite(timeout) or timeout <= 0:
        raise _Failed(INVALID_SETTING, f"The timeout {timeout!r} is not a positive number of seconds.",
                      "Give a timeout such as 5 (--timeout 5).")
    return float(timeout)


def _safe_timeout(timeout: float | None) -> float:
    try:
        return _timeout(timeout)
    except _Failed:
        return DEFAULT_TIMEOUT


def _target(raw: str, run: _Run) -> httpx.URL:
    """The base URL to check, or invalid_setting if it cannot work as a base URL."""
    # httpx, like the gateway's client, reads an inline " # comment" as a URL fragment and still reaches the server;
    # the settings warning names the comment, and the check goes where the gateway would.
    comment = inline_comment(raw or "")
    problems = base_url_problems("OLLAMA_BASE_URL", raw[: -len(comment)] if comment else raw or "")
    if not (raw or "").strip():
        problems = [("OLLAMA_BASE_URL is empty", "Set it to Ollama's address, e.g. http://localhost:11434.")]
    if not problems:
        try:
            url = httpx.URL(raw.strip())
            if not url.host:
                raise httpx.InvalidURL("no host")
            url.port  # noqa: B018 - an out-of-range port raises here
            return url
        except (httpx.InvalidURL, ValueError) as exc:
            problems = [(f"OLLAMA_BASE_URL={shown('OLLAMA_BASE_URL', raw)!r} is not a usable URL ({exc})",
                         "Write it as scheme://host:port, e.g. http://localhost:11434.")]
    problem, fix = problems[0]
    source = "" if run.report.source == "argument" else " " + run.origin()
    raise _Failed(INVALID_SETTING, f"{problem}.{source}", fix)


def _resolve(host: str, port: int, timeout: float, run: _Run) -> tuple[list, str]:
    # getaddrinfo has no timeout of its own; a dead DNS server must not hang the check.
    pool = ThreadPoolExecutor(max_workers=1)
    future = pool.submit(socket.getaddrinfo, host, port, type=socket.SOCK_STREAM)
    try:
        infos = future.result(timeout=timeout)
    except FutureTimeout:
        raise _Failed(DNS_FAILURE, f"Resolving {host!r} took more than {timeout:g}s. {run.origin()}",
                      "Check this machine's DNS (`getent hosts NAME`), or use the server's IP address.") from None
    except (socket.gaierror, UnicodeError) as exc:
        reason = exc.strerror if isinstance(exc, socket.gaierror) else str(exc)
        raise _Failed(DNS_FAILURE, f"The host name {host!r} does not resolve ({reason}). {run.origin()}",
                      "Fix the host name in OLLAMA_BASE_URL, or use the server's IP address.") from None
    finally:
        pool.shutdown(wait=False)
    addresses = sorted({info[4][0] for info in infos})
    return infos, f"{host} → {', '.join(addresses)}"


def _connect(infos: list, host: str, port: int, timeout: float, run: _Run) -> tuple[None, str]:
    """A TCP connection to the first address that takes one (localhost may be ::1 and 127.0.0.1)."""
    error: OSError | None = None
    for family, _, _, _, sockaddr in infos:
        sock = socket.socket(family, socket.SOCK_STREAM)
        sock.settimeout(timeout)
        try:
            sock.connect(sockaddr)
            return None, f"{sockaddr[0]}:{sockaddr[1]}"
        except OSError as exc:
            error = exc
        finally:
            sock.close()
    if isinstance(error, socket.timeout):
        raise run.timed_out(f"a TCP connection to {host}:{port}", timeout)
    if isinstance(error, ConnectionRefusedError):
        raise _Failed(CONNECTION_REFUSED, f"Nothing listens at {host}:{port} (connection refused). {run.origin()}",
                      _REFUSED_FIX)
    raise _Failed(CONNECTION_REFUSED, f"Cannot reach {host}:{port} ({getattr(error, 'strerror', None) or error}). "
                  f"{run.origin()}", "Check the address, this machine's route to it (VPN up?) and the server's "
                  "firewall.")


def _check_comfyui(base_url: str, timeout: float, report: ConnectionReport) -> dict:
    """ComfyUI's reachability (GET /system_stats); a failure is a warning, not part of the Ollama verdict."""
    shown_url = mask_url(base_url)
    started = time.perf_counter()
    try:
        with _client(httpx.URL(base_url), timeout) as client:
            response = client.get("/system_stats")
        ok = response.status_code == 200 and isinstance(_json_or_none(response), dict) and \
            "system" in response.json()
        detail = "ComfyUI answers" if ok else f"HTTP {response.status_code} ({_describe(response)}): not ComfyUI?"
    except (httpx.HTTPError, httpx.InvalidURL) as exc:
        ok, detail = False, f"{exc.__class__.__name__}: {exc}"
    result = {"url": shown_url, "ok": ok, "elapsed_ms": _ms(started), "detail": detail}
    report.steps.append(Step("ComfyUI GET /system_stats", ok, result["elapsed_ms"], detail))
    if not ok:
        report.warnings.append(f"ComfyUI at {shown_url} (COMFYUI_BASE_URL) is not reachable: {detail}.")
    return result


def _client(url: httpx.URL, timeout: float) -> httpx.Client:
    # trust_env=False like the gateway's own client: the check must take the path the gateway takes.
    return httpx.Client(base_url=url, timeout=httpx.Timeout(timeout), trust_env=False,
                        headers={"User-Agent": "llm-gateway-diagnostics"}, follow_redirects=False)


def _canonical(name: str) -> str:
    # Ollama reads "llama3.2" as "llama3.2:latest" and compares names case-insensitively.
    name = name.strip().lower()
    return name if ":" in name.rsplit("/", 1)[-1] else name + ":latest"


def _describe(response: httpx.Response) -> str:
    parts = [response.headers.get("content-type", "no content type")]
    if response.headers.get("server"):
        parts.append(f"Server: {response.headers['server']}")
    parts.append(f"body: {_excerpt(response.text, 60)}")
    return ", ".join(parts)


def _json_or_none(response: httpx.Response) -> Any:
    try:
        return response.json()
    except ValueError:
        return None


def _excerpt(text: str, limit: int = EXCERPT) -> str:
    text = " ".join(text.split())
    return (text[:limit] + "…") if len(text) > limit else (text or "(empty body)")


def _ms(started: float) -> float:
    return round((time.perf_counter() - started) * 1000, 1)

