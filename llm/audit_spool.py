"""Audit outcomes the database could not take, kept until it can, and replayed into it.

When a row's outcome cannot be written (the database is down or cut off), `keep` stores the whole row: as one
file under AUDIT_SPOOL_DIR (written to a temporary name, then renamed, so that a reader never sees half a file),
or, while no file can be written there, in this process's memory. Both are bounded (AUDIT_SPOOL_MAX_MB,
AUDIT_SPOOL_MEMORY_BYTES); an outcome past both bounds is dropped, logged and counted in /metrics
(llm_gateway_audit_spool_lost_total), never silently.

`replay` writes what is kept to the database as an insert-or-update by row id, so that replaying a row twice, or
over the pending row its request wrote first, leaves one completed row. Every gateway process replays at start
and then every AUDIT_SPOOL_REPLAY_SECONDS (one stat of the directory when nothing waits), and prune_audit replays
before it marks anything abandoned; a file lock lets one process at a time replay the directory.

A file is Django's JSON serialisation of the row, its fields as they are in the table (`{"model", "pk",
"fields"}`), so that what is kept can be read, or filtered, without the gateway.
"""

from __future__ import annotations

import asyncio
import fcntl
import logging
import os
import threading
import time
import weakref
from dataclasses import dataclass
from pathlib import Path

from django.conf import settings
from django.core import serializers
from django.db import DatabaseError, DataError, IntegrityError

from llm import metrics

logger = logging.getLogger("llm.audit_spool")

SUFFIX = ".json"
LOCK_NAME = ".replay.lock"
# Files the database refused for what they hold (not for being unreachable): kept for an operator, not replayed.
REJECTED = "rejected"
# A directory changed this recently may still be getting a file in the same clock tick as its last listing.
SETTLED_NS = 1_000_000_000
# How long a count of the directory's bytes stays trusted when keeping (its own writes are added meanwhile).
USAGE_TTL = 1.0

_lock = threading.Lock()
_memory: dict[str, tuple[str, bytes]] = {}  # row id -> (file name, serialised row): the newest outcome of each row
_memory_bytes = 0
_usage: list[float] = [0, 0.0]  # bytes in the directory, monotonic time they were counted
_empty_mtime: int | None = None  # the directory's mtime when a replay last found it empty
_replaying = threading.Lock()
_over_bound_logged = False


@dataclass
class ReplayResult:
    written: int = 0
    rejected: int = 0
    waiting: int = 0  # still kept: the database is still unavailable, or another process holds the directory
    error: str = ""


def directory() -> Path:
    return Path(settings.AUDIT_SPOOL_DIR)


def keep(row) -> bool:
    """Keep a completed row whose write failed, to be replayed; False if it could not be kept (then logged)."""
    global _memory_bytes
    with row.stored_form():  # a metadata-only row's content never reaches the disk (or this memory)
        data = serializers.serialize("json", [row]).encode()
    name = f"{time.time_ns():020d}-{row.pk}{SUFFIX}"
    if _write_file(name, data):
        metrics.audit_spooled("file")
        return True
    with _lock:
        previous = _memory.pop(str(row.pk), None)
        if previous:
            _memory_bytes -= len(previous[1])
        if _memory_bytes + len(data) > settings.AUDIT_SPOOL_MEMORY_BYTES:
            kept = False
        else:
            _memory[str(row.pk)] = (name, data)
            _memory_bytes += len(data)
            kept = True
    if not kept:
        metrics.audit_spool_lost()
        logger.error("audit outcome lost: the database, the spool directory and the memory bound all refused it",
                     extra={"request_id": str(row.pk), "status": row.status, "error_type": row.error_type,
                            "memory_bytes": settings.AUDIT_SPOOL_MEMORY_BYTES})
        return False
    metrics.audit_spooled("memory")
    return True


def _write_file(name: str, data: bytes) -> bool:
    global _over_bound_logged
    folder = directory()
    try:
        folder.mkdir(mode=0o700, parents=True, exist_ok=True)
        if _directory_bytes(folder) + len(data) > settings.AUDIT_SPOOL_MAX_BYTES:
            if not _over_bound_logged:
                _over_bound_logged = True
                logger.error("audit spool directory full (AUDIT_SPOOL_MAX_MB): outcomes are kept in memory",
                             extra={"directory": str(folder), "max_bytes": settings.AUDIT_SPOOL_MAX_BYTES})
            return False
        temporary = folder / f".{name}.tmp"
        # 0600: the row holds prompts and outputs.
        descriptor = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            with os.fdopen(descriptor, "wb") as out:
                out.write(data)
            os.replace(temporary, folder / name)
        except BaseException:
            temporary.unlink(missing_ok=True)
            raise
    except OSError as exc:
        logger.warning("audit spool directory not writable: the outcome is kept in memory",
                       extra={"directory": str(folder), "error": f"{exc.__class__.__name__}: {exc.strerror}"})
        return False
    with _lock:
        _usage[0] += len(data)
    return True


def _directory_bytes(folder: Path) -> float:
    with _lock:
        if time.monotonic() - _usage[1] < USAGE_TTL:
            return _usage[0]
    total = 0
    with os.scandir(folder) as entries:
        for entry in entries:
            if entry.is_file(follow_symlinks=False):
                try:
                    total += entry.stat(follow_symlinks=False).st_size
                except FileNotFoundError:
                    pass  # replayed meanwhile
    with _lock:
        _usage[0], _usage[1] = total, time.monotonic()
    return total


def waiting() -> bool:
    """Whether anything may be waiting to be replayed: a look at this process's memory and one stat."""
    if _memory:
        return True
    try:
        mtime = os.stat(directory()).st_mtime_ns
    except OSError:
        return False
    return mtime != _empty_mtime


def replay() -> ReplayResult:
    """Write the kept outcomes to the database (ORM: run it in a database step); what cannot be written stays."""
    result = ReplayResult()
    if not _replaying.acquire(blocking=False):
        result.error = "replaying in this process already"
        return result
    try:
        _replay_memory(result)
        if not result.error:
            _replay_directory(result)
        else:
            result.waiting += len(_names(directory()))
    finally:
        _replaying.release()
    if result.written or result.rejected:
        logger.info("audit spool replayed", extra={"written": result.written, "rejected": result.rejected,
                                                   "waiting": result.waiting})
    return result


def _replay_memory(result: ReplayResult) -> None:
    global _memory_bytes
    with _lock:
        kept = list(_memory.items())
    for row_id, (name, data) in kept:
        outcome = "unavailable" if result.error else _upsert(data, result)
        if outcome == "unavailable":
            # Into a file if the directory takes it now: a file outlives this process.
            moved = _write_file(name, data)
        else:
            moved = True
            if outcome == "rejected":
                _write_rejected(name, data)
        if moved:
            with _lock:
                if _memory.get(row_id, (None,))[0] == name:
                    del _memory[row_id]
                    _memory_bytes -= len(data)
        else:
            result.waiting += 1


def _replay_directory(result: ReplayResult) -> None:
    folder = directory()
    try:
        before = os.stat(folder).st_mtime_ns
    except OSError:
        return  # no directory: nothing was ever written there (keep says why, if it tried)
    try:
        _replay_files(folder, before, result)
    except OSError as exc:
        result.error = f"{exc.__class__.__name__}: {exc.strerror}"
        logger.warning("audit spool directory not readable", extra={"directory": str(folder), "error": result.error})


def _replay_files(folder: Path, before: int, result: ReplayResult) -> None:
    global _empty_mtime
    with _directory_lock(folder) as locked:
        if not locked:
            result.error = "another process is replaying the directory"
            return
        names = _names(folder)
        if not names and time.time_ns() - before > SETTLED_NS:
            _empty_mtime = before
        for index, name in enumerate(names):
            path = folder / name
            try:
                data = path.read_bytes()
            except FileNotFoundError:
                continue
            outcome = _upsert(data, result)
            if outcome == "unavailable":
                result.waiting += len(names) - index
                return
            if outcome == "rejected":
                _write_rejected(name, data)
            path.unlink(missing_ok=True)
    with _lock:
        _usage[1] = 0.0  # counted again at the next keep


def _names(folder: Path) -> list[str]:
    """The kept rows' files, oldest first (a name starts with the time it was written)."""
    try:
        return sorted(e.name for e in os.scandir(folder) if e.name.endswith(SUFFIX) and not e.name.startswith("."))
    except OSError:
        return []


class _directory_lock:  # noqa: N801 - used like a function
    """An exclusive, non-blocking flock on the directory's lock file: True if this process holds it."""

    def __init__(self, folder: Path):
        self.folder = folder
        self.descriptor: int | None = None

    def __enter__(self) -> bool:
        self.descriptor = os.open(self.folder / LOCK_NAME, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(self.descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return False
        return True

    def __exit__(self, *exc_info):
        os.close(self.descriptor)  # releases the lock


def _upsert(data: bytes, result: ReplayResult) -> str:
    """Insert or update one kept row by its id: "written", "rejected" (it can never be) or "unavailable"."""
    try:
        (kept,) = serializers.deserialize("json", data)
    except Exception as exc:  # noqa: BLE001 - a damaged file must not stop the others
        logger.error("audit spool file unreadable; set aside", extra={"error": exc.__class__.__name__})
        result.rejected += 1
        metrics.audit_replayed("rejected")
        return "rejected"
    row = kept.object
    try:
        try:
            # raw: Django's UPDATE by primary key, then an INSERT if no row had it.
            kept.save()
        except IntegrityError:
            if row.consumer_id is None:
                raise
            # The consumer was deleted meanwhile: what deleting it does to its other rows (SET_NULL).
            row.consumer_id = None
            kept.save()
    except (IntegrityError, DataError) as exc:
        logger.error("audit spool row refused by the database; set aside",
                     extra={"request_id": str(row.pk), "error": f"{exc.__class__.__name__}: {exc}"})
        result.rejected += 1
        metrics.audit_replayed("rejected")
        return "rejected"
    except DatabaseError as exc:
        # The first line only: PostgreSQL's next ones quote the statement, and with it the row.
        result.error = f"{exc.__class__.__name__}: {(str(exc).splitlines() or [''])[0][:300]}"
        return "unavailable"
    result.written += 1
    metrics.audit_replayed("written")
    return "written"


def _write_rejected(name: str, data: bytes) -> None:
    folder = directory() / REJECTED
    try:
        folder.mkdir(mode=0o700, parents=True, exist_ok=True)
        descriptor = os.open(folder / name, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(descriptor, "wb") as out:
            out.write(data)
    except OSError as exc:
        logger.error("a refused audit spool row could not be set aside either",
                     extra={"file": name, "error": f"{exc.__class__.__name__}: {exc.strerror}"})


def before_exit() -> None:
    """A process about to end: what it keeps in memory goes to the database or the directory, else it is lost
    (logged and counted). Runs in a database step."""
    if not _memory:
        return
    replay()
    with _lock:
        lost = len(_memory)
        _memory.clear()
    if lost:
        for _ in range(lost):
            metrics.audit_spool_lost()
        logger.error("audit outcomes lost at exit: neither the database nor the spool directory took them",
                     extra={"lost": lost, "directory": str(directory())})


def forget() -> None:
    """Drop what this process keeps in memory and knows of the directory (tests: each has a spool of its own)."""
    global _memory_bytes, _empty_mtime, _over_bound_logged
    with _lock:
        _memory.clear()
        _memory_bytes = 0
        _usage[:] = [0, 0.0]
        _empty_mtime = None
        _over_bound_logged = False


# -- the periodic replay ------------------------------------------------------------------------------------------

_replayers: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()  # event loop -> its replay task


def start_replaying() -> None:
    """Replay now and then every AUDIT_SPOOL_REPLAY_SECONDS on the running event loop (once per loop)."""
    loop = asyncio.get_running_loop()
    if loop not in _replayers:
        _replayers[loop] = loop.create_task(_replay_periodically(), name="audit-spool-replay")


async def _replay_periodically() -> None:
    from gateway_project.db_steps import db_step

    while True:
        if waiting():
            try:
                await db_step(replay)
            except Exception:  # noqa: BLE001 - tried again at the next round
                logger.exception("audit spool replay failed")
        await asyncio.sleep(settings.AUDIT_SPOOL_REPLAY_SECONDS)
