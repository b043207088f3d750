"""Embeddings through the gateway against the same calls made to Ollama directly, as ratios.

    python bench/embeddings.py                      # SQLite; about a minute
    python bench/embeddings.py --database postgres  # audit rows in PostgreSQL (127.0.0.1:5432, database "bench")

Method
    The fake Ollama (tests/fake_ollama.py, a process of its own) embeds instantly: a text's vector is its model's
    vector rotated and sign-flipped by the text's hash, with its JSON written in advance. What is measured is
    therefore the gateway's own cost: key, rate limit, admission, the audit row written before the call and
    completed after, reading Ollama's vectors and writing them again (floats, or base64 of float32 for the
    OpenAI SDK's default). A real model takes milliseconds to seconds per batch on top, the same both ways.
    The gateway runs as in production (gunicorn.conf.py: uvicorn workers, --workers of them, 1 by default),
    caps out of the way (UPSTREAM_MAX_IN_FLIGHT=0, DEFAULT_MAX_CONCURRENT=0, no rate limit), LOG_LEVEL=warning.

    B64  A batch of 64 short texts (nomic-embed-text, 768 dimensions): --requests sequential requests, gateway and
         direct interleaved, on POST /api/embed and on POST /v1/embeddings (encoding_format base64, as the openai
         SDK sends it). Latency percentiles, req/s of the sequence, and the ratios gateway / direct.
    C32  Single texts at concurrency 32 on POST /api/embed for --seconds, first direct, then through the gateway:
         latency percentiles, req/s, and the ratios.
    Every request through the gateway must leave one completed audit row of kind embedding.
Figures are for this machine (2 cores shared by the fake, the gateway and this script): compare runs made back to
back.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent))
import load  # noqa: E402  (bench/load.py: the fake's and the gateway's start, percentiles)
import overhead  # noqa: E402

MODEL = "nomic-embed-text"
BATCH = [f"Short text number {i} about green tea and calm mornings." for i in range(64)]
ROWS_PROBE = """
import json, django
django.setup()
from llm.models import Generation
rows = Generation.objects.filter(kind="embedding")
print(json.dumps({"rows": rows.count(), "succeeded": rows.filter(status="succeeded").count(),
                  "pending": rows.filter(status="pending").count()}))
"""


def parse_args(argv):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--database", default="sqlite", help="sqlite (default), postgres, or a local URL")
    parser.add_argument("--requests", type=int, default=200, help="B64 sequential requests per path and side")
    parser.add_argument("--concurrency", type=int, default=32, help="C32 concurrent clients (default 32)")
    parser.add_argument("--seconds", type=float, default=10, help="C32 seconds per side (default 10)")
    parser.add_argument("--workers", type=int, default=1, help="gunicorn workers (default 1)")
    parser.add_argument("--json", action="store_true", help="also print one JSON line with every figure")
    args = parser.parse_args(argv)
    if not 1 <= args.requests <= 10000 or not 1 <= args.concurrency <= 1000 or not 1 <= args.seconds <= 300:
        parser.error("--requests 1-10000, --concurrency 1-1000, --seconds 1-300")
    return args


def ratio(through: float | None, direct: float | None) -> float | None:
    return round(through / direct, 2) if through and direct else None


def batch_phase(gateway: str, direct: str, key: str, path: str, body: dict, count: int) -> dict:
    """`count` sequential requests each way, interleaved so that both see the same machine."""
    content = json.dumps(body).encode()
    times = {"gateway": [], "direct": []}
    headers = {"Content-Type": "application/json"}
    with httpx.Client(trust_env=False, timeout=30) as client:
        for index in range(count + 5):
            for side, url, auth in (("gateway", gateway, {"Authorization": f"Bearer {key}"}), ("direct", direct, {})):
                started = time.perf_counter()
                response = client.post(url + path, content=content, headers={**headers, **auth})
                elapsed = (time.perf_counter() - started) * 1000
                if response.status_code != 200:
                    raise overhead.BenchmarkError(f"{side} {path}: HTTP {response.status_code}: {response.text[:300]}")
                vectors = response.json().get("embeddings") or response.json().get("data")
                if len(vectors) != len(body["input"]):
                    raise overhead.BenchmarkError(f"{side} {path}: {len(vectors)} vectors for {len(body['input'])}")
                if index >= 5:  # warm-up left out
                    times[side].append(elapsed)
    result = {}
    for side, values in times.items():
        result[side] = {**load.percentiles(values), "req_per_s": round(1000 / (sum(values) / len(values)), 1)}
    result["ratio_p50"] = ratio(result["gateway"]["p50"], result["direct"]["p50"])
    result["ratio_p99"] = ratio(result["gateway"]["p99"], result["direct"]["p99"])
    result["ratio_req_per_s"] = ratio(result["gateway"]["req_per_s"], result["direct"]["req_per_s"])
    return result


async def concurrent(url: str, key: str | None, concurrency: int, seconds: float) -> dict:
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    latencies, failures = [], 0
    async with httpx.AsyncClient(trust_env=False, timeout=30, limits=limits, headers=headers) as client:
        deadline = time.perf_counter() + seconds

        async def worker(number: int):
            nonlocal failures
            sent = 0
            while time.perf_counter() < deadline:
                body = {"model": MODEL, "input": f"Single text {number}-{sent}"}
                started = time.perf_counter()
                response = await client.post(f"{url}/api/embed", json=body)
                latencies.append((time.perf_counter() - started) * 1000)
                failures += response.status_code != 200
                sent += 1

        started = time.perf_counter()
        await asyncio.gather(*(worker(n) for n in range(concurrency)))
        wall = time.perf_counter() - started
    return {**load.percentiles(latencies), "requests": len(latencies), "failed": failures,
            "req_per_s": round(len(latencies) / wall, 1)}


def rows(env: dict) -> dict:
    return json.loads(overhead.run_python(env, "-c", ROWS_PROBE).strip().splitlines()[-1])


def run(args, stack, workdir: Path) -> dict:
    database = overhead.prepare_database(args.database, stack, workdir)
    fake = load.start_fake(stack, workdir, "fake", "--model", MODEL)
    env = overhead.gateway_environment(database.url, fake, "warning", workdir)
    env.update({"UPSTREAM_MAX_IN_FLIGHT": "0", "DEFAULT_MAX_CONCURRENT": "0", "RATE_LIMIT_PER_MINUTE": "0"})
    overhead.migrate(env)
    key = overhead.create_api_key(env)
    gateway, _, _ = load.start_gateway(stack, env, args.workers, workdir, "gateway")
    figures = {}

    print(f"B64: a batch of {len(BATCH)} short texts, {args.requests} sequential requests per path, gateway and "
          "direct interleaved", flush=True)
    figures["batch_api_embed"] = batch_phase(gateway, fake, key, "/api/embed", {"model": MODEL, "input": BATCH},
                                             args.requests)
    figures["batch_v1_base64"] = batch_phase(gateway, fake, key, "/v1/embeddings",
                                             {"model": MODEL, "input": BATCH, "encoding_format": "base64"},
                                             args.requests)
    for name in ("batch_api_embed", "batch_v1_base64"):
        shown = figures[name]
        print(f"  {name}: gateway {shown['gateway']}, direct {shown['direct']}; ratios p50 {shown['ratio_p50']}, "
              f"p99 {shown['ratio_p99']}, req/s {shown['ratio_req_per_s']}", flush=True)

    print(f"C32: single texts, {args.concurrency} concurrent clients, {args.seconds:g}s each way", flush=True)
    direct = asyncio.run(concurrent(fake, None, args.concurrency, args.seconds))
    through = asyncio.run(concurrent(gateway, key, args.concurrency, args.seconds))
    figures["concurrent_single"] = {"gateway": through, "direct": direct,
                                    "ratio_p50": ratio(through["p50"], direct["p50"]),
                                    "ratio_p99": ratio(through["p99"], direct["p99"]),
                                    "ratio_req_per_s": ratio(through["req_per_s"], direct["req_per_s"])}
    shown = figures["concurrent_single"]
    print(f"  gateway {through}\n  direct  {direct}\n  ratios p50 {shown['ratio_p50']}, p99 {shown['ratio_p99']}, "
          f"req/s {shown['ratio_req_per_s']}", flush=True)

    sent = 2 * (args.requests + 5) + through["requests"]
    deadline = time.monotonic() + 30
    counted = rows(env)
    while counted["pending"] and time.monotonic() < deadline:
        time.sleep(0.5)
        counted = rows(env)
    figures["audit"] = {**counted, "requests_through_gateway": sent, "rows_match": counted["rows"] == sent}
    print(f"audit: {counted['rows']} embedding rows for {sent} requests through the gateway "
          f"({counted['succeeded']} succeeded, {counted['pending']} pending)", flush=True)
    return figures


def main(argv=None) -> int:
    args = parse_args(argv)
    try:
        with contextlib.ExitStack() as stack:
            workdir = Path(tempfile.mkdtemp(prefix="llm-gateway-embeddings-"))
            stack.callback(shutil.rmtree, workdir, ignore_errors=True)
            figures = run(args, stack, workdir)
    except overhead.BenchmarkError as exc:
        print(f"embeddings: {exc}", file=sys.stderr)
        return 1
    if args.json:
        print(json.dumps(figures, sort_keys=True))
    return 0 if figures["audit"]["rows_match"] else 1


if __name__ == "__main__":
    sys.exit(main())
