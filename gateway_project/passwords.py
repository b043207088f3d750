"""Password checks that cannot be turned against the server: the one authentication backend (AUTHENTICATION_BACKENDS).

Every Django password the gateway accepts goes through here: HTTP Basic on the debug API and /metrics, and the
admin's login form. A password check costs a deliberately slow hash (PBKDF2, ~0.4 s of CPU), so unchecked it lets
anyone without an account take the server's CPU away from the generations. Here:
- at most one hash runs at a time per process, in a thread of the lowest CPU priority; a check that cannot start
  within HASH_SLOT_WAIT is refused (503);
- failures delay the next attempt, per client address and per user name, exponentially but never locking out
  (gateway_project.throttling); a delayed client is refused (429) before any hash;
- a success is remembered in this process for SUCCESS_TTL under a digest of the user's state and the password, so a
  client polling with Basic auth costs one hash a minute, and a password change or a lost is_active / is_staff
  takes effect at once.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import math
import os
import secrets
import sys
import threading
import time
from collections import OrderedDict
from concurrent.futures import ThreadPoolExecutor

from asgiref.sync import sync_to_async
from django.conf import settings
from django.contrib.auth import get_user_model
from django.contrib.auth.backends import ModelBackend
from django.contrib.auth.hashers import make_password, verify_password

from gateway_project import throttling
from gateway_project.conditions import Condition
from gateway_project.db_steps import release_connections

logger = logging.getLogger("gateway.passwords")
# Expected under a flood of passwords: one warning when it begins, one info line when it ends.
BUSY = Condition(logger, "password_checks_busy")

# The wait for this process's one hashing slot: about two hashes. Longer would let a flood pile up threads.
HASH_SLOT_WAIT = 1.0
SUCCESS_TTL = 60.0
SUCCESS_CACHE_SIZE = 1024
# A user's per-name delay does not apply from an address it signed in from within this time: an attacker guessing
# its password elsewhere cannot keep it out of the address it works from.
KNOWN_ADDRESS_SECONDS = 30 * 24 * 3600
CACHE_PREFIX = "auth"
HASH_NICENESS = 19

_hash_slot = threading.BoundedSemaphore(1)
# Keys are HMACs under a key that never leaves this process: not even a memory dump of the cache alone can be
# tried against a word list. The cache is per process on purpose: in Redis it would be a fast password oracle.
_PROCESS_KEY = secrets.token_bytes(32)
_successes: OrderedDict[bytes, float] = OrderedDict()
_successes_lock = threading.Lock()


class PasswordCheckRefused(Exception):
    """The password was not checked: the client must wait (429) or the process is busy hashing (503).

    Expected under attack: the response it becomes is marked logged, so that Django does not log each 503 as an
    error (the request's own log line says what happened, and BUSY says it once).
    """

    def __init__(self, message: str, *, status: int, retry_after: float):
        super().__init__(message)
        self.message = message
        self.status = status
        self.retry_after = max(1, math.ceil(retry_after))

    @property
    def type(self) -> str:
        return "auth_throttled" if self.status == 429 else "auth_busy"


class ThrottledPasswordBackend(ModelBackend):
    """Django's ModelBackend with the bounds above; raises PasswordCheckRefused instead of checking when it must."""

    def authenticate(self, request, username=None, password=None, **kwargs):
        user_model = get_user_model()
        if username is None:
            username = kwargs.get(user_model.USERNAME_FIELD)
        if username is None or password is None:
            return None
        address = throttling.client_address(request.META.get("REMOTE_ADDR") if request is not None else None)
        subjects = _Subjects(address, username)
        try:
            subjects.refuse_if_delayed()
        except PasswordCheckRefused:
            # A delayed client is refused before anything else, the database included (a flood of them must cost
            # little), unless it presents a name and password this process accepted lately: an operator's script
            # behind the same address as whoever earned the delay. Its remembered success is confirmed below.
            if not _recently_accepted(username, password):
                raise
        user = None
        # A NUL cannot be in a user name (PostgreSQL refuses it in a query, which would answer 500).
        if "\x00" not in username:
            try:
                user = user_model._default_manager.get_by_natural_key(username)
            except user_model.DoesNotExist:
                pass
        if user is not None and _remembered(user, password):
            return user if self.user_can_authenticate(user) else None

        subjects.refuse_if_delayed()
        # No database connection is held while waiting for the slot and hashing: on PostgreSQL the pool is shared
        # with the generations, and twenty waiting password checks would otherwise take all of it.
        release_connections()
        if not _hash_slot.acquire(timeout=HASH_SLOT_WAIT):
            BUSY.occurred("password checks refused: this process is busy hashing others (one hash at a time); "
                          "refused with 503 auth_busy until it catches up")
            raise PasswordCheckRefused("The gateway is busy checking other passwords; try again in a moment.",
                                       status=503, retry_after=HASH_SLOT_WAIT)
        BUSY.cleared("password checks heard again: the hashing slot is free within its wait")
        try:
            # Read again: the failures of those this check waited behind may have earned this address a delay.
            subjects.refuse_if_delayed()
            if user is None:
                # As ModelBackend: an unknown name costs the same hash, so timing does not tell which names exist.
                _hashed(make_password, password)
                accepted = False
            else:
                correct, outdated = _hashed(verify_password, password, user.password)
                if correct and outdated:
                    # As User.check_password: a hash of fewer rounds (or an older hasher) is upgraded.
                    user.password = _hashed(make_password, password)
                    user.save(update_fields=["password"])
                accepted = correct and self.user_can_authenticate(user)
        finally:
            _hash_slot.release()
        if not accepted:
            subjects.failed()
            return None
        subjects.succeeded()
        _remember(user, password)  # after the check, which may have upgraded the stored hash
        return user

    async def aauthenticate(self, request, username=None, password=None, **kwargs):
        # The same bounds for async callers; the hash and its slot wait in a thread, never on the event loop.
        return await sync_to_async(self.authenticate, thread_sensitive=False)(
            request, username=username, password=password, **kwargs)


def _lower_priority() -> None:
    # Linux gives each thread its own nice value: the hash yields the CPU to the event loop and the generations,
    # so even a hash running all the time takes only what they leave.
    if sys.platform.startswith("linux"):
        try:
            os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), HASH_NICENESS)
        except OSError:
            pass


_hasher = ThreadPoolExecutor(max_workers=1, thread_name_prefix="password-hash", initializer=_lower_priority)


def _hashed(function, *args):
    """function(*args), a password hash (pure CPU, no database), run in the process's one low-priority hashing
    thread. Only the holder of _hash_slot calls it, so nothing ever queues there."""
    return _hasher.submit(function, *args).result()


class _Subjects:
    """The address and the user name one attempt is counted against."""

    def __init__(self, address: str, username: str):
        self.address = throttling.subject("address", address)
        self.user = throttling.subject("user", username)
        self.known = f"{CACHE_PREFIX}:known:{self.user}:{self.address}"

    def refuse_if_delayed(self) -> None:
        """Raise PasswordCheckRefused (429) if this address or this name must still wait."""
        max_delay = settings.PASSWORD_FAILURE_MAX_DELAY
        counted = throttling.failures([self.address, self.user], prefix=CACHE_PREFIX)
        if not counted:
            return
        now = throttling.now()
        wait = counted[self.address].wait(now, max_delay)
        if counted[self.user].wait(now, max_delay) > wait and not throttling.marked(self.known):
            wait = counted[self.user].wait(now, max_delay)
        if wait > 0:
            raise PasswordCheckRefused(
                f"Too many failed sign-ins from this address or for this user name; try again in "
                f"{math.ceil(wait)} s.", status=429, retry_after=wait)

    def failed(self) -> None:
        throttling.record_failure([self.address, self.user], prefix=CACHE_PREFIX)

    def succeeded(self) -> None:
        # The address keeps its count: signing in to an account of one's own must not clear the delay that the
        # same address earned guessing at others.
        throttling.forget([self.user], prefix=CACHE_PREFIX)
        throttling.mark(self.known, seconds=KNOWN_ADDRESS_SECONDS)


def _success_key(user, password: str) -> bytes:
    """Changes with the stored hash (so with the password), is_active, is_staff and is_superuser."""
    state = "\0".join(str(part) for part in (user.pk, user.get_username(), user.password, user.is_active,
                                              user.is_staff, user.is_superuser))
    return hmac.new(_PROCESS_KEY, f"{state}\0{password}".encode("utf-8", "surrogatepass"), hashlib.sha256).digest()


def _remembered(user, password: str) -> bool:
    key = _success_key(user, password)
    now = time.monotonic()
    with _successes_lock:
        expires = _successes.get(key)
        if expires is None:
            return False
        if expires <= now:
            del _successes[key]
            return False
        return True


def _remember(user, password: str) -> None:
    now = time.monotonic()
    with _successes_lock:
        for key in (_success_key(user, password), _credentials_key(user.get_username(), password)):
            _successes[key] = now + SUCCESS_TTL
            _successes.move_to_end(key)
        while len(_successes) > SUCCESS_CACHE_SIZE:
            _successes.popitem(last=False)


def _credentials_key(username: str, password: str) -> bytes:
    """What a request presents, before any database read: only a hint, confirmed by _remembered()."""
    return hmac.new(_PROCESS_KEY, f"name\0{username}\0{password}".encode("utf-8", "surrogatepass"),
                    hashlib.sha256).digest()


def _recently_accepted(username: str, password: str) -> bool:
    expires = _successes.get(_credentials_key(username, password))
    return expires is not None and expires > time.monotonic()


def forget_successes() -> None:
    """Drop every remembered success of this process (tests; nothing else needs to)."""
    with _successes_lock:
        _successes.clear()
