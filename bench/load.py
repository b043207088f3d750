"""The gateway under load, in one run: P1 sequential overhead, P3 500 connections against a slow upstream (with
/healthz probed throughout), streaming time to first byte, 500 concurrent streams, database connections and RSS.

    python bench/load.py                        # SQLite; about 2 minutes
    python bench/load.py --database postgres    # audit rows in PostgreSQL (127.0.0.1:5432, database "bench")
    make bench                                  # the same, SQLite

Method (each phase against the fake Ollama server, tests/fake_ollama.py, an asyncio process of its own)
    P1  bench/overhead.py's measurement: N sequential requests, gateway and direct interleaved (see that file).
    P3  The fake answers every /api/chat after --delay seconds (2). gunicorn serves the gateway with
        WEB_CONCURRENCY workers (2), uvicorn workers, caps out of the way (UPSTREAM_MAX_IN_FLIGHT=0, DEFAULT_MAX_CONCURRENT=0, no
        rate limit), request log on (LOG_LEVEL=info: one line per request, as in production). wrk holds --connections
        (500) for --duration (20 s), first against the fake directly (the ceiling), then through the gateway.
        Meanwhile a probe GETs /healthz every 50 ms on its own connection, and a sampler reads the RSS of the
        gunicorn processes (and, on PostgreSQL, the connections in pg_stat_activity) every 250 ms.
        Then the run drains: every audit row must be completed (none pending), and their number must equal the
        generate requests the gateway logged (wrk's requests cut off at its end are client_disconnected rows).
    TTFB  Sequential streamed requests (`"stream": true`, the fake streaming 8 chunks at once), gateway and
        direct interleaved; time to the first byte of the body, gateway minus direct per pair.
    S500  500 concurrent streams through the P3 gateway (upstream: --delay before the first chunk, then 8 chunks
        50 ms apart); each must end with a done line and no error, and leave a succeeded row.
Figures are for this machine (2 cores shared by wrk, the fake, the gateway and this script): compare runs made back
to back.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import re
import select
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent))
import overhead  # noqa: E402  (bench/overhead.py: the fixtures of a run)

PROJECT_ROOT = overhead.PROJECT_ROOT
GENERATE_PATH = overhead.GENERATE_PATH


def parse_args(argv):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--database", default="sqlite", help="sqlite (default), postgres, or a local URL")
    parser.add_argument("--requests", type=int, default=1000, help="P1 sequential requests (default 1000)")
    parser.add_argument("--connections", type=int, default=500, help="P3 concurrent connections (default 500)")
    parser.add_argument("--duration", type=int, default=20, help="P3 seconds per wrk run (default 20)")
    parser.add_argument("--delay", type=float, default=2.0, help="P3 upstream reply time, seconds (default 2)")
    parser.add_argument("--workers", type=int, default=2, help="P3 gunicorn workers (default 2)")
    parser.add_argument("--streams", type=int, default=500, help="S500 concurrent streams (default 500)")
    parser.add_argument("--ttfb", type=int, default=300, help="TTFB sequential pairs (default 300)")
    parser.add_argument("--skip-p1", action="store_true", help="leave out P1")
    parser.add_argument("--json", action="store_true", help="also print one JSON line with every figure")
    parser.add_argument("--set", action="append", default=[], metavar="NAME=VALUE",
                        help="a gateway setting for the load phases, e.g. --set DATABASE_POOL_SIZE=4 (repeatable)")
    parser.add_argument("--keep", action="store_true", help="keep the run's folder (logs, SQLite file) and say where")
    args = parser.parse_args(argv)
    if not 1 <= args.connections <= 5000 or not 1 <= args.duration <= 300 or not 1 <= args.streams <= 5000:
        parser.error("--connections 1-5000, --duration 1-300 s, --streams 1-5000")
    if not shutil.which("wrk"):
        parser.error("wrk is not installed: apt-get install wrk")
    return args


def start_fake(stack, workdir: Path, name: str, *extra: str) -> str:
    log_path = workdir / f"{name}.log"
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(
            [sys.executable, str(PROJECT_ROOT / "tests" / "fake_ollama.py"), "--host", "127.0.0.1", "--port", "0",
             "--model", overhead.MODEL, "--reply", overhead.REPLY, *extra],
            cwd=PROJECT_ROOT, stdout=subprocess.PIPE, stderr=log, stdin=subprocess.DEVNULL, start_new_session=True)
    stack.callback(overhead.stop_process_group, proc, name)
    stack.callback(proc.stdout.close)
    ready, _, _ = select.select([proc.stdout], [], [], overhead.STARTUP_TIMEOUT)
    line = proc.stdout.readline().decode(errors="replace") if ready else ""
    if " on http://" not in line:
        raise overhead.BenchmarkError(f"the fake Ollama server did not start: {line!r}\n{overhead.tail(log_path)}")
    return line.split(" on ", 1)[1].split()[0]


def start_gateway(stack, env: dict, workers: int, workdir: Path, name: str):
    args = argparse.Namespace(workers=workers)
    sub = workdir / name
    sub.mkdir()
    url, proc, log = overhead.start_gunicorn(stack, env, args, sub)
    overhead.wait_until_answering(url, proc, log)
    return url, proc, log


def percentiles(values: list[float]) -> dict:
    if len(values) < 2:
        return {"p50": values[0] if values else None, "p99": values[0] if values else None, "max": max(values or [0])}
    cuts = statistics.quantiles(values, n=100, method="inclusive")
    return {"p50": round(cuts[49], 2), "p95": round(cuts[94], 2), "p99": round(cuts[98], 2),
            "max": round(max(values), 2)}


# -- P3 --


WRK_SCRIPT = """
wrk.method = "POST"
wrk.body = {body}
wrk.headers["Content-Type"] = "application/json"
{auth}
"""


def wrk(url: str, path: str, body: bytes, connections: int, duration: int, workdir: Path, key: str | None) -> dict:
    script = workdir / f"wrk-{int(time.time() * 1000)}.lua"
    auth = f'wrk.headers["Authorization"] = "Bearer {key}"' if key else ""
    script.write_text(WRK_SCRIPT.format(body=json.dumps(body.decode()), auth=auth))
    result = subprocess.run(["wrk", "-t2", f"-c{connections}", f"-d{duration}s", "--timeout", "60s", "--latency",
                             "-s", str(script), url + path], capture_output=True, text=True, timeout=duration + 120)
    out = result.stdout
    if result.returncode != 0:
        raise overhead.BenchmarkError(f"wrk failed: {result.stderr}{out}")

    def number(pattern, default=0.0):
        match = re.search(pattern, out)
        return float(match.group(1)) if match else default

    latency = {}
    for label in ("50", "75", "90", "99"):
        match = re.search(rf"^\s+{label}%\s+([\d.]+)(us|ms|s)\s*$", out, re.M)
        if match:
            scale = {"us": 0.001, "ms": 1, "s": 1000}[match.group(2)]
            latency[f"p{label}_ms"] = round(float(match.group(1)) * scale, 1)
    errors = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out)
    return {"requests": int(number(r"(\d+) requests in")), "req_per_s": number(r"Requests/sec:\s+([\d.]+)"),
            "non_2xx": int(number(r"Non-2xx or 3xx responses: (\d+)")),
            "socket_errors": dict(zip(("connect", "read", "write", "timeout"), map(int, errors.groups())))
            if errors else {}, "latency": latency}


class Sampler(threading.Thread):
    """Every `interval` s: RSS of a process tree, and optionally connections to a PostgreSQL database."""

    def __init__(self, root_pid: int, postgres_db: str | None, interval: float = 0.25):
        super().__init__(daemon=True)
        self.root_pid, self.postgres_db, self.interval = root_pid, postgres_db, interval
        self.peak_rss_mib = 0.0
        self.peak_connections = 0
        self.stopped = threading.Event()

    def tree_rss_mib(self) -> float:
        pids, total = {self.root_pid}, 0
        for stat in Path("/proc").glob("[0-9]*/stat"):
            try:
                if int(stat.read_text().rsplit(")", 1)[1].split()[1]) == self.root_pid:
                    pids.add(int(stat.parent.name))
            except (OSError, IndexError, ValueError):
                continue
        for pid in pids:
            try:
                for line in Path(f"/proc/{pid}/status").read_text().splitlines():
                    if line.startswith("VmRSS:"):
                        total += int(line.split()[1])
            except OSError:
                pass
        return total / 1024

    def run(self):
        conn = None
        if self.postgres_db:
            import psycopg
            conn = psycopg.connect(f"host=127.0.0.1 user=postgres dbname={self.postgres_db}", autocommit=True)
        try:
            while not self.stopped.is_set():
                self.peak_rss_mib = max(self.peak_rss_mib, self.tree_rss_mib())
                if conn is not None:
                    # Everyone's connections to the benchmark database but this sampler's own.
                    count = conn.execute("SELECT count(*) FROM pg_stat_activity WHERE datname = %s AND pid <> "
                                         "pg_backend_pid() AND application_name <> %s",
                                         (self.postgres_db, PROBE_NAME)).fetchone()[0]
                    self.peak_connections = max(self.peak_connections, count)
                self.stopped.wait(self.interval)
        finally:
            if conn is not None:
                conn.close()


class HealthProbe(threading.Thread):
    def __init__(self, url: str, interval: float = 0.05):
        super().__init__(daemon=True)
        self.url, self.interval = url, interval
        self.ms: list[float] = []
        self.failures = 0
        self.stopped = threading.Event()

    def run(self):
        with httpx.Client(base_url=self.url, timeout=10, trust_env=False) as client:
            while not self.stopped.is_set():
                started = time.perf_counter()
                try:
                    ok = client.get("/healthz").status_code == 200
                except httpx.HTTPError:
                    ok = False
                self.ms.append((time.perf_counter() - started) * 1000)
                self.failures += not ok
                self.stopped.wait(self.interval)


def logged_generate_requests(log: Path) -> int:
    count = 0
    for line in log.read_text(errors="replace").splitlines():
        # POSTs only: the start-up probe's GET (405) is no generation and leaves no row.
        if ('"logger": "gateway.request"' in line and f'"path": "{GENERATE_PATH}"' in line
                and '"method": "POST"' in line):
            count += 1
    return count


def drained_counts(env: dict, timeout: float = 60) -> dict:
    deadline = time.monotonic() + timeout
    # Named, so that the connection sampler leaves this probe's own connection out.
    env = {**env, "PGAPPNAME": PROBE_NAME}
    while True:
        counts = json.loads(overhead.run_python(env, "-c", COUNTS_PROBE).strip().splitlines()[-1])
        if counts["pending"] == 0 or time.monotonic() > deadline:
            return counts
        time.sleep(1)


PROBE_NAME = "llm-gateway-bench-probe"
COUNTS_PROBE = """
import json, django
django.setup()
from django.db.models import Count
from llm.models import Generation
by = dict(Generation.objects.values_list("status").annotate(n=Count("id")))
errors = dict(Generation.objects.exclude(error_type="").values_list("error_type").annotate(n=Count("id")))
print(json.dumps({"total": sum(by.values()), "pending": by.get("pending", 0), "by_status": by, "errors": errors}))
"""


async def concurrent_streams(url: str, key: str, body: dict, count: int) -> dict:
    limits = httpx.Limits(max_connections=count, max_keepalive_connections=count)
    started = time.perf_counter()

    failures: list[str] = []

    async def one(client):
        try:
            async with client.stream("POST", GENERATE_PATH, json=body) as response:
                last = None
                async for line in response.aiter_lines():
                    if line.strip():
                        last = json.loads(line)
                ok = response.status_code == 200 and last and last.get("done") and "error" not in last
                if not ok:
                    failures.append(f"{response.status_code} {json.dumps(last)[:300]}")
                return ok
        except httpx.HTTPError as exc:
            failures.append(f"{exc.__class__.__name__}: {exc}")
            return False

    async with httpx.AsyncClient(base_url=url, limits=limits, timeout=120, trust_env=False,
                                 headers={"Authorization": f"Bearer {key}"}) as client:
        results = await asyncio.gather(*(one(client) for _ in range(count)))
    return {"completed": sum(1 for r in results if r), "of": count,
            "seconds": round(time.perf_counter() - started, 2), "failures": sorted(set(failures))[:5]}


def ttfb_pairs(gateway_url: str, direct_url: str, key: str, gateway_body: dict, direct_body: dict, count: int):
    def first_byte(client, path, body) -> float:
        started = time.perf_counter_ns()
        with client.stream("POST", path, json=body) as response:
            if response.status_code != 200:
                raise overhead.BenchmarkError(f"{path} answered {response.status_code}")
            chunks = response.iter_raw()
            next(chunks)
            elapsed = time.perf_counter_ns() - started
            for _ in chunks:
                pass
        return elapsed / 1e6

    gateway_ms, direct_ms, added = [], [], []
    with httpx.Client(base_url=gateway_url, timeout=30, trust_env=False,
                      headers={"Authorization": f"Bearer {key}"}) as gateway, \
            httpx.Client(base_url=direct_url, timeout=30, trust_env=False) as direct:
        for i in range(count + 20):
            if i % 2:
                d = first_byte(direct, "/api/chat", direct_body)
                g = first_byte(gateway, GENERATE_PATH, gateway_body)
            else:
                g = first_byte(gateway, GENERATE_PATH, gateway_body)
                d = first_byte(direct, "/api/chat", direct_body)
            if i >= 20:  # warm-up
                gateway_ms.append(g), direct_ms.append(d), added.append(g - d)
    return {"gateway": percentiles(gateway_ms), "direct": percentiles(direct_ms), "added": percentiles(added)}


def load_phases(args, stack, workdir: Path) -> dict:
    database = overhead.prepare_database(args.database, stack, workdir)
    postgres_db = "bench" if args.database == "postgres" else None
    slow_url = start_fake(stack, workdir, "fake-slow", "--delay", str(args.delay), "--chunks", "8",
                          "--chunk-delay", "0.05")
    env = overhead.gateway_environment(database.url, slow_url, "info", workdir)
    env.update({"UPSTREAM_MAX_IN_FLIGHT": "0", "DEFAULT_MAX_CONCURRENT": "0", "RATE_LIMIT_PER_MINUTE": "0",
                "OLLAMA_TIMEOUT": "60"})
    env.update(dict(item.split("=", 1) for item in args.set))
    overhead.migrate(env)
    key = overhead.create_api_key(env)
    gateway_body, direct_body = overhead.request_bodies("json")
    results = {}

    print(f"P3: {args.connections} connections x {args.duration}s, upstream answers in {args.delay:g}s",
          flush=True)
    results["p3_direct"] = wrk(slow_url, "/api/chat", direct_body, args.connections, args.duration, workdir, None)
    print(f"  direct   {results['p3_direct']['req_per_s']:.1f} req/s", flush=True)

    gateway_url, gunicorn, log = start_gateway(stack, env, args.workers, workdir, "p3")
    sampler, probe = Sampler(gunicorn.pid, postgres_db), HealthProbe(gateway_url)
    sampler.start(), probe.start()
    try:
        results["p3_gateway"] = wrk(gateway_url, GENERATE_PATH, gateway_body, args.connections, args.duration,
                                    workdir, key)
    finally:
        probe.stopped.set(), probe.join()
    counts = drained_counts(env)
    received = logged_generate_requests(log)
    results["p3_health_ms"] = {**percentiles(probe.ms), "probes": len(probe.ms), "failed": probe.failures}
    results["p3_audit"] = {**counts, "requests_logged": received, "rows_match": counts["total"] == received}
    p3 = results["p3_gateway"]
    print(f"  gateway  {p3['req_per_s']:.1f} req/s, latency {p3['latency']}, non-2xx {p3['non_2xx']}, "
          f"socket errors {p3['socket_errors']}", flush=True)
    print(f"  /healthz during the run: {results['p3_health_ms']}", flush=True)
    print(f"  audit: {counts['total']} rows ({counts['by_status']}, errors {counts['errors']}), "
          f"{received} generate requests logged, pending {counts['pending']}", flush=True)

    print(f"S500: {args.streams} concurrent streams", flush=True)
    before = counts["total"]
    stream_body = {**json.loads(gateway_body), "stream": True}
    results["s500"] = asyncio.run(concurrent_streams(gateway_url, key, stream_body, args.streams))
    after = drained_counts(env)
    results["s500"]["rows"] = after["total"] - before
    results["s500"]["pending"] = after["pending"]
    sampler.stopped.set(), sampler.join()
    results["peak_rss_mib"] = round(sampler.peak_rss_mib, 1)
    if postgres_db:
        results["peak_postgres_connections"] = sampler.peak_connections
    print(f"  {results['s500']}", flush=True)
    print(f"peak RSS of gunicorn (master + {args.workers} workers) during P3 and S500: "
          f"{results['peak_rss_mib']} MiB", flush=True)
    if postgres_db:
        print(f"peak PostgreSQL connections (pg_stat_activity, database bench): {sampler.peak_connections}; "
              f"pool bound {args.workers} x DATABASE_POOL_SIZE (8) = {args.workers * 8}", flush=True)

    print(f"TTFB: {args.ttfb} sequential streamed requests, gateway and direct interleaved", flush=True)
    fast_url = start_fake(stack, workdir, "fake-fast", "--chunks", "8")
    fast_env = {**env, "OLLAMA_BASE_URL": fast_url, "LOG_LEVEL": "warning"}
    fast_gateway, _, _ = start_gateway(stack, fast_env, 1, workdir, "ttfb")
    results["ttfb_ms"] = ttfb_pairs(fast_gateway, fast_url, key, stream_body,
                                    {**json.loads(direct_body), "stream": True}, args.ttfb)
    print(f"  {results['ttfb_ms']}", flush=True)
    return results


def main(argv=None) -> int:
    args = parse_args(argv)
    signal_exit = overhead.raise_on_sigterm
    import signal
    signal.signal(signal.SIGTERM, signal_exit)
    figures = {}
    try:
        if not args.skip_p1:
            p1 = overhead.parse_args(["--requests", str(args.requests), "--database", args.database])
            figures["p1"] = overhead.benchmark(p1, f"P1 of bench/load.py --database {args.database}")
        with contextlib.ExitStack() as stack:
            workdir = Path(tempfile.mkdtemp(prefix="llm-gateway-load-"))
            if args.keep:
                print(f"keeping {workdir}", flush=True)
            else:
                stack.callback(shutil.rmtree, workdir, ignore_errors=True)
            figures.update(load_phases(args, stack, workdir))
    except overhead.BenchmarkError as exc:
        print(f"load: {exc}", file=sys.stderr)
        return 1
    if args.json:
        print(json.dumps(figures, sort_keys=True))
    return 0


if __name__ == "__main__":
    sys.exit(main())
