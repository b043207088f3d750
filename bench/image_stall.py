"""The event-loop stall that the largest allowed image body causes.

    python bench/image_stall.py                 # about 30 s
    python bench/image_stall.py --requests 10 --body-mib 20

Method
    A chat request whose body is as large as CHAT_MAX_IMAGE_BODY_BYTES allows (20 MiB by default): one user message
    carrying one PNG image, base64, that fills the body. The gateway parses the JSON, decodes and checks the image
    (base64, SHA-256, type sniffing) and stores its description instead of its bytes. That work runs in the database
    step's thread, off the event loop, but the JSON parser and the base64 decoder hold Python's GIL while they run:
    for that long, nothing else in the worker process runs, the event loop included.

    1. In process, phase by phase: each step of reading such a body timed alone, and the event loop's largest lag
       (a 1 ms ticker) while the whole `_begin`-like sequence runs in a thread, as in the gateway.
    2. End to end: the gateway (gunicorn, one uvicorn worker, live mode, SQLite) in front of the fake Ollama (a
       vision model); /healthz probed every 5 ms on a connection of its own, quiet and then while --requests such
       bodies are sent one after another. Reported: /healthz p50, p99 and max in both phases, and the image
       requests' own latency.
Figures are for this machine: 2 cores shared by the gateway, the fake Ollama and the measuring client.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import json
import os
import sys
import tempfile
import threading
import time
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent))
import load  # noqa: E402  (bench/load.py: fake and gateway start, percentiles)
import overhead  # noqa: E402

PROJECT_ROOT = overhead.PROJECT_ROOT
VISION_MODEL = "llava:7b"


def parse_args(argv):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--body-mib", type=float, default=20, help="body size in MiB (default 20, the default limit)")
    parser.add_argument("--requests", type=int, default=5, help="image requests in the loaded phase (default 5)")
    parser.add_argument("--json", action="store_true", help="also print one JSON line with every figure")
    args = parser.parse_args(argv)
    if not 0.1 <= args.body_mib <= 256 or not 1 <= args.requests <= 50:
        parser.error("--body-mib 0.1-256, --requests 1-50")
    return args


def image_body(size: int) -> bytes:
    """A /api/chat body of about `size` bytes: one message with one valid PNG whose base64 fills the body."""
    sys.path.insert(0, str(PROJECT_ROOT))
    from tests.pictures import png_bytes

    head = {"model": VISION_MODEL, "stream": False, "messages": [{"role": "user", "content": "Describe it.",
                                                                  "images": ["IMAGE"]}]}
    room = size - len(json.dumps(head)) + len('"IMAGE"') - 2
    picture = png_bytes(filler=max(0, room * 3 // 4 - 200))
    return json.dumps({**head, "messages": [{**head["messages"][0],
                                             "images": [base64.b64encode(picture).decode()]}]}).encode()


# -- 1. in process ------------------------------------------------------------------------------------------------------


def in_process(body: bytes) -> dict:
    """Each step of reading the body, timed alone, and the event loop's largest lag while they run in a thread."""
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "gateway_project.settings")
    os.environ.setdefault("SECRET_KEY", "bench-" + "k" * 50)
    os.environ.setdefault("DATABASE_URL", f"sqlite:///{tempfile.gettempdir()}/image-stall.sqlite3")
    sys.path.insert(0, str(PROJECT_ROOT))
    import django

    django.setup()
    from llm import services
    from llm.dialects import ollama as ollama_dialect

    door = services.FrontDoor(dialect="ollama", endpoint="/api/chat", parse=ollama_dialect.parse_chat,
                              max_body_bytes=len(body) + 1, images=ollama_dialect.images,
                              max_text_bytes=1 << 20, any_content_type=True)

    def steps() -> dict:
        timings = {}
        started = time.perf_counter()
        data = services._parse(body, len(body), "application/json", door.max_body_bytes, any_type=True,
                               text_limit=door.max_text_bytes)
        timings["json_parse_ms"] = (time.perf_counter() - started) * 1000  # base64 cut out first
        mark = time.perf_counter()
        services._read_images(data, door, len(body))
        timings["image_read_ms"] = (time.perf_counter() - mark) * 1000
        mark = time.perf_counter()
        services._storable(data)
        request = ollama_dialect.parse_chat(data)
        services._unstorable(data)
        timings["store_and_parse_ms"] = (time.perf_counter() - mark) * 1000
        mark = time.perf_counter()
        from llm.providers.base import GenerationRequest
        from llm.providers.ollama import _chat_body, _encoded

        async def sent():  # what the HTTP client reads of it, slice by slice
            encoded = _encoded(_chat_body(GenerationRequest(role="", task="", payload=None, mode="text",
                                                            model=VISION_MODEL, messages=request.messages),
                                          stream=False))
            async for _ in encoded:
                pass

        asyncio.run(sent())
        timings["upstream_body_ms"] = (time.perf_counter() - mark) * 1000
        timings["total_ms"] = (time.perf_counter() - started) * 1000
        return timings

    alone = [steps() for _ in range(3)]
    best = {name: round(min(t[name] for t in alone), 1) for name in alone[0]}

    async def lag_while_threaded(work_seconds: float | None = None) -> float:
        """The loop's largest lag while steps() runs in a thread, or (work_seconds) while it idles that long:
        the machine's own noise, as other processes share its cores."""
        worst = 0.0
        done = threading.Event()

        def work():
            try:
                if work_seconds is None:
                    steps()
                else:
                    time.sleep(work_seconds)
            finally:
                done.set()

        thread = threading.Thread(target=work)
        thread.start()
        while not done.is_set():
            before = time.perf_counter()
            await asyncio.sleep(0.001)
            worst = max(worst, (time.perf_counter() - before) * 1000 - 1)
        thread.join()
        return worst

    lags = sorted(asyncio.run(lag_while_threaded()) for _ in range(7))
    idle = sorted(asyncio.run(lag_while_threaded(best["total_ms"] / 1000)) for _ in range(7))
    return {**best, "loop_lag_median_ms": round(lags[3], 1), "loop_lag_max_ms": round(lags[-1], 1),
            "idle_lag_median_ms": round(idle[3], 1), "idle_lag_max_ms": round(idle[-1], 1)}


# -- 2. end to end ------------------------------------------------------------------------------------------------------


async def probe(url: str, stop: asyncio.Event, samples: list) -> None:
    async with httpx.AsyncClient(trust_env=False, timeout=10) as client:
        while not stop.is_set():
            started = time.perf_counter()
            await client.get(f"{url}/healthz")
            samples.append((time.perf_counter() - started) * 1000)
            await asyncio.sleep(0.005)


async def phase(url: str, key: str, body: bytes | None, requests: int, quiet_seconds: float) -> dict:
    stop, samples, latencies, statuses = asyncio.Event(), [], [], []
    prober = asyncio.create_task(probe(url, stop, samples))
    if body is None:
        await asyncio.sleep(quiet_seconds)
    else:
        async with httpx.AsyncClient(trust_env=False, timeout=60,
                                     headers={"Authorization": f"Bearer {key}"}) as client:
            for _ in range(requests):
                started = time.perf_counter()
                response = await client.post(f"{url}/api/chat", content=body,
                                             headers={"Content-Type": "application/json"})
                latencies.append((time.perf_counter() - started) * 1000)
                statuses.append(response.status_code)
    stop.set()
    await prober
    result = {"healthz_ms": load.percentiles(samples), "probes": len(samples)}
    if body is not None:
        result.update(image_request_ms=load.percentiles(latencies), statuses=sorted(set(statuses)))
    return result


def end_to_end(body: bytes, requests: int) -> dict:
    with contextlib.ExitStack() as stack, tempfile.TemporaryDirectory(prefix="image-stall-") as tmp:
        workdir = Path(tmp)
        fake_url = load.start_fake(stack, workdir, "fake", "--model", VISION_MODEL)
        database = overhead.prepare_database("sqlite", stack, workdir)
        env = overhead.gateway_environment(database.url, fake_url, "warning", workdir)
        overhead.migrate(env)
        key = overhead.create_api_key(env)
        url, _, _ = load.start_gateway(stack, env, 1, workdir, "gateway")
        quiet = asyncio.run(phase(url, key, None, 0, quiet_seconds=3))
        loaded = asyncio.run(phase(url, key, body, requests, 0))
        return {"quiet": quiet, "loaded": loaded}


def main(argv=None) -> int:
    args = parse_args(argv)
    body = image_body(int(args.body_mib * 1024 * 1024))
    print(f"body: {len(body) / 1024 / 1024:.1f} MiB, one PNG image")
    steps = in_process(body)
    print(f"in process, best of 3: JSON parse (base64 cut out first) {steps['json_parse_ms']} ms, image read "
          f"(base64, SHA-256, type, by 256 KiB chunks) {steps['image_read_ms']} ms, store and parse "
          f"{steps['store_and_parse_ms']} ms, Ollama's request body {steps['upstream_body_ms']} ms, total "
          f"{steps['total_ms']} ms")
    print(f"event loop's largest lag while that runs in a thread, 7 runs: median {steps['loop_lag_median_ms']} ms, "
          f"max {steps['loop_lag_max_ms']} ms (idle for as long: median {steps['idle_lag_median_ms']} ms, max "
          f"{steps['idle_lag_max_ms']} ms)")
    served = end_to_end(body, args.requests)
    quiet, loaded = served["quiet"]["healthz_ms"], served["loaded"]["healthz_ms"]
    print(f"/healthz quiet:              p50 {quiet['p50']} ms, p99 {quiet['p99']} ms, max {quiet['max']} ms "
          f"({served['quiet']['probes']} probes)")
    print(f"/healthz during image posts: p50 {loaded['p50']} ms, p99 {loaded['p99']} ms, max {loaded['max']} ms "
          f"({served['loaded']['probes']} probes)")
    image = served["loaded"]["image_request_ms"]
    print(f"image requests ({args.requests}, statuses {served['loaded']['statuses']}): p50 {image['p50']} ms, "
          f"max {image['max']} ms")
    if args.json:
        print(json.dumps({"body_bytes": len(body), "in_process": steps, **served}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
