"""llm.leases: slots of a key with a capacity, shared through Redis (db 8) or counted in this process."""

import asyncio
import logging
import signal
import subprocess
import sys
import time
import uuid

import pytest

from llm.leases import LeaseManager
from tests.conftest import delete_redis_keys, require_redis

REDIS_URL = "redis://127.0.0.1:6379/8"


@pytest.fixture
def redis_prefix():
    require_redis(REDIS_URL)
    prefix = f"test-leases-{uuid.uuid4().hex}:"
    yield prefix
    delete_redis_keys(REDIS_URL, f"{prefix}*")


@pytest.mark.parametrize("shared", [False, True])
def test_capacity_is_never_exceeded_and_a_release_frees_a_slot(shared, request):
    prefix = request.getfixturevalue("redis_prefix") if shared else "local:"
    manager = LeaseManager(REDIS_URL if shared else None, prefix=prefix)

    async def run():
        a = await manager.acquire("m", 2)
        b = await manager.acquire("m", 2)
        assert a is not None and b is not None
        assert a.shared is shared and b.shared is shared
        assert await manager.acquire("m", 2) is None
        assert await manager.count("m") == 2
        # another key has slots of its own
        other = await manager.acquire("n", 1)
        assert other is not None
        await a.release()
        await a.release()  # idempotent: does not free a second slot
        assert await manager.count("m") == 1
        c = await manager.acquire("m", 2)
        assert c is not None
        assert await manager.acquire("m", 2) is None
        assert await manager.acquire("m", 0) is None
        for lease in (b, c, other):
            await lease.release()
        assert await manager.count("m") == 0
        assert manager.held() == 0
        await manager.close()

    asyncio.run(run())


def test_two_processes_sharing_redis_never_exceed_the_capacity_together(redis_prefix):
    """Two lease managers (two processes' worth: each its own Redis client and memory) race for 3 slots."""
    first = LeaseManager(REDIS_URL, prefix=redis_prefix)
    second = LeaseManager(REDIS_URL, prefix=redis_prefix)
    holding = 0
    most = 0
    served = 0

    async def worker(manager):
        nonlocal holding, most, served
        for _ in range(15):
            lease = await manager.wait_for_slot("server-a/llama", 3, timeout=10)
            assert lease is not None
            holding += 1
            most = max(most, holding)
            await asyncio.sleep(0.005)
            holding -= 1
            served += 1
            await lease.release()

    async def run():
        await asyncio.gather(*(worker(first if i % 2 else second) for i in range(8)))
        assert await first.count("server-a/llama") == 0
        await first.close()
        await second.close()

    asyncio.run(run())
    assert served == 8 * 15
    assert most == 3


def test_a_waiter_learns_of_a_release_in_another_process_within_the_poll(redis_prefix):
    first = LeaseManager(REDIS_URL, prefix=redis_prefix)
    second = LeaseManager(REDIS_URL, prefix=redis_prefix)

    async def run():
        held = await first.acquire("k", 1)
        waited = asyncio.create_task(second.wait_for_slot("k", 1, timeout=5))
        await asyncio.sleep(0.2)
        assert not waited.done()
        released_at = time.monotonic()
        await held.release()
        lease = await waited
        delay = time.monotonic() - released_at
        assert lease is not None
        assert delay < 0.2  # poll every 50 ms (plus a busy machine's slack)
        await lease.release()
        await first.close()
        await second.close()

    asyncio.run(run())


def test_a_waiter_in_the_same_process_is_woken_at_once():
    manager = LeaseManager(None, poll=5.0)  # polling alone would take 5 s

    async def run():
        held = await manager.acquire("k", 1)
        waited = asyncio.create_task(manager.wait_for_slot("k", 1, timeout=10))
        await asyncio.sleep(0.05)
        started = time.monotonic()
        await held.release()
        lease = await waited
        assert lease is not None and time.monotonic() - started < 0.5
        assert await manager.wait_for_slot("k", 1, timeout=0.1) is None  # full: times out
        await lease.release()

    asyncio.run(run())


HOLDER = r"""
import asyncio, sys
from llm.leases import LeaseManager

async def main():
    manager = LeaseManager(sys.argv[1], prefix=sys.argv[2], ttl=float(sys.argv[3]), renew_every=0.2)
    lease = await manager.acquire("k", 1)
    print("held" if lease else "refused", flush=True)
    await asyncio.sleep(60)

asyncio.run(main())
"""


def test_a_dead_holders_lease_comes_back_after_its_ttl_and_a_live_one_is_renewed(redis_prefix):
    holder = subprocess.Popen([sys.executable, "-c", HOLDER, REDIS_URL, redis_prefix, "1.0"],
                              stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        manager = LeaseManager(REDIS_URL, prefix=redis_prefix)

        async def while_alive():
            # Alive, the holder renews its 1-second lease every 0.2 s: still held after 2 s.
            await asyncio.sleep(2.0)
            assert await manager.acquire("k", 1) is None
            await manager.close()

        asyncio.run(while_alive())
        holder.send_signal(signal.SIGKILL)
        holder.wait(5)
        killed_at = time.monotonic()

        async def after_death():
            lease = await manager.wait_for_slot("k", 1, timeout=5)
            assert lease is not None
            await lease.release()
            await manager.close()
            return time.monotonic() - killed_at

        assert asyncio.run(after_death()) < 1.5
    finally:
        if holder.poll() is None:
            holder.kill()
            holder.wait(5)


def test_a_local_lease_expires_unless_renewed():
    manager = LeaseManager(None, ttl=0.3, renew_every=100)

    async def run():
        lease = await manager.acquire("k", 1)
        await asyncio.sleep(0.2)
        await lease.renew()
        await asyncio.sleep(0.2)
        assert await manager.acquire("k", 1) is None  # renewed 0.2 s ago: still held
        await asyncio.sleep(0.2)
        again = await manager.acquire("k", 1)  # not renewed for 0.4 s: expired
        assert again is not None

    asyncio.run(run())


def test_with_redis_down_leases_are_counted_per_process_and_logged_once(caplog):
    manager = LeaseManager("redis://127.0.0.1:1/8", prefix="down:")  # nothing listens on port 1

    async def run():
        with caplog.at_level(logging.INFO, logger="llm.leases"):
            a = await manager.acquire("k", 1)
            assert a is not None and not a.shared
            assert await manager.acquire("k", 1) is None
            await a.release()
            b = await manager.acquire("k", 1)
            assert b is not None
            await b.release()
        assert not manager.shared
        await manager.close()

    asyncio.run(run())
    warnings = [r for r in caplog.records if r.name == "llm.leases" and r.levelno == logging.WARNING]
    assert len(warnings) == 1
    assert "per process" in warnings[0].getMessage()


def test_a_lease_dropped_without_release_is_no_longer_renewed_and_expires():
    import gc

    manager = LeaseManager(None, ttl=0.3, renew_every=0.05)

    async def run():
        kept = await manager.acquire("k", 2)
        await manager.acquire("k", 2)  # dropped at once: nobody can release it
        gc.collect()
        await asyncio.sleep(0.5)
        assert manager.held() == 1
        assert await manager.count("k") == 1  # the kept one, renewed; the dropped one expired
        await kept.release()

    asyncio.run(run())
