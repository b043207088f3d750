"""What token budgets (llm.budgets) add to a generation: the same gateway with and without a budget, interleaved.

    python bench/budgets.py                       # budgets counted from the database (SQLite), N=5000, 500 in flight
    python bench/budgets.py --redis               # counted in Redis (127.0.0.1:6379/10) as several processes share
    python bench/budgets.py --database postgres   # audit rows in PostgreSQL (127.0.0.1:5432/bench, a fresh schema)

Method
    One fake Ollama process (tests/fake_ollama.py, answering at once) and one gateway under gunicorn (bench/overhead.py
    starts both, on a fresh database). Two consumers differ only in their budget: `plain` has none, `budgeted` has
    a daily and a monthly one far above what the run uses (nothing is refused or cut: the figures are the
    bookkeeping's cost, a reservation at admission and its settlement at the end). Neither has a rate limit or a cap
    on generations in flight. Every request is POST /api/chat (the Ollama dialect), stream false.
    1. P1: N sequential iterations, each one request of `plain`, one of `budgeted` and one straight to the fake
       Ollama with the same body (the order of the two gateway requests alternates each iteration). The added cost
       is `budgeted - plain`, per iteration: its median, its interquartile range, and a bootstrap 95 % interval of
       the median.
    2. 500 in flight: rounds of R requests by 500 concurrent clients, a round of `plain` then one of `budgeted`
       (alternately first); throughput and latency percentiles per round, medians over the rounds.
    3. The bookkeeping alone (micro): budgets.prompt_estimate + admit + charged + settle in a Python process with the
       gateway's settings, against the same database (or Redis), per call.
    Aim: under 0.3 ms added per generation. All processes share the machine's cores (2 here, shared with other
    work): compare runs made back to back.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import random
import shutil
import signal
import statistics
import sys
import tempfile
import time
from pathlib import Path

PROJECT_ROOT = Path(__file__).resolve().parent.parent
if str(PROJECT_ROOT) not in sys.path:  # run as `python bench/budgets.py`, sys.path[0] is bench/
    sys.path.insert(0, str(PROJECT_ROOT))

import httpx  # noqa: E402

from bench import overhead  # noqa: E402  (its processes, database and environment helpers)

AIM_MS = 0.3
REDIS_URL = "redis://127.0.0.1:6379/10"
BUDGET = 10**12
BODY = json.dumps({"model": overhead.MODEL, "messages": [
    {"role": "system", "content": "You write short product captions."},
    {"role": "user", "content": "A caption for green tea, for office workers, in a calm tone."}],
    "stream": False}, separators=(",", ":")).encode()

MICRO = """
import json, sys, time
import django
django.setup()
from llm import budgets
from llm.models import Consumer, Generation
from llm.providers.base import Message
from llm.providers import GenerationRequest

count = int(sys.argv[1])
consumer = Consumer.objects.get(name="budgeted")
request = GenerationRequest(role="", task="", payload=None, mode="text", model="m",
                            messages=[Message(role="user", content="A caption for green tea, please.")], options={})
row = Generation(consumer=consumer, status="succeeded", prompt_tokens=30, completion_tokens=20)
for _ in range(200):  # warm-up: the scripts loaded into Redis, the connections open
    reservation = budgets.admit(consumer=consumer, estimate=budgets.prompt_estimate(request, 300),
                                options=dict(request.options))
    budgets.settle(reservation, budgets.charged(row, reservation.prompt_estimate))
times = []
began = time.perf_counter()
for _ in range(count):
    started = time.perf_counter_ns()
    reservation = budgets.admit(consumer=consumer, estimate=budgets.prompt_estimate(request, 300),
                                options=dict(request.options))
    budgets.settle(reservation, budgets.charged(row, reservation.prompt_estimate))
    times.append(time.perf_counter_ns() - started)
whole = (time.perf_counter() - began) / count * 1000
times.sort()
print(json.dumps({"p50_ms": times[len(times) // 2] / 1e6, "p99_ms": times[int(len(times) * 0.99)] / 1e6,
                  "whole_ms": whole, "redis": reservation.redis}))
"""


def parse_args(argv):
    parser = argparse.ArgumentParser(description="The cost of token budgets: the same gateway with and without.")
    parser.add_argument("-n", "--requests", type=int, default=5000, help="P1 iterations (default 5000)")
    parser.add_argument("--warmup", type=int, default=200)
    parser.add_argument("--in-flight", type=int, default=500, help="concurrent clients in part 2 (default 500)")
    parser.add_argument("--round", type=int, default=1000, help="requests per round in part 2 (default 1000)")
    parser.add_argument("--rounds", type=int, default=4, help="rounds per consumer in part 2 (default 4)")
    parser.add_argument("--micro", type=int, default=5000, help="calls in the micro-benchmark (default 5000)")
    parser.add_argument("--database", default="sqlite", help="sqlite (default), postgres, or a local URL")
    parser.add_argument("--redis", action="store_true", help=f"CACHE_URL={REDIS_URL}: budgets counted in Redis")
    parser.add_argument("--json", action="store_true", help="also print the result as one JSON line")
    args = parser.parse_args(argv)
    if args.requests < 2 or args.in_flight < 1 or args.round < args.in_flight or args.rounds < 1:
        parser.error("need -n >= 2, --in-flight >= 1, --round >= --in-flight, --rounds >= 1")
    return args


def clear_redis_keys() -> None:
    """This benchmark's keys in Redis database 10 (no key prefix): the consumers' ids repeat from run to run."""
    import redis

    client = redis.Redis.from_url(REDIS_URL)
    for key in client.scan_iter(":1:llm:budget:*"):
        client.delete(key)


def issue(env, name: str, *extra: str) -> str:
    output = overhead.run_python(env, "manage.py", "create_api_key", name, "--rate-limit", "0",
                                 "--max-concurrent", "0", *extra)
    return output.strip().splitlines()[-1]


def timed(client: httpx.Client, path: str) -> int:
    started = time.perf_counter_ns()
    response = client.post(path, content=BODY)
    elapsed = time.perf_counter_ns() - started
    if response.status_code != 200:
        raise overhead.BenchmarkError(f"{client.base_url}{path} answered {response.status_code}: {response.text[:300]}")
    return elapsed


def sequential(count: int, plain: httpx.Client, budgeted: httpx.Client, direct: httpx.Client):
    samples = {"plain": [], "budgeted": [], "direct": []}
    for i in range(count):
        first, second = ((plain, "plain"), (budgeted, "budgeted")) if i % 2 == 0 else \
            ((budgeted, "budgeted"), (plain, "plain"))
        samples[first[1]].append(timed(first[0], "/api/chat"))
        samples["direct"].append(timed(direct, "/api/chat"))
        samples[second[1]].append(timed(second[0], "/api/chat"))
    return samples


def percentile(values, q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def bootstrap_median(values, resamples: int = 400) -> tuple[float, float]:
    rng = random.Random(17)
    medians = sorted(statistics.median(rng.choices(values, k=len(values))) for _ in range(resamples))
    return medians[int(0.025 * resamples)], medians[int(0.975 * resamples)]


async def exchange(reader, writer, request: bytes) -> int:
    """One HTTP/1.1 request on a kept-alive connection; the status (the body is read and dropped)."""
    writer.write(request)
    head = await reader.readuntil(b"\r\n\r\n")
    status = int(head.split(b" ", 2)[1])
    length = next((int(line.split(b":", 1)[1]) for line in head.split(b"\r\n")
                   if line.lower().startswith(b"content-length:")), None)
    if length is not None:
        await reader.readexactly(length)
        return status
    while True:  # Transfer-Encoding: chunked
        size = int((await reader.readuntil(b"\r\n")).split(b";")[0], 16)
        await reader.readexactly(size + 2)
        if size == 0:
            return status


async def one_round(url: str, key: str, total: int, in_flight: int) -> dict:
    """`total` requests from `in_flight` connections at once (plain asyncio streams: an HTTP client library would
    spend more of the two cores than the gateway's bookkeeping being measured)."""
    host, port = url.removeprefix("http://").split(":")
    request = (f"POST /api/chat HTTP/1.1\r\nHost: {host}\r\nAuthorization: Bearer {key}\r\n"
               f"Content-Type: application/json\r\nContent-Length: {len(BODY)}\r\n\r\n").encode() + BODY
    latencies: list[float] = []
    statuses: dict[int | str, int] = {}
    queue = iter(range(total))

    async def worker():
        reader = writer = None
        for _ in queue:
            started = time.perf_counter()
            try:
                if writer is None:
                    reader, writer = await asyncio.open_connection(host, int(port))
                status = await exchange(reader, writer, request)
            except (OSError, asyncio.IncompleteReadError) as exc:
                status = exc.__class__.__name__
                writer = None
            latencies.append((time.perf_counter() - started) * 1000)
            statuses[status] = statuses.get(status, 0) + 1
        if writer is not None:
            writer.close()

    started = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(in_flight)))
    elapsed = time.perf_counter() - started
    if set(statuses) != {200}:
        raise overhead.BenchmarkError(f"a round at {in_flight} in flight was answered {statuses}")
    return {"rps": total / elapsed, "p50": percentile(latencies, 0.5), "p99": percentile(latencies, 0.99)}


def concurrent(args, url: str, keys: dict) -> dict:
    rounds = {"plain": [], "budgeted": []}
    for i in range(args.rounds):
        order = ("plain", "budgeted") if i % 2 == 0 else ("budgeted", "plain")
        for name in order:
            rounds[name].append(asyncio.run(one_round(url, keys[name], args.round, args.in_flight)))
    return {name: {figure: statistics.median(r[figure] for r in results) for figure in ("rps", "p50", "p99")}
            for name, results in rounds.items()}


def benchmark(args, command: str) -> dict:
    load_before = os.getloadavg()[0]
    with contextlib.ExitStack() as stack:
        workdir = Path(tempfile.mkdtemp(prefix="llm-gateway-budgets-"))
        stack.callback(shutil.rmtree, workdir, ignore_errors=True)
        database = overhead.prepare_database(args.database, stack, workdir)
        ollama_url = overhead.start_fake_ollama(stack, workdir)
        env = overhead.gateway_environment(database.url, ollama_url, "warning", workdir)
        env["UPSTREAM_MAX_IN_FLIGHT"] = "0"  # the fake answers at once: no queue in the gateway
        if args.redis:
            clear_redis_keys()
            stack.callback(clear_redis_keys)
            env["CACHE_URL"] = REDIS_URL
        overhead.migrate(env)
        keys = {"plain": issue(env, "plain"),
                "budgeted": issue(env, "budgeted", "--tokens-per-day", str(BUDGET), "--tokens-per-month", str(BUDGET))}
        gunicorn_args = argparse.Namespace(workers=1)
        url, gunicorn, log = overhead.start_gunicorn(stack, env, gunicorn_args, workdir)
        overhead.wait_until_answering(url, gunicorn, log)

        def client(base, key=None):
            headers = {"Content-Type": "application/json", **({"Authorization": f"Bearer {key}"} if key else {})}
            return stack.enter_context(httpx.Client(base_url=base, headers=headers, timeout=10, trust_env=False))

        plain, budgeted, direct = client(url, keys["plain"]), client(url, keys["budgeted"]), client(ollama_url)
        response = budgeted.post("/api/chat", content=BODY)
        if "X-Budget-Remaining-Tokens" not in response.headers or "X-Budget-Remaining-Tokens" in \
                plain.post("/api/chat", content=BODY).headers:
            raise overhead.BenchmarkError("the budgeted consumer is not budgeted, or the plain one is")
        try:
            sequential(args.warmup, plain, budgeted, direct)
            samples = sequential(args.requests, plain, budgeted, direct)
            crowd = concurrent(args, url, keys)
        except overhead.BenchmarkError as exc:
            raise overhead.BenchmarkError(f"{exc}\n--- gunicorn log ---\n{overhead.tail(log)}") from None
        micro = json.loads(overhead.run_python(env, "-c", MICRO, str(args.micro)).strip().splitlines()[-1])

    ms = {name: [v / 1e6 for v in values] for name, values in samples.items()}
    added = [b - p for b, p in zip(ms["budgeted"], ms["plain"])]
    low, high = bootstrap_median(added)
    p1 = {name: {"p50": round(statistics.median(v), 4), "p99": round(percentile(v, 0.99), 4)}
          for name, v in ms.items()}
    result = {
        "benchmark": "budgets", "command": command, "store": "redis" if args.redis else "database",
        "database": database.label, "load_1min_before": round(load_before, 2),
        "load_1min_after": round(os.getloadavg()[0], 2), "cpus": os.cpu_count(),
        "p1": p1, "added_median_ms": round(statistics.median(added), 4),
        "added_iqr_ms": [round(percentile(added, 0.25), 4), round(percentile(added, 0.75), 4)],
        "added_median_ci95_ms": [round(low, 4), round(high, 4)],
        "in_flight": args.in_flight, "concurrent": crowd, "micro": micro,
    }
    print_report(result, args)
    return result


def print_report(r: dict, args) -> None:
    print(f"Token budgets' cost: {args.requests} sequential iterations (+{args.warmup} warm-up), then "
          f"{args.rounds} rounds x {args.round} requests at {args.in_flight} in flight per consumer")
    print(f"  command   {r['command']}")
    print(f"  machine   {r['cpus']} CPUs, load {r['load_1min_before']} before, {r['load_1min_after']} after; "
          f"database {r['database']}; budgets counted in {r['store']}")
    print()
    print(f"  P1 (ms)                 {'p50':>8}{'p99':>8}   ratio to direct at p50")
    for name, label in (("direct", "direct (fake Ollama)"), ("plain", "gateway, no budget"),
                        ("budgeted", "gateway, budgeted")):
        row = r["p1"][name]
        ratio = row["p50"] / r["p1"]["direct"]["p50"]
        print(f"  {label:<24}{row['p50']:>8.3f}{row['p99']:>8.3f}   {ratio:.2f}x")
    print(f"  added by the budget, per iteration: median {r['added_median_ms']:.3f} ms, IQR "
          f"[{r['added_iqr_ms'][0]:.3f}, {r['added_iqr_ms'][1]:.3f}], median's 95 % interval "
          f"[{r['added_median_ci95_ms'][0]:.3f}, {r['added_median_ci95_ms'][1]:.3f}]")
    print()
    print(f"  {r['in_flight']} in flight (medians of rounds)   {'req/s':>8}{'p50 ms':>9}{'p99 ms':>9}")
    for name in ("plain", "budgeted"):
        row = r["concurrent"][name]
        print(f"  {name:<33}{row['rps']:>8.0f}{row['p50']:>9.1f}{row['p99']:>9.1f}")
    plain, budgeted = r["concurrent"]["plain"], r["concurrent"]["budgeted"]
    per_request = 1000 / budgeted["rps"] - 1000 / plain["rps"]
    print(f"  throughput cost: {per_request:+.3f} ms of the process's time per generation")
    print()
    print(f"  bookkeeping alone ({r['store']}): prompt estimate + admit + charged + settle, p50 "
          f"{r['micro']['p50_ms']:.3f} ms, p99 {r['micro']['p99_ms']:.3f} ms, mean {r['micro']['whole_ms']:.3f} ms")
    verdict = "met" if r["added_median_ms"] < AIM_MS else "NOT met"
    print(f"  aim: under {AIM_MS} ms added per generation at P1: {verdict}")


def main(argv=None) -> int:
    args = parse_args(argv)
    command = "python bench/budgets.py " + " ".join(sys.argv[1:] if argv is None else argv)
    # `kill` becomes an exception: the ExitStack then stops gunicorn and the fake Ollama.
    signal.signal(signal.SIGTERM, overhead.raise_on_sigterm)
    signal.signal(signal.SIGHUP, overhead.raise_on_sigterm)
    try:
        result = benchmark(args, command.strip())
    except overhead.BenchmarkError as exc:
        print(f"budgets: {exc}", file=sys.stderr)
        return 1
    if args.json:
        print(json.dumps(result, sort_keys=True))
    return 0


if __name__ == "__main__":
    sys.exit(main())
