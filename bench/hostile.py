"""Normal traffic quiet, then under attack: what hostile clients cost everyone else.

    python bench/hostile.py                       # SQLite, 2 gunicorn workers; about 1 minute
    python bench/hostile.py --database postgres   # audit rows in PostgreSQL (database "bench" on 127.0.0.1)

Method
    The gateway (gunicorn, uvicorn workers, live mode) in front of the fake Ollama server (tests/fake_ollama.py,
    a process of its own) that answers every generation after --delay seconds (0.2).
    Normal traffic: --clients (10) clients, each sending one generation after another through the native API
    (text mode), the OpenAI dialect and the Ollama dialect in turn, with a consumer's key; /healthz probed every
    50 ms on a connection of its own. First --duration seconds quiet, then --duration seconds while the attackers
    run in a process of their own (cheap asyncio clients, raw sockets, from 127.0.0.2):
        schema     OpenAI and Ollama dialect requests whose JSON Schema has a catastrophically backtracking pattern
                   matched against an echo of "xxxx…" (the fake echoes the prompt), refs to a loopback listener that
                   never answers and to file:///etc/passwd, a ref cycle, and minItems 10^9, with a valid key;
        huge       unauthenticated bodies declaring 500 MB, sent as fast as the gateway takes them;
        liar       Content-Length 99,999,999,999 with 10 bytes sent, then silence;
        nested     bodies nested 50,000 levels deep, to /api/chat and /api/show;
        slow       connections sending their request head one byte a second, and bodies one byte a second;
        basic      wrong HTTP Basic passwords for an existing staff user, on the debug API;
        badkey     generations with wrong API keys.
    Reported: normal traffic's p50 and p99 quiet and under attack (aim: p99 under attack at most 2x quiet), its
    errors, /healthz p99 (aims: under 50 ms quiet, under 100 ms under attack), what each attacker got back, how
    many connections the never-answering listener saw (must be 0), and the audit rows (none left pending).
Figures are for this machine: 2 cores shared by the gateway, the fake, the attackers and the measuring clients.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import collections
import contextlib
import json
import multiprocessing
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent))
import load  # noqa: E402  (bench/load.py: health probe, percentiles, gunicorn start)
import overhead  # noqa: E402

PROJECT_ROOT = overhead.PROJECT_ROOT
MODEL = overhead.MODEL
STAFF_USER, STAFF_PASSWORD = "bench-ops", "bench-ops-correct-horse-battery"
# The attackers connect from an address of their own (all of 127/8 is loopback): per-address limits apply to them,
# as they would to a hostile client elsewhere on the network, and the normal clients keep 127.0.0.1.
ATTACKER_ADDRESS = "127.0.0.2"


def parse_args(argv):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--database", default="sqlite", help="sqlite (default), postgres, or a local URL")
    parser.add_argument("--duration", type=int, default=20, help="seconds per phase (default 20)")
    parser.add_argument("--clients", type=int, default=10, help="normal clients (default 10)")
    parser.add_argument("--delay", type=float, default=0.2, help="upstream reply time, seconds (default 0.2)")
    parser.add_argument("--workers", type=int, default=2, help="gunicorn workers (default 2)")
    parser.add_argument("--slow", type=int, default=100, help="slow connections held during the attack (100)")
    parser.add_argument("--set", action="append", default=[], metavar="NAME=VALUE",
                        help="a gateway setting, e.g. --set DEFAULT_MAX_CONCURRENT=4 (repeatable)")
    parser.add_argument("--json", action="store_true", help="also print one JSON line with every figure")
    args = parser.parse_args(argv)
    if not 2 <= args.duration <= 600 or not 1 <= args.clients <= 200:
        parser.error("--duration 2-600 s, --clients 1-200")
    return args


# -- the measured side ------------------------------------------------------------------------------------------------


def normal_bodies() -> list[tuple[str, dict]]:
    return [
        (overhead.GENERATE_PATH, {"role": overhead.ROLE, "task": overhead.TASK, "payload": overhead.PAYLOAD,
                                  "mode": "text"}),
        ("/v1/chat/completions", {"model": MODEL, "messages": [{"role": "user", "content": "Name a green tea."}]}),
        ("/api/chat", {"model": MODEL, "stream": False, "messages": [{"role": "user", "content": "Say hi."}]}),
    ]


async def normal_traffic(url: str, key: str, clients: int, stop: asyncio.Event, samples: list, errors: collections.Counter):
    bodies = normal_bodies()

    async def client(index: int):
        async with httpx.AsyncClient(base_url=url, timeout=60, trust_env=False,
                                     headers={"Authorization": f"Bearer {key}"}) as http:
            turn = index
            while not stop.is_set():
                path, body = bodies[turn % len(bodies)]
                turn += 1
                started = time.perf_counter()
                try:
                    response = await http.post(path, json=body)
                    status = response.status_code
                except httpx.HTTPError as exc:
                    status = exc.__class__.__name__
                elapsed = (time.perf_counter() - started) * 1000
                if status == 200:
                    samples.append(elapsed)
                else:
                    errors[f"{path} {status}"] += 1

    await asyncio.gather(*(client(i) for i in range(clients)))


def measure(url: str, key: str, clients: int, seconds: float) -> dict:
    samples: list[float] = []
    errors: collections.Counter = collections.Counter()
    probe = load.HealthProbe(url)
    probe.start()

    async def run():
        stop = asyncio.Event()
        asyncio.get_running_loop().call_later(seconds, stop.set)
        await normal_traffic(url, key, clients, stop, samples, errors)

    try:
        asyncio.run(run())
    finally:
        probe.stopped.set()
        probe.join()
    return {"requests": len(samples), "req_per_s": round(len(samples) / seconds, 1), "ms": load.percentiles(samples),
            "errors": dict(errors), "healthz_ms": {**load.percentiles(probe.ms), "failed": probe.failures}}


# -- the attackers (a process of their own) ---------------------------------------------------------------------------


class Tally:
    def __init__(self):
        self.counts: dict[str, collections.Counter] = collections.defaultdict(collections.Counter)
        self.answer_ms: dict[str, list[float]] = collections.defaultdict(list)

    def add(self, kind: str, outcome: str, started: float | None = None):
        self.counts[kind][outcome] += 1
        if started is not None:
            self.answer_ms[kind].append((time.perf_counter() - started) * 1000)


async def _exchange(host: str, port: int, head: bytes, body: bytes = b"", *, timeout: float = 30) -> str:
    """Send a request, return the status code read back (or why none came)."""
    try:
        reader, writer = await asyncio.wait_for(asyncio.open_connection(host, port, local_addr=(ATTACKER_ADDRESS, 0)), timeout)
    except (OSError, asyncio.TimeoutError) as exc:
        return f"connect {exc.__class__.__name__}"
    try:
        writer.write(head + body)
        await writer.drain()
        line = await asyncio.wait_for(reader.readline(), timeout)
        return line.split(b" ")[1].decode() if line.count(b" ") >= 1 else "closed"
    except (OSError, asyncio.TimeoutError, IndexError) as exc:
        return exc.__class__.__name__
    finally:
        writer.close()
        with contextlib.suppress(Exception):
            await writer.wait_closed()


def _head(method: str, path: str, host: str, port: int, *, length: int | None = None, headers: dict | None = None
          ) -> bytes:
    lines = [f"{method} {path} HTTP/1.1", f"Host: {host}:{port}", "Connection: close"]
    if length is not None:
        lines += ["Content-Type: application/json", f"Content-Length: {length}"]
    lines += [f"{name}: {value}" for name, value in (headers or {}).items()]
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


def schema_bodies(blackhole: int) -> list[tuple[str, dict]]:
    x = "x" * 30
    pattern = {"type": "object", "properties": {"echo": {"type": "string", "pattern": "(x+x+)+y"}}}
    remote = {"type": "object", "$ref": f"http://127.0.0.1:{blackhole}/schema.json"}
    local_file = {"type": "object", "$ref": "file:///etc/passwd"}
    cycle = {"type": "object", "$ref": "#"}
    bomb = {"type": "object", "properties": {"items": {"type": "array", "minItems": 10**9}}}
    bodies = []
    for schema in (pattern, remote, local_file, cycle, bomb):
        bodies.append(("/v1/chat/completions", {
            "model": MODEL, "messages": [{"role": "user", "content": x}],
            "response_format": {"type": "json_schema", "json_schema": {"name": "a", "schema": schema}}}))
        bodies.append(("/api/chat", {"model": MODEL, "stream": False, "format": schema,
                                     "messages": [{"role": "user", "content": x}]}))
    return bodies


async def attack(host: str, port: int, key: str, blackhole: int, slow: int, seconds: float) -> dict:
    tally = Tally()
    deadline = time.monotonic() + seconds
    auth = {"Authorization": f"Bearer {key}"}

    async def schema(turn: int):
        bodies = schema_bodies(blackhole)
        while time.monotonic() < deadline:
            path, body = bodies[turn % len(bodies)]
            turn += 1
            data = json.dumps(body).encode()
            started = time.perf_counter()
            status = await _exchange(host, port, _head("POST", path, host, port, length=len(data), headers=auth), data)
            tally.add("schema", status, started)

    async def huge():
        chunk = b" " * 1_048_576
        while time.monotonic() < deadline:
            started = time.perf_counter()
            try:
                reader, writer = await asyncio.open_connection(host, port, local_addr=(ATTACKER_ADDRESS, 0))
            except OSError as exc:
                tally.add("huge", f"connect {exc.__class__.__name__}")
                await asyncio.sleep(0.1)
                continue
            sent, read = 0, None
            try:
                writer.write(_head("POST", overhead.GENERATE_PATH, host, port, length=500_000_000))
                read = asyncio.ensure_future(reader.readline())
                while not read.done() and sent < 500_000_000 and time.monotonic() < deadline:
                    writer.write(chunk)
                    await writer.drain()
                    sent += len(chunk)
                line = await asyncio.wait_for(read, 5)
                status = line.split(b" ")[1].decode() if b" " in line else "closed"
            except (OSError, asyncio.TimeoutError, IndexError) as exc:
                status = exc.__class__.__name__
            finally:
                writer.close()
                if read is None:
                    pass
                elif read.done() and not read.cancelled():
                    read.exception()  # retrieved: a reset is an outcome here, not an unhandled error
                else:
                    read.cancel()
            tally.add("huge", f"{status} after {sent // 1_048_576} MiB sent", started)

    async def liar():
        while time.monotonic() < deadline:
            started = time.perf_counter()
            status = await _exchange(host, port, _head("POST", "/v1/chat/completions", host, port,
                                                       length=99_999_999_999, headers=auth), b"{}" * 5, timeout=10)
            tally.add("liar", status, started)

    async def nested():
        deep = b"[" * 50_000 + b"]" * 50_000
        turn = 0
        while time.monotonic() < deadline:
            path = ("/api/chat", "/api/show")[turn % 2]
            turn += 1
            started = time.perf_counter()
            status = await _exchange(host, port, _head("POST", path, host, port, length=len(deep), headers=auth), deep)
            tally.add(f"nested {path}", status, started)

    async def slow_head():
        while time.monotonic() < deadline:
            started = time.perf_counter()
            try:
                reader, writer = await asyncio.open_connection(host, port, local_addr=(ATTACKER_ADDRESS, 0))
            except OSError as exc:
                tally.add("slow head", f"connect {exc.__class__.__name__}")
                await asyncio.sleep(1)
                continue
            head = _head("GET", "/healthz", host, port)
            outcome = "held to the end"
            try:
                for byte in head:
                    if time.monotonic() >= deadline:
                        break
                    writer.write(bytes([byte]))
                    await writer.drain()
                    try:
                        data = await asyncio.wait_for(reader.read(1), 1.0)
                    except asyncio.TimeoutError:
                        continue
                    outcome = "answered" if data else "closed by the gateway"
                    break
            except OSError:
                outcome = "closed by the gateway"
            finally:
                writer.close()
            tally.add("slow head", outcome, started)

    async def slow_body():
        while time.monotonic() < deadline:
            started = time.perf_counter()
            try:
                reader, writer = await asyncio.open_connection(host, port, local_addr=(ATTACKER_ADDRESS, 0))
            except OSError as exc:
                tally.add("slow body", f"connect {exc.__class__.__name__}")
                await asyncio.sleep(1)
                continue
            body = json.dumps({"model": MODEL, "messages": [{"role": "user", "content": "slow"}]}).encode()
            outcome = "held to the end"
            try:
                writer.write(_head("POST", "/v1/chat/completions", host, port, length=len(body), headers=auth))
                for byte in body:
                    if time.monotonic() >= deadline:
                        break
                    writer.write(bytes([byte]))
                    await writer.drain()
                    try:
                        line = await asyncio.wait_for(reader.readline(), 1.0)
                    except asyncio.TimeoutError:
                        continue
                    outcome = line.split(b" ")[1].decode() if b" " in line else "closed by the gateway"
                    break
            except OSError:
                outcome = "closed by the gateway"
            finally:
                writer.close()
            tally.add("slow body", outcome, started)

    async def basic():
        wrong = base64.b64encode(f"{STAFF_USER}:wrong-password".encode()).decode()
        while time.monotonic() < deadline:
            started = time.perf_counter()
            status = await _exchange(host, port, _head("GET", "/api/v1/debug/settings", host, port,
                                                       headers={"Authorization": f"Basic {wrong}"}))
            tally.add("basic", status, started)

    async def badkey():
        body = json.dumps({"model": MODEL, "messages": [{"role": "user", "content": "hi"}]}).encode()
        turn = 0
        while time.monotonic() < deadline:
            turn += 1
            started = time.perf_counter()
            status = await _exchange(host, port, _head("POST", "/v1/chat/completions", host, port, length=len(body),
                                                       headers={"Authorization": f"Bearer gw_bad{turn:04x}_nope"}),
                                     body)
            tally.add("badkey", status, started)

    tasks = [*(schema(i * 3) for i in range(4)), huge(), liar(), *(nested() for _ in range(2)),
             *(slow_head() for _ in range(slow // 2)), *(slow_body() for _ in range(slow - slow // 2)),
             *(basic() for _ in range(20)), *(badkey() for _ in range(4))]
    await asyncio.gather(*tasks)
    return {kind: {"outcomes": dict(counter.most_common(6)), "answer_ms": load.percentiles(tally.answer_ms[kind])
                   if tally.answer_ms[kind] else None}
            for kind, counter in sorted(tally.counts.items())}


def _attack_process(url: str, key: str, blackhole: int, slow: int, seconds: float, results):
    # The attackers' own CPU stands for other machines': on this shared box they take only what the gateway, the
    # fake and the measuring clients leave (they still flood it as fast as it answers).
    os.nice(10)
    host, port = url.removeprefix("http://").rsplit(":", 1)
    results.put(asyncio.run(attack(host, int(port), key, blackhole, slow, seconds)))


class Blackhole(threading.Thread):
    """A loopback listener that accepts and never answers: every connection it sees is a fetch the gateway made."""

    def __init__(self):
        super().__init__(daemon=True)
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(64)
        self.port = self.sock.getsockname()[1]
        self.accepted = 0
        self.held = []

    def run(self):
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            self.accepted += 1
            self.held.append(conn)


# -- the run ----------------------------------------------------------------------------------------------------------


def start_echoing_fake(stack, workdir: Path, delay: float) -> str:
    """The fake Ollama with no fixed reply: it echoes the prompt (the schema attacker's x's land in the reply)."""
    log_path = workdir / "fake.log"
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(
            [sys.executable, str(PROJECT_ROOT / "tests" / "fake_ollama.py"), "--host", "127.0.0.1", "--port", "0",
             "--model", MODEL, "--delay", str(delay)],
            cwd=PROJECT_ROOT, stdout=subprocess.PIPE, stderr=log, stdin=subprocess.DEVNULL, start_new_session=True)
    stack.callback(overhead.stop_process_group, proc, "fake")
    stack.callback(proc.stdout.close)
    line = proc.stdout.readline().decode(errors="replace")
    if " on http://" not in line:
        raise overhead.BenchmarkError(f"the fake Ollama server did not start: {line!r}\n{overhead.tail(log_path)}")
    return line.split(" on ", 1)[1].split()[0]


STAFF_SCRIPT = f"""
import django
django.setup()
from django.contrib.auth import get_user_model
get_user_model().objects.create_user({STAFF_USER!r}, password={STAFF_PASSWORD!r}, is_staff=True)
"""


def run(args) -> dict:
    with contextlib.ExitStack() as stack:
        workdir = Path(tempfile.mkdtemp(prefix="llm-gateway-hostile-"))
        stack.callback(shutil.rmtree, workdir, ignore_errors=True)
        database = overhead.prepare_database(args.database, stack, workdir)
        fake_url = start_echoing_fake(stack, workdir, args.delay)
        env = overhead.gateway_environment(database.url, fake_url, "info", workdir)
        env.update({"RATE_LIMIT_PER_MINUTE": "0", "OLLAMA_TIMEOUT": "30", "GENERATION_DEADLINE": "60"})
        env.update(dict(item.split("=", 1) for item in args.set))
        overhead.migrate(env)
        key = overhead.create_api_key(env)
        hostile_key = overhead.run_python(env, "manage.py", "create_api_key", "hostile", "--rate-limit",
                                          "0").strip().splitlines()[-1]
        overhead.run_python(env, "-c", STAFF_SCRIPT)
        url, _, log = load.start_gateway(stack, env, args.workers, workdir, "gateway")
        blackhole = Blackhole()
        blackhole.start()
        stack.callback(blackhole.sock.close)

        print(f"quiet: {args.clients} normal clients for {args.duration}s (upstream {args.delay:g}s)", flush=True)
        measure(url, key, args.clients, 2)  # warm-up
        quiet = measure(url, key, args.clients, args.duration)
        print(f"  {quiet}", flush=True)

        print(f"under attack: the same, while the attackers run ({args.slow} slow connections among them)",
              flush=True)
        results = multiprocessing.get_context("spawn").Queue()
        attacker = multiprocessing.get_context("spawn").Process(
            target=_attack_process, args=(url, hostile_key, blackhole.port, args.slow, args.duration + 1, results))
        attacker.start()
        time.sleep(1)  # let every attacker reach the gateway before measuring
        attacked = measure(url, key, args.clients, args.duration)
        attacks = results.get(timeout=args.duration + 120)
        attacker.join(30)
        print(f"  {attacked}", flush=True)
        for kind, figures in attacks.items():
            print(f"  attacker {kind}: {figures}", flush=True)

        counts = load.drained_counts(env)
        figures = {
            "quiet": quiet, "attack": attacked, "attackers": attacks,
            "p50_ratio": _ratio(attacked["ms"]["p50"], quiet["ms"]["p50"]),
            "p99_ratio": _ratio(attacked["ms"]["p99"], quiet["ms"]["p99"]),
            "blackhole_connections": blackhole.accepted, "audit": counts,
        }
        print(f"normal traffic p50 {quiet['ms']['p50']} -> {attacked['ms']['p50']} ms ({figures['p50_ratio']}x), "
              f"p99 {quiet['ms']['p99']} -> {attacked['ms']['p99']} ms ({figures['p99_ratio']}x; aim <= 2x)")
        print(f"/healthz p99 {quiet['healthz_ms']['p99']} ms quiet (aim < 50), {attacked['healthz_ms']['p99']} ms "
              f"under attack (aim < 100)")
        print(f"connections the never-answering listener saw: {blackhole.accepted} (must be 0)")
        print(f"audit rows: {counts['total']} ({counts['by_status']}), pending {counts['pending']}")
        return figures


def _ratio(a, b):
    return round(a / b, 2) if a and b else None


def main(argv=None) -> int:
    args = parse_args(argv)
    import signal
    signal.signal(signal.SIGTERM, overhead.raise_on_sigterm)
    try:
        figures = run(args)
    except overhead.BenchmarkError as exc:
        print(f"hostile: {exc}", file=sys.stderr)
        return 1
    if args.json:
        print(json.dumps(figures, sort_keys=True, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
