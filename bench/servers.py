"""Several Ollama servers behind the gateway: throughput against the servers' summed capacity, and the share of
generations that found their model already loaded, with the gateway's placement and with a random choice.

    python bench/servers.py                    # 1, 2 and 3 servers, placement and random; about 3 minutes
    python bench/servers.py --duration 10 --servers 3

Method
    Fake Ollama servers (tests/fake_ollama.py, in this process, each on its own event loop thread), each running
    4 generations at once (num_parallel=4) with a 1 s reply, holding one model in memory (max_loaded_models=1,
    a GPU that fits one model) and taking --load-delay seconds (1) to load another. As many models as servers,
    every server has all of them (one model per GPU would do, if placed well). The gateway (gunicorn, one
    uvicorn worker, SQLite audit) lists the servers in its admin table with slots 4 per model and at most 4 in flight per server, so that its queue is the only one (it sends no
    server more than it runs at once). 48 clients (16 per model) each send /api/chat requests one after the
    other for --duration seconds (after a --warmup), non-streamed.
    Capacity: servers x 4 generations per second at best (a 1 s reply), less the time spent loading models.
    "Loaded" is the share of generations for which the fake did not have to load the model first (its own count
    of loads against its requests). Random is OLLAMA_SERVER_CHOICE=random: any server with a free slot, as a
    balancer that knows nothing of models (Open WebUI's several-URLs choice) sends them.
Figures are for this machine (2 cores shared by the fakes, the gateway and the clients): compare runs made back to
back. Generations are counted when they complete inside the measured window.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import sys
import tempfile
import time
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
import overhead  # noqa: E402  (bench/overhead.py: the fixtures of a run)

from tests.fake_ollama import FakeOllama  # noqa: E402

MODELS = ("m-alpha:1b", "m-beta:1b", "m-gamma:1b")
PARALLEL = 4


def parse_args(argv):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--duration", type=float, default=20.0, help="seconds measured per run (default 20)")
    parser.add_argument("--warmup", type=float, default=5.0, help="seconds before measuring (default 5)")
    parser.add_argument("--clients", type=int, default=48)
    parser.add_argument("--delay", type=float, default=1.0, help="each reply's time, seconds (default 1)")
    parser.add_argument("--load-delay", type=float, default=1.0, help="a model load, seconds (default 1)")
    parser.add_argument("--servers", type=int, nargs="*", default=[1, 2, 3])
    return parser.parse_args(argv)


def list_servers(env: dict, fakes: list[FakeOllama]) -> None:
    rows = [{"name": f"s{i + 1}", "url": fake.url} for i, fake in enumerate(fakes)]
    overhead.run_python(env, "-c", (
        "import django, json, sys; django.setup()\n"
        "from llm.models import OllamaServer\n"
        "OllamaServer.objects.all().delete()\n"
        "for row in json.loads(sys.argv[1]):\n"
        f"    OllamaServer.objects.create(name=row['name'], base_url=row['url'], slots={PARALLEL}, "
        f"max_in_flight={PARALLEL})\n"), json.dumps(rows))


async def load(url: str, key: str, models: tuple, clients: int, warmup: float, duration: float) -> dict:
    counted = {"ok": 0, "failed": 0, "latencies": []}
    start_at = time.monotonic() + warmup
    stop_at = start_at + duration

    async def client(index: int, http: httpx.AsyncClient):
        model = models[index % len(models)]
        turn = 0
        while time.monotonic() < stop_at:
            turn += 1
            started = time.monotonic()
            response = await http.post("/api/chat", json={
                "model": model, "stream": False,
                "messages": [{"role": "user", "content": f"client {index} turn {turn}"}]})
            # Completions within the measured window only.
            if start_at <= time.monotonic() <= stop_at:
                if response.status_code == 200:
                    counted["ok"] += 1
                    counted["latencies"].append(time.monotonic() - started)
                else:
                    counted["failed"] += 1

    async with httpx.AsyncClient(base_url=url, timeout=120, trust_env=False,
                                 headers={"Authorization": f"Bearer {key}"},
                                 limits=httpx.Limits(max_connections=clients + 4)) as http:
        await asyncio.gather(*(client(i, http) for i in range(clients)))
    return counted


def run(args, servers: int, choice: str, workdir: Path) -> dict:
    with contextlib.ExitStack() as stack:
        models = MODELS[:servers]
        fakes = [FakeOllama(models=models, delay=args.delay, num_parallel=PARALLEL, max_loaded_models=1,
                            load_delay=args.load_delay).start() for _ in range(servers)]
        for fake in fakes:
            stack.callback(fake.stop)
        database = overhead.prepare_database("sqlite", stack, workdir)
        env = overhead.gateway_environment(database.url, "http://127.0.0.1:9", "warning", workdir)
        env.update({"UPSTREAM_MAX_IN_FLIGHT": "0", "DEFAULT_MAX_CONCURRENT": "0", "RATE_LIMIT_PER_MINUTE": "0",
                    "OLLAMA_TIMEOUT": "60", "UPSTREAM_QUEUE_TIMEOUT": "120", "UPSTREAM_QUEUE_PER_CONSUMER": "0",
                    "OLLAMA_SERVER_CHOICE": choice})
        overhead.migrate(env)
        key = overhead.create_api_key(env)
        list_servers(env, fakes)
        sub = workdir / f"{servers}-{choice}"
        sub.mkdir()
        url, proc, log = overhead.start_gunicorn(stack, env, argparse.Namespace(workers=1), sub)
        overhead.wait_until_answering(url, proc, log)
        before = [(sum(f.requests_per_model.values()), sum(f.loads_per_model.values())) for f in fakes]
        counted = asyncio.run(load(url, key, models, args.clients, args.warmup, args.duration))
        after = [(sum(f.requests_per_model.values()), sum(f.loads_per_model.values())) for f in fakes]
        per_server = [{"requests": f.requests_per_model, "loads": f.loads_per_model} for f in fakes]
    requests = sum(a[0] - b[0] for a, b in zip(after, before))
    loads = sum(a[1] - b[1] for a, b in zip(after, before))
    latencies = sorted(counted["latencies"]) or [0.0]
    capacity = servers * PARALLEL / args.delay
    rate = counted["ok"] / args.duration
    return {"servers": servers, "choice": choice, "ok": counted["ok"], "failed": counted["failed"],
            "req_per_s": round(rate, 2), "capacity_per_s": capacity, "of_capacity": round(rate / capacity, 3),
            "loaded_share": round(1 - loads / requests, 3) if requests else None,
            "p50_s": round(latencies[len(latencies) // 2], 2),
            "p95_s": round(latencies[int(len(latencies) * 0.95) - 1], 2), "per_server": per_server}


def main(argv=None) -> int:
    args = parse_args(argv)
    results = []
    with tempfile.TemporaryDirectory(prefix="bench-servers-") as tmp:
        workdir = Path(tmp)
        for servers in args.servers:
            for choice in ("placement", "random"):
                (workdir / f"run-{servers}-{choice}").mkdir()
                result = run(args, servers, choice, workdir / f"run-{servers}-{choice}")
                results.append(result)
                print(f"{servers} server(s), {choice:9}: {result['req_per_s']:6.2f} req/s of "
                      f"{result['capacity_per_s']:g} ({result['of_capacity']:.0%}), loaded "
                      f"{result['loaded_share']:.0%}, p50 {result['p50_s']} s, p95 {result['p95_s']} s, "
                      f"{result['failed']} failed", flush=True)
    print(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
