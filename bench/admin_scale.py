"""The admin at scale: fill an audit database with N realistic generations, then time each admin page and prune_audit.

    python bench/admin_scale.py                         # 1,000,000 rows, SQLite file in a temporary directory
    python bench/admin_scale.py -n 100000 --database postgres   # PostgreSQL database wtops_bench (recreated)
    python bench/admin_scale.py --database /tmp/big.sqlite3 --keep   # fill once, then reuse it: --no-fill

Method
    1. A fresh database is migrated (SQLite file, or the PostgreSQL database named by --database, dropped and
       created again; never anything else).
    2. N generation rows are written oldest first with bulk statements (SQLite: executemany in transactions of 50,000;
       PostgreSQL: COPY), not the ORM row by row. They are spread over the last DAYS days, newest densest at
       office hours, with the shipped templates' request/prompt/output JSON (≈2 KB a row), 8 consumers,
       3 models, ~6 % failed with several error types, a few rows left pending by "dead" processes, and
       the odd stream. The connection-check history gets one row per hour.
    3. rollup_usage folds everything once (timed: the first run after an upgrade is this backfill).
    4. Each admin page is requested through Django's test client as a logged-in staff user, in this process:
       server time only, no network, no browser. First view, then the best of three.
    5. A fresh process requests the list and the dashboard once: the "first view after a restart".
    6. prune_audit deletes the oldest 30 % (--older-than chosen so), while a second thread writes a
       generation every 20 ms through the ORM (INSERT pending, then UPDATE succeeded, as the request path
       does); every write must succeed, and the slowest is reported.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from datetime import datetime, timedelta, timezone
from pathlib import Path
from urllib.parse import quote

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_POSTGRES = "postgres://postgres@127.0.0.1:5432/wtops_bench"
DAYS = 100
PRUNE_SHARE = 0.30

CONSUMERS = ["marketing-site", "crm", "support-bot", "newsletter", "shop-backend", "analytics", "mobile-app",
             "partner-api"]
CONSUMER_WEIGHTS = [30, 20, 15, 10, 10, 8, 5, 2]
MODELS = [("qwen2.5:7b", 75), ("llama3.2:3b", 20), ("llama3.2:1b", 5)]
ERRORS = [("upstream_timeout", 504, 30), ("invalid_output", 502, 25), ("upstream_unavailable", 503, 20),
          ("rate_limited", 429, 15), ("invalid_request", 400, 10)]

COLUMNS = ("id", "created_at", "finished_at", "status", "http_status", "role", "task", "mode", "provider", "model",
           "request", "request_bytes", "prompt", "output", "raw_output", "error_type", "error_message",
           "prompt_tokens", "completion_tokens", "latency_ms", "upstream_ms", "stream", "first_token_ms",
           "client_ip", "user_agent", "template_version_id", "models_tried", "consumer_id", "api_key_prefix",
           "attempts")


def setup_django(database_url: str) -> None:
    os.environ["DATABASE_URL"] = database_url
    os.environ.setdefault("SECRET_KEY", "bench-only-" + "k" * 50)
    os.environ["LOG_LEVEL"] = "error"
    os.environ["DJANGO_SETTINGS_MODULE"] = "gateway_project.settings"
    sys.path.insert(0, str(ROOT))
    import django

    django.setup()
    from django.conf import settings

    settings.ALLOWED_HOSTS = ["testserver", *settings.ALLOWED_HOSTS]


def recreate_postgres(url: str) -> None:
    import psycopg

    name = url.rsplit("/", 1)[1]
    if name in ("test", "postgres", ""):
        raise SystemExit(f"refusing to recreate the database {name!r}")
    with psycopg.connect(url.rsplit("/", 1)[0] + "/postgres", autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}"')
        conn.execute(f'CREATE DATABASE "{name}"')


def fill(n: int, *, now: datetime) -> dict:
    """Write n generations and the connection-check history; returns what the timings need to know."""
    from django.db import connection, transaction

    from llm.models import Consumer, PromptTemplateVersion

    consumers = [Consumer.objects.create(name=name).pk for name in CONSUMERS]
    versions = list(PromptTemplateVersion.objects.select_related("template"))
    rng = random.Random(11)
    shapes = []
    for version in versions:
        payload = dict.fromkeys(version.payload_fields, "Green tea, calm, for busy people who like quiet mornings")
        request = {"role": version.template.role, "task": version.template.task, "payload": payload, "mode": "json"}
        prompt = version.render(payload)
        output = {"caption": "Slow down with a cup of green tea. " * 3, "hashtags": ["#greentea", "#calm"],
                  "call_to_action": "Try it today"}
        shapes.append((version, json.dumps(request), len(json.dumps(request)), json.dumps(prompt), json.dumps(output)))

    span = DAYS * 86400
    vendor = connection.vendor

    def moments():
        # Ages skewed so that recent days are busier, with an office-hours peak; written oldest first, as the
        # gateway writes them, so that old rows sit together at the start of the table as they would.
        stamps = []
        for _ in range(n):
            created = now - timedelta(seconds=span * (1 - rng.random() ** 1.3))
            if not (7 <= created.hour <= 18 or rng.random() < 0.35):
                created -= timedelta(hours=rng.randint(1, 6))
            stamps.append(created)
        stamps.sort()
        return stamps

    def rows():
        for created in moments():
            age = (now - created).total_seconds()
            version, request, request_bytes, prompt, output = rng.choice(shapes)
            model = rng.choices([m for m, _ in MODELS], [w for _, w in MODELS])[0]
            roll = rng.random()
            stream = rng.random() < 0.15
            latency = rng.lognormvariate(7.0, 0.6)  # median ≈ 1.1 s
            error_type = error_message = ""
            if age < 30 and roll < 0.5:
                status, http_status, finished, latency, out = "pending", None, None, None, None
            elif roll < 0.0005:  # a process died under these
                status, http_status, finished, latency, out = "pending", None, None, None, None
            elif roll < 0.06:
                error_type, http_status, _ = rng.choices(ERRORS, [w for *_, w in ERRORS])[0]
                status, out, error_message = "failed", None, f"{error_type}: the upstream did not answer in time"
                finished = created + timedelta(milliseconds=latency)
            else:
                status, http_status, out = "succeeded", 200, output
                finished = created + timedelta(milliseconds=latency)
            done = status != "pending"
            values = {
                "id": uuid.UUID(int=rng.getrandbits(128), version=4),
                "created_at": created, "finished_at": finished, "status": status, "http_status": http_status,
                "role": version.template.role, "task": version.template.task, "mode": "json",
                "provider": "ollama", "model": model, "request": request, "request_bytes": request_bytes,
                "prompt": prompt, "output": out, "raw_output": "", "error_type": error_type,
                "error_message": error_message,
                "prompt_tokens": rng.randint(40, 400) if done else None,
                "completion_tokens": rng.randint(20, 300) if status == "succeeded" else None,
                "latency_ms": latency, "upstream_ms": latency - 3 if latency else None, "stream": stream,
                "first_token_ms": latency * 0.2 if stream and latency else None, "client_ip": "10.0.3.17",
                "user_agent": "python-httpx/0.28.1", "template_version_id": version.pk,
                "models_tried": json.dumps([{"model": model, "outcome": error_type or "succeeded"}]),
                "consumer_id": rng.choices(consumers, CONSUMER_WEIGHTS)[0], "api_key_prefix": "a1b2c3d4",
                "attempts": 1,
            }
            yield values

    started = time.monotonic()
    table = "llm_generation"
    if vendor == "postgresql":
        with connection.cursor() as cursor:
            copy_sql = f"COPY {table} ({', '.join(COLUMNS)}) FROM STDIN"
            with cursor.cursor.copy(copy_sql) as copy:
                for values in rows():
                    copy.write_row([_pg(values[c]) for c in COLUMNS])
    else:
        insert = f"INSERT INTO {table} ({', '.join(COLUMNS)}) VALUES ({', '.join(['%s'] * len(COLUMNS))})"
        batch = []
        with connection.cursor() as cursor:
            for values in rows():
                batch.append(tuple(_sqlite(values[c]) for c in COLUMNS))
                if len(batch) == 50_000:
                    with transaction.atomic():
                        cursor.executemany(insert, batch)
                    batch = []
            with transaction.atomic():
                cursor.executemany(insert, batch)
    from diagnostics.models import ConnectionCheck

    ConnectionCheck.objects.bulk_create(
        [ConnectionCheck(created_at=now - timedelta(hours=h), origin="command", target_url="http://ollama:11434",
                         source="default", model="qwen2.5:7b", ok=h % 50 != 0, cause="" if h % 50 else "timeout",
                         elapsed_ms=12.5, timings={"dns": 0.1}, report={"ok": True}) for h in range(DAYS * 24)],
        batch_size=1000)
    if vendor == "postgresql":
        # What autovacuum does shortly after a bulk load; without it the planner knows nothing of the new rows.
        with connection.cursor() as cursor:
            cursor.execute("VACUUM ANALYZE llm_generation")
    return {"seconds": time.monotonic() - started, "consumer": consumers[2]}


def _sqlite(value):
    # What Django's SQLite backend stores: UUIDs as 32 hex digits, datetimes as naive UTC text, booleans as 0/1.
    if isinstance(value, uuid.UUID):
        return value.hex
    if isinstance(value, datetime):
        return value.astimezone(timezone.utc).replace(tzinfo=None).isoformat(" ")
    if isinstance(value, dict):
        return json.dumps(value)
    if isinstance(value, bool):
        return int(value)
    return value


def _pg(value):
    if isinstance(value, dict):
        return json.dumps(value)
    return value


def timed(client, url: str, runs: int = 3) -> tuple[float, float, int]:
    """(first view ms, best of `runs` ms, status) of one page."""
    times = []
    status = None
    for _ in range(runs + 1):
        started = time.perf_counter()
        response = client.get(url)
        times.append((time.perf_counter() - started) * 1000)
        status = response.status_code
        if status != 200:
            raise SystemExit(f"{url} answered {status}")
    return times[0], min(times[1:]), status


def pages(facts: dict) -> list[tuple[str, str]]:
    from llm.admin import CappedPaginator, GenerationAdmin
    from llm.models import Generation

    listing = "/admin/llm/generation/"
    sample = Generation.objects.filter(status="succeeded").order_by("-created_at").values_list("pk", flat=True)[500]
    last_page = CappedPaginator.CAP // GenerationAdmin.list_per_page
    week = quote((datetime.now(timezone.utc) - timedelta(days=7)).replace(hour=0, minute=0, second=0, microsecond=0).isoformat())
    return [
        ("list", listing),
        (f"last reachable page ({last_page})", f"{listing}?p={last_page}"),
        ("filter status=failed", f"{listing}?status__exact=failed"),
        ("filter status=abandoned", f"{listing}?status__exact=abandoned"),
        ("filter consumer", f"{listing}?consumer__id__exact={facts['consumer']}"),
        ("filter provider", f"{listing}?provider=ollama"),
        ("filter mode", f"{listing}?mode=json"),
        ("filter model (5 % of rows)", f"{listing}?model=llama3.2:1b"),
        ("filter error type", f"{listing}?error_type=invalid_request"),
        ("filter date (past 7 days)", f"{listing}?created_at__gte={week}"),
        ("filter model + error type", f"{listing}?model=llama3.2:3b&error_type=upstream_timeout"),
        ("search by id", f"{listing}?q={sample}"),
        ("search by chatcmpl- id", f"{listing}?q=chatcmpl-{sample}"),
        ("detail", f"{listing}{sample}/change/"),
        ("dashboard", "/admin/llm/generation/usage/"),
        ("dashboard, consumer + model", f"/admin/llm/generation/usage/?consumer={facts['consumer']}&model=qwen2.5:7b"),
    ]


def staff_client():
    from django.contrib.auth import get_user_model
    from django.test import Client

    user, _ = get_user_model().objects.get_or_create(username="bench", defaults={"is_staff": True})
    client = Client()
    client.force_login(user)
    return client


def first_view_in_fresh_process(database_url: str) -> str:
    code = (
        "import sys, time; sys.argv=['x']; sys.path.insert(0, %r); from bench.admin_scale import setup_django, "
        "staff_client; setup_django(%r); c = staff_client();\n"
        "for url in ('/admin/llm/generation/', '/admin/llm/generation/usage/'):\n"
        "    t = time.perf_counter(); r = c.get(url); print(f'{url} {r.status_code} {(time.perf_counter()-t)*1000:.0f} ms')"
    ) % (str(ROOT), database_url)
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout


def prune_with_writer(facts: dict, now: datetime) -> None:
    from django.core.management import call_command
    from django.db import connection

    from llm.models import Generation

    total = Generation.objects.count()
    cutoff = Generation.objects.order_by("created_at").values_list("created_at", flat=True)[int(total * PRUNE_SHARE)]
    minutes = int((now - cutoff).total_seconds() // 60)
    stop = threading.Event()
    writes, failures, slowest = [0], [], [0.0]

    def writer():
        from llm.models import Generation as G

        while not stop.is_set():
            started = time.perf_counter()
            try:
                row = G.objects.create(role="copywriter", task="sns", provider="mock", model="qwen2.5:7b")
                row.succeed(output={"caption": "x"}, model="qwen2.5:7b", prompt_tokens=1, completion_tokens=1,
                            upstream_ms=1.0, latency_ms=2.0)
                writes[0] += 1
            except Exception as exc:  # reported: a failed write is the thing this measures
                failures.append(repr(exc))
            slowest[0] = max(slowest[0], time.perf_counter() - started)
            time.sleep(0.02)
        from django.db import connection as own

        own.close()

    thread = threading.Thread(target=writer)
    thread.start()
    started = time.monotonic()
    call_command("prune_audit", "--older-than", f"{minutes}m")
    elapsed = time.monotonic() - started
    stop.set()
    thread.join()
    left = Generation.objects.count()
    print(f"prune_audit of {total - left + writes[0]:,} rows ({PRUNE_SHARE:.0%}) : {elapsed:.1f} s; concurrent writer: "
          f"{writes[0]} generations written, {len(failures)} failed, slowest {slowest[0] * 1000:.0f} ms")
    if failures:
        print("  first failure:", failures[0])
    connection.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("-n", type=int, default=1_000_000, help="generation rows (default 1,000,000)")
    parser.add_argument("--database", default="sqlite",
                        help="sqlite (a temporary file), postgres (wtops_bench), a .sqlite3 path or a postgres:// URL")
    parser.add_argument("--no-fill", action="store_true", help="reuse the database as it is (after --keep)")
    parser.add_argument("--keep", action="store_true", help="keep the SQLite file")
    parser.add_argument("--no-prune", action="store_true", help="skip prune_audit (it deletes 30 %% of the rows)")
    args = parser.parse_args()

    temp = None
    if args.database == "sqlite":
        temp = tempfile.mkdtemp(prefix="admin-scale-")
        url = f"sqlite:///{temp}/audit.sqlite3"
    elif args.database == "postgres":
        url = DEFAULT_POSTGRES
    elif args.database.startswith("postgres"):
        url = args.database
    else:
        url = f"sqlite:///{Path(args.database).resolve()}"
    if not args.no_fill:
        if url.startswith("postgres"):
            recreate_postgres(url)
        else:
            Path(url.removeprefix("sqlite:///")).unlink(missing_ok=True)
    setup_django(url)
    from django.core.management import call_command
    from django.db import connection

    now = datetime.now(timezone.utc)
    print(f"{connection.vendor} {connection.Database.sqlite_version if connection.vendor == 'sqlite' else ''}"
          f" — {url.split('@')[-1]}")
    if args.no_fill:
        from llm.models import Consumer

        facts = {"consumer": Consumer.objects.get(name=CONSUMERS[2]).pk}
    else:
        call_command("migrate", verbosity=0)
        facts = fill(args.n, now=now)
        print(f"filled {args.n:,} generations in {facts['seconds']:.1f} s")
        started = time.monotonic()
        call_command("rollup_usage")
        print(f"rollup_usage, first run (backfill): {time.monotonic() - started:.1f} s")
    started = time.monotonic()
    call_command("rollup_usage")
    print(f"rollup_usage, a run with nothing new: {(time.monotonic() - started) * 1000:.0f} ms")

    client = staff_client()
    print(f"{'page':40} {'first':>9} {'best of 3':>10}")
    for name, url_ in pages(facts):
        first, best, _ = timed(client, url_)
        print(f"{name:40} {first:7.0f} ms {best:8.0f} ms")
    print("first view in a fresh process:")
    print("  " + first_view_in_fresh_process(url).strip().replace("\n", "\n  "))
    if not args.no_prune:
        prune_with_writer(facts, now)
    connection.close()
    if temp and not args.keep:
        import shutil

        shutil.rmtree(temp)
    elif temp:
        print(f"kept {temp}/audit.sqlite3")


if __name__ == "__main__":
    main()
