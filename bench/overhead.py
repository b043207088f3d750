"""How much latency the gateway adds to an Ollama call: gateway vs. direct, request by request.

    python bench/overhead.py                          # 1000 requests, SQLite, json mode
    python bench/overhead.py --database postgres      # audit rows in PostgreSQL (127.0.0.1:5432, database "bench")
    python bench/overhead.py --log-level info --json  # with the per-request log line on; plus a JSON result line

Method
    1. A temporary directory holds everything this run creates (SQLite file, server logs); it is removed at exit.
    2. The fake Ollama server (tests/fake_ollama.py) runs as its own process, so that it does not share the
       benchmark client's GIL. It answers /api/chat at once, so what remains of a request is pure overhead.
    3. A fresh audit database is migrated: a new SQLite file, or a new schema in the PostgreSQL database
       `bench` (dropped afterwards), or the URL given with --database (rows are then counted as a difference).
    4. gunicorn serves the gateway with gunicorn.conf.py (uvicorn workers), GENERATOR_MODE=live at the fake,
       on a listening socket this script binds and hands over (fd://), so no port can be taken in between.
    5. Two persistent httpx clients (keep-alive: no connection setup in the figures) send, per iteration,
       one POST /api/v1/llm/generate to the gateway and one POST /api/chat to the fake with the very body
       the gateway sends upstream. Which of the two goes first alternates every iteration, so that drift
       (CPU frequency, caches, background work) hits both sides alike. Wall-clock time of each request is
       taken with time.perf_counter_ns around the call, request bodies encoded beforehand; checking the
       replies happens outside the timed region. Warm-up iterations (imports, first connections, caches)
       are run the same way and discarded.
    6. Every gateway reply must be 200 with a well-formed output; afterwards the audit table must hold
       exactly warm-up + N new rows, all `succeeded` (read back through the Django ORM in a subprocess).

Reading the numbers
    gateway  client -> gunicorn -> Django -> audit INSERT -> httpx -> fake Ollama -> audit UPDATE -> client
    direct   client -> fake Ollama, the same request the gateway forwards
    added    gateway - direct, computed per iteration and then summarised: the gateway's own cost
             (HTTP server, Django, DRF, validation, prompt building, audit INSERT + UPDATE, logging, the second
             HTTP hop). The benchmark client's own cost is in both figures and cancels out.
    The gateway's self-reported `latency_ms - upstream_ms` (from request start to just before the audit
    UPDATE, minus the upstream wait) is shown as a cross-check: it excludes gunicorn, the UPDATE and
    response rendering, so it is expected to be below "added".
    Work the gateway does after its reply has left (request_finished: closing the database connection,
    which for SQLite means a WAL checkpoint) is on no request's clock by itself, but gunicorn reads the next
    request on that connection only once it is done, and it competes for the CPU with whatever runs
    meanwhile. With the alternating order, every other gateway request directly follows the previous one,
    as for a busy sequential client, so the figures include a share of that deferred cost.
    Requests are sequential (one in flight), so this is latency on an idle server, not throughput; a
    persistent connection stays with one gunicorn worker, so extra workers do not change the figures.
    All processes share the machine's cores; the figures are for this machine and vary from run to run
    by a few tenths of a millisecond, so compare runs made back to back.
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import importlib
import json
import os
import platform
import secrets
import select
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

PROJECT_ROOT = Path(__file__).resolve().parent.parent
if str(PROJECT_ROOT) not in sys.path:  # run as `python bench/overhead.py`, sys.path[0] is bench/
    sys.path.insert(0, str(PROJECT_ROOT))

import httpx  # noqa: E402  (after the path fix, like the project imports below)

from gateway_project.environment import SPECS  # noqa: E402
from llm.prompts import build_messages  # noqa: E402

GENERATE_PATH = "/api/v1/llm/generate"
MODEL = "qwen2.5:7b"  # one of the fake's models; passed as OLLAMA_DEFAULT_MODEL
MAX_REQUESTS = 100_000
MAX_WARMUP = 10_000
AIM_ADDED_P50_MS = 2.0
DEFAULT_POSTGRES_URL = "postgres://postgres@127.0.0.1:5432/bench"
LOOPBACK_HOSTS = {"127.0.0.1", "localhost", "::1", ""}  # "" is a local Unix socket (postgres:///name)
STARTUP_TIMEOUT = 30.0
REQUEST_TIMEOUT = 10.0
STOP_TIMEOUT = 10.0

# The request every iteration sends to the gateway; the direct request is what the gateway makes of it with the
# shipped copywriter/sns template, which a freshly migrated database holds as version 1.
ROLE, TASK = "copywriter", "sns"
PAYLOAD = {"product": "Green tea", "tone": "calm", "audience": "office workers"}
SHIPPED = importlib.import_module("llm.migrations.0004_seed_prompt_templates")
TEMPLATE = next(t for t in SHIPPED.TEMPLATES if (t["role"], t["task"]) == (ROLE, TASK))
# What the fake Ollama answers: valid against the template's output schema, so that json mode succeeds.
REPLY = json.dumps({"caption": "Slow down with a cup of green tea.", "hashtags": ["#greentea", "#calm"],
                    "call_to_action": "Try it today"})

# Run in a subprocess with the gateway's environment, so that rows are counted through the same settings
# (and database URL parsing) as the gateway itself uses.
AUDIT_PROBE = """
import json, django
django.setup()
from django.db import connection
from llm.models import Generation
with connection.cursor() as cursor:
    if connection.vendor == "postgresql":
        cursor.execute("SHOW server_version")
        version = cursor.fetchone()[0]
    elif connection.vendor == "sqlite":
        version = connection.Database.sqlite_version
    else:
        version = "?"
print(json.dumps({
    "vendor": connection.vendor,
    "version": version,
    "total": Generation.objects.count(),
    "succeeded": Generation.objects.filter(status="succeeded").count(),
}))
"""


class BenchmarkError(Exception):
    """The run cannot go on or its result cannot be trusted; the message says why."""


@dataclass
class Database:
    url: str
    label: str


@dataclass
class Samples:
    """Per-iteration wall-clock times in nanoseconds, index i of each list from the same iteration."""

    gateway_ns: list[int] = field(default_factory=list)
    direct_ns: list[int] = field(default_factory=list)
    inside_ms: list[float] = field(default_factory=list)  # the gateway's latency_ms - upstream_ms


# -- command line --


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="Latency the gateway adds: N sequential live requests through gunicorn vs. N direct to a "
                    "fake Ollama, interleaved.")
    parser.add_argument("-n", "--requests", type=int, default=1000, help="measured iterations (default 1000)")
    parser.add_argument("--warmup", type=int, default=50, help="discarded iterations first (default 50)")
    parser.add_argument("--database", default="sqlite",
                        help="sqlite (temp file, default), postgres (fresh schema in 127.0.0.1:5432/bench) "
                             "or a database URL on this machine")
    parser.add_argument("--mode", choices=["json", "text"], default="json")
    parser.add_argument("--workers", type=int, default=1, help="gunicorn workers (default 1)")
    parser.add_argument("--log-level", choices=["debug", "info", "warning", "error"], default="warning",
                        help="the gateway's LOG_LEVEL; info writes one JSON line per request (default warning)")
    parser.add_argument("--json", action="store_true", help="also print the result as one JSON line")
    args = parser.parse_args(argv)
    if not 2 <= args.requests <= MAX_REQUESTS:
        parser.error(f"-n must be between 2 and {MAX_REQUESTS}")
    if not 0 <= args.warmup <= MAX_WARMUP:
        parser.error(f"--warmup must be between 0 and {MAX_WARMUP}")
    if not 1 <= args.workers <= 16:
        parser.error("--workers must be 1-16")
    return args


# -- processes --


def stop_process_group(proc: subprocess.Popen, name: str) -> None:
    """Stop a process started in its own session, and everything it forked (gunicorn's workers)."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGTERM)  # gunicorn's arbiter stops its workers, then itself
    try:
        proc.wait(timeout=STOP_TIMEOUT)
    except subprocess.TimeoutExpired:
        print(f"{name} did not stop on SIGTERM within {STOP_TIMEOUT:g}s; killing it", file=sys.stderr)
    # Whatever is left of the group (a stuck worker, or the leader after a timeout) goes now.
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()


def tail(path: Path, lines: int = 30) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


def start_fake_ollama(stack: contextlib.ExitStack, workdir: Path) -> str:
    """Run tests/fake_ollama.py as a process on a port the kernel picks; return its URL."""
    log_path = workdir / "fake_ollama.log"
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(
            [sys.executable, str(PROJECT_ROOT / "tests" / "fake_ollama.py"), "--host", "127.0.0.1", "--port", "0",
             "--model", MODEL, "--reply", REPLY],
            cwd=PROJECT_ROOT, stdout=subprocess.PIPE, stderr=log, stdin=subprocess.DEVNULL,
            start_new_session=True,  # its own process group: Ctrl-C reaches us, and we stop it in order
        )
    stack.callback(stop_process_group, proc, "fake Ollama")
    stack.callback(proc.stdout.close)
    # It prints "fake Ollama on http://127.0.0.1:PORT with ..." once it listens (port 0: no race for a port).
    ready, _, _ = select.select([proc.stdout], [], [], STARTUP_TIMEOUT)
    line = proc.stdout.readline().decode(errors="replace") if ready else ""
    if " on http://" not in line:
        raise BenchmarkError(f"the fake Ollama server did not start: {line!r}\n{tail(log_path)}")
    return line.split(" on ", 1)[1].split()[0]


def bind_listener() -> socket.socket:
    """A loopback listening socket on a free port, handed to gunicorn as fd://N."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    sock.listen(128)
    sock.set_inheritable(True)
    return sock


def start_gunicorn(stack: contextlib.ExitStack, env: dict[str, str], args: argparse.Namespace,
                   workdir: Path) -> tuple[str, subprocess.Popen, Path]:
    """Serve the gateway with the project's gunicorn.conf.py; return its URL, process and log file."""
    log_path = workdir / "gunicorn.log"
    listener = bind_listener()
    port = listener.getsockname()[1]
    env = {**env, "GUNICORN_BIND": f"fd://{listener.fileno()}", "WEB_CONCURRENCY": str(args.workers)}
    try:
        with open(log_path, "wb") as log:
            proc = subprocess.Popen(
                [sys.executable, "-m", "gunicorn"],
                cwd=PROJECT_ROOT, env=env, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                pass_fds=[listener.fileno()], start_new_session=True,
            )
    finally:
        listener.close()  # gunicorn holds its own copy; ours must not keep the port alive after it exits
    stack.callback(stop_process_group, proc, "gunicorn")
    return f"http://127.0.0.1:{port}", proc, log_path


def wait_until_answering(url: str, proc: subprocess.Popen, log_path: Path) -> None:
    """Block until the gateway answers HTTP at all (a 405 for GET is fine: no audit row is written)."""
    deadline = time.monotonic() + STARTUP_TIMEOUT
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise BenchmarkError(f"gunicorn exited with status {proc.returncode}:\n{tail(log_path)}")
        try:
            httpx.get(url + GENERATE_PATH, timeout=1.0, trust_env=False)
            return
        except httpx.TransportError:
            time.sleep(0.1)
    raise BenchmarkError(f"the gateway did not answer within {STARTUP_TIMEOUT:g}s:\n{tail(log_path)}")


# -- database --


def require_local(url: str) -> None:
    parts = urlsplit(url)
    if parts.scheme.startswith("sqlite"):
        return
    if (parts.hostname or "") not in LOOPBACK_HOSTS:
        raise BenchmarkError(f"refusing a database on {parts.hostname!r}: this benchmark only talks to 127.0.0.1")


def prepare_postgres_schema(stack: contextlib.ExitStack) -> Database:
    """A new schema in the `bench` database (created if missing), dropped at exit: never someone else's rows."""
    import psycopg  # only needed here; it is a project dependency

    server = "host=127.0.0.1 port=5432 user=postgres"
    with psycopg.connect(f"{server} dbname=postgres", autocommit=True, connect_timeout=5) as conn:
        if conn.execute("SELECT 1 FROM pg_database WHERE datname = 'bench'").fetchone() is None:
            conn.execute("CREATE DATABASE bench")
    schema = f"overhead_{os.getpid()}_{secrets.token_hex(3)}"
    with psycopg.connect(f"{server} dbname=bench", autocommit=True, connect_timeout=5) as conn:
        conn.execute(f"CREATE SCHEMA {schema}")

    def drop_schema() -> None:
        with psycopg.connect(f"{server} dbname=bench", autocommit=True, connect_timeout=5) as conn:
            conn.execute(f"DROP SCHEMA IF EXISTS {schema} CASCADE")

    stack.callback(drop_schema)
    # libpq's `options` puts every connection of the gateway (and of migrate) into the new schema.
    url = f"{DEFAULT_POSTGRES_URL}?options=-c%20search_path%3D{schema}"
    return Database(url, f"127.0.0.1:5432/bench, schema {schema}")


def prepare_database(choice: str, stack: contextlib.ExitStack, workdir: Path) -> Database:
    if choice == "sqlite":
        return Database(f"sqlite:///{workdir / 'bench.sqlite3'}", "temporary file")
    if choice == "postgres":
        return prepare_postgres_schema(stack)
    if "://" not in choice:
        raise BenchmarkError(f"--database must be sqlite, postgres or a URL, not {choice!r}")
    require_local(choice)
    return Database(choice, "given URL")


def gateway_environment(database_url: str, ollama_url: str, log_level: str, workdir: Path) -> dict[str, str]:
    """The gateway's settings for this run, and nothing from the developer's shell or .env that could skew it."""
    env = {name: value for name, value in os.environ.items() if name not in {spec.name for spec in SPECS}}
    env.pop("GUNICORN_CMD_ARGS", None)
    env.update({
        "ENV_FILE": str(workdir / "no.env"),  # does not exist: the project's .env stays out of the run
        "DJANGO_SETTINGS_MODULE": "gateway_project.settings",
        "GENERATOR_MODE": "live",
        "OLLAMA_BASE_URL": ollama_url,
        "OLLAMA_DEFAULT_MODEL": MODEL,
        "OLLAMA_TIMEOUT": "10",
        "OLLAMA_CONNECT_TIMEOUT": "2",
        "DATABASE_URL": database_url,
        "DEBUG": "false",  # DEBUG keeps every SQL query in memory: never measure with it on
        "SECRET_KEY": secrets.token_urlsafe(50),  # required with DEBUG off; this run's own
        "LOG_LEVEL": log_level,
        "PYTHONUNBUFFERED": "1",
    })
    return env


def run_python(env: dict[str, str], *args: str) -> str:
    result = subprocess.run([sys.executable, *args], cwd=PROJECT_ROOT, env=env, capture_output=True, text=True,
                            timeout=120)
    if result.returncode != 0:
        raise BenchmarkError(f"`python {' '.join(args[:3])}` failed:\n{result.stdout}{result.stderr}")
    return result.stdout


def migrate(env: dict[str, str]) -> None:
    run_python(env, "manage.py", "migrate", "--noinput", "-v", "0")


def create_api_key(env: dict[str, str]) -> str:
    """A key for the benchmark's consumer. Its limit is high but set, so that every request is still counted."""
    output = run_python(env, "manage.py", "create_api_key", "bench", "--rate-limit", "100000000")
    return output.strip().splitlines()[-1]


def audit_counts(env: dict[str, str]) -> dict:
    """Vendor, server version and the number of audit rows (all, succeeded), read through the Django ORM."""
    return json.loads(run_python(env, "-c", AUDIT_PROBE).strip().splitlines()[-1])


# -- measurement --


def request_bodies(mode: str) -> tuple[bytes, bytes]:
    """The gateway request, and the Ollama request the gateway turns it into (same bytes httpx would send)."""
    gateway = {"role": ROLE, "task": TASK, "payload": PAYLOAD, "mode": mode}
    schema = TEMPLATE["output_schema"]
    messages = build_messages(system_prompt=TEMPLATE["system_prompt"], user_template=TEMPLATE["user_template"],
                              payload=PAYLOAD, mode=mode, output_schema=schema)
    upstream = {"model": MODEL, "messages": messages, "stream": False}
    if mode == "json":
        upstream["format"] = schema
    upstream["options"] = TEMPLATE["options"]

    def encode(obj: dict) -> bytes:
        return json.dumps(obj, ensure_ascii=False, separators=(",", ":"), allow_nan=False).encode()

    return encode(gateway), encode(upstream)


def timed_post(client: httpx.Client, url: str, body: bytes) -> tuple[int, httpx.Response]:
    """POST and read the whole reply; the elapsed wall-clock nanoseconds and the response."""
    started = time.perf_counter_ns()
    response = client.post(url, content=body)
    return time.perf_counter_ns() - started, response


def check_gateway_reply(response: httpx.Response, mode: str) -> float:
    """Fail unless the reply is a complete success; return the gateway's own latency_ms - upstream_ms."""
    if response.status_code != 200:
        raise BenchmarkError(f"gateway answered {response.status_code}: {response.text[:500]}")
    data = response.json()
    expected = dict if mode == "json" else str
    if data.get("provider") != "ollama" or not isinstance(data.get("output"), expected):
        raise BenchmarkError(f"unexpected gateway reply: {response.text[:500]}")
    return data["latency_ms"] - data["upstream_ms"]


def check_direct_reply(response: httpx.Response) -> None:
    if response.status_code != 200 or response.json().get("done") is not True:
        raise BenchmarkError(f"fake Ollama answered {response.status_code}: {response.text[:500]}")


def run_iterations(count: int, gateway: httpx.Client, direct: httpx.Client, bodies: tuple[bytes, bytes],
                   mode: str) -> Samples:
    """`count` interleaved pairs; the side that goes first alternates, so slow drift affects both equally."""
    gateway_body, direct_body = bodies
    samples = Samples()
    for i in range(count):
        if i % 2 == 0:
            gateway_ns, gateway_reply = timed_post(gateway, GENERATE_PATH, gateway_body)
            direct_ns, direct_reply = timed_post(direct, "/api/chat", direct_body)
        else:
            direct_ns, direct_reply = timed_post(direct, "/api/chat", direct_body)
            gateway_ns, gateway_reply = timed_post(gateway, GENERATE_PATH, gateway_body)
        samples.inside_ms.append(check_gateway_reply(gateway_reply, mode))
        check_direct_reply(direct_reply)
        samples.gateway_ns.append(gateway_ns)
        samples.direct_ns.append(direct_ns)
    return samples


# -- report --


def summarize_ms(values_ns: list[int]) -> dict[str, float]:
    cuts = statistics.quantiles([v / 1e6 for v in values_ns], n=100, method="inclusive")
    figures = {"p50": cuts[49], "p95": cuts[94], "p99": cuts[98], "mean": statistics.fmean(values_ns) / 1e6}
    return {name: round(ms, 4) for name, ms in figures.items()}  # 0.1 µs: finer is noise


def summarize(samples: Samples) -> dict[str, dict[str, float]]:
    added = [g - d for g, d in zip(samples.gateway_ns, samples.direct_ns)]
    return {"gateway": summarize_ms(samples.gateway_ns), "direct": summarize_ms(samples.direct_ns),
            "added": summarize_ms(added)}


def package_version(name: str) -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(name)
    except PackageNotFoundError:
        return "?"


def environment_facts(args: argparse.Namespace, database: Database, db_info: dict, load_before: float) -> dict:
    affinity = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None
    vendor = {"sqlite": "SQLite", "postgresql": "PostgreSQL"}.get(db_info["vendor"], db_info["vendor"])
    return {
        "cpus": os.cpu_count(),
        "cpus_usable": affinity,
        # Other work on the machine (a test run, a build) shows in the tails first: a busy machine is no baseline.
        "load_1min_before": round(load_before, 2),
        "load_1min_after": round(os.getloadavg()[0], 2),
        "python": f"{platform.python_implementation()} {platform.python_version()}",
        "platform": platform.platform(terse=True),
        "database": f"{vendor} {db_info['version']} ({database.label})",
        "mode": args.mode,
        "requests": args.requests,
        "warmup": args.warmup,
        "gunicorn": f"{package_version('gunicorn')} + uvicorn {package_version('uvicorn')}, {args.workers} worker(s)",
        "log_level": args.log_level,
        "django": package_version("Django"),
        "httpx": package_version("httpx"),
    }


def print_report(facts: dict, stats: dict, inside_p50: float, rows: dict, command: str) -> None:
    print(f"LLM Gateway overhead: {facts['requests']} sequential live requests (+{facts['warmup']} warm-up), "
          f"{facts['mode']} mode, gateway and direct interleaved")
    print(f"  command   {command}")
    print(f"  machine   {facts['cpus']} CPUs ({facts['cpus_usable']} usable), {facts['python']}, {facts['platform']}, "
          f"load average {facts['load_1min_before']} before, {facts['load_1min_after']} after")
    print(f"  gateway   gunicorn {facts['gunicorn']}, Django {facts['django']}, httpx {facts['httpx']}, "
          f"LOG_LEVEL={facts['log_level']}")
    print(f"  database  {facts['database']}")
    print()
    print(f"  {'ms':<22}{'p50':>9}{'p95':>9}{'p99':>9}{'mean':>9}")
    labels = {"gateway": "gateway", "direct": "direct (fake Ollama)", "added": "added (gw - direct)"}
    for key, label in labels.items():
        row = stats[key]
        print(f"  {label:<22}{row['p50']:>9.3f}{row['p95']:>9.3f}{row['p99']:>9.3f}{row['mean']:>9.3f}")
    print()
    ratio = stats["gateway"]["p50"] / stats["direct"]["p50"]
    print(f"  gateway / direct at p50: {ratio:.2f}x")
    print(f"  inside the gateway, its own latency_ms - upstream_ms, median: {inside_p50:.3f} ms "
          "(excludes gunicorn, the audit UPDATE and rendering)")
    print(f"  audit rows: {rows['written']} written, {rows['succeeded']} succeeded, {rows['expected']} expected")
    verdict = "met" if stats["added"]["p50"] < AIM_ADDED_P50_MS else "NOT met"
    print(f"  aim: added p50 < {AIM_ADDED_P50_MS:g} ms with the audit write: {verdict} "
          f"({stats['added']['p50']:.3f} ms)")


# -- main --


def raise_on_sigterm(signum, frame):
    # Turn `kill` into an exception so that the finally blocks stop what we started.
    raise SystemExit(128 + signum)


def benchmark(args: argparse.Namespace, command: str) -> dict:
    load_before = os.getloadavg()[0]
    with contextlib.ExitStack() as stack:  # unwinds in reverse: clients, gunicorn, fake, schema, temp dir
        workdir = Path(tempfile.mkdtemp(prefix="llm-gateway-bench-"))
        stack.callback(shutil.rmtree, workdir, ignore_errors=True)

        database = prepare_database(args.database, stack, workdir)
        ollama_url = start_fake_ollama(stack, workdir)
        env = gateway_environment(database.url, ollama_url, args.log_level, workdir)
        migrate(env)
        api_key = create_api_key(env)
        before = audit_counts(env)

        gateway_url, gunicorn, gunicorn_log = start_gunicorn(stack, env, args, workdir)
        wait_until_answering(gateway_url, gunicorn, gunicorn_log)

        headers = {"Content-Type": "application/json"}
        timeout = httpx.Timeout(REQUEST_TIMEOUT)
        gateway = stack.enter_context(httpx.Client(base_url=gateway_url, timeout=timeout, trust_env=False,
                                                   headers={**headers, "Authorization": f"Bearer {api_key}"}))
        direct = stack.enter_context(httpx.Client(base_url=ollama_url, headers=headers, timeout=timeout,
                                                  trust_env=False))
        bodies = request_bodies(args.mode)

        try:
            run_iterations(args.warmup, gateway, direct, bodies, args.mode)
            gc.collect()  # start the measured part without garbage left by start-up and warm-up
            samples = run_iterations(args.requests, gateway, direct, bodies, args.mode)
        except BenchmarkError as exc:
            raise BenchmarkError(f"{exc}\n--- gunicorn log (tail) ---\n{tail(gunicorn_log)}") from None

        after = audit_counts(env)
        rows = {"written": after["total"] - before["total"], "succeeded": after["succeeded"] - before["succeeded"],
                "expected": args.warmup + args.requests}
        if not rows["written"] == rows["succeeded"] == rows["expected"]:
            raise BenchmarkError(f"audit rows do not add up: {rows}")

        stats = summarize(samples)
        inside_p50 = statistics.median(samples.inside_ms)
        facts = environment_facts(args, database, after, load_before)
        print_report(facts, stats, inside_p50, rows, command)
        return {"benchmark": "gateway-overhead", "environment": facts, "ms": stats,
                "gateway_inside_p50_ms": round(inside_p50, 4),
                "ratio_p50": round(stats["gateway"]["p50"] / stats["direct"]["p50"], 3),
                "audit_rows": rows, "aim_added_p50_ms": AIM_ADDED_P50_MS,
                "aim_met": stats["added"]["p50"] < AIM_ADDED_P50_MS}


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    command = "python bench/overhead.py " + " ".join(sys.argv[1:] if argv is None else argv)
    signal.signal(signal.SIGTERM, raise_on_sigterm)
    signal.signal(signal.SIGHUP, raise_on_sigterm)
    try:
        result = benchmark(args, command.strip())
    except BenchmarkError as exc:
        print(f"overhead: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("overhead: interrupted; everything started was stopped", file=sys.stderr)
        return 130
    if args.json:
        print(json.dumps(result, sort_keys=True))
    return 0


if __name__ == "__main__":
    sys.exit(main())
