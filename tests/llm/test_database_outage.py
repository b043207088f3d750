"""PostgreSQL cut off under load, through a TCP proxy of the test's own: nothing a client was answered is lost.

While the cut lasts, requests are answered within a couple of seconds (those that cannot be authenticated with
503, those already running with their answer), /readyz answers 503, and every outcome the database could not
take is kept in the audit spool. Once the cut heals, the gateway's periodic replay writes them: every request
answered 200 has its `succeeded` row with its output and tokens, and no row is left pending.
"""

import asyncio
import threading
import time

import httpx
import pytest
from django.db import connection, connections

from llm import audit_spool
from llm.models import Generation
from tests.conftest import GENERATE_URL, wait_for
from tests.llm.test_metrics import Delta

pytestmark = [
    pytest.mark.django_db(transaction=True),
    pytest.mark.skipif(connection.vendor != "postgresql", reason="cuts a PostgreSQL server's connections"),
]

CLIENTS = 24
RUN_SECONDS = 7.0
CUT_AT, CUT_SECONDS = 1.5, 3.0
BODY = {"role": "copywriter", "task": "sns", "payload": {"product": "Green tea", "tone": "calm"}}


class CuttableProxy:
    """A loopback TCP proxy to the database that the test can cut: open connections closed, new ones refused."""

    def __init__(self, host: str, port: int):
        self.target = (host, port)
        self.loop = asyncio.new_event_loop()
        self.cut_off = False
        self.writers: set[asyncio.StreamWriter] = set()
        ready = threading.Event()
        self.thread = threading.Thread(target=self._run, args=(ready,), daemon=True)
        self.thread.start()
        ready.wait(5)

    def _run(self, ready: threading.Event) -> None:
        asyncio.set_event_loop(self.loop)
        self.server = self.loop.run_until_complete(asyncio.start_server(self._accept, "127.0.0.1", 0))
        self.port = self.server.sockets[0].getsockname()[1]
        ready.set()
        self.loop.run_forever()

    async def _accept(self, reader, writer) -> None:
        if self.cut_off:
            writer.close()  # what a database behind a broken network looks like to a client: gone at once
            return
        try:
            upstream_reader, upstream_writer = await asyncio.open_connection(*self.target)
        except OSError:
            writer.close()
            return
        self.writers |= {writer, upstream_writer}
        await asyncio.gather(self._pump(reader, upstream_writer), self._pump(upstream_reader, writer))

    async def _pump(self, reader, writer) -> None:
        try:
            while data := await reader.read(65536):
                writer.write(data)
                await writer.drain()
        except (ConnectionError, OSError):
            pass
        finally:
            self.writers.discard(writer)
            writer.close()

    def cut(self) -> None:
        def close_all():
            self.cut_off = True
            for writer in list(self.writers):
                writer.transport.abort()

        self.loop.call_soon_threadsafe(close_all)

    def heal(self) -> None:
        self.loop.call_soon_threadsafe(setattr, self, "cut_off", False)

    def close(self) -> None:
        async def shutdown():
            self.cut_off = True
            self.server.close()
            for writer in list(self.writers):
                writer.transport.abort()
            tasks = [task for task in asyncio.all_tasks() if task is not asyncio.current_task()]
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

        asyncio.run_coroutine_threadsafe(shutdown(), self.loop).result(5)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(5)
        self.loop.close()


@pytest.fixture
def proxied_database():
    """Every connection of this process (the gateway's and the test's) goes through the proxy."""
    database = connections.settings["default"]
    proxy = CuttableProxy(database.get("HOST") or "127.0.0.1", int(database.get("PORT") or 5432))
    original = database.get("HOST"), database.get("PORT")

    def switch(host, port):
        connection.close()
        connection.close_pool()  # a pool keeps the address it was made with
        database["HOST"], database["PORT"] = host, port

    switch("127.0.0.1", str(proxy.port))
    try:
        yield proxy
    finally:
        proxy.heal()
        switch(*original)
        proxy.close()


async def load(url: str, key: str, proxy: CuttableProxy) -> tuple[list, list]:
    """CLIENTS clients generating back to back for RUN_SECONDS, the database cut meanwhile; /readyz polled."""
    answers, probes = [], []
    started = time.monotonic()

    async def client(http):
        while time.monotonic() - started < RUN_SECONDS:
            sent = time.monotonic()
            try:
                response = await http.post(GENERATE_URL, json=BODY)
                answers.append((response, time.monotonic() - sent, sent - started))
            except httpx.HTTPError as exc:
                answers.append((exc, time.monotonic() - sent, sent - started))

    async def probe(http):
        while time.monotonic() - started < RUN_SECONDS:
            sent = time.monotonic()
            response = await http.get("/readyz")
            probes.append((response.status_code, time.monotonic() - sent, sent - started))
            await asyncio.sleep(0.2)

    async def cut():
        await asyncio.sleep(CUT_AT)
        proxy.cut()
        await asyncio.sleep(CUT_SECONDS)
        proxy.heal()

    limits = httpx.Limits(max_connections=CLIENTS + 2)
    async with httpx.AsyncClient(base_url=url, headers={"Authorization": f"Bearer {key}"}, timeout=20,
                                 trust_env=False, limits=limits) as http:
        await asyncio.gather(cut(), probe(http), *(client(http) for _ in range(CLIENTS)))
    return answers, probes


def test_a_database_cut_under_load_loses_no_answered_outcome(gateway, proxied_database, settings):
    settings.MOCK_RESPONSE_DELAY = 0.2  # generations in flight when the cut comes
    settings.RATE_LIMIT_PER_MINUTE = 0
    settings.DEFAULT_MAX_CONCURRENT = 0  # one consumer's 24 clients: not capped here
    settings.AUDIT_SPOOL_REPLAY_SECONDS = 0.2
    delta = Delta()

    answers, probes = asyncio.run(load(gateway.url, gateway.key, proxied_database))

    # Every request was answered, and quickly, cut or not.
    assert all(isinstance(response, httpx.Response) for response, _, _ in answers), answers
    slowest = max(took for _, took, _ in answers)
    assert slowest < 3.5, slowest
    statuses = [response.status_code for response, _, _ in answers]
    assert set(statuses) <= {200, 503}, statuses
    during = [response.status_code for response, _, sent in answers if CUT_AT + 0.5 < sent < CUT_AT + CUT_SECONDS - 1]
    assert 503 in during and statuses.count(200) > 50
    for response, _, _ in answers:
        if response.status_code == 503:
            assert response.json()["error"]["type"] == "audit_unavailable"
    # The outcomes of requests that were running when the database went away were kept, then replayed.
    assert delta("llm_gateway_audit_spooled_total", store="file") > 0

    # /readyz: 200 before the cut, 503 during it, each answer within its own timeout.
    assert max(took for _, took, _ in probes) < 2.5, probes
    assert [status for status, _, sent in probes if sent < CUT_AT - 0.2] and all(
        status == 200 for status, _, sent in probes if sent < CUT_AT - 0.2)
    assert 503 in [status for status, _, sent in probes if CUT_AT + 0.3 < sent < CUT_AT + CUT_SECONDS - 0.5]

    # Healed: the gateway's own periodic replay writes what was kept.
    def settled():
        return (not audit_spool.waiting() or not list(audit_spool.directory().glob("*.json"))) and \
            not Generation.objects.filter(status="pending").exists()

    assert wait_for(settled, timeout=30, interval=0.2), (
        Generation.objects.filter(status="pending").count(), list(audit_spool.directory().glob("*.json"))[:3])
    rows = {str(row.id): row for row in Generation.objects.all()}
    for response, _, _ in answers:
        row = rows[response.headers["x-request-id"]]
        if response.status_code == 200:
            body = response.json()
            assert (row.status, row.output) == ("succeeded", body["output"]), row.id
            assert row.prompt_tokens == body["usage"]["prompt_tokens"] and row.completion_tokens, row.id
        else:
            assert (row.status, row.error_type, row.http_status) == ("failed", "audit_unavailable", 503)
    assert len(rows) == len(answers)
    assert not Generation.objects.filter(status="pending").exists()
